#pragma once

#include <chrono>
#include <filesystem>
#include <future>
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
#include "holt/vm/vm_record.hpp"

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
    // Who owns the VMs this engine makes ("holt-sandboxd", "holt-vm"). A sweep removes only its
    // own owner's VMs whose process died (another service adopts its own on restart), plus any
    // whose hypervisor has ended.
    std::string owner = "holt";
    // How old a disk layer file that nothing names must be before a sweep deletes it: a layer is
    // made a moment before the vm.json or snapshot.json that names it, maybe by another process.
    std::chrono::milliseconds unnamed_layer_grace = std::chrono::seconds(60);
    // How old a stale template snapshot (made from another image, QEMU or Holt) must be before a
    // sweep deletes it, once nothing stands on it: a young one may be the current snapshot of
    // another Holt version running beside this one.
    std::chrono::milliseconds stale_template_grace = std::chrono::hours(1);
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
// process, sockets, logs, its writable disk layer); destroying it kills the VM and removes them,
// unless it was detached. Disk layers it stands on that snapshots or other VMs still use stay
// until they let go. vm.json in its runtime directory records what it is (vm_record.hpp).
class Vm {
  public:
    Vm(RuntimeDir dir, VmRecord record, MachineSpec spec, std::shared_ptr<DiskLayer> root_disk,
       std::optional<VmNetwork> network, std::unique_ptr<Machine> machine,
       std::unique_ptr<AgentClient> agent);
    ~Vm();
    Vm(const Vm&) = delete;
    Vm& operator=(const Vm&) = delete;

    const std::string& id() const { return dir_.id(); }
    const std::string& template_name() const { return record_.template_name; }
    const std::string& created_at() const { return record_.created_at; }
    const std::filesystem::path& runtime_dir() const { return dir_.path(); }
    const MachineSpec& spec() const { return spec_; }
    AgentClient& agent() { return *agent_; }
    Machine& machine() { return *machine_; }
    // The VM's network (to open connections to its ports), or nullptr when it has no NIC.
    const VmNetwork* network() const { return network_ ? &*network_ : nullptr; }
    const NetworkPolicy& network_policy() const { return record_.policy; }

    // Drops the agent connection and opens a new one, as a restarted host process would.
    AgentClient& reconnect_agent(std::chrono::milliseconds timeout = std::chrono::seconds(10));

    // Flushes the guest's file systems and asks QEMU to quit. Its files go with the object.
    void stop();
    // Kills the VM at once. Its files go with the object.
    void kill();
    // Lets the VM run on, with all its files, after this object goes: Engine::adopt() takes it
    // over later, from this process or another. Sweeps leave a detached VM alone while it runs,
    // also while someone has adopted it, until it is killed.
    void detach();

  private:
    friend class Engine;
    void write_record();

    RuntimeDir dir_;
    VmRecord record_;
    MachineSpec spec_;
    std::shared_ptr<DiskLayer> root_disk_;
    std::optional<VmNetwork> network_;  // outlives the machine: QEMU must be gone first
    std::unique_ptr<Machine> machine_;
    std::unique_ptr<AgentClient> agent_;
};

// A VM's runtime directory as Engine::list_vms() finds it.
struct VmInfo {
    std::string id;
    std::optional<VmRecord> record;  // absent for a VM that was never fully made
    bool owned = false;              // a live process holds it
    bool hypervisor_running = false;
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

    // Pauses `vm`, saves it, and resumes it. The snapshot is kept (in RUN/snapshots/<id>, across
    // restarts: open_snapshot()) until delete_snapshot(), and can be restored any number of times.
    std::shared_ptr<Snapshot> snapshot(Vm& vm);
    // A new VM from `snapshot`, with its processes and files as they were, the clock set to now
    // and fresh entropy. A snapshot of a VM with a NIC restores with one, with egress per
    // `policy` (default: the snapshotted VM's); one without, without.
    std::unique_ptr<Vm> restore(const std::shared_ptr<Snapshot>& snapshot,
                                const std::string& template_name = "",
                                const std::optional<NetworkPolicy>& policy = std::nullopt);
    // `count` children of `parent`, each starting from the parent's memory, processes and files
    // at this moment, with its network policy. The parent runs on.
    std::vector<std::unique_ptr<Vm>> fork(Vm& parent, int count);
    // Saves `vm` and stops it; it then holds no memory or CPU. wake() brings it back. `vm` is
    // reset once the state is saved; if saving fails, it keeps running and stays in `vm`. The
    // snapshot is kept like snapshot()'s until wake() consumes it.
    std::shared_ptr<Snapshot> hibernate(std::unique_ptr<Vm>& vm);
    // Restores a hibernated VM and deletes its snapshot.
    std::unique_ptr<Vm> wake(const std::shared_ptr<Snapshot>& hibernated);

