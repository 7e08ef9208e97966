// The private cluster itself: idempotent start, concurrent starts, failures with the server log.

#include "holt/store/local_cluster.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <set>

#include "cluster_environment.hpp"
#include "holt/common/files.hpp"
#include "holt/store/database.hpp"

namespace holt::store {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

TEST(LocalClusterTest, EnsureStartedTwiceGivesTheSameUrlAndIsFast) {
    LocalCluster cluster(LocalClusterOptions{.data_dir = test::data_dir()});
    std::string first = cluster.ensure_started();
    auto started = Clock::now();
    std::string second = cluster.ensure_started();
    auto took = Clock::now() - started;
    EXPECT_EQ(first, second);
    EXPECT_EQ(first, test::database_url());
    EXPECT_LT(took, std::chrono::milliseconds(500));

    auto status = cluster.status();
    EXPECT_TRUE(status.initialized);
    EXPECT_TRUE(status.running);
    EXPECT_GT(status.pid, 0);
    EXPECT_EQ(status.url, first);
    // Unix socket only by default.
    Database database(first);
    auto listen = database.transaction(
        [](pqxx::work& tx) { return tx.exec1("SHOW listen_addresses")[0].as<std::string>(); });
    EXPECT_EQ(listen, "");
}

TEST(LocalClusterTest, ConcurrentProcessesStartOneFreshCluster) {
    fs::path dir = test::make_temporary_data_dir();
    std::vector<pid_t> children;
    for (int i = 0; i < 3; ++i) {
        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            int code = 1;
            try {
                std::string url =
                    LocalCluster(LocalClusterOptions{.data_dir = dir}).ensure_started();
                std::ofstream(dir / ("url." + std::to_string(::getpid()))) << url;
                code = 0;
            } catch (const std::exception& e) {
                std::fprintf(stderr, "child: %s\n", e.what());
            }
            ::_exit(code);
        }
        children.push_back(pid);
    }
    std::set<std::string> urls;
    for (pid_t pid : children) {
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        urls.insert(read_text_file(dir / ("url." + std::to_string(pid))));
    }
    EXPECT_EQ(urls.size(), 1u);

    // The server outlived the processes that started it.
    LocalCluster cluster(LocalClusterOptions{.data_dir = dir});
    EXPECT_TRUE(cluster.status().running);
    EXPECT_EQ(cluster.status().url, *urls.begin());
    cluster.stop();
    EXPECT_FALSE(cluster.status().running);
    cluster.stop();  // idempotent
    fs::remove_all(dir);
}

TEST(LocalClusterTest, AFailedStartQuotesTheServerLog) {
    // Hold a loopback port so the server cannot bind it.
    int holder = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(holder, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    ASSERT_EQ(::listen(holder, 1), 0);
    socklen_t length = sizeof address;
    ::getsockname(holder, reinterpret_cast<sockaddr*>(&address), &length);
    int port = ntohs(address.sin_port);

    fs::path dir = test::make_temporary_data_dir();
    LocalCluster cluster(LocalClusterOptions{
        .data_dir = dir, .tcp_port = port, .start_timeout = std::chrono::seconds(20)});
    try {
        cluster.ensure_started();
        ADD_FAILURE() << "started on a port that is taken";
    } catch (const std::exception& e) {
        EXPECT_THAT(e.what(), ::testing::AllOf(::testing::HasSubstr("postgres.log"),
                                               ::testing::HasSubstr("Address already in use")));
    }
    ::close(holder);
    cluster.stop();
    fs::remove_all(dir);
}

}  // namespace
}  // namespace holt::store
