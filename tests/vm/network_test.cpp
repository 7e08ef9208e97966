// Tests of VmNetwork against the real kernel: namespaces, veth pairs, nftables. They need root.
//
// No VM boots here. A "stand-in guest" takes the guest's place: tap0 in a VM's namespace is
// replaced by a veth whose other end, eth0, sits in a namespace of its own, addressed as a guest
// addresses itself at boot. An "outside" namespace behind a host link stands in for the internet;
// it is the only uplink the tests configure. Every packet stays on this machine, inside
// namespaces these tests create.
//
// Names: VM ids "nettest-<pid>-<n>" (namespaces holt-nettest-...), test-only namespaces "hnt-...",
// the outside's host link "hnt<pid>". The environment below removes leftovers of earlier runs.

#include "holt/vm/network.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "holt/common/child_process.hpp"
#include "holt/common/error.hpp"
#include "holt/vm/runtime_dir.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const std::string kTestIdPrefix = "nettest-";

std::string pid_text() {
    return std::to_string(::getpid());
}

fs::path test_runtime_root() {
    return "/tmp/holt-nettest-" + pid_text();
}

// The id of a test VM. Every Holt process's sweep removes networks whose VM has no runtime
// directory anywhere (RuntimeDir::exists_anywhere), so each test VM gets one in the host registry,
// as a real VM does.
std::string next_vm_id() {
    static std::atomic<int> n{0};
    std::string id = kTestIdPrefix + pid_text() + "-" + std::to_string(n++);
    fs::create_directories(test_runtime_root() / id);
    fs::create_directories(RuntimeDir::kHostRegistry);
    fs::create_directory_symlink(test_runtime_root() / id,
                                 fs::path(RuntimeDir::kHostRegistry) / id);
    return id;
}

// Runs a program found on PATH.
CommandResult run(std::vector<std::string> argv) {
    argv.insert(argv.begin(), "/usr/bin/env");
    return run_command(argv);
}

// Runs a shell command line; fails the test with its output if it fails.
std::string sh(const std::string& command) {
    CommandResult result = run_command({"/bin/sh", "-c", command});
    EXPECT_TRUE(result.status.success()) << command << ": " << result.output;
    return result.output;
}

// Runs `ip` commands, one per line, inside namespace `netns` ("" for the host).
void ip_batch(const std::string& netns, const std::string& commands) {
    std::string prefix = netns.empty() ? "ip" : "ip -n " + netns;
    sh(prefix + " -batch - <<'EOF'\n" + commands + "EOF\n");
}

bool netns_exists(const std::string& name) {
    return fs::exists(fs::path("/run/netns") / name);
}

bool link_exists(const std::string& name) {
    return run({"ip", "link", "show", "dev", name}).status.success();
}

bool host_table_exists() {
    return run({"nft", "list", "table", "inet", "holt"}).status.success();
}

bool any_host_vm_link() {
    CommandResult links = run({"ip", "-o", "link", "show"});
    return links.output.find(": hv-") != std::string::npos;
}

int open_netns(const std::string& name) {
    int fd = ::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        throw_errno("open netns " + name);
    }
    return fd;
}

template <typename Fn>
auto in_netns(int netns_fd, Fn fn) {
    std::packaged_task<std::invoke_result_t<Fn>()> task([&] {
        if (netns_fd >= 0 && ::setns(netns_fd, CLONE_NEWNET) != 0) {
            throw_errno("setns");
        }
        return fn();
    });
    auto result = task.get_future();
    std::thread(std::move(task)).join();
    return result.get();
}

sockaddr_in socket_address(const std::string& address, std::uint16_t port) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    ::inet_pton(AF_INET, address.c_str(), &sa.sin_addr);
    return sa;
}

// Reads what the peer sends until it closes or `timeout` passes.
std::string read_all(int fd, std::chrono::milliseconds timeout) {
    std::string data;
    auto deadline = Clock::now() + timeout;
    char buf[256];
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        pollfd pfd{fd, POLLIN, 0};
        if (left.count() <= 0 || ::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) {
            return data;
        }
        ssize_t n = ::read(fd, buf, sizeof(buf));
        if (n <= 0) {
            return data;
        }
        data.append(buf, static_cast<std::size_t>(n));
    }
}

