#include "holt/vm/network.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/if_tun.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <netinet/in.h>
#include <nftables/libnftables.h>
#include <poll.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "holt/common/error.hpp"
#include "holt/common/log.hpp"
#include "holt/common/unique_fd.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

const fs::path kNetnsDir = "/run/netns";
constexpr const char* kNetnsPrefix = "holt-";
constexpr const char* kHostLinkPrefix = "hv-";
constexpr const char* kNamespaceLink = "veth0";
// The alias on a host link names the VM it serves, so a sweep can match links to VMs. A
// destroyed VM's link keeps the dying alias until the kernel, tearing down the namespace in the
// background, removes the pair (some tens of milliseconds).
constexpr const char* kAliasPrefix = "holt:";
constexpr const char* kDyingAliasPrefix = "holt-gone:";
// Addresses a guest never reaches, whatever its policy allows (besides the link pool and its own
// /30): "this network", loopback, link-local (cloud metadata services live there) and
// multicast/reserved/broadcast.
constexpr const char* kNeverEgress = "0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3";

std::shared_ptr<spdlog::logger> logger() {
    static auto log = holt::log::get("net");
    return log;
}

long elapsed_us(Clock::time_point since) {
    return static_cast<long>(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - since).count());
}

// An owned file descriptor.
// ---- IPv4 addresses -------------------------------------------------------------------------

struct Ipv4Cidr {
    std::uint32_t network = 0;  // host byte order, host bits cleared
    int prefix = 0;
};

std::string format_ipv4(std::uint32_t address) {
    in_addr in{htonl(address)};
    char text[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &in, text, sizeof(text));
    return text;
}

std::string format_cidr(const Ipv4Cidr& cidr) {
    return format_ipv4(cidr.network) + "/" + std::to_string(cidr.prefix);
}

bool is_digit(char c) {
    return std::isdigit(static_cast<unsigned char>(c)) != 0;
}

// Parses "a.b.c.d/n" (a bare address means /32) and clears the host bits.
Ipv4Cidr parse_cidr(const std::string& text) {
    auto invalid = [&] { return Error("invalid IPv4 CIDR \"" + text + "\""); };
    std::string address = text;
    int prefix = 32;
    if (auto slash = text.find('/'); slash != std::string::npos) {
        address = text.substr(0, slash);
        std::string digits = text.substr(slash + 1);
        if (digits.empty() || digits.size() > 2 ||
            !std::all_of(digits.begin(), digits.end(), is_digit)) {
            throw invalid();
        }
        prefix = std::stoi(digits);
        if (prefix > 32) {
            throw invalid();
        }
    }
    in_addr in{};
    if (::inet_pton(AF_INET, address.c_str(), &in) != 1) {
        throw invalid();
    }
    std::uint32_t mask = prefix == 0 ? 0 : ~std::uint32_t{0} << (32 - prefix);
    return {ntohl(in.s_addr) & mask, prefix};
}

// The /30 of slot `slot` in `pool`: .1 is the host's end, .2 the namespace's.
std::uint32_t slot_base(const Ipv4Cidr& pool, unsigned slot) {
    return pool.network + 4 * slot;
}

unsigned slot_count(const Ipv4Cidr& pool) {
    return 1u << (30 - pool.prefix);
}

void check_vm_id(const std::string& id) {
    bool ok = !id.empty() && id.size() <= 64 && std::isalnum(static_cast<unsigned char>(id[0]));
    for (char c : id) {
        ok =
            ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.');
    }
    if (!ok) {
        throw Error("invalid VM id \"" + id + "\" (want 1-64 letters, digits, '-', '_', '.')");
    }
}

// The kernel's rule for interface names; they also end up in nft rules and /proc paths.
void check_link_name(const std::string& name) {
    bool ok = !name.empty() && name.size() < IFNAMSIZ && name != "." && name != "..";
    for (char c : name) {
        ok = ok && c != '/' && c != ':' && c != '"' && c != '\\' &&
             !std::isspace(static_cast<unsigned char>(c));
    }
    if (!ok) {
        throw Error("invalid uplink interface name \"" + name + "\"");
    }
}

// ---- Netlink --------------------------------------------------------------------------------

// A netlink socket in the network namespace of the thread that opens it. Requests made through
// it act on that namespace from any thread.
class Netlink {
  public:
    explicit Netlink(int bus) : socket_(::mnl_socket_open2(bus, SOCK_CLOEXEC)) {
        if (socket_ == nullptr) {
            throw_errno("open netlink socket");
        }
        if (::mnl_socket_bind(socket_, 0, MNL_SOCKET_AUTOPID) < 0) {
            int err = errno;
            ::mnl_socket_close(socket_);
            throw Error("bind netlink socket: " + errno_text(err));
        }
        portid_ = ::mnl_socket_get_portid(socket_);
    }
    ~Netlink() { ::mnl_socket_close(socket_); }
    Netlink(const Netlink&) = delete;
    Netlink& operator=(const Netlink&) = delete;

    // A fresh request message in this socket's buffer.
    nlmsghdr* start(std::uint16_t type, std::uint16_t flags) {
        nlmsghdr* nlh = ::mnl_nlmsg_put_header(buffer_);
        nlh->nlmsg_type = type;
        nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        nlh->nlmsg_seq = ++seq_;
        return nlh;
    }