    // A kept snapshot by id ("snap-3f2a9c1d"), made by this process or an earlier one. Throws
    // holt::Error if there is none or it is unusable.
    std::shared_ptr<Snapshot> open_snapshot(const std::string& id);
    // Deletes a kept snapshot; VMs restored from it are not affected.
    void delete_snapshot(const std::string& id);
    // The ids of the kept snapshots, oldest first.
    std::vector<std::string> list_snapshots() const;

    // Takes over VM `id`, left running by a process that died or detached it, with its agent
    // connected again. Throws holt::Error saying why it cannot (no such VM, owned by a live
    // process, its hypervisor has ended); the VM's files are then left as they were.
    std::unique_ptr<Vm> adopt(const std::string& id);
    // Every VM runtime directory under this engine's run directory.
    std::vector<VmInfo> list_vms() const;

    // The accelerator VMs run on, decided once (with a probe boot of `probe_template` if KVM
    // has to be tested); later calls return the same choice.
    AcceleratorChoice accelerator(const std::string& probe_template);

    // Removes the runtime directories, disk layers, hypervisors and network namespaces of this
    // owner's VMs whose process died without detaching them, and what any VM whose hypervisor has
    // ended left behind. Then deletes disk layers nothing names any more, and stale template
    // snapshots (older than stale_template_grace) that no VM on the host and no kept snapshot
    // stands on. Adopt first: a VM is swept only while nobody owns it.
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
    // Connects to the agent of `machine` once it answers, before `deadline`; after a restore,
    // the agent sets the guest's clock and reseeds its RNG as it answers.
    std::unique_ptr<AgentClient> wait_for_agent(Machine& machine,
                                                std::chrono::steady_clock::time_point deadline,
                                                bool after_restore = false);
    // The template snapshot `name` for `key` from its directory, made anew if it is missing,
    // partial or stale. Serialised across processes by a lock file.
    std::shared_ptr<Snapshot> open_or_make_template_snapshot(const VmOptions& options,
                                                             const std::string& name,
                                                             const std::string& key);
    std::shared_ptr<Snapshot> make_template_snapshot(const VmOptions& options,
                                                     const std::string& key,
                                                     const std::filesystem::path& dir);
    // Pauses `vm` and saves it into `dir`; resumes it on a new disk layer if `resume`. A `keep`
    // snapshot and its disk layer stay on disk when the object goes.
    std::shared_ptr<Snapshot> save_running(Vm& vm, bool resume, const std::filesystem::path& dir,
                                           bool keep);
    std::string new_layer_name(const std::string& owner) const;
    std::filesystem::path snapshots_dir() const { return run_dir() / "snapshots"; }
    VmRecord new_record(const std::string& id, const std::string& template_name,
                        const MachineSpec& spec, const NetworkPolicy& policy) const;
    // The layer at `path` over `backing`, shared with every other user of that file in this
    // process (one object per file, so the last user's release decides its fate).
    std::shared_ptr<DiskLayer> layer(const std::filesystem::path& path,
                                     std::shared_ptr<DiskLayer> backing, bool persistent);
    // The layers of `chain` (top first) as objects, the top one ephemeral unless `top_persistent`,
    // those under it persistent (collect_layers() removes them when nothing names them).
    std::shared_ptr<DiskLayer> open_chain(const std::vector<std::filesystem::path>& chain,
                                          bool top_persistent);
    // Deletes files in layers_dir() that no VM, snapshot or object of this process names.
    void collect_layers();
    // Deletes stale template snapshots that nothing stands on (see sweep_stale_vms()).
    void collect_template_snapshots();
    std::filesystem::path template_snapshots_dir() const;
    // "base-1cpu-512m[-net]": one template snapshot per template and size.
    static std::string template_snapshot_name(const VmOptions& options);
    // What a template snapshot for `options` is made from now (image, QEMU, machine, ...).
    std::string template_snapshot_key(const VmOptions& options);

    EngineOptions options_;
    ImageStore images_;
    QemuDriver driver_;
    std::mutex accel_mutex_;
    std::optional<AcceleratorChoice> accel_;
    // Template snapshots by name ("base-1cpu-512m"), ready or being opened or made.
    struct TemplateEntry {
        std::string key;
        std::shared_future<std::shared_ptr<Snapshot>> snapshot;
    };
    std::mutex templates_mutex_;
    std::map<std::string, TemplateEntry> templates_;
    std::mutex layers_mutex_;
    std::map<std::filesystem::path, std::weak_ptr<DiskLayer>> layers_;
};

// Creates a qcow2 overlay at `overlay` whose backing file is `base` (never written through).
void create_overlay(const std::filesystem::path& base, const std::string& base_format,
                    const std::filesystem::path& overlay);

}  // namespace holt::vm