// Reads one line (with its newline), or what came before the peer closed or `timeout` passed.
std::string read_line(int fd, std::chrono::milliseconds timeout = 1s) {
    std::string line;
    auto deadline = Clock::now() + timeout;
    char c = 0;
    while (line.empty() || line.back() != '\n') {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        pollfd pfd{fd, POLLIN, 0};
        if (left.count() <= 0 || ::poll(&pfd, 1, static_cast<int>(left.count())) <= 0 ||
            ::read(fd, &c, 1) != 1) {
            break;
        }
        line += c;
    }
    return line;
}

// A TCP server on its own thread, inside a namespace (or the host's, for -1). Each connection
// gets "<banner> <peer address>\n", then the first chunk it sends comes back, then it closes.
class Server {
  public:
    Server(int netns_fd, const std::string& address, std::uint16_t port, std::string banner)
        : banner_(std::move(banner)) {
        listen_fd_ = in_netns(netns_fd, [&] {
            int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            int one = 1;
            ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            sockaddr_in sa = socket_address(address, port);
            if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
                ::listen(fd, 128) != 0) {
                int err = errno;
                ::close(fd);
                errno = err;
                throw_errno("listen on " + address + ":" + std::to_string(port));
            }
            return fd;
        });
        if (::pipe2(stop_pipe_, O_CLOEXEC) != 0) {
            throw_errno("pipe");
        }
        thread_ = std::thread([this] { serve(); });
    }
    ~Server() {
        (void)::write(stop_pipe_[1], "x", 1);
        thread_.join();
        ::close(listen_fd_);
        ::close(stop_pipe_[0]);
        ::close(stop_pipe_[1]);
    }
    int connections() const { return connections_; }

  private:
    void serve() {
        for (;;) {
            pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
            if (::poll(fds, 2, -1) < 0 || fds[1].revents != 0) {
                return;
            }
            sockaddr_in peer{};
            socklen_t len = sizeof(peer);
            int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
            if (fd < 0) {
                continue;
            }
            ++connections_;
            char peer_text[INET_ADDRSTRLEN];
            ::inet_ntop(AF_INET, &peer.sin_addr, peer_text, sizeof(peer_text));
            std::string hello = banner_ + " " + peer_text + "\n";
            (void)::write(fd, hello.data(), hello.size());
            char buf[256];
            pollfd pfd{fd, POLLIN, 0};
            if (::poll(&pfd, 1, 2000) > 0) {
                ssize_t n = ::read(fd, buf, sizeof(buf));
                if (n > 0) {
                    (void)::write(fd, buf, static_cast<std::size_t>(n));
                }
            }
            ::close(fd);
        }
    }

    std::string banner_;
    int listen_fd_ = -1;
    int stop_pipe_[2] = {-1, -1};
    std::atomic<int> connections_{0};
    std::thread thread_;
};

// The result of a connection attempt: the greeting line, or the errno it failed with.
struct Attempt {
    int error = 0;  // 0: connected
    std::string greeting;
};

// Connects from inside a namespace (a stand-in guest) and reads the server's greeting.
Attempt try_connect(int netns_fd, const std::string& address, std::uint16_t port,
                    std::chrono::milliseconds timeout = 500ms) {
    return in_netns(netns_fd, [&] {
        Attempt attempt;
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        sockaddr_in sa = socket_address(address, port);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 &&
            errno != EINPROGRESS) {
            attempt.error = errno;
        } else {
            pollfd pfd{fd, POLLOUT, 0};
            if (::poll(&pfd, 1, static_cast<int>(timeout.count())) <= 0) {
                attempt.error = ETIMEDOUT;
            } else {
                socklen_t len = sizeof(attempt.error);
                ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &attempt.error, &len);
            }
        }
        if (attempt.error == 0) {
            attempt.greeting = read_line(fd);
        }
        ::close(fd);
        return attempt;
    });
}