    // Sends `nlh` and reads replies until its acknowledgement (or the end of a dump), passing
    // each reply to `on_reply`. Returns 0 or a negative errno.
    int transact(nlmsghdr* nlh, mnl_cb_t on_reply = nullptr, void* data = nullptr) {
        if (::mnl_socket_sendto(socket_, nlh, nlh->nlmsg_len) < 0) {
            return -errno;
        }
        unsigned seq = nlh->nlmsg_seq;
        for (;;) {
            ssize_t n = ::mnl_socket_recvfrom(socket_, buffer_, sizeof(buffer_));
            if (n < 0) {
                return -errno;
            }
            int rc = ::mnl_cb_run(buffer_, n, seq, portid_, on_reply, data);
            if (rc == MNL_CB_ERROR) {
                int err = errno;
                if (err == EINTR) {
                    skip_rest_of_dump(buffer_, n);
                }
                return -err;
            }
            if (rc == MNL_CB_STOP) {
                return 0;
            }
        }
    }

    // Like transact(), but throws holt::Error("<what>: <errno text>") on failure.
    void run(nlmsghdr* nlh, const std::string& what) {
        if (int rc = transact(nlh); rc < 0) {
            throw Error(what + ": " + errno_text(-rc));
        }
    }

  private:
    // A dump interrupted by concurrent changes (NLM_F_DUMP_INTR) still sends the rest of its
    // messages; reads them up to its end, so that the next request starts on a clean socket.
    void skip_rest_of_dump(const char* received, ssize_t size) {
        for (;;) {
            int len = static_cast<int>(size);
            for (auto* nlh = reinterpret_cast<const nlmsghdr*>(received); ::mnl_nlmsg_ok(nlh, len);
                 nlh = ::mnl_nlmsg_next(nlh, &len)) {
                if (nlh->nlmsg_type == NLMSG_DONE || nlh->nlmsg_type == NLMSG_ERROR) {
                    return;
                }
            }
            size = ::mnl_socket_recvfrom(socket_, buffer_, sizeof(buffer_));
            if (size <= 0) {
                return;
            }
            received = buffer_;
        }
    }

    mnl_socket* socket_;
    unsigned portid_ = 0;
    unsigned seq_ = 0;
    // Large enough for one message of a link dump.
    alignas(nlmsghdr) char buffer_[32768];
};

struct LinkInfo {
    std::string name;
    std::string alias;
};

// rtnetlink requests for links, addresses and routes.
class Rtnl {
  public:
    Rtnl() : nl_(NETLINK_ROUTE) {}

    void create_veth(const std::string& name, const std::string& peer, int peer_netns_fd) {
        nlmsghdr* nlh = nl_.start(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        put_ifinfo(nlh, 0);
        ::mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
        nlattr* linkinfo = ::mnl_attr_nest_start(nlh, IFLA_LINKINFO);
        ::mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
        nlattr* data = ::mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
        nlattr* peer_info = ::mnl_attr_nest_start(nlh, VETH_INFO_PEER);
        put_ifinfo(nlh, 0);
        ::mnl_attr_put_strz(nlh, IFLA_IFNAME, peer.c_str());
        ::mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, static_cast<std::uint32_t>(peer_netns_fd));
        ::mnl_attr_nest_end(nlh, peer_info);
        ::mnl_attr_nest_end(nlh, data);
        ::mnl_attr_nest_end(nlh, linkinfo);
        nl_.run(nlh, "create veth pair " + name);
    }

    void set_alias(const std::string& name, const std::string& alias) {
        nlmsghdr* nlh = nl_.start(RTM_NEWLINK, 0);
        put_ifinfo(nlh, 0);
        ::mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
        ::mnl_attr_put_strz(nlh, IFLA_IFALIAS, alias.c_str());
        nl_.run(nlh, "set alias of " + name);
    }

    void set_mac(const std::string& name, const char* mac) {
        unsigned char bytes[6];
        if (std::sscanf(mac, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &bytes[0], &bytes[1], &bytes[2],
                        &bytes[3], &bytes[4], &bytes[5]) != 6) {
            throw Error(std::string("invalid MAC address ") + mac);
        }
        nlmsghdr* nlh = nl_.start(RTM_NEWLINK, 0);
        put_ifinfo(nlh, 0);
        ::mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
        ::mnl_attr_put(nlh, IFLA_ADDRESS, sizeof(bytes), bytes);
        nl_.run(nlh, "set MAC address of " + name);
    }

    void set_up(const std::string& name) {
        nlmsghdr* nlh = nl_.start(RTM_NEWLINK, 0);
        auto* ifi = put_ifinfo(nlh, 0);
        ifi->ifi_flags = IFF_UP;
        ifi->ifi_change = IFF_UP;
        ::mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
        nl_.run(nlh, "bring up " + name);
    }

