#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "holt/vm/accelerator.hpp"
#include "holt/vm/driver.hpp"
#include "holt/vm/image_store.hpp"
#include "holt/vm/network.hpp"
#include "holt/vm/qemu_driver.hpp"
#include "holt/vm/runtime_dir.hpp"
#include "holt/vm/snapshot.hpp"

namespace holt::vm {

class AgentClient;

struct EngineOptions {
    // Built images under images/, template snapshots under snapshots/.
    std::filesystem::path data_dir;
    std::filesystem::path recipes_dir;  // infra/images
    // Files of running VMs: vms/<id>/ (sockets, logs) and layers/ (their disk layers).
    // Empty: DATA_DIR/run.
    std::filesystem::path run_dir;
    AcceleratorMode accel = AcceleratorMode::automatic;
    QemuDriverOptions qemu;
    // How long a cold boot may take to reach a ready agent before it counts as failed.
    std::chrono::milliseconds boot_timeout = std::chrono::seconds(60);
    // How long a restored VM's agent may take to answer.
    std::chrono::milliseconds restore_timeout = std::chrono::seconds(10);
    // Host-wide settings of VM networks (uplinks for allowed egress, the link address pool).
    HostNetworkConfig network;
};

struct VmOptions {
    std::string template_name;
    int vcpus = 1;
    int memory_mib = 512;
    std::chrono::milliseconds boot_timeout{0};  // 0: the engine's
    std::string extra_kernel_args;
    // Give the VM a NIC in its own network namespace (docs/networking.md), with this egress
    // policy. Without it the VM has no network device at all.
    std::optional<NetworkPolicy> network;
};

// A running VM with a ready agent. It owns everything the VM created on the host (hypervisor
// process, sockets, logs, its writable disk layer); destroying it kills the VM and removes them.
// Disk layers it stands on that snapshots or other VMs still use stay until they let go.
class Vm {
  public:
    Vm(RuntimeDir dir, std::string template_name, MachineSpec spec,
       std::shared_ptr<DiskLayer> root_disk, std::optional<VmNetwork> network,
       std::unique_ptr<Machine> machine, std::unique_ptr<AgentClient> agent);
    ~Vm();
    Vm(const Vm&) = delete;
    Vm& operator=(const Vm&) = delete;

    const std::string& id() const { return dir_.id(); }
    const std::string& template_name() const { return template_name_; }
    const std::filesystem::path& runtime_dir() const { return dir_.path(); }
    const MachineSpec& spec() const { return spec_; }
    AgentClient& agent() { return *agent_; }
    Machine& machine() { return *machine_; }
    // The VM's network (to open connections to its ports), or nullptr when it has no NIC.
    const VmNetwork* network() const { return network_ ? &*network_ : nullptr; }

    // Drops the agent connection and opens a new one, as a restarted host process would.
    AgentClient& reconnect_agent(std::chrono::milliseconds timeout = std::chrono::seconds(10));

    // Flushes the guest's file systems and asks QEMU to quit. Its files go with the object.
    void stop();
    // Kills the VM at once. Its files go with the object.
    void kill();

  private:
    friend class Engine;

    RuntimeDir dir_;
    std::string template_name_;
    MachineSpec spec_;
    std::shared_ptr<DiskLayer> root_disk_;
    std::optional<VmNetwork> network_;  // outlives the machine: QEMU must be gone first
    std::unique_ptr<Machine> machine_;
    std::unique_ptr<AgentClient> agent_;
};

// The VM engine: turns templates and snapshots into running VMs. Thread-safe.
//
// create() is the fast path: the first create of a template (for a given size) cold-boots it,
// waits for its agent and saves a template snapshot whose RAM is a file; every create then
// restores that snapshot into a fresh disk overlay, mapping the RAM file copy-on-write.
class Engine {
  public:
    explicit Engine(EngineOptions options);

    ImageStore& images() { return images_; }
    const EngineOptions& options() const { return options_; }
    std::filesystem::path vms_dir() const { return run_dir() / "vms"; }
    std::filesystem::path layers_dir() const { return run_dir() / "layers"; }