// Takes the guest's place behind tap0 (see the top of this file).
class StandInGuest {
  public:
    explicit StandInGuest(const VmNetwork& net) {
        static std::atomic<int> n{0};
        name_ = "hnt-g-" + pid_text() + "-" + std::to_string(n++);
        sh("ip netns add " + name_);
        ip_batch(net.netns_name(), std::string("link del tap0\n") +
                                       "link add tap0 type veth peer name eth0 netns " + name_ +
                                       "\n"
                                       "addr add 10.200.0.1/30 dev tap0\n"
                                       "link set tap0 up\n");
        ip_batch(name_,
                 "link set lo up\n"
                 "addr add 10.200.0.2/30 dev eth0\n"
                 "link set eth0 up\n"
                 "route add default via 10.200.0.1\n");
        fd_ = open_netns(name_);
        // The kernel activates a link's queue shortly after its carrier comes on (linkwatch);
        // until then it drops what is sent, and a first SYN would wait a second to be resent.
        auto deadline = Clock::now() + 2s;
        while (Clock::now() < deadline &&
               (sh("ip -n " + net.netns_name() + " link show tap0").find("qdisc noop") !=
                    std::string::npos ||
                sh("ip -n " + name_ + " link show eth0").find("qdisc noop") != std::string::npos)) {
            std::this_thread::sleep_for(5ms);
        }
    }
    ~StandInGuest() {
        ::close(fd_);
        run({"ip", "netns", "del", name_});
    }
    int netns_fd() const { return fd_; }
    const std::string& name() const { return name_; }

  private:
    std::string name_;
    int fd_ = -1;
};

// True if `name` is "<prefix><pid>..." for this process's pid or that of a process that has
// ended: what a test program made that nobody else (another test program running at the same
// time) still uses.
bool is_leftover(const std::string& name, const std::string& prefix, bool including_own) {
    if (name.rfind(prefix, 0) != 0) {
        return false;
    }
    std::size_t end = prefix.size();
    while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end]))) {
        ++end;
    }
    if (end == prefix.size()) {
        return false;
    }
    pid_t pid = std::stoi(name.substr(prefix.size(), end - prefix.size()));
    if (pid == ::getpid()) {
        return including_own;
    }
    return ::kill(pid, 0) != 0 && errno == ESRCH;
}

// Removes what this test program creates, and what earlier runs that crashed left behind.
void remove_test_leftovers(bool including_own) {
    VmNetwork::sweep_stale(
        [&](const std::string& id) { return !is_leftover(id, kTestIdPrefix, including_own); });
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/run/netns", ec)) {
        std::string name = entry.path().filename();
        if (is_leftover(name, "hnt-g-", including_own) ||
            is_leftover(name, "hnt-out-", including_own)) {
            run({"ip", "netns", "del", name});
        }
    }
    CommandResult links = run({"ip", "-o", "link", "show"});
    std::istringstream lines(links.output);
    for (std::string line; std::getline(lines, line);) {
        // "12: hnt4242@if2: <...>"
        auto start = line.find(": ");
        auto end = line.find_first_of("@:", start + 2);
        if (start == std::string::npos || end == std::string::npos) {
            continue;
        }
        std::string name = line.substr(start + 2, end - start - 2);
        if (is_leftover(name, "hnt", including_own)) {
            run({"ip", "link", "del", name});
        }
    }
}

class NetworkEnvironment : public ::testing::Environment {
  public:
    void SetUp() override {
        if (::geteuid() == 0) {
            remove_test_leftovers(/*including_own=*/false);
        }
    }
    void TearDown() override {
        if (::geteuid() == 0) {
            remove_test_leftovers(/*including_own=*/true);
        }
    }
};

const auto* const kEnvironment = ::testing::AddGlobalTestEnvironment(new NetworkEnvironment);

