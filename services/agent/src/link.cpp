#include "link.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <stdexcept>

#include "log.hpp"

namespace holt::agent {
namespace {

using namespace std::chrono_literals;

// The port reports POLLHUP for as long as no host is connected, so while the host is away the
// agent watches it edge-triggered: the driver wakes the port's waiters when a host connects
// (VIRTIO_CONSOLE_PORT_OPEN) or data arrives. It also looks at this interval, in case a wake-up
// came before the watch changed.
constexpr auto kHostAwayRecheck = 200ms;
// How long it waits for the virtio-serial port to appear (driver still loading).
constexpr auto kPortMissingRetry = 200ms;
constexpr std::size_t kReadSize = 64 * 1024;
// Reads per readiness event, so one busy link cannot starve the rest of the loop.
constexpr int kReadsPerEvent = 16;

std::runtime_error errno_error(const std::string& what) {
    return std::runtime_error(what + ": " + std::strerror(errno));
}

void set_nonblocking(int fd) {
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        throw errno_error("set O_NONBLOCK on fd " + std::to_string(fd));
    }
}

enum class ReadResult { kWouldBlock, kClosed };

// Reads what is available from `fd` and hands it to on_data.
ReadResult read_available(int fd, const std::function<void(std::string_view)>& on_data,
                          std::string& buffer) {
    buffer.resize(kReadSize);
    for (int i = 0; i < kReadsPerEvent; ++i) {
        ssize_t n = ::read(fd, buffer.data(), buffer.size());
        if (n > 0) {
            on_data(std::string_view(buffer.data(), static_cast<std::size_t>(n)));
            continue;
        }
        if (n == 0) {
            return ReadResult::kClosed;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN) {
            return ReadResult::kWouldBlock;
        }
        log::debug("read from host: ", std::strerror(errno));
        return ReadResult::kClosed;
    }
    return ReadResult::kWouldBlock;
}

ssize_t write_some(int fd, const char* data, std::size_t size, bool socket) {
    for (;;) {
        ssize_t n = socket ? ::send(fd, data, size, MSG_NOSIGNAL) : ::write(fd, data, size);
        if (n >= 0) {
            return n;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN) {
            return 0;
        }
        log::debug("write to host: ", std::strerror(errno));
        return -1;
    }
}

// ---------------------------------------------------------------------------------------------
// virtio-serial

std::optional<std::string> find_virtio_port(const std::string& name) {
    const char* base = "/sys/class/virtio-ports";
    DIR* dir = ::opendir(base);
    if (dir == nullptr) {
        return std::nullopt;
    }
    std::optional<std::string> found;
    while (dirent* entry = ::readdir(dir)) {
        std::string port = entry->d_name;
        if (port.rfind("vport", 0) != 0) {
            continue;
        }
        std::ifstream file(std::string(base) + "/" + port + "/name");
        std::string port_name;
        if (std::getline(file, port_name) && port_name == name) {
            found = "/dev/" + port;
            break;
        }
    }
    ::closedir(dir);
    return found;
}

class VirtioLink final : public Link {
  public:
    explicit VirtioLink(std::string port_name) : port_name_(std::move(port_name)) {}

    void start(EventLoop& loop, Callbacks callbacks) override {
        loop_ = &loop;
        callbacks_ = std::move(callbacks);
        open_port();
    }

    bool connected() const override { return connected_; }

    ssize_t write(const char* data, std::size_t size) override {
        if (!fd_) {
            return -1;
        }
        return write_some(fd_.get(), data, size, false);
    }

    void want_writable(bool want) override {
        want_write_ = want;
        update_events();
    }

    void drop() override { host_away(false); }
    bool can_reconnect() const override { return true; }
    std::string describe() const override { return "virtio-serial port " + port_name_; }