    // A VM of `options.template_name`, restored from the template's snapshot.
    std::unique_ptr<Vm> create(const VmOptions& options);

    // Cold-boots a VM and waits until its agent answers. Throws holt::Error naming the VM and
    // the step that failed (with the guest console's last lines when the guest itself failed);
    // nothing of the VM is left behind.
    std::unique_ptr<Vm> boot(const VmOptions& options);

    // The snapshot create() restores for this template and size, made now if it is missing,
    // partial or stale (one warning says which).
    std::shared_ptr<Snapshot> template_snapshot(const VmOptions& options);

    // Pauses `vm`, saves it, and resumes it. The snapshot can be restored any number of times.
    std::shared_ptr<Snapshot> snapshot(Vm& vm);
    // A new VM from `snapshot`, with its processes and files as they were, the clock set to now
    // and fresh entropy.
    // A snapshot of a VM with a NIC restores with one (egress per `policy`), one without without.
    std::unique_ptr<Vm> restore(const std::shared_ptr<Snapshot>& snapshot,
                                const std::string& template_name = "",
                                const NetworkPolicy& policy = {});
    // `count` children of `parent`, each starting from the parent's memory, processes and files
    // at this moment. The parent runs on.
    std::vector<std::unique_ptr<Vm>> fork(Vm& parent, int count);
    // Saves `vm` and stops it; it then holds no memory or CPU. wake() brings it back. `vm` is
    // reset once the state is saved; if saving fails, it keeps running and stays in `vm`.
    std::shared_ptr<Snapshot> hibernate(std::unique_ptr<Vm>& vm);
    std::unique_ptr<Vm> wake(const std::shared_ptr<Snapshot>& hibernated);

    // The accelerator VMs run on, decided once (with a probe boot of `probe_template` if KVM
    // has to be tested); later calls return the same choice.
    AcceleratorChoice accelerator(const std::string& probe_template);

    // Removes the runtime directories, disk layers, hypervisors and network namespaces of VMs
    // whose owner process died.
    std::vector<std::string> sweep_stale_vms();

  private:
    // A cold-booted VM with a ready agent, before it becomes a Vm or a template snapshot.
    // Members are destroyed agent first, network last: QEMU must be gone before its namespace.
    struct ColdBooted {
        MachineSpec spec;
        std::optional<VmNetwork> network;
        std::unique_ptr<Machine> machine;
        std::unique_ptr<AgentClient> agent;
    };
    // Boots `image` in `dir` on the root disk `root_disk` (qcow2) with RAM `memory`, with a NIC
    // when options.network is set, and waits for its agent until the boot timeout (from
    // `started`) passes.
    ColdBooted cold_boot(const VmOptions& options, const TemplateImage& image, Accelerator accel,
                         const RuntimeDir& dir, const std::filesystem::path& root_disk,
                         MemorySpec memory, std::chrono::steady_clock::time_point started);

    std::filesystem::path run_dir() const;
    std::unique_ptr<AgentClient> wait_for_agent(Machine& machine,
                                                std::chrono::steady_clock::time_point deadline);
    std::shared_ptr<Snapshot> make_template_snapshot(const VmOptions& options,
                                                     const std::string& key,
                                                     const std::filesystem::path& dir);
    std::shared_ptr<Snapshot> save_running(Vm& vm, bool resume);
    std::string new_layer_name(const std::string& owner) const;

    EngineOptions options_;
    ImageStore images_;
    QemuDriver driver_;
    std::mutex accel_mutex_;
    std::optional<AcceleratorChoice> accel_;
    std::mutex templates_mutex_;
    std::map<std::string, std::shared_ptr<Snapshot>> templates_;
};

// Creates a qcow2 overlay at `overlay` whose backing file is `base` (never written through).
void create_overlay(const std::filesystem::path& base, const std::string& base_format,
                    const std::filesystem::path& overlay);

}  // namespace holt::vm