    void add_address(const std::string& name, std::uint32_t address, int prefix) {
        unsigned index = ::if_nametoindex(name.c_str());
        if (index == 0) {
            throw_errno("add address to " + name);
        }
        nlmsghdr* nlh = nl_.start(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        auto* ifa = static_cast<ifaddrmsg*>(::mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
        ifa->ifa_family = AF_INET;
        ifa->ifa_prefixlen = static_cast<unsigned char>(prefix);
        ifa->ifa_scope = RT_SCOPE_UNIVERSE;
        ifa->ifa_index = index;
        ::mnl_attr_put_u32(nlh, IFA_LOCAL, htonl(address));
        ::mnl_attr_put_u32(nlh, IFA_ADDRESS, htonl(address));
        nl_.run(nlh, "add address " + format_ipv4(address) + "/" + std::to_string(prefix) + " to " +
                         name);
    }

    void add_default_route(std::uint32_t gateway) {
        nlmsghdr* nlh = nl_.start(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        auto* rtm = static_cast<rtmsg*>(::mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
        rtm->rtm_family = AF_INET;
        rtm->rtm_table = RT_TABLE_MAIN;
        rtm->rtm_protocol = RTPROT_STATIC;
        rtm->rtm_scope = RT_SCOPE_UNIVERSE;
        rtm->rtm_type = RTN_UNICAST;
        ::mnl_attr_put_u32(nlh, RTA_GATEWAY, htonl(gateway));
        nl_.run(nlh, "add default route via " + format_ipv4(gateway));
    }

    // Deletes a link (both ends, for a veth pair). False if there was none of that name.
    bool delete_link(const std::string& name) {
        nlmsghdr* nlh = nl_.start(RTM_DELLINK, 0);
        put_ifinfo(nlh, 0);
        ::mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
        int rc = nl_.transact(nlh);
        if (rc == -ENODEV) {
            return false;
        }
        if (rc < 0) {
            throw Error("delete link " + name + ": " + errno_text(-rc));
        }
        return true;
    }

    std::vector<LinkInfo> links() {
        // A dump that links changed under (namespaces of destroyed VMs going away) ends with
        // EINTR (NLM_F_DUMP_INTR) and is simply asked for again.
        for (int attempt = 1;; ++attempt) {
            nlmsghdr* nlh = nl_.start(RTM_GETLINK, NLM_F_DUMP);
            put_ifinfo(nlh, 0);
            std::vector<LinkInfo> result;
            int rc = nl_.transact(nlh, &Rtnl::on_link, &result);
            if (rc == 0) {
                return result;
            }
            if (rc != -EINTR || attempt == 20) {
                throw Error("list links: " + errno_text(-rc));
            }
        }
    }

  private:
    static ifinfomsg* put_ifinfo(nlmsghdr* nlh, int index) {
        auto* ifi = static_cast<ifinfomsg*>(::mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
        ifi->ifi_family = AF_UNSPEC;
        ifi->ifi_index = index;
        return ifi;
    }

    static int on_link(const nlmsghdr* nlh, void* data) {
        LinkInfo link;
        auto on_attr = [](const nlattr* attr, void* out) {
            auto* info = static_cast<LinkInfo*>(out);
            if (::mnl_attr_type_valid(attr, IFLA_MAX) < 0) {
                return MNL_CB_OK;
            }
            if (::mnl_attr_get_type(attr) == IFLA_IFNAME) {
                info->name = ::mnl_attr_get_str(attr);
            } else if (::mnl_attr_get_type(attr) == IFLA_IFALIAS) {
                info->alias = ::mnl_attr_get_str(attr);
            }
            return MNL_CB_OK;
        };
        ::mnl_attr_parse(nlh, sizeof(ifinfomsg), on_attr, &link);
        static_cast<std::vector<LinkInfo>*>(data)->push_back(std::move(link));
        return MNL_CB_OK;
    }

    Netlink nl_;
};

// True if table `inet <name>` exists in the calling thread's namespace (one netlink round trip,
// far cheaper than asking libnftables).
bool nft_table_exists(const std::string& name) {
    Netlink nl(NETLINK_NETFILTER);
    nlmsghdr* nlh = nl.start((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, 0);
    auto* nfg = static_cast<nfgenmsg*>(::mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
    nfg->nfgen_family = NFPROTO_INET;
    nfg->version = NFNETLINK_V0;
    ::mnl_attr_put_strz(nlh, NFTA_TABLE_NAME, name.c_str());
    int rc = nl.transact(nlh);
    if (rc == -ENOENT) {
        return false;
    }
    if (rc < 0) {
        throw Error("look up nftables table " + name + ": " + errno_text(-rc));
    }
    return true;
}

// Runs nftables commands (nft's own syntax) in the calling thread's network namespace.
void run_nft(const std::string& commands, const std::string& what) {
    // libnftables keeps some state outside its context objects; one caller at a time.
    static std::mutex mutex;
    std::lock_guard lock(mutex);
    std::unique_ptr<nft_ctx, decltype(&::nft_ctx_free)> ctx(::nft_ctx_new(NFT_CTX_DEFAULT),
                                                            &::nft_ctx_free);
    if (!ctx) {
        throw Error(what + ": cannot create an nftables context");
    }
    ::nft_ctx_buffer_output(ctx.get());
    ::nft_ctx_buffer_error(ctx.get());
    if (::nft_run_cmd_from_buffer(ctx.get(), commands.c_str()) != 0) {
        std::string detail = ::nft_ctx_get_error_buffer(ctx.get());
        while (!detail.empty() && detail.back() == '\n') {
            detail.pop_back();
        }
        throw Error(what + ": " + detail);
    }
}

// ---- Namespaces, sysctls, tap ---------------------------------------------------------------

// Runs `fn` on a short-lived thread that has entered the network namespace `netns_fd`, and
// returns what it returns (or rethrows what it throws). Sockets it opens stay in that namespace.
template <typename Fn>
auto in_namespace(int netns_fd, Fn&& fn) {
    std::packaged_task<std::invoke_result_t<Fn>()> task([&] {
        if (::setns(netns_fd, CLONE_NEWNET) != 0) {
            throw_errno("enter network namespace");
        }
        return fn();
    });
    auto result = task.get_future();
    std::thread(std::move(task)).join();
    return result.get();
}

// Makes /run/netns a shared mount point, as `ip netns add` does, so namespace mounts propagate
// to every mount namespace and unmounting one frees it everywhere.
void prepare_netns_dir() {
    static std::mutex mutex;
    static bool prepared = false;
    std::lock_guard lock(mutex);
    if (prepared) {
        return;
    }
    if (::mkdir(kNetnsDir.c_str(), 0755) != 0 && errno != EEXIST) {
        throw_errno("create " + kNetnsDir.string());
    }
    if (::mount("", kNetnsDir.c_str(), "none", MS_SHARED | MS_REC, nullptr) != 0) {
        if (errno != EINVAL) {
            throw_errno("make " + kNetnsDir.string() + " a shared mount");
        }
        if (::mount(kNetnsDir.c_str(), kNetnsDir.c_str(), "none", MS_BIND | MS_REC, nullptr) != 0 ||
            ::mount("", kNetnsDir.c_str(), "none", MS_SHARED | MS_REC, nullptr) != 0) {
            throw_errno("make " + kNetnsDir.string() + " a shared mount");
        }
    }
    prepared = true;
}

void write_sysctl(const fs::path& path, const char* value);

// On the calling thread: a new network namespace, mounted on `path` (an empty file), with IPv6
// off and IPv4 forwarding on (the rules decide what passes). Returns its descriptor. The thread
// stays in the namespace.
int create_namespace(const fs::path& path) {
    if (::unshare(CLONE_NEWNET) != 0) {
        throw_errno("create network namespace");
    }
    if (::mount("/proc/thread-self/ns/net", path.c_str(), "none", MS_BIND, nullptr) != 0) {
        throw_errno("mount network namespace on " + path.string());
    }
    UniqueFd ns(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (ns.get() < 0) {
        throw_errno("open " + path.string());
    }
    // Before any link exists, so that every link inherits them.
    // TODO(net): IPv6 for guests (a ULA plan like the IPv4 one, NAT66 or routed prefixes).
    if (fs::exists("/proc/sys/net/ipv6/conf/default/disable_ipv6")) {
        write_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
        write_sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    }
    write_sysctl("/proc/sys/net/ipv4/conf/all/forwarding", "1");
    return ns.release();
}

void remove_namespace_file(const fs::path& path) {
    ::umount2(path.c_str(), MNT_DETACH);
    ::unlink(path.c_str());
}

void write_sysctl(const fs::path& path, const char* value) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (fd.get() < 0 || ::write(fd.get(), value, std::strlen(value)) < 0) {
        throw_errno("write " + path.string());
    }
}

std::string read_sysctl(const fs::path& path) {
    std::ifstream in(path);
    std::string value;
    in >> value;
    return value;
}

fs::path ipv4_conf(const std::string& link, const char* key) {
    return fs::path("/proc/sys/net/ipv4/conf") / link / key;
}

// Creates a persistent tap device in the calling thread's namespace; QEMU attaches to it by name.
// TODO(net): give it an owner (TUNSETOWNER) once QEMU runs unprivileged; root's QEMU needs none.
void create_tap(const char* name) {
    UniqueFd fd(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
    if (fd.get() < 0) {
        throw_errno("open /dev/net/tun");
    }
    ifreq ifr{};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    std::strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (::ioctl(fd.get(), TUNSETIFF, &ifr) != 0) {
        throw_errno(std::string("create tap ") + name);
    }
    if (::ioctl(fd.get(), TUNSETPERSIST, 1) != 0) {
        throw_errno(std::string("make tap ") + name + " persistent");
    }
}

// ---- Rule sets ------------------------------------------------------------------------------

// The rules inside one VM's namespace: nothing from the guest except replies and allowed egress,
// which leaves masqueraded through the veth; nothing into the namespace itself but replies. At
// most 100 rejections a second go back to the guest; beyond that, denied packets are dropped.
constexpr const char* kNamespaceRules = R"(
table inet holt {
  set egress {
    type ipv4_addr; flags interval; auto-merge
  }
  chain input {
    type filter hook input priority filter; policy drop;
    iif "lo" accept
    ct state established,related accept
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname $guest_tap jump from_guest
  }
  chain from_guest {
    ip saddr != $guest drop
    ip daddr $unreachable goto deny
    oifname $veth ip daddr @egress accept
    goto deny
  }
  chain deny {
    limit rate over 100/second burst 50 packets drop
    meta l4proto tcp reject with tcp reset
    reject with icmpx type admin-prohibited
  }
  chain output {
    type filter hook output priority filter; policy accept;
    oifname $veth ct state related accept
    oifname $veth drop
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname $veth masquerade
  }
}
)";

// The host's table, shared by every VM: nothing from a VM to the host or to another VM, nothing
// into a VM but replies, and forwarding to uplinks only. It uses no connection tracking, so a host
// whose VMs have no egress pays nothing for it; kHostEgressRules add that when first needed.
constexpr const char* kHostTable = R"(
add table inet holt
delete table inet holt
table inet holt {
  set uplinks {
    type ifname
  }
  set forward_guard {
    type ifname
  }
  chain forward_egress {
  }
  chain output_egress {
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "hv-*" drop
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "hv-*" oifname @uplinks accept
    iifname "hv-*" drop
    oifname "hv-*" jump forward_egress
    oifname "hv-*" drop
    iifname @forward_guard drop
  }
  chain output {
    type filter hook output priority filter; policy accept;
    oifname "hv-*" jump output_egress
    oifname "hv-*" drop
  }
}
)";

// What the host adds once some VM has egress: replies from uplinks back to VMs, ICMP errors (path
// MTU) to VMs, and masquerading out of the uplinks. Idempotent.
constexpr const char* kHostEgressRules = R"(
flush chain inet holt forward_egress
flush chain inet holt output_egress
add chain inet holt postrouting { type nat hook postrouting priority srcnat; policy accept; }
flush chain inet holt postrouting
add rule inet holt forward_egress iifname @uplinks ct state established,related accept
add rule inet holt output_egress ct state related accept
add rule inet holt postrouting iifname "hv-*" oifname @uplinks masquerade
)";

// "{ a, b }", quoting each item if `quoted`.
std::string nft_set(const std::vector<std::string>& items, bool quoted) {
    std::string set;
    for (const auto& item : items) {
        set += (set.empty() ? "{ " : ", ") + (quoted ? "\"" + item + "\"" : item);
    }
    return set + " }";
}

std::string namespace_rules(const std::vector<Ipv4Cidr>& egress, const Ipv4Cidr& pool) {
    std::vector<std::string> unreachable = {kNeverEgress, format_cidr(pool)};
    unreachable.push_back(format_cidr(
        parse_cidr(std::string(kGuestAddress) + "/" + std::to_string(kGuestPrefixLength))));
    std::string commands =
        std::string("define guest_tap = \"") + kGuestTap + "\"\n" + "define veth = \"" +
        kNamespaceLink + "\"\n" + "define guest = " + kGuestAddress + "\n" +
        "define unreachable = " + nft_set(unreachable, false) + "\n" + kNamespaceRules;
    if (!egress.empty()) {
        std::vector<std::string> cidrs;
        for (const auto& cidr : egress) {
            cidrs.push_back(format_cidr(cidr));
        }
        commands += "add element inet holt egress " + nft_set(cidrs, false) + "\n";
    }
    return commands;
}

std::string host_table(const std::vector<std::string>& uplinks) {
    std::string commands = kHostTable;
    if (!uplinks.empty()) {
        commands += "add element inet holt uplinks " + nft_set(uplinks, true) + "\n";
    }
    return commands;
}

std::string egress_rules(const std::vector<std::string>& uplinks,
                         const std::vector<std::string>& guarded) {
    std::string commands = kHostEgressRules;
    commands += "add element inet holt uplinks " + nft_set(uplinks, true) + "\n";
    if (!guarded.empty()) {
        commands += "add element inet holt forward_guard " + nft_set(guarded, true) + "\n";
    }
    return commands;
}

// ---- Host-wide state ------------------------------------------------------------------------

// An exclusive lock over the host's `inet holt` table and uplink settings, held by every Holt
// process while it adds or removes a VM's host link.
class HostLock {
  public:
    explicit HostLock(const fs::path& state_dir) {
        std::error_code ec;
        fs::create_directories(state_dir, ec);
        fd_ = UniqueFd(::open((state_dir / "lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
        if (fd_.get() < 0) {
            throw_errno("open " + (state_dir / "lock").string());
        }
        while (::flock(fd_.get(), LOCK_EX) != 0) {
            if (errno != EINTR) {
                throw_errno("lock " + (state_dir / "lock").string());
            }
        }
    }

  private:
    UniqueFd fd_;
};

bool is_host_link(const std::string& name) {
    std::string_view prefix = kHostLinkPrefix;
    return name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
           std::all_of(name.begin() + prefix.size(), name.end(), is_digit);
}

// The VM a host link's alias names ("holt:vm-1" or "holt-gone:vm-1"), or "".
std::string vm_of_alias(const std::string& alias) {
    for (std::string_view prefix : {kAliasPrefix, kDyingAliasPrefix}) {
        if (alias.compare(0, prefix.size(), prefix) == 0) {
            return alias.substr(prefix.size());
        }
    }
    return "";
}

bool is_live_alias(const std::string& alias) {
    return alias.rfind(kAliasPrefix, 0) == 0;
}

fs::path forwarding_marker(const fs::path& state_dir, const std::string& uplink) {
    return state_dir / ("forwarding-on-" + uplink);
}

// The uplinks whose forwarding is off (Holt turns it on once some VM has egress).
std::vector<std::string> uplinks_not_forwarding(const HostNetworkConfig& host) {
    std::vector<std::string> result;
    for (const auto& uplink : host.uplinks) {
        fs::path knob = ipv4_conf(uplink, "forwarding");
        if (!fs::exists(knob)) {
            logger()->warn("uplink {} does not exist: egress through it goes nowhere", uplink);
        } else if (read_sysctl(knob) == "0") {
            result.push_back(uplink);
        }
    }
    return result;
}

// Turns forwarding on for packets arriving on `uplinks`, noting that Holt did. Called under
// HostLock, after the host table guards them.
void turn_on_forwarding(const fs::path& state_dir, const std::vector<std::string>& uplinks) {
    for (const auto& uplink : uplinks) {
        std::ofstream(forwarding_marker(state_dir, uplink)) << "1\n";
        write_sysctl(ipv4_conf(uplink, "forwarding"), "1");
        logger()->info("turned forwarding on for uplink {}", uplink);
    }
}

// Once no live VM link is left: deletes the links of destroyed VMs that the kernel has not removed
// yet, removes the host table, and turns forwarding back off where Holt turned it on. Called under
// HostLock; never throws.
void remove_host_state_if_unused(Rtnl& rtnl, const fs::path& state_dir) {
    try {
        auto links = rtnl.links();
        for (const auto& link : links) {
            if (is_host_link(link.name) && !vm_of_alias(link.alias).empty() &&
                is_live_alias(link.alias)) {
                return;
            }
        }
        // Before the table goes, so no Holt link ever exists without the host's rules.
        for (const auto& link : links) {
            if (is_host_link(link.name)) {
                rtnl.delete_link(link.name);
            }
        }
        bool removed = false;
        if (nft_table_exists("holt")) {
            run_nft("delete table inet holt\n", "delete host table inet holt");
            removed = true;
        }
        std::error_code ec;
        for (const auto& entry : fs::directory_iterator(state_dir, ec)) {
            std::string name = entry.path().filename();
            std::string_view prefix = "forwarding-on-";
            if (name.compare(0, prefix.size(), prefix) != 0) {
                continue;
            }
            fs::path knob = ipv4_conf(name.substr(prefix.size()), "forwarding");
            if (fs::exists(knob)) {
                write_sysctl(knob, "0");
            }
            fs::remove(entry.path(), ec);
            logger()->info("turned forwarding off again on uplink {}", name.substr(prefix.size()));
        }
        if (removed) {
            logger()->info("removed host table inet holt: no VM network left");
        }
    } catch (const std::exception& e) {
        logger()->warn("remove host network state: {}", e.what());
    }
}

// The lowest free slot at or after a hash of the VM id, so slots spread out and a freed one is
// not handed out again at once (stale host conntrack entries then point nowhere).
unsigned pick_slot(const std::vector<LinkInfo>& links, const std::string& vm_id, unsigned slots) {
    std::set<unsigned> used;
    for (const auto& link : links) {
        if (is_host_link(link.name)) {
            used.insert(static_cast<unsigned>(std::stoul(link.name.substr(3))));
        }
    }
    std::uint32_t hash = 2166136261u;  // FNV-1a
    for (char c : vm_id) {
        hash = (hash ^ static_cast<unsigned char>(c)) * 16777619u;
    }
    for (unsigned i = 0; i < slots; ++i) {
        unsigned slot = (hash + i) % slots;
        if (!used.contains(slot)) {
            return slot;
        }
    }
    throw Error("no free link in the pool (" + std::to_string(slots) + " VMs have one)");
}

// Sets up a VM's namespace on a thread of its own: creates and mounts it, then (while the caller
// adds the host's end of the veth pair) lo, tap0 and the rules, and finally, once finish() says
// the veth exists, its namespace end and the default route. Errors surface in netns_fd() or
// finish(); the destructor always lets the thread end and joins it.
class NamespaceWorker {
  public:
    NamespaceWorker(const fs::path& path, std::string rules)
        : thread_([this, path, rules = std::move(rules)] { run(path, rules); }) {}
    ~NamespaceWorker() { join(); }
    NamespaceWorker(const NamespaceWorker&) = delete;
    NamespaceWorker& operator=(const NamespaceWorker&) = delete;

    // The namespace's descriptor, once it exists; the caller owns it.
    int netns_fd() { return created_.get_future().get(); }

    // Tells the thread that the veth pair exists (its /30 starts at `base`) and waits for it.
    void finish(std::uint32_t base) {
        host_ready_.set_value(base);
        signalled_ = true;
        join();
        if (error_) {
            std::rethrow_exception(error_);
        }
    }

  private:
    void run(const fs::path& path, const std::string& rules) {
        try {
            created_.set_value(create_namespace(path));
        } catch (...) {
            created_.set_exception(std::current_exception());
            return;
        }
        try {
            Rtnl rtnl;
            rtnl.set_up("lo");
            create_tap(kGuestTap);
            rtnl.set_mac(kGuestTap, kGatewayMac);
            rtnl.add_address(kGuestTap, parse_cidr(kGuestGateway).network, kGuestPrefixLength);
            rtnl.set_up(kGuestTap);
            run_nft(rules, "install namespace rules");

            std::uint32_t base = host_ready_.get_future().get();
            rtnl.add_address(kNamespaceLink, base + 2, 30);
            rtnl.set_up(kNamespaceLink);
            rtnl.add_default_route(base + 1);
        } catch (...) {
            error_ = std::current_exception();
        }
    }

    void join() {
        if (!signalled_) {
            signalled_ = true;
            host_ready_.set_exception(std::make_exception_ptr(Error("host side failed")));
        }
        if (thread_.joinable()) {
            thread_.join();
        }
    }

    std::promise<int> created_;
    std::promise<std::uint32_t> host_ready_;
    bool signalled_ = false;
    std::exception_ptr error_;
    std::thread thread_;  // last: it starts once everything above exists
};

}  // namespace

// ---- VmNetwork ------------------------------------------------------------------------------

VmNetwork VmNetwork::create(const std::string& vm_id, const NetworkPolicy& policy,
                            const HostNetworkConfig& host) {
    auto started = Clock::now();
    return with_context("create network for " + vm_id, [&] {
        check_vm_id(vm_id);
        Ipv4Cidr pool = parse_cidr(host.link_pool);
        if (pool.prefix > 30) {
            throw Error("link pool " + host.link_pool + " is smaller than one /30");
        }
        for (const auto& uplink : host.uplinks) {
            check_link_name(uplink);
        }
        std::vector<Ipv4Cidr> egress;
        for (const auto& text : policy.allow_egress_cidrs) {
            egress.push_back(parse_cidr(text));
        }

        // From here on, `net`'s destructor removes whatever exists if a step throws.
        VmNetwork net;
        net.vm_id_ = vm_id;
        net.state_dir_ = host.state_dir;
        prepare_netns_dir();
        fs::path path = kNetnsDir / (kNetnsPrefix + vm_id);
        {
            UniqueFd file(::open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0));
            if (file.get() < 0) {
                throw_errno("create " + path.string());
            }
        }
        net.netns_name_ = kNetnsPrefix + vm_id;

        // The namespace side runs on a thread of its own (a thread can switch network namespace
        // without affecting the rest of the process) while this thread sets up the host's side.
        NamespaceWorker worker(path, namespace_rules(egress, pool));
        net.netns_fd_ = worker.netns_fd();
        std::uint32_t base = net.add_host_link(!egress.empty(), host);
        worker.finish(base);

        std::string allowed;
        for (const auto& cidr : egress) {
            allowed += (allowed.empty() ? "" : ",") + format_cidr(cidr);
        }
        logger()->info("vm={} network created: netns {} link {} ({}/30) egress [{}] in {} us",
                       vm_id, net.netns_name_, net.host_link_, net.host_address_, allowed,
                       elapsed_us(started));
        return net;
    });
}

VmNetwork VmNetwork::adopt(const std::string& vm_id, const HostNetworkConfig& host) {
    return with_context("adopt network of " + vm_id, [&] {
        check_vm_id(vm_id);
        Ipv4Cidr pool = parse_cidr(host.link_pool);
        fs::path path = kNetnsDir / (kNetnsPrefix + vm_id);
        int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            throw_errno("open " + path.string());
        }
        VmNetwork net;
        net.vm_id_ = vm_id;
        net.state_dir_ = host.state_dir;
        net.netns_name_ = kNetnsPrefix + vm_id;
        net.netns_fd_ = fd;
        Rtnl rtnl;
        for (const auto& link : rtnl.links()) {
            if (is_host_link(link.name) && link.alias == kAliasPrefix + vm_id) {
                unsigned slot = static_cast<unsigned>(
                    std::stoul(link.name.substr(std::string_view(kHostLinkPrefix).size())));
                std::uint32_t base = slot_base(pool, slot);
                net.host_link_ = link.name;
                net.host_address_ = format_ipv4(base + 1);
                net.namespace_address_ = format_ipv4(base + 2);
            }
        }
        if (net.host_link_.empty()) {
            throw Error("its host link is gone");
        }
        return net;
    });
}

void VmNetwork::detach() noexcept {
    if (netns_fd_ >= 0) {
        ::close(netns_fd_);
    }
    netns_fd_ = -1;
    netns_name_.clear();
    host_link_.clear();
}

std::uint32_t VmNetwork::add_host_link(bool has_egress, const HostNetworkConfig& host) {
    Ipv4Cidr pool = parse_cidr(host.link_pool);
    HostLock lock(host.state_dir);
    Rtnl rtnl;
    auto links = rtnl.links();
    if (!nft_table_exists("holt")) {
        run_nft(host_table(host.uplinks), "install host table inet holt");
    }
    unsigned slot = pick_slot(links, vm_id_, slot_count(pool));
    std::uint32_t base = slot_base(pool, slot);
    std::string link = kHostLinkPrefix + std::to_string(slot);
    rtnl.create_veth(link, kNamespaceLink, netns_fd_);
    host_link_ = link;
    host_address_ = format_ipv4(base + 1);
    namespace_address_ = format_ipv4(base + 2);
    rtnl.set_alias(link, kAliasPrefix + vm_id_);

    fs::path ipv6_knob = fs::path("/proc/sys/net/ipv6/conf") / link / "disable_ipv6";
    if (fs::exists(ipv6_knob)) {
        write_sysctl(ipv6_knob, "1");
    }
    if (has_egress) {
        write_sysctl(ipv4_conf(link, "forwarding"), "1");
        if (host.uplinks.empty()) {
            logger()->warn(
                "vm={} policy allows egress but no uplink is configured: "
                "its traffic stays on the host",
                vm_id_);
        } else {
            auto guarded = uplinks_not_forwarding(host);
            run_nft(egress_rules(host.uplinks, guarded), "install host egress rules");
            turn_on_forwarding(host.state_dir, guarded);
        }
    }
    rtnl.add_address(link, base + 1, 30);
    rtnl.set_up(link);
    return base;
}

VmNetwork::VmNetwork(VmNetwork&& other) noexcept
    : vm_id_(std::move(other.vm_id_)),
      netns_name_(std::exchange(other.netns_name_, {})),
      netns_fd_(std::exchange(other.netns_fd_, -1)),
      host_link_(std::exchange(other.host_link_, {})),
      host_address_(std::move(other.host_address_)),
      namespace_address_(std::move(other.namespace_address_)),
      state_dir_(std::move(other.state_dir_)) {}

VmNetwork& VmNetwork::operator=(VmNetwork&& other) noexcept {
    if (this != &other) {
        release();
        vm_id_ = std::move(other.vm_id_);
        netns_name_ = std::exchange(other.netns_name_, {});
        netns_fd_ = std::exchange(other.netns_fd_, -1);
        host_link_ = std::exchange(other.host_link_, {});
        host_address_ = std::move(other.host_address_);
        namespace_address_ = std::move(other.namespace_address_);
        state_dir_ = std::move(other.state_dir_);
    }
    return *this;
}

VmNetwork::~VmNetwork() {
    release();
}

void VmNetwork::release() noexcept {
    if (netns_name_.empty()) {
        return;
    }
    auto started = Clock::now();
    // Unmounting the namespace lets the kernel tear it down, tap0 and the veth pair with it, in
    // the background once nothing uses it. Deleting the veth here instead would wait for RCU
    // grace periods (20-30 ms on this host) on every destroy.
    if (!host_link_.empty()) {
        try {
            HostLock lock(state_dir_);
            Rtnl rtnl;
            try {
                rtnl.set_alias(host_link_, kDyingAliasPrefix + vm_id_);
            } catch (const std::exception& e) {
                logger()->warn("vm={} mark link {} as gone: {}", vm_id_, host_link_, e.what());
            }
            remove_host_state_if_unused(rtnl, state_dir_);
        } catch (const std::exception& e) {
            logger()->warn("vm={} release link {}: {}", vm_id_, host_link_, e.what());
        }
    }
    if (netns_fd_ >= 0) {
        ::close(netns_fd_);
    }
    remove_namespace_file(netns_path());
    logger()->info("vm={} network removed in {} us", vm_id_, elapsed_us(started));
    netns_name_.clear();
    netns_fd_ = -1;
    host_link_.clear();
}

fs::path VmNetwork::netns_path() const {
    return kNetnsDir / netns_name_;
}

std::vector<std::string> VmNetwork::qemu_args() {
    return {"-netdev", std::string("tap,id=net0,ifname=") + kGuestTap + ",script=no,downscript=no",
            "-device", std::string("virtio-net-device,netdev=net0,mac=") + kGuestMac};
}

std::string VmNetwork::kernel_arg() {
    return std::string("holt.net=") + kGuestAddress + "/" + std::to_string(kGuestPrefixLength) +
           "," + kGuestGateway;
}

std::vector<std::string> VmNetwork::exec_prefix() const {
    return {"ip", "netns", "exec", netns_name_};
}

int VmNetwork::open_tcp_socket() const {
    return in_namespace(netns_fd_, [] {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            throw_errno("create socket");
        }
        return fd;
    });
}

int VmNetwork::open_tcp_socket_in(const std::string& vm_id) {
    return with_context("open a socket in the network of " + vm_id, [&] {
        check_vm_id(vm_id);
        fs::path path = kNetnsDir / (kNetnsPrefix + vm_id);
        UniqueFd netns(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (netns.get() < 0) {
            throw_errno("open " + path.string());
        }
        return in_namespace(netns.get(), [] {
            int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                throw_errno("create socket");
            }
            return fd;
        });
    });
}

int VmNetwork::connect_tcp(std::uint16_t guest_port, std::chrono::milliseconds timeout) const {
    std::string what = "connect to " + vm_id_ + " port " + std::to_string(guest_port);
    UniqueFd fd(with_context(what, [&] { return open_tcp_socket(); }));

    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(guest_port);
    ::inet_pton(AF_INET, kGuestAddress, &address.sin_addr);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
        if (errno != EINPROGRESS) {
            throw Error(what + ": " + errno_text(errno));
        }
        auto deadline = Clock::now() + timeout;
        pollfd pfd{fd.get(), POLLOUT, 0};
        for (;;) {
            auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            int n = ::poll(&pfd, 1, static_cast<int>(std::max<long>(0, left.count())));
            if (n > 0) {
                break;
            }
            if (n == 0) {
                throw Error(what + ": timed out after " + std::to_string(timeout.count()) + "ms");
            }
            if (errno != EINTR) {
                throw Error(what + ": poll: " + errno_text(errno));
            }
        }
        int err = 0;
        socklen_t len = sizeof(err);
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            throw Error(what + ": " + errno_text(err));
        }
    }
    int flags = ::fcntl(fd.get(), F_GETFL);
    ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
    return fd.release();
}

std::vector<std::string> VmNetwork::sweep_stale(
    const std::function<bool(const std::string&)>& is_alive, const HostNetworkConfig& host) {
    std::set<std::string> removed;
    HostLock lock(host.state_dir);
    Rtnl rtnl;

    // Host links first: deleting one removes both ends of the veth at once, whereas a namespace
    // is torn down by the kernel in the background.
    for (const auto& link : rtnl.links()) {
        std::string vm = vm_of_alias(link.alias);
        if (is_host_link(link.name) && !vm.empty() && !is_alive(vm)) {
            rtnl.delete_link(link.name);
            removed.insert(vm);
        }
    }
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(kNetnsDir, ec)) {
        std::string name = entry.path().filename();
        if (name.rfind(kNetnsPrefix, 0) != 0) {
            continue;
        }
        std::string vm = name.substr(std::string_view(kNetnsPrefix).size());
        if (!is_alive(vm)) {
            remove_namespace_file(entry.path());
            removed.insert(vm);
        }
    }
    remove_host_state_if_unused(rtnl, host.state_dir);
    for (const auto& vm : removed) {
        logger()->info("vm={} stale network removed", vm);
    }
    return {removed.begin(), removed.end()};
}

}  // namespace holt::vm