  private:
    void open_port() {
        std::optional<std::string> path = find_virtio_port(port_name_);
        if (!path) {
            if (!missing_logged_) {
                log::warn("virtio-serial port ", port_name_, " not found yet; waiting for it");
                missing_logged_ = true;
            }
            loop_->add_timer(kPortMissingRetry, [this] { open_port(); });
            return;
        }
        fd_.reset(::open(path->c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
        if (!fd_) {
            log::error("open ", *path, ": ", std::strerror(errno), "; retrying");
            loop_->add_timer(kPortMissingRetry, [this] { open_port(); });
            return;
        }
        path_ = *path;
        log::info("serving on virtio-serial port ", port_name_, " (", path_, ")");
        arm();
    }

    void arm() {
        watch_ = loop_->watch(fd_.get(), events(), [this](std::uint32_t ev) { on_event(ev); });
    }

    std::uint32_t events() const {
        if (away_) {
            return EPOLLIN | EPOLLET;
        }
        return EPOLLIN | (want_write_ ? EPOLLOUT : 0u);
    }

    void update_events() {
        if (watch_) {
            loop_->modify(*watch_, events());
        }
    }

    void on_event(std::uint32_t ev) {
        if (away_) {
            look_for_host();
            return;
        }
        if (ev & EPOLLIN) {
            ReadResult result = read_available(
                fd_.get(), [this](std::string_view bytes) { on_bytes(bytes); }, buffer_);
            if (result == ReadResult::kClosed) {
                host_away(true);
                return;
            }
        } else if (ev & (EPOLLHUP | EPOLLERR)) {
            host_away(true);
            return;
        }
        if ((ev & EPOLLOUT) && want_write_) {
            callbacks_.on_writable();
        }
    }

    // Bytes from the host: the first ones after it was away mean it is connected (again).
    void on_bytes(std::string_view bytes) {
        if (away_) {
            away_ = false;
            update_events();
        }
        if (!connected_) {
            connected_ = true;
            log::debug("host connected to ", port_name_);
            callbacks_.on_connect();
        }
        callbacks_.on_data(bytes);
    }

    // No host on the other end: watch the port edge-triggered until one comes.
    void host_away(bool notify) {
        if (connected_) {
            connected_ = false;
            log::debug("host left ", port_name_);
            if (notify) {
                callbacks_.on_disconnect();
            }
        }
        if (!away_) {
            away_ = true;
            update_events();
            schedule_recheck();
        }
    }

    // While away: reads whatever a new host sent; with its first bytes the port is watched
    // level-triggered again.
    void look_for_host() {
        ReadResult result = read_available(
            fd_.get(), [this](std::string_view bytes) { on_bytes(bytes); }, buffer_);
        if (result == ReadResult::kClosed && !away_) {
            host_away(true);  // the host came and went within one read
        }
    }

    void schedule_recheck() {
        if (recheck_pending_) {
            return;
        }
        recheck_pending_ = true;
        loop_->add_timer(kHostAwayRecheck, [this] {
            recheck_pending_ = false;
            if (away_) {
                look_for_host();
            }
            if (away_) {
                schedule_recheck();
            }
        });
    }

    std::string port_name_;
    std::string path_;
    EventLoop* loop_ = nullptr;
    Callbacks callbacks_;
    UniqueFd fd_;
    std::optional<EventLoop::WatchId> watch_;
    bool connected_ = false;
    bool want_write_ = false;
    bool away_ = false;  // no host connected: watched edge-triggered
    bool recheck_pending_ = false;
    bool missing_logged_ = false;
    std::string buffer_;
};

// ---------------------------------------------------------------------------------------------
// Listening sockets

class ListenLink final : public Link {
  public:
    ListenLink(UniqueFd listener, std::string address)
        : listener_(std::move(listener)), address_(std::move(address)) {}

    void start(EventLoop& loop, Callbacks callbacks) override {
        loop_ = &loop;
        callbacks_ = std::move(callbacks);
        loop.watch(listener_.get(), EPOLLIN, [this](std::uint32_t) { accept_host(); });
        log::info("listening on ", address_);
    }

    bool connected() const override { return static_cast<bool>(conn_); }

    ssize_t write(const char* data, std::size_t size) override {
        if (!conn_) {
            return -1;
        }
        return write_some(conn_.get(), data, size, true);
    }

    void want_writable(bool want) override {
        want_write_ = want;
        if (watch_) {
            loop_->modify(*watch_, events());
        }
    }

    void drop() override { close_host(false); }
    bool can_reconnect() const override { return true; }
    std::string describe() const override { return address_; }

  private:
    std::uint32_t events() const { return EPOLLIN | (want_write_ ? EPOLLOUT : 0u); }

    void accept_host() {
        UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!conn) {
            log::warn("accept on ", address_, ": ", std::strerror(errno));
            return;
        }
        // One host at a time: a new connection replaces the previous one, which may be a
        // half-open leftover of a host that crashed.
        if (conn_) {
            log::info("new host connection on ", address_, " replaces the current one");
            close_host(true);
        }
        conn_ = std::move(conn);
        watch_ = loop_->watch(conn_.get(), events(), [this](std::uint32_t ev) { on_event(ev); });
        log::debug("host connected on ", address_);
        callbacks_.on_connect();
    }

    void on_event(std::uint32_t ev) {
        if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
            ReadResult result = read_available(conn_.get(), callbacks_.on_data, buffer_);
            if (result == ReadResult::kClosed) {
                close_host(true);
                return;
            }
        }
        if ((ev & EPOLLOUT) && want_write_ && conn_) {
            callbacks_.on_writable();
        }
    }

    void close_host(bool notify) {
        if (!conn_) {
            return;
        }
        loop_->unwatch(*watch_);
        watch_.reset();
        conn_.reset();
        log::debug("host disconnected from ", address_);
        if (notify) {
            callbacks_.on_disconnect();
        }
    }