class NetworkTest : public ::testing::Test {
  protected:
    // The outside namespace is shared by the whole suite.
    static void SetUpTestSuite() {
        if (::geteuid() != 0) {
            return;
        }
        ip_forward_before_ = read_file("/proc/sys/net/ipv4/ip_forward");
        // A /30 of 10.202.0.0/16 of its own, so test programs can run side by side.
        std::uint32_t base = (10u << 24) | (202u << 16) | ((::getpid() % 16384u) * 4);
        auto format = [](std::uint32_t address) {
            in_addr in{htonl(address)};
            char text[INET_ADDRSTRLEN];
            ::inet_ntop(AF_INET, &in, text, sizeof(text));
            return std::string(text);
        };
        outside_cidr_ = format(base) + "/30";
        outside_host_address_ = format(base + 1);
        outside_address_ = format(base + 2);
        outside_link_ = "hnt" + pid_text();
        outside_ns_ = "hnt-out-" + pid_text();
        sh("ip netns add " + outside_ns_);
        std::string on_host =
            "link add " + outside_link_ + " type veth peer name eth0 netns " + outside_ns_ + "\n";
        on_host += "addr add " + outside_host_address_ + "/30 dev " + outside_link_ + "\n";
        on_host += "link set " + outside_link_ + " up\n";
        ip_batch("", on_host);
        std::string inside = "link set lo up\n";
        inside += "addr add " + outside_address_ + "/30 dev eth0\n";
        inside += "link set eth0 up\n";
        ip_batch(outside_ns_, inside);
        outside_fd_ = open_netns(outside_ns_);
    }
    static void TearDownTestSuite() {
        std::error_code ec;
        for (const auto& entry : fs::directory_iterator(test_runtime_root(), ec)) {
            fs::remove(fs::path(RuntimeDir::kHostRegistry) / entry.path().filename(), ec);
        }
        fs::remove_all(test_runtime_root(), ec);
        if (outside_fd_ >= 0) {
            ::close(outside_fd_);
            outside_fd_ = -1;
        }
        if (!outside_ns_.empty()) {
            run({"ip", "link", "del", outside_link_});
            run({"ip", "netns", "del", outside_ns_});
        }
    }

    void SetUp() override {
        if (::geteuid() != 0) {
            GTEST_SKIP() << "needs root (network namespaces, nftables)";
        }
        // Safety: the outside address must be routed to our own outside namespace, never off
        // the machine, before any test sends it a packet.
        std::string route = sh("ip -o route get " + outside_address_);
        ASSERT_NE(route.find("dev " + outside_link_), std::string::npos) << route;
    }

    static std::string read_file(const fs::path& path) {
        std::ifstream in(path);
        std::string value;
        in >> value;
        return value;
    }

    HostNetworkConfig host_config() const { return {.uplinks = {outside_link_}}; }

    VmNetwork create(const NetworkPolicy& policy = {}) {
        return VmNetwork::create(next_vm_id(), policy, host_config());
    }

    static inline std::string ip_forward_before_;
    static inline std::string outside_cidr_;
    static inline std::string outside_address_;       // the outside namespace's
    static inline std::string outside_host_address_;  // the host's, on the link to it
    static inline std::string outside_link_;
    static inline std::string outside_ns_;
    static inline int outside_fd_ = -1;
};

TEST_F(NetworkTest, CreatesNamespaceTapAndHostLink) {
    VmNetwork net = create();
    EXPECT_TRUE(netns_exists(net.netns_name()));
    EXPECT_EQ(net.netns_name(), "holt-" + net.vm_id());
    EXPECT_GE(net.netns_fd(), 0);
    EXPECT_EQ(net.host_link().rfind("hv-", 0), 0u);
    EXPECT_LE(net.host_link().size(), 15u);
    EXPECT_TRUE(link_exists(net.host_link()));
    EXPECT_TRUE(host_table_exists());

    std::string inside = sh("ip -n " + net.netns_name() + " -o addr show");
    EXPECT_NE(inside.find("tap0    inet 10.200.0.1/30"), std::string::npos) << inside;
    EXPECT_NE(inside.find("veth0    inet " + net.namespace_link_address() + "/30"),
              std::string::npos)
        << inside;
    std::string tap = sh("ip -n " + net.netns_name() + " -d link show tap0");
    EXPECT_NE(tap.find("tun type tap"), std::string::npos) << tap;
    EXPECT_NE(tap.find("link/ether 02:68:6f:6c:74:01"), std::string::npos) << tap;
    std::string route = sh("ip -n " + net.netns_name() + " route show default");
    EXPECT_NE(route.find("via " + net.host_link_address()), std::string::npos) << route;
    std::string alias = sh("ip -o link show " + net.host_link());
    EXPECT_NE(alias.find("alias holt:" + net.vm_id()), std::string::npos) << alias;
}

