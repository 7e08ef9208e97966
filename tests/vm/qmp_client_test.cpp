#include "holt/vm/qmp_client.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>

#include "holt/common/error.hpp"

namespace holt::vm {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// A scripted stand-in for QEMU's QMP server: sends the greeting, then answers each line it reads
// with the next scripted reply (after writing any scripted events).
class FakeQmpServer {
  public:
    explicit FakeQmpServer(std::vector<std::string> replies) : replies_(std::move(replies)) {
        path_ = fs::temp_directory_path() / ("holt-qmp-" + std::to_string(::getpid()) + ".sock");
        fs::remove(path_);
        listener_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
        ::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
        ::listen(listener_, 1);
        thread_ = std::thread([this] { serve(); });
    }
    ~FakeQmpServer() {
        thread_.join();
        ::close(listener_);
        fs::remove(path_);
    }
    const fs::path& path() const { return path_; }
    const std::vector<std::string>& received() const { return received_; }

  private:
    void serve() {
        int fd = ::accept(listener_, nullptr, nullptr);
        send(fd, R"({"QMP": {"version": {}, "capabilities": []}})"
                 "\n");
        std::string buffer;
        char chunk[4096];
        std::size_t next = 0;
        while (next < replies_.size()) {
            ssize_t n = ::read(fd, chunk, sizeof(chunk));
            if (n <= 0) {
                break;
            }
            buffer.append(chunk, static_cast<std::size_t>(n));
            std::size_t newline;
            while ((newline = buffer.find('\n')) != std::string::npos && next < replies_.size()) {
                received_.push_back(buffer.substr(0, newline));
                buffer.erase(0, newline + 1);
                send(fd, replies_[next++] + "\n");
            }
        }
        ::close(fd);
    }
    static void send(int fd, const std::string& text) {
        (void)!::write(fd, text.data(), text.size());
    }

    fs::path path_;
    int listener_ = -1;
    std::vector<std::string> replies_;
    std::vector<std::string> received_;
    std::thread thread_;
};

auto soon() {
    return std::chrono::steady_clock::now() + std::chrono::seconds(5);
}

TEST(QmpClientTest, NegotiatesAndReturnsResults) {
    FakeQmpServer server({R"({"return": {}, "id": 1})",
                          R"({"return": {"status": "running", "running": true}, "id": 2})"});
    {
        QmpClient qmp = QmpClient::connect(server.path(), soon());
        auto status = qmp.execute("query-status");
        EXPECT_EQ(status.at("status").as_string(), "running");
    }
    ASSERT_EQ(server.received().size(), 2u);
    EXPECT_THAT(server.received()[0], HasSubstr("qmp_capabilities"));
    EXPECT_THAT(server.received()[1], HasSubstr("query-status"));
}

TEST(QmpClientTest, KeepsEventsThatArriveBeforeTheReply) {
    FakeQmpServer server({R"({"return": {}, "id": 1})", R"({"event": "STOP", "timestamp": {}})"
                                                        "\n"
                                                        R"({"return": {}, "id": 2})"});
    QmpClient qmp = QmpClient::connect(server.path(), soon());
    qmp.execute("stop");
    auto events = qmp.take_events();
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].at("event").as_string(), "STOP");
    EXPECT_TRUE(qmp.take_events().empty());
}

TEST(QmpClientTest, QmpErrorsNameTheCommandAndQemusReason) {
    FakeQmpServer server(
        {R"({"return": {}, "id": 1})",
         R"({"error": {"class": "GenericError", "desc": "no such device"}, "id": 2})"});
    QmpClient qmp = QmpClient::connect(server.path(), soon());
    try {
        qmp.execute("device_del", {{"id", "x"}});
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("QMP device_del: no such device"));
    }
}

TEST(QmpClientTest, ConnectFailsClearlyWhenNothingListens) {
    auto missing = fs::temp_directory_path() / "holt-no-such-qmp.sock";
    try {
        QmpClient::connect(missing,
                           std::chrono::steady_clock::now() + std::chrono::milliseconds(50));
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("connect to QMP socket " + missing.string()));
    }
}

}  // namespace
}  // namespace holt::vm