    UniqueFd listener_;
    std::string address_;
    EventLoop* loop_ = nullptr;
    Callbacks callbacks_;
    UniqueFd conn_;
    std::optional<EventLoop::WatchId> watch_;
    bool want_write_ = false;
    std::string buffer_;
};

// ---------------------------------------------------------------------------------------------
// stdin / stdout

class StdioLink final : public Link {
  public:
    void start(EventLoop& loop, Callbacks callbacks) override {
        loop_ = &loop;
        callbacks_ = std::move(callbacks);
        set_nonblocking(STDIN_FILENO);
        set_nonblocking(STDOUT_FILENO);
        in_watch_ = loop.watch(STDIN_FILENO, EPOLLIN, [this](std::uint32_t) { on_readable(); });
        out_watch_ = loop.watch(STDOUT_FILENO, 0, [this](std::uint32_t ev) {
            if (ev & (EPOLLERR | EPOLLHUP)) {
                close_host();
            } else if (connected_) {
                callbacks_.on_writable();
            }
        });
        callbacks_.on_connect();
    }

    bool connected() const override { return connected_; }

    ssize_t write(const char* data, std::size_t size) override {
        if (!connected_) {
            return -1;
        }
        return write_some(STDOUT_FILENO, data, size, false);
    }

    void want_writable(bool want) override {
        if (connected_) {
            loop_->modify(out_watch_, want ? EPOLLOUT : 0u);
        }
    }

    void drop() override { connected_ = false; }
    bool can_reconnect() const override { return false; }
    std::string describe() const override { return "stdin/stdout"; }

  private:
    void on_readable() {
        if (read_available(STDIN_FILENO, callbacks_.on_data, buffer_) == ReadResult::kClosed) {
            close_host();
        }
    }

    void close_host() {
        if (!connected_) {
            return;
        }
        connected_ = false;
        loop_->unwatch(in_watch_);
        loop_->unwatch(out_watch_);
        callbacks_.on_disconnect();
    }

    EventLoop* loop_ = nullptr;
    Callbacks callbacks_;
    EventLoop::WatchId in_watch_ = 0;
    EventLoop::WatchId out_watch_ = 0;
    bool connected_ = true;
    std::string buffer_;
};

std::uint16_t parse_port(const std::string& text, const std::string& address) {
    std::size_t used = 0;
    unsigned long port = 0;
    try {
        port = std::stoul(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || port == 0 || port > 65535) {
        throw std::runtime_error("listen " + address + ": invalid port '" + text + "'");
    }
    return static_cast<std::uint16_t>(port);
}

UniqueFd bind_and_listen(int family, const sockaddr* addr, socklen_t len,
                         const std::string& address) {
    UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
        throw errno_error("listen " + address + ": socket");
    }
    if (family == AF_INET) {
        int one = 1;
        ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    }
    if (::bind(fd.get(), addr, len) != 0) {
        throw errno_error("listen " + address + ": bind");
    }
    if (::listen(fd.get(), 4) != 0) {
        throw errno_error("listen " + address + ": listen");
    }
    return fd;
}

}  // namespace

std::unique_ptr<Link> make_listen_link(const std::string& address) {
    if (address.rfind("unix:", 0) == 0) {
        std::string path = address.substr(5);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        if (path.empty() || path.size() >= sizeof addr.sun_path) {
            throw std::runtime_error("listen " + address + ": invalid socket path");
        }
        std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
        ::unlink(path.c_str());  // a stale socket of an earlier run
        UniqueFd fd =
            bind_and_listen(AF_UNIX, reinterpret_cast<sockaddr*>(&addr), sizeof addr, address);
        ::chmod(path.c_str(), 0600);
        return std::make_unique<ListenLink>(std::move(fd), address);
    }
    if (address.rfind("tcp:", 0) == 0) {
        std::string rest = address.substr(4);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_ANY);
        std::size_t colon = rest.rfind(':');
        if (colon != std::string::npos) {
            std::string host = rest.substr(0, colon);
            if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
                throw std::runtime_error("listen " + address + ": invalid IPv4 address '" + host +
                                         "'");
            }
            rest = rest.substr(colon + 1);
        }
        addr.sin_port = htons(parse_port(rest, address));
        UniqueFd fd =
            bind_and_listen(AF_INET, reinterpret_cast<sockaddr*>(&addr), sizeof addr, address);
        return std::make_unique<ListenLink>(std::move(fd), address);
    }
    if (address.rfind("vsock:", 0) == 0) {
        sockaddr_vm addr{};
        addr.svm_family = AF_VSOCK;
        addr.svm_cid = VMADDR_CID_ANY;
        addr.svm_port = parse_port(address.substr(6), address);
        UniqueFd fd =
            bind_and_listen(AF_VSOCK, reinterpret_cast<sockaddr*>(&addr), sizeof addr, address);
        return std::make_unique<ListenLink>(std::move(fd), address);
    }
    throw std::runtime_error("listen " + address +
                             ": expected unix:PATH, tcp:[HOST:]PORT or vsock:PORT");
}

std::unique_ptr<Link> make_stdio_link() {
    return std::make_unique<StdioLink>();
}

std::unique_ptr<Link> make_virtio_link(const std::string& port_name) {
    return std::make_unique<VirtioLink>(port_name);
}

}  // namespace holt::agent