TEST_F(NetworkTest, ConnectTcpReachesAServerOnTheGuestAndDataRoundTrips) {
    VmNetwork net = create();
    StandInGuest guest(net);
    Server server(guest.netns_fd(), kGuestAddress, 8080, "guest");

    int fd = net.connect_tcp(8080, 1s);
    EXPECT_EQ(read_line(fd), "guest 10.200.0.1\n");
    ASSERT_EQ(::write(fd, "ping", 4), 4);
    EXPECT_EQ(read_all(fd, 1s), "ping");
    ::close(fd);
}

TEST_F(NetworkTest, ConnectTcpNamesTheVmAndPortWhenItFails) {
    VmNetwork net = create();
    StandInGuest guest(net);
    try {
        ::close(net.connect_tcp(8081, 1s));
        FAIL() << "connected to a closed port";
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()),
                  "connect to " + net.vm_id() + " port 8081: Connection refused");
    }

    sh("ip -n " + guest.name() + " link set eth0 down");
    try {
        ::close(net.connect_tcp(8080, 200ms));
        FAIL() << "connected to a guest that is down";
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()),
                  "connect to " + net.vm_id() + " port 8080: timed out after 200ms");
    }
}

TEST_F(NetworkTest, TwoVmsShareTheGuestAddressAndConnectTcpReachesTheRightOne) {
    VmNetwork first = create();
    VmNetwork second = create();
    EXPECT_NE(first.host_link(), second.host_link());
    EXPECT_NE(first.host_link_address(), second.host_link_address());
    StandInGuest first_guest(first);
    StandInGuest second_guest(second);
    Server first_server(first_guest.netns_fd(), kGuestAddress, 8080, "first");
    Server second_server(second_guest.netns_fd(), kGuestAddress, 8080, "second");

    for (int round = 0; round < 3; ++round) {
        int fd = second.connect_tcp(8080, 1s);
        EXPECT_EQ(read_line(fd), "second 10.200.0.1\n");
        ::close(fd);
        fd = first.connect_tcp(8080, 1s);
        EXPECT_EQ(read_line(fd), "first 10.200.0.1\n");
        ::close(fd);
    }
}

TEST_F(NetworkTest, OpenTcpSocketGivesANonBlockingSocketInsideTheNamespace) {
    VmNetwork net = create();
    StandInGuest guest(net);
    Server server(guest.netns_fd(), kGuestAddress, 8080, "guest");

    int fd = net.open_tcp_socket();
    EXPECT_TRUE(::fcntl(fd, F_GETFL) & O_NONBLOCK);
    sockaddr_in sa = socket_address(kGuestAddress, 8080);
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
    EXPECT_TRUE(rc == 0 || errno == EINPROGRESS);
    pollfd pfd{fd, POLLOUT, 0};
    ASSERT_EQ(::poll(&pfd, 1, 1000), 1);
    EXPECT_EQ(read_line(fd), "guest 10.200.0.1\n");
    ::close(fd);
}

TEST_F(NetworkTest, EgressIsDeniedByDefault) {
    VmNetwork net = create();
    StandInGuest guest(net);
    Server outside(outside_fd_, outside_address_, 9000, "outside");

    Attempt attempt = try_connect(guest.netns_fd(), outside_address_, 9000);
    // Rejected with a reset (a dropped packet would time out instead).
    EXPECT_EQ(attempt.error, ECONNREFUSED) << std::strerror(attempt.error);
    EXPECT_EQ(outside.connections(), 0);
    // The host does not forward for it.
    EXPECT_EQ(read_file("/proc/sys/net/ipv4/conf/" + net.host_link() + "/forwarding"), "0");
}

