#pragma once

// The life of sandboxes: their VMs in this process, their rows in the control database, and the
// rules that keep concurrent calls on one sandbox safe.
//
// States and transitions (per sandbox, under its own mutex):
//
//     create ──> running ──hibernate──> hibernated ──wake (or any exec/file call)──> running
//                   │                        │
//                   └──────kill / TTL────────┴──> killed (end_reason: killed, ttl_expired,
//                                                           vm_failed; the row stays readable)
//
// Calls that use the VM (exec, files, snapshot, fork) hold a Lease: any number at once. A
// hibernate or wake marks the sandbox busy; new leases wait for it, and a hibernate waits (up to
// a bound) for the leases in flight to end. A kill wins: it kills the hypervisor at once, so
// calls in flight fail fast, and the VM's files go when the last lease lets go.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "holt/vm/engine.hpp"
#include "sandbox_store.hpp"

namespace holt::sandbox {

struct Limits {
    int max_sandboxes_per_tenant = 50;  // running and hibernated
    int max_vcpus_per_tenant = 64;      // of running sandboxes
    int max_memory_mib_per_tenant = 64 * 1024;
    int max_vcpus_per_sandbox = 4;
    int max_memory_mib_per_sandbox = 4096;
    int max_fork_count = 16;
    // How long a hibernate waits for calls in flight before it answers 409.
    std::chrono::milliseconds hibernate_wait{std::chrono::seconds(30)};
};

struct CreateSpec {
    std::string template_name;
    std::string snapshot_id;
    std::optional<std::int64_t> ttl_seconds;
    std::string on_expire = "kill";
    StringMap env;
    StringMap metadata;
    int vcpus = 1;
    int memory_mib = 512;
    std::optional<std::vector<std::string>> network;
};

class SandboxManager {
    struct Live;

  public:
    SandboxManager(vm::Engine& engine, SandboxStore& store, Limits limits);
    ~SandboxManager();

    // Start-up: takes over what the database says is live (see adopt_vm), marks what cannot be
    // taken over as ended with vm_failed, then sweeps VMs nobody owns.
    void reconcile();
    // Starts the thread that ends sandboxes past their expires_at.
    void start_reaper(std::chrono::milliseconds period = std::chrono::seconds(1));
    // Stops the reaper and removes every VM of this process.
    void shutdown();

    // The sandbox must exist for the tenant (404 otherwise). A killed one is readable.
    SandboxRecord get(const std::string& tenant, const std::string& id);
    SandboxRecord create(const std::string& tenant, const CreateSpec& spec);
    SandboxRecord kill(const std::string& tenant, const std::string& id);
    SandboxRecord hibernate(const std::string& tenant, const std::string& id);
    SandboxRecord wake(const std::string& tenant, const std::string& id);
    std::vector<SandboxRecord> fork(const std::string& tenant, const std::string& id, int count);
    SnapshotRecord snapshot(const std::string& tenant, const std::string& id,
                            const std::string& name);
    void delete_snapshot(const std::string& tenant, const std::string& id);

    // The VM of a running sandbox, held for the length of one call.
    class Lease {
      public:
        Lease(SandboxManager& manager, std::shared_ptr<Live> live);
        Lease(Lease&& other) noexcept;
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        ~Lease();
        vm::Vm& vm() const;
        vm::AgentClient& agent() const { return vm().agent(); }
        const std::string& sandbox_id() const;
        // The sandbox was killed since the lease was taken (its calls then fail).
        bool killed() const;

      private:
        friend class SandboxManager;
        SandboxManager* manager_;
        std::shared_ptr<Live> live_;
    };
    // Leases the VM of a sandbox, waking it first if it is hibernated. 404 for an unknown
    // sandbox, 410 sandbox_gone for a killed one.
    Lease use(const std::string& tenant, const std::string& id);

    const Limits& limits() const { return limits_; }
    vm::Engine& engine() { return engine_; }

  private:
    struct Live {
        std::string id;
        std::string tenant;
        std::string template_name;
        std::optional<std::vector<std::string>> network;
        std::mutex mutex;
        std::condition_variable changed;
        std::string state;  // running, hibernated, killed
        bool busy = false;  // a hibernate or wake is under way
        // A busy hibernate is still waiting for calls in flight: a kill may go ahead.
        bool draining = false;
        int users = 0;  // leases out
        std::unique_ptr<vm::Vm> vm;
        std::shared_ptr<vm::Snapshot> hibernated;
        std::mutex snapshot_mutex;  // one snapshot or fork of this VM at a time
    };

    std::shared_ptr<Live> live(const std::string& id);
    std::shared_ptr<Live> add_live(const SandboxRecord& record, std::unique_ptr<vm::Vm> vm,
                                   std::shared_ptr<vm::Snapshot> hibernated);
    // Leases `live`, waking it if needed; `lock` is held on entry.
    void acquire(Live& live, std::unique_lock<std::mutex>& lock);
    void release(Live& live);
    void kill_live(const std::shared_ptr<Live>& live, const std::string& reason);
    // Waits up to `drain` for calls in flight to end (409 conflict after that).
    void hibernate_live(Live& live, std::chrono::milliseconds drain);
    void wake_locked(Live& live, std::unique_lock<std::mutex>& lock);
    [[noreturn]] void throw_gone(const std::string& id);

    // Reserves room for `count` sandboxes of `vcpus` and `memory_mib` each, or throws 429
    // limit_exceeded naming the limit. Undone with unreserve().
    void reserve(const std::string& tenant, int count, int vcpus, int memory_mib);
    void unreserve(const std::string& tenant, int count, int vcpus, int memory_mib);

    // The VM a previous process of this service left running for `record`, or nullptr.
    std::unique_ptr<vm::Vm> adopt_vm(const SandboxRecord& record);
    // The hibernation snapshot of `record` kept on disk by a previous process, or nullptr.
    std::shared_ptr<vm::Snapshot> reopen_snapshot(const std::string& path);

    void reap();

    vm::Engine& engine_;
    SandboxStore& store_;
    Limits limits_;

    std::mutex mutex_;  // live_, snapshots_, pending_
    std::map<std::string, std::shared_ptr<Live>> live_;
    std::map<std::string, std::shared_ptr<vm::Snapshot>> snapshots_;
    std::map<std::string, TenantUsage> pending_;  // creates under way, per tenant

    std::mutex reaper_mutex_;
    std::condition_variable reaper_wake_;
    bool stopping_ = false;
    std::thread reaper_;
};

}  // namespace holt::sandbox
