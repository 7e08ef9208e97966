#include "holt/vm/qmp_client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <cerrno>
#include <cstring>
#include <thread>

#include "holt/common/error.hpp"

namespace holt::vm {
namespace {

namespace json = boost::json;
using Clock = QmpClient::Clock;

// A QMP reply is small; anything larger is a protocol error, not something to buffer.
constexpr std::size_t kMaxMessageBytes = 16 << 20;

int connect_unix(const std::filesystem::path& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.native().size() >= sizeof(addr.sun_path)) {
        throw Error("socket path too long: " + path.string());
    }
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        throw_errno("socket");
    }
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

}  // namespace

QmpClient QmpClient::connect(const std::filesystem::path& socket, Clock::time_point deadline) {
    int fd = -1;
    while ((fd = connect_unix(socket)) < 0) {
        if (Clock::now() >= deadline) {
            throw Error("connect to QMP socket " + socket.string() + ": " + errno_text(errno));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    QmpClient client(fd);
    json::object greeting = client.read_message(deadline);
    if (!greeting.contains("QMP")) {
        throw Error("QMP greeting expected, got: " + json::serialize(greeting));
    }
    client.execute("qmp_capabilities", {},
                   std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
    return client;
}

QmpClient::QmpClient(int fd) : fd_(fd) {}

QmpClient::QmpClient(QmpClient&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      next_id_(other.next_id_),
      buffer_(std::move(other.buffer_)),
      events_(std::move(other.events_)) {}

QmpClient& QmpClient::operator=(QmpClient&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        fd_ = std::exchange(other.fd_, -1);
        next_id_ = other.next_id_;
        buffer_ = std::move(other.buffer_);
        events_ = std::move(other.events_);
    }
    return *this;
}

QmpClient::~QmpClient() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

json::value QmpClient::execute(const std::string& command, json::object arguments,
                               std::chrono::milliseconds timeout) {
    std::uint64_t id = next_id_++;
    json::object request{{"execute", command}, {"id", id}};
    if (!arguments.empty()) {
        request["arguments"] = std::move(arguments);
    }
    send_line(json::serialize(request), -1);
    return await_reply(command, id, Clock::now() + timeout);
}

void QmpClient::send_fd(const std::string& name, int fd, std::chrono::milliseconds timeout) {
    std::uint64_t id = next_id_++;
    json::object request{{"execute", "getfd"}, {"id", id}, {"arguments", {{"fdname", name}}}};
    send_line(json::serialize(request), fd);
    await_reply("getfd", id, Clock::now() + timeout);
}

std::vector<json::object> QmpClient::take_events() {
    return std::exchange(events_, {});
}

void QmpClient::send_line(const std::string& line, int pass_fd) {
    std::string data = line + "\n";
    iovec iov{data.data(), data.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    if (pass_fd >= 0) {
        // QEMU takes a passed descriptor from the message that carries the command.
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(cmsg), &pass_fd, sizeof(int));
    }
    ssize_t sent = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    if (sent < 0) {
        throw_errno("send QMP command");
    }
    // The remainder (rare: the socket buffer is far larger than a command) goes without the fd.
    std::size_t offset = static_cast<std::size_t>(sent);
    while (offset < data.size()) {
        ssize_t n = ::send(fd_, data.data() + offset, data.size() - offset, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            throw_errno("send QMP command");
        }
        offset += static_cast<std::size_t>(n);
    }
}

json::object QmpClient::read_message(Clock::time_point deadline) {
    for (;;) {
        if (auto newline = buffer_.find('\n'); newline != std::string::npos) {
            std::string line = buffer_.substr(0, newline);
            buffer_.erase(0, newline + 1);
            if (line.find_first_not_of(" \r\t") == std::string::npos) {
                continue;
            }
            boost::system::error_code ec;
            json::value message = json::parse(line, ec);
            if (ec || !message.is_object()) {
                throw Error("QMP sent something that is not a JSON object: " + line.substr(0, 200));
            }
            return std::move(message.as_object());
        }
        if (buffer_.size() > kMaxMessageBytes) {
            throw Error("QMP message larger than 16 MiB");
        }
        pollfd pfd{fd_, POLLIN, 0};
        int ready = ::poll(&pfd, 1, remaining_ms(deadline));
        if (ready < 0 && errno == EINTR) {
            continue;
        }
        if (ready < 0) {
            throw_errno("poll QMP socket");
        }
        if (ready == 0) {
            throw Error("QMP: no answer before the deadline");
        }
        char chunk[8192];
        ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            throw_errno("read QMP socket");
        }
        if (n == 0) {
            throw Error("QMP connection closed by QEMU");
        }
        buffer_.append(chunk, static_cast<std::size_t>(n));
    }
}

json::value QmpClient::await_reply(const std::string& command, std::uint64_t id,
                                   Clock::time_point deadline) {
    for (;;) {
        json::object message =
            with_context("QMP " + command, [&] { return read_message(deadline); });
        if (message.contains("event")) {
            events_.push_back(std::move(message));
            continue;
        }
        const json::value* reply_id = message.if_contains("id");
        if (!reply_id || !reply_id->is_number() || reply_id->to_number<std::uint64_t>() != id) {
            continue;  // a reply to a command whose caller already gave up
        }
        if (const json::value* error = message.if_contains("error")) {
            std::string desc = "unknown error";
            if (error->is_object()) {
                if (const json::value* d = error->as_object().if_contains("desc");
                    d && d->is_string()) {
                    desc = std::string(d->as_string());
                }
            }
            throw Error("QMP " + command + ": " + desc);
        }
        if (const json::value* result = message.if_contains("return")) {
            return *result;
        }
        return json::value();
    }
}

}  // namespace holt::vm