TEST_F(NetworkTest, EgressToAnAllowedCidrIsForwardedAndMasqueraded) {
    VmNetwork net = create({.allow_egress_cidrs = {outside_address_ + "/32"}});
    StandInGuest guest(net);
    Server outside(outside_fd_, outside_address_, 9000, "outside");
    Server other_port(outside_fd_, outside_address_, 9001, "outside");

    Attempt attempt = try_connect(guest.netns_fd(), outside_address_, 9000);
    EXPECT_EQ(attempt.error, 0) << std::strerror(attempt.error);
    // The outside sees the host's address, as the internet would see the host's public one.
    EXPECT_EQ(attempt.greeting, "outside " + outside_host_address_ + "\n");
    EXPECT_EQ(outside.connections(), 1);
    // Forwarding was turned on for this VM's link and the uplink only, never host-wide.
    EXPECT_EQ(read_file("/proc/sys/net/ipv4/conf/" + net.host_link() + "/forwarding"), "1");
    EXPECT_EQ(read_file("/proc/sys/net/ipv4/conf/" + outside_link_ + "/forwarding"), "1");
    EXPECT_EQ(read_file("/proc/sys/net/ipv4/ip_forward"), ip_forward_before_);

    // Another address of the same network is not in the policy.
    Attempt denied = try_connect(guest.netns_fd(), outside_host_address_, 9000);
    EXPECT_EQ(denied.error, ECONNREFUSED) << std::strerror(denied.error);
}

TEST_F(NetworkTest, AVmWithoutEgressStaysDeniedBesideOneWithEgress) {
    VmNetwork open = create({.allow_egress_cidrs = {outside_cidr_}});
    VmNetwork closed = create();
    StandInGuest open_guest(open);
    StandInGuest closed_guest(closed);
    Server outside(outside_fd_, outside_address_, 9000, "outside");

    EXPECT_EQ(try_connect(open_guest.netns_fd(), outside_address_, 9000).error, 0);
    EXPECT_EQ(try_connect(closed_guest.netns_fd(), outside_address_, 9000).error, ECONNREFUSED);
    EXPECT_EQ(outside.connections(), 1);
}

TEST_F(NetworkTest, GuestCannotReachTheHostEvenWhenItsPolicyCoversHostAddresses) {
    // The policy covers the outside network (which includes a host address) and the
    // whole link pool; the host and the namespace must stay closed regardless.
    VmNetwork net = create({.allow_egress_cidrs = {outside_cidr_, "10.201.0.0/16"}});
    StandInGuest guest(net);
    Server host_on_link(-1, net.host_link_address(), 9100, "host");
    Server host_on_uplink(-1, outside_host_address_, 9100, "host");
    Server in_namespace(net.netns_fd(), "0.0.0.0", 9101, "namespace");
    Server outside(outside_fd_, outside_address_, 9000, "outside");

    // The path itself works: the outside answers.
    EXPECT_EQ(try_connect(guest.netns_fd(), outside_address_, 9000).error, 0);

    EXPECT_NE(try_connect(guest.netns_fd(), net.host_link_address(), 9100, 300ms).error, 0);
    EXPECT_NE(try_connect(guest.netns_fd(), outside_host_address_, 9100, 300ms).error, 0);
    EXPECT_NE(try_connect(guest.netns_fd(), kGuestGateway, 9101, 300ms).error, 0);
    EXPECT_NE(try_connect(guest.netns_fd(), net.namespace_link_address(), 9101, 300ms).error, 0);
    EXPECT_EQ(host_on_link.connections(), 0);
    EXPECT_EQ(host_on_uplink.connections(), 0);
    EXPECT_EQ(in_namespace.connections(), 0);
}

TEST_F(NetworkTest, GuestCannotReachAnotherVm) {
    VmNetwork net = create({.allow_egress_cidrs = {"10.201.0.0/16", outside_cidr_}});
    VmNetwork other = create();
    StandInGuest guest(net);
    StandInGuest other_guest(other);
    Server other_namespace(other.netns_fd(), "0.0.0.0", 9101, "other namespace");
    Server other_vm(other_guest.netns_fd(), kGuestAddress, 8080, "other guest");

    EXPECT_NE(try_connect(guest.netns_fd(), other.namespace_link_address(), 9101, 300ms).error, 0);
    EXPECT_NE(try_connect(guest.netns_fd(), other.host_link_address(), 9101, 300ms).error, 0);
    EXPECT_EQ(other_namespace.connections(), 0);
    // The guest address is its own, never the other VM's.
    EXPECT_NE(try_connect(guest.netns_fd(), kGuestAddress, 8080, 300ms).error, 0);
    EXPECT_EQ(other_vm.connections(), 0);
    // While the host still reaches the other guest.
    int fd = other.connect_tcp(8080, 1s);
    EXPECT_EQ(read_line(fd), "other guest 10.200.0.1\n");
    ::close(fd);
}

