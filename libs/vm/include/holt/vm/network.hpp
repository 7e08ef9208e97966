#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace holt::vm {

// What every guest sees, in every VM: the same address, gateway and MAC. A clone restored from a
// snapshot therefore needs no change inside the guest (the MAC is part of QEMU's migrated state).
// docs/networking.md describes the whole address plan.
inline constexpr const char* kGuestAddress = "10.200.0.2";
inline constexpr const char* kGuestGateway = "10.200.0.1";
inline constexpr int kGuestPrefixLength = 30;
inline constexpr const char* kGuestMac = "02:68:6f:6c:74:02";
// tap0's own MAC, the gateway's as the guest sees it: fixed too, so the guest's ARP entry for its
// gateway stays right when a snapshot is restored into another namespace.
inline constexpr const char* kGatewayMac = "02:68:6f:6c:74:01";
// The tap device inside every VM's namespace; QEMU opens it by this name.
inline constexpr const char* kGuestTap = "tap0";

// What one VM's guest may reach. Everything else off the VM is denied.
// TODO(net): a policy is fixed for the life of a VmNetwork; changing it means a new one. Updating
// the namespace's egress set and the link's forwarding in place would be cheap.
struct NetworkPolicy {
    // IPv4 CIDRs ("203.0.113.0/24", "198.51.100.7/32", "0.0.0.0/0") the guest may open connections
    // to. Empty: no egress at all. The host's own addresses, other VMs, loopback, link-local
    // (cloud metadata) and multicast stay unreachable whatever this allows.
    std::vector<std::string> allow_egress_cidrs;
};

// Host-wide settings. Every Holt process on a host must use the same ones.
struct HostNetworkConfig {
    // Host interfaces through which allowed egress may leave ("eth0"). Empty: egress never leaves
    // the host even when a policy allows it. Holt turns on IPv4 forwarding for packets arriving on
    // an uplink only while some VM allows egress, and then forwards nothing from it but replies.
    std::vector<std::string> uplinks;
    // The pool of per-VM /30 links between the host and each VM's namespace (at most 2^14 VMs in
    // the default /16). It must not overlap any network the host reaches.
    std::string link_pool = "10.201.0.0/16";
    // Holds the lock that orders changes to the host's `inet holt` table, and notes on which
    // uplinks Holt turned forwarding on.
    std::filesystem::path state_dir = "/run/holt/net";
};

// The network of one VM: a namespace `holt-<vm id>` that holds the guest's tap device (tap0,
// gateway 10.200.0.1/30) and one end of a veth pair whose host end is `hv-<slot>` with its own /30
// from the link pool. Rules inside the namespace (nftables table `inet holt`) drop whatever the
// guest sends except replies and allowed egress, which they masquerade out through the veth.
// Rules on the host (table `inet holt`, shared by all VMs, matching only `hv-*` interfaces) drop
// everything from a VM to the host itself and to other VMs.
//
// QEMU runs inside the namespace (see netns_fd()) and opens tap0 by name.
//
// Destroying a VmNetwork unmounts the namespace at once; the kernel then tears it down, tap0 and
// the veth pair with it, in the background (tens of milliseconds) as soon as no process uses it.
// Stop the VM's QEMU first: a process inside the namespace keeps all of it alive. The last VM
// network on the host also removes the remaining links and the host table before it returns.
//
// Needs CAP_NET_ADMIN and CAP_SYS_ADMIN (root). Not thread-safe per object; distinct objects can be
// created and destroyed from many threads and processes at once.
class VmNetwork {
  public:
    // Creates the namespace, tap0, the veth pair, and the rules for `policy`. Throws holt::Error
    // naming the VM and the step that failed; nothing is left behind then.
    static VmNetwork create(const std::string& vm_id, const NetworkPolicy& policy,
                            const HostNetworkConfig& host = {});
    // Takes charge of the existing network of VM `vm_id` (made by a process that has since died
    // or detached it), with the policy it was made with. Throws holt::Error if it is gone.
    static VmNetwork adopt(const std::string& vm_id, const HostNetworkConfig& host = {});

    VmNetwork(VmNetwork&& other) noexcept;
    VmNetwork& operator=(VmNetwork&& other) noexcept;
    VmNetwork(const VmNetwork&) = delete;
    VmNetwork& operator=(const VmNetwork&) = delete;
    ~VmNetwork();

    const std::string& vm_id() const { return vm_id_; }
    // "holt-<vm id>", as `ip netns` lists it.
    const std::string& netns_name() const { return netns_name_; }
    // /run/netns/holt-<vm id>.
    std::filesystem::path netns_path() const;
    // An O_CLOEXEC descriptor of the namespace, valid while this object lives. The driver calls
    // setns(fd, CLONE_NEWNET) in the forked child before exec'ing QEMU.
    int netns_fd() const { return netns_fd_; }
    // The host's end of the veth pair ("hv-17"), and the addresses on both ends of it.
    const std::string& host_link() const { return host_link_; }
    const std::string& host_link_address() const { return host_address_; }
    const std::string& namespace_link_address() const { return namespace_address_; }

    // QEMU's arguments for the guest NIC, identical for every VM:
    //   -netdev tap,id=net0,ifname=tap0,script=no,downscript=no
    //   -device virtio-net-device,netdev=net0,mac=02:68:6f:6c:74:02
    static std::vector<std::string> qemu_args();
    // The guest's kernel command-line parameter: "holt.net=10.200.0.2/30,10.200.0.1".
    static std::string kernel_arg();
    // A command prefix that runs a program inside the namespace (`ip netns exec holt-<id>`), for
    // debugging and tools. It costs a process and a mount namespace; the driver uses netns_fd().
    std::vector<std::string> exec_prefix() const;

    // Opens a TCP connection from the host to `guest_port` on the guest and returns the connected
    // descriptor (blocking, O_CLOEXEC; the caller closes it). The socket lives in the VM's
    // namespace, so it reaches this VM's guest although every guest has the same address. Throws
    // holt::Error("connect to vm-1234 port 8080: Connection refused") or "...: timed out after
    // 500ms".
    int connect_tcp(std::uint16_t guest_port, std::chrono::milliseconds timeout) const;
    // An unconnected non-blocking TCP socket (O_CLOEXEC) inside the VM's namespace, for callers
    // that connect asynchronously (the edge proxy hands it to Asio and connects to kGuestAddress).
    int open_tcp_socket() const;
    // The same for the network of VM `vm_id`, made by any process, without taking charge of it
    // (the edge proxy reaching a sandbox's port). Throws holt::Error when the namespace is gone.
    static int open_tcp_socket_in(const std::string& vm_id);

    // Lets the network outlive this object, for a later adopt().
    void detach() noexcept;

    // Removes the namespaces, links and host rules that VMs no longer running left behind (after a
    // crash). `is_alive(vm_id)` decides, and must know every VM of every Holt process on the host.
    // Returns the ids of the VMs whose network it removed.
    static std::vector<std::string> sweep_stale(
        const std::function<bool(const std::string&)>& is_alive,
        const HostNetworkConfig& host = {});

  private:
    VmNetwork() = default;
    // Under the host-wide lock: picks a slot, creates the veth pair with its namespace end in this
    // VM's namespace, and sets up the host's end. Returns the first address of the slot's /30.
    std::uint32_t add_host_link(bool has_egress, const HostNetworkConfig& host);
    void release() noexcept;

    std::string vm_id_;
    std::string netns_name_;
    int netns_fd_ = -1;
    std::string host_link_;
    std::string host_address_;
    std::string namespace_address_;
    std::filesystem::path state_dir_;
};

}  // namespace holt::vm