TEST_F(NetworkTest, DestroyingTheLastVmRemovesEverythingAtOnce) {
    if (any_host_vm_link()) {
        GTEST_SKIP() << "another Holt process on this host has VM networks";
    }
    std::string name;
    std::string link;
    {
        VmNetwork net = create({.allow_egress_cidrs = {outside_address_}});
        name = net.netns_name();
        link = net.host_link();
        ASSERT_TRUE(netns_exists(name));
        ASSERT_TRUE(link_exists(link));
        ASSERT_TRUE(host_table_exists());
        ASSERT_EQ(read_file("/proc/sys/net/ipv4/conf/" + outside_link_ + "/forwarding"), "1");
    }
    EXPECT_FALSE(netns_exists(name));
    EXPECT_FALSE(link_exists(link));
    EXPECT_FALSE(host_table_exists());
    EXPECT_EQ(read_file("/proc/sys/net/ipv4/conf/" + outside_link_ + "/forwarding"), "0");
    EXPECT_EQ(read_file("/proc/sys/net/ipv4/ip_forward"), ip_forward_before_);
}

TEST_F(NetworkTest, DestroyingOneVmAmongOthersRemovesItsLinkSoonAfter) {
    VmNetwork other = create();
    std::string name;
    std::string link;
    {
        VmNetwork net = create();
        name = net.netns_name();
        link = net.host_link();
    }
    // The namespace is gone at once; the kernel removes the veth pair with it in the background.
    EXPECT_FALSE(netns_exists(name));
    auto deadline = Clock::now() + 3s;
    while (link_exists(link) && Clock::now() < deadline) {
        std::this_thread::sleep_for(20ms);
    }
    EXPECT_FALSE(link_exists(link));
    EXPECT_TRUE(host_table_exists());
    EXPECT_TRUE(link_exists(other.host_link()));
}

TEST_F(NetworkTest, MovingTransfersOwnership) {
    VmNetwork first = create();
    std::string name = first.netns_name();
    VmNetwork moved = std::move(first);
    EXPECT_TRUE(netns_exists(name));
    VmNetwork other = create();
    std::string other_name = other.netns_name();
    other = std::move(moved);
    EXPECT_FALSE(netns_exists(other_name));
    EXPECT_TRUE(netns_exists(name));
}

TEST_F(NetworkTest, SweepRemovesTheNetworkOfAVmThatIsGone) {
    // A child creates a network and dies without destroying it, as a crashed engine would.
    std::string id = next_vm_id();
    HostNetworkConfig config = host_config();
    pid_t child = ::fork();
    if (child == 0) {
        try {
            VmNetwork net = VmNetwork::create(id, {}, config);
            ::_exit(0);  // skips the destructor
        } catch (...) {
            ::_exit(1);
        }
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ASSERT_TRUE(netns_exists("holt-" + id));

    VmNetwork alive = create();
    auto removed =
        VmNetwork::sweep_stale([&](const std::string& vm) { return vm != id; }, host_config());
    EXPECT_EQ(removed, std::vector<std::string>{id});
    EXPECT_FALSE(netns_exists("holt-" + id));
    std::string links = sh("ip -o link show");
    EXPECT_EQ(links.find("alias holt:" + id), std::string::npos) << links;
    // A live VM's network is left alone.
    EXPECT_TRUE(netns_exists(alive.netns_name()));
    EXPECT_TRUE(link_exists(alive.host_link()));
}

TEST_F(NetworkTest, ManyThreadsCreateAndDestroyNetworksAtOnce) {
    std::vector<std::thread> threads;
    std::mutex mutex;
    std::vector<std::string> errors;
    std::set<std::string> links;
    for (int t = 0; t < 6; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 5; ++i) {
                try {
                    VmNetwork net = create();
                    std::lock_guard lock(mutex);
                    links.insert(net.host_link());
                } catch (const std::exception& e) {
                    std::lock_guard lock(mutex);
                    errors.push_back(e.what());
                }
            }
        });
    }
    for (auto& thread : threads) {
        thread.join();
    }
    EXPECT_TRUE(errors.empty()) << errors.front();
    EXPECT_GE(links.size(), 6u);
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/run/netns", ec)) {
        EXPECT_NE(entry.path().filename().string().rfind("holt-" + kTestIdPrefix + pid_text(), 0),
                  0u)
            << entry.path();
    }
}

// Needs no root: arguments are checked before anything is created.
TEST(VmNetworkArguments, BadIdsAndPoliciesAreRejectedBeforeAnythingIsCreated) {
    EXPECT_THROW(VmNetwork::create("", {}), Error);
    EXPECT_THROW(VmNetwork::create("../etc", {}), Error);
    EXPECT_THROW(VmNetwork::create("-x", {}), Error);
    EXPECT_THROW(VmNetwork::create(std::string(65, 'a'), {}), Error);
    std::string id = next_vm_id();
    try {
        VmNetwork::create(id, {.allow_egress_cidrs = {"10.0.0.0/33"}});
        FAIL() << "accepted a bad CIDR";
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()),
                  "create network for " + id + ": invalid IPv4 CIDR \"10.0.0.0/33\"");
    }
    EXPECT_THROW(VmNetwork::create(id, {.allow_egress_cidrs = {"fd00::/8"}}), Error);
    EXPECT_THROW(VmNetwork::create(id, {.allow_egress_cidrs = {"10.1.2"}}), Error);
    EXPECT_THROW(VmNetwork::create(id, {}, {.link_pool = "10.201.0.0/31"}), Error);
    EXPECT_THROW(VmNetwork::create(id, {}, {.uplinks = {"eth0\" accept"}}), Error);
    EXPECT_THROW(VmNetwork::create(id, {}, {.uplinks = {"../all"}}), Error);
    EXPECT_FALSE(netns_exists("holt-" + id));
}

TEST(VmNetworkArguments, QemuArgumentsAndKernelParameterAreTheSameForEveryVm) {
    EXPECT_EQ(VmNetwork::qemu_args(),
              (std::vector<std::string>{
                  "-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no", "-device",
                  "virtio-net-device,netdev=net0,mac=02:68:6f:6c:74:02"}));
    EXPECT_EQ(VmNetwork::kernel_arg(), "holt.net=10.200.0.2/30,10.200.0.1");
}

TEST_F(NetworkTest, ASecondNetworkForTheSameVmFailsAndLeavesTheFirstIntact) {
    std::string id = next_vm_id();
    VmNetwork net = VmNetwork::create(id, {}, host_config());
    try {
        VmNetwork::create(id, {}, host_config());
        FAIL() << "created a second network for " << id;
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()),
                  "create network for " + id + ": create /run/netns/holt-" + id + ": File exists");
    }
    EXPECT_TRUE(netns_exists(net.netns_name()));
    EXPECT_TRUE(link_exists(net.host_link()));
}

// Create and destroy are on the path of every sandbox create; this prints their medians.
TEST_F(NetworkTest, NetworksCanBeMadeAndRemovedAgainAndAgainBesideOneThatStays) {
    VmNetwork keep = create();  // so the host table stays, as on a host with running VMs
    for (int i = 0; i < 20; ++i) {
        std::optional<VmNetwork> net = create();
        std::string name = net->netns_name();
        net.reset();
        EXPECT_FALSE(netns_exists(name)) << "round " << i;
    }
    StandInGuest guest(keep);
    Server server(guest.netns_fd(), kGuestAddress, 8080, "guest");
    for (int i = 0; i < 20; ++i) {
        int fd = keep.connect_tcp(8080, 1s);
        EXPECT_EQ(read_line(fd), "guest 10.200.0.1\n");
        ::close(fd);
    }
}

}  // namespace
}  // namespace holt::vm
