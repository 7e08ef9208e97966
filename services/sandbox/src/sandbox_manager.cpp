#include "sandbox_manager.hpp"

#include <signal.h>

#include <algorithm>
#include <future>

#include "holt/common/log.hpp"
#include "holt/http/error.hpp"
#include "holt/vm/agent_client.hpp"

namespace holt::sandbox {

namespace {

std::shared_ptr<spdlog::logger> logger() {
    static auto log = holt::log::get("sandbox");
    return log;
}

vm::NetworkPolicy policy_of(const std::optional<std::vector<std::string>>& network) {
    vm::NetworkPolicy policy;
    if (network) {
        policy.allow_egress_cidrs = *network;
    }
    return policy;
}

http::HttpError vm_failure(const std::string& what, const std::exception& e) {
    return http::HttpError(503, "unavailable", what + ": " + e.what());
}

}  // namespace

// --- leases -----------------------------------------------------------------------------------

SandboxManager::Lease::Lease(SandboxManager& manager, std::shared_ptr<Live> live)
    : manager_(&manager), live_(std::move(live)) {}

SandboxManager::Lease::Lease(Lease&& other) noexcept
    : manager_(other.manager_), live_(std::move(other.live_)) {}

SandboxManager::Lease::~Lease() {
    if (live_) {
        manager_->release(*live_);
    }
}

vm::Vm& SandboxManager::Lease::vm() const {
    return *live_->vm;
}

const std::string& SandboxManager::Lease::sandbox_id() const {
    return live_->id;
}

bool SandboxManager::Lease::killed() const {
    std::lock_guard lock(live_->mutex);
    return live_->state == "killed";
}

void SandboxManager::release(Live& live) {
    std::unique_ptr<vm::Vm> doomed;
    {
        std::lock_guard lock(live.mutex);
        --live.users;
        if (live.users == 0 && live.state == "killed") {
            doomed = std::move(live.vm);  // the kill left the VM's files to the last lease
        }
        live.changed.notify_all();
    }
}

// --- construction and start-up ----------------------------------------------------------------

SandboxManager::SandboxManager(vm::Engine& engine, SandboxStore& store, Limits limits)
    : engine_(engine), store_(store), limits_(limits) {}

SandboxManager::~SandboxManager() {
    shutdown();
}

void SandboxManager::shutdown() {
    {
        std::lock_guard lock(reaper_mutex_);
        stopping_ = true;
    }
    reaper_wake_.notify_all();
    if (reaper_.joinable()) {
        reaper_.join();
    }
    // VMs run on and kept snapshots stay: the next process adopts and reopens them.
    std::map<std::string, std::shared_ptr<Live>> all;
    {
        std::lock_guard lock(mutex_);
        all.swap(live_);
        snapshots_.clear();
    }
    for (auto& [id, live] : all) {
        std::unique_lock lock(live->mutex);
        live->changed.wait_for(lock, std::chrono::seconds(5), [&] { return live->users == 0; });
        if (live->users == 0 && live->vm) {
            live->vm->detach();
            live->vm.reset();
        }
        live->hibernated.reset();
    }
}

std::unique_ptr<vm::Vm> SandboxManager::adopt_vm(const SandboxRecord& record) {
    return engine_.adopt(record.vm_id);
}

// The store records a kept snapshot by its directory, whose name is the engine's snapshot id.
std::shared_ptr<vm::Snapshot> SandboxManager::reopen_snapshot(const std::string& path) {
    return engine_.open_snapshot(std::filesystem::path(path).filename().string());
}

void SandboxManager::reconcile() {
    int adopted = 0;
    int failed = 0;
    for (const auto& record : store_.live_sandboxes()) {
        if (record.state == "running") {
            std::unique_ptr<vm::Vm> vm;
            try {
                vm = adopt_vm(record);
            } catch (const std::exception& e) {
                logger()->warn("sbx={} vm={} adoption failed: {}", record.id, record.vm_id,
                               e.what());
            }
            if (vm) {
                add_live(record, std::move(vm), nullptr);
                ++adopted;
                continue;
            }
        } else if (record.state == "hibernated") {
            std::shared_ptr<vm::Snapshot> snapshot;
            try {
                snapshot = reopen_snapshot(record.hibernation_path);
            } catch (const std::exception& e) {
                logger()->warn("sbx={} hibernation snapshot {}: {}", record.id,
                               record.hibernation_path, e.what());
            }
            if (snapshot) {
                add_live(record, nullptr, std::move(snapshot));
                ++adopted;
                continue;
            }
        }
        store_.set_ended(record.id, "vm_failed");
        ++failed;
    }
    for (const auto& record : store_.all_snapshots()) {
        std::shared_ptr<vm::Snapshot> snapshot;
        try {
            snapshot = reopen_snapshot(record.path);
        } catch (const std::exception& e) {
            logger()->warn("snapshot {}: {}", record.id, e.what());
        }
        if (snapshot) {
            std::lock_guard lock(mutex_);
            snapshots_[record.id] = std::move(snapshot);
        } else {
            logger()->warn("snapshot {} ({}) is lost: its files did not survive the restart",
                           record.id, record.path);
            store_.delete_snapshot(record.id);
        }
    }
    auto swept = engine_.sweep_stale_vms();
    logger()->info("reconciled: {} sandboxes taken over, {} marked vm_failed, {} stale VMs removed",
                   adopted, failed, swept.size());
}

// --- lookups -----------------------------------------------------------------------------------

std::shared_ptr<SandboxManager::Live> SandboxManager::live(const std::string& id) {
    std::lock_guard lock(mutex_);
    auto it = live_.find(id);
    return it == live_.end() ? nullptr : it->second;
}

std::shared_ptr<SandboxManager::Live> SandboxManager::add_live(
    const SandboxRecord& record, std::unique_ptr<vm::Vm> vm,
    std::shared_ptr<vm::Snapshot> hibernated) {
    auto live = std::make_shared<Live>();
    live->id = record.id;
    live->tenant = record.tenant_id;
    live->template_name = record.template_name;
    live->network = record.network;
    live->state = vm ? "running" : "hibernated";
    live->vm = std::move(vm);
    live->hibernated = std::move(hibernated);
    std::lock_guard lock(mutex_);
    live_[record.id] = live;
    return live;
}

void SandboxManager::throw_gone(const std::string& id) {
    auto record = store_.sandbox_by_id(id);
    std::string why = "sandbox " + id + " is gone";
    if (record && record->ended_at) {
        why += ": " + record->end_reason.value_or("killed") + " at " + *record->ended_at;
    }
    throw http::HttpError(410, "sandbox_gone", why);
}

SandboxRecord SandboxManager::get(const std::string& tenant, const std::string& id) {
    auto record = store_.sandbox(tenant, id);
    if (!record) {
        throw http::not_found("no sandbox " + id);
    }
    return *record;
}

// --- limits ------------------------------------------------------------------------------------

void SandboxManager::reserve(const std::string& tenant, int count, int vcpus, int memory_mib) {
    if (vcpus > limits_.max_vcpus_per_sandbox) {
        throw http::HttpError(429, "limit_exceeded",
                              "vcpus " + std::to_string(vcpus) + " is over the limit of " +
                                  std::to_string(limits_.max_vcpus_per_sandbox) +
                                  " per sandbox (max_vcpus_per_sandbox)");
    }
    if (memory_mib > limits_.max_memory_mib_per_sandbox) {
        throw http::HttpError(429, "limit_exceeded",
                              "memory_mib " + std::to_string(memory_mib) +
                                  " is over the limit of " +
                                  std::to_string(limits_.max_memory_mib_per_sandbox) +
                                  " per sandbox (max_memory_mib_per_sandbox)");
    }
    std::lock_guard lock(mutex_);
    auto usage = store_.usage(tenant);
    auto& pending = pending_[tenant];
    auto over = [&](const char* name, int used, int adding, int limit) {
        if (used + adding > limit) {
            throw http::HttpError(429, "limit_exceeded",
                                  std::string(name) + ": the tenant would hold " +
                                      std::to_string(used + adding) + ", over its limit of " +
                                      std::to_string(limit));
        }
    };
    over("sandboxes (max_sandboxes_per_tenant)", usage.sandboxes + pending.sandboxes, count,
         limits_.max_sandboxes_per_tenant);
    over("vcpus of running sandboxes (max_vcpus_per_tenant)", usage.vcpus + pending.vcpus,
         count * vcpus, limits_.max_vcpus_per_tenant);
    over("memory MiB of running sandboxes (max_memory_mib_per_tenant)",
         usage.memory_mib + pending.memory_mib, count * memory_mib,
         limits_.max_memory_mib_per_tenant);
    pending.sandboxes += count;
    pending.vcpus += count * vcpus;
    pending.memory_mib += count * memory_mib;
}

void SandboxManager::unreserve(const std::string& tenant, int count, int vcpus, int memory_mib) {
    std::lock_guard lock(mutex_);
    auto& pending = pending_[tenant];
    pending.sandboxes -= count;
    pending.vcpus -= count * vcpus;
    pending.memory_mib -= count * memory_mib;
}

// --- create ------------------------------------------------------------------------------------

SandboxRecord SandboxManager::create(const std::string& tenant, const CreateSpec& spec) {
    SandboxRecord record;
    record.id = new_id("sbx");
    record.tenant_id = tenant;
    record.env = spec.env;
    record.metadata = spec.metadata;
    record.ttl_seconds = spec.ttl_seconds;
    record.on_expire = spec.on_expire;
    record.network = spec.network;

    std::shared_ptr<vm::Snapshot> from;
    if (!spec.snapshot_id.empty()) {
        auto snap = store_.snapshot(tenant, spec.snapshot_id);
        if (!snap) {
            throw http::not_found("no snapshot " + spec.snapshot_id);
        }
        {
            std::lock_guard lock(mutex_);
            if (auto it = snapshots_.find(snap->id); it != snapshots_.end()) {
                from = it->second;
            }
        }
        if (!from) {
            throw http::HttpError(410, "sandbox_gone",
                                  "snapshot " + snap->id + " has no files any more");
        }
        record.template_name = snap->template_name;
        record.vcpus = snap->vcpus;
        record.memory_mib = snap->memory_mib;
        record.snapshot_id = snap->id;
        for (const auto& [k, v] : snap->env) {
            record.env.try_emplace(k, v);
        }
        if (!spec.network) {
            record.network = snap->network;
        }
    } else {
        auto known = engine_.images().templates();
        if (std::find(known.begin(), known.end(), spec.template_name) == known.end()) {
            std::string list;
            for (const auto& name : known) {
                list += (list.empty() ? "" : ", ") + name;
            }
            throw http::HttpError(
                400, "unknown_template",
                "unknown template \"" + spec.template_name + "\" (known templates: " + list + ")");
        }
        try {
            engine_.images().get(spec.template_name);
        } catch (const std::exception& e) {
            throw http::HttpError(503, "unavailable", e.what());
        }
        record.template_name = spec.template_name;
        record.vcpus = spec.vcpus;
        record.memory_mib = spec.memory_mib;
    }

    reserve(tenant, 1, record.vcpus, record.memory_mib);
    try {
        std::unique_ptr<vm::Vm> vm;
        try {
            if (from) {
                vm = engine_.restore(from, record.template_name, policy_of(record.network));
            } else {
                vm::VmOptions options{
                    .template_name = record.template_name,
                    .vcpus = record.vcpus,
                    .memory_mib = record.memory_mib,
                };
                if (record.network) {
                    options.network = policy_of(record.network);
                }
                vm = engine_.create(options);
            }
            if (!record.env.empty()) {
                vm->agent().set_env(record.env, {});
            }
        } catch (const http::HttpError&) {
            throw;
        } catch (const std::exception& e) {
            throw vm_failure(
                "create sandbox " + record.id + " from " +
                    (from ? "snapshot " + spec.snapshot_id : "template " + record.template_name),
                e);
        }
        record.vm_id = vm->id();
        store_.insert_sandbox(record);
        add_live(record, std::move(vm), nullptr);
    } catch (...) {
        unreserve(tenant, 1, record.vcpus, record.memory_mib);
        throw;
    }
    unreserve(tenant, 1, record.vcpus, record.memory_mib);
    logger()->info("sbx={} vm={} created from {} for tenant {}", record.id, record.vm_id,
                   record.snapshot_id.value_or(record.template_name), tenant);
    return get(tenant, record.id);
}

// --- leases, wake, hibernate, kill -------------------------------------------------------------

SandboxManager::Lease SandboxManager::use(const std::string& tenant, const std::string& id) {
    auto record = get(tenant, id);
    if (record.state == "killed") {
        throw_gone(id);
    }
    auto found = live(id);
    if (!found) {
        throw_gone(id);
    }
    std::unique_lock lock(found->mutex);
    acquire(*found, lock);
    return Lease(*this, found);
}

void SandboxManager::acquire(Live& live, std::unique_lock<std::mutex>& lock) {
    for (;;) {
        if (live.state == "killed") {
            lock.unlock();
            throw_gone(live.id);
        }
        if (live.busy) {
            live.changed.wait(lock);
            continue;
        }
        if (live.state == "hibernated") {
            wake_locked(live, lock);
            continue;
        }
        ++live.users;
        return;
    }
}

void SandboxManager::wake_locked(Live& live, std::unique_lock<std::mutex>& lock) {
    live.busy = true;
    auto snapshot = live.hibernated;
    lock.unlock();
    std::unique_ptr<vm::Vm> vm;
    std::exception_ptr failure;
    try {
        vm = engine_.wake(snapshot);  // the hibernation snapshot is used up
    } catch (const std::exception& e) {
        failure = std::make_exception_ptr(vm_failure("wake sandbox " + live.id, e));
    }
    lock.lock();
    live.busy = false;
    live.changed.notify_all();
    if (failure) {
        std::rethrow_exception(failure);
    }
    if (live.state == "killed") {
        return;  // a kill came in meanwhile; `vm` goes with this scope
    }
    std::string vm_id = vm->id();
    live.vm = std::move(vm);
    live.hibernated.reset();
    live.state = "running";
    store_.set_running(live.id, vm_id);
    logger()->info("sbx={} vm={} woken", live.id, vm_id);
}

SandboxRecord SandboxManager::wake(const std::string& tenant, const std::string& id) {
    { auto lease = use(tenant, id); }
    return get(tenant, id);
}

void SandboxManager::hibernate_live(Live& live, std::chrono::milliseconds drain) {
    std::unique_lock lock(live.mutex);
    live.changed.wait(lock, [&] { return !live.busy; });
    if (live.state == "killed") {
        lock.unlock();
        throw_gone(live.id);
    }
    if (live.state == "hibernated") {
        return;
    }
    live.busy = true;
    live.draining = true;
    bool drained = live.changed.wait_for(lock, drain,
                                         [&] { return live.users == 0 || live.state == "killed"; });
    live.draining = false;
    if (!drained || live.state == "killed") {
        live.busy = false;
        live.changed.notify_all();
        if (live.state == "killed") {
            lock.unlock();
            throw_gone(live.id);
        }
        throw http::conflict("sandbox " + live.id + " still has " + std::to_string(live.users) +
                             " calls in flight (exec, files) after " +
                             std::to_string(drain.count() / 1000) +
                             "s; hibernate again once they end");
    }
    auto vm = std::move(live.vm);
    lock.unlock();
    std::shared_ptr<vm::Snapshot> snapshot;
    std::exception_ptr failure;
    try {
        snapshot = engine_.hibernate(vm);
    } catch (const std::exception& e) {
        failure = std::make_exception_ptr(vm_failure("hibernate sandbox " + live.id, e));
    }
    lock.lock();
    live.busy = false;
    live.changed.notify_all();
    if (failure) {
        live.vm = std::move(vm);  // it runs on
        std::rethrow_exception(failure);
    }
    live.hibernated = snapshot;
    live.state = "hibernated";
    store_.set_hibernated(live.id, snapshot->dir().string());
    logger()->info("sbx={} hibernated to {}", live.id, snapshot->dir().string());
}

SandboxRecord SandboxManager::hibernate(const std::string& tenant, const std::string& id) {
    auto record = get(tenant, id);
    if (record.state == "killed") {
        throw_gone(id);
    }
    auto found = live(id);
    if (!found) {
        throw_gone(id);
    }
    hibernate_live(*found, limits_.hibernate_wait);
    return get(tenant, id);
}

void SandboxManager::kill_live(const std::shared_ptr<Live>& live, const std::string& reason) {
    std::unique_ptr<vm::Vm> vm;
    std::shared_ptr<vm::Snapshot> hibernated;
    {
        std::unique_lock lock(live->mutex);
        // A hibernate or wake under way finishes first (seconds at most), unless the hibernate
        // still waits for calls in flight; then the kill wins.
        live->changed.wait(lock, [&] { return !live->busy || live->draining; });
        if (live->state == "killed") {
            return;
        }
        live->state = "killed";
        hibernated = std::move(live->hibernated);
        if (live->vm) {
            if (live->users == 0) {
                vm = std::move(live->vm);
            } else {
                // Calls in flight fail at once; the last lease removes the VM's files.
                ::kill(live->vm->machine().pid(), SIGKILL);
            }
        }
        live->changed.notify_all();
    }
    vm.reset();
    if (hibernated) {
        hibernated->remove();
    }
    store_.set_ended(live->id, reason);
    {
        std::lock_guard lock(mutex_);
        live_.erase(live->id);
    }
    logger()->info("sbx={} killed ({})", live->id, reason);
}

SandboxRecord SandboxManager::kill(const std::string& tenant, const std::string& id) {
    auto record = get(tenant, id);
    if (record.state != "killed") {
        if (auto found = live(id)) {
            kill_live(found, "killed");
        } else {
            store_.set_ended(id, "killed");
        }
    }
    return get(tenant, id);
}

// --- snapshots and fork ------------------------------------------------------------------------

SnapshotRecord SandboxManager::snapshot(const std::string& tenant, const std::string& id,
                                        const std::string& name) {
    auto record = get(tenant, id);
    auto lease = use(tenant, id);
    std::shared_ptr<vm::Snapshot> snap;
    {
        std::lock_guard lock(lease.live_->snapshot_mutex);
        try {
            snap = engine_.snapshot(lease.vm());
        } catch (const std::exception& e) {
            throw vm_failure("snapshot sandbox " + id, e);
        }
    }
    SnapshotRecord out{
        .id = new_id("snap"),
        .tenant_id = tenant,
        .name = name,
        .sandbox_id = id,
        .template_name = record.template_name,
        .vcpus = record.vcpus,
        .memory_mib = record.memory_mib,
        .env = record.env,
        .network = record.network,
        .path = snap->dir().string(),
        .created_at = "",
    };
    {
        std::lock_guard lock(mutex_);
        snapshots_[out.id] = snap;
    }
    store_.insert_snapshot(out);
    logger()->info("sbx={} snapshot {} taken", id, out.id);
    return *store_.snapshot(tenant, out.id);
}

void SandboxManager::delete_snapshot(const std::string& tenant, const std::string& id) {
    if (!store_.snapshot(tenant, id)) {
        throw http::not_found("no snapshot " + id);
    }
    store_.delete_snapshot(id);
    std::shared_ptr<vm::Snapshot> doomed;
    {
        std::lock_guard lock(mutex_);
        if (auto it = snapshots_.find(id); it != snapshots_.end()) {
            doomed = std::move(it->second);
            snapshots_.erase(it);
        }
    }
    if (doomed) {
        doomed->remove();  // sandboxes restored from it keep its disk layer while they run
    }
}

std::vector<SandboxRecord> SandboxManager::fork(const std::string& tenant, const std::string& id,
                                                int count) {
    auto parent = get(tenant, id);
    auto lease = use(tenant, id);
    reserve(tenant, count, parent.vcpus, parent.memory_mib);
    std::vector<SandboxRecord> children;
    try {
        std::vector<std::unique_ptr<vm::Vm>> vms;
        {
            std::lock_guard lock(lease.live_->snapshot_mutex);
            try {
                vms = engine_.fork(lease.vm(), count);
            } catch (const std::exception& e) {
                throw vm_failure("fork sandbox " + id, e);
            }
        }
        for (auto& vm : vms) {
            SandboxRecord child = parent;
            child.id = new_id("sbx");
            child.state = "running";
            child.parent_id = id;
            child.snapshot_id.reset();
            child.vm_id = vm->id();
            store_.insert_sandbox(child);
            add_live(child, std::move(vm), nullptr);
            children.push_back(child);
            logger()->info("sbx={} vm={} forked from {}", child.id, child.vm_id, id);
        }
    } catch (...) {
        unreserve(tenant, count, parent.vcpus, parent.memory_mib);
        throw;
    }
    unreserve(tenant, count, parent.vcpus, parent.memory_mib);
    for (auto& child : children) {
        child = get(tenant, child.id);
    }
    return children;
}

// --- expiry ------------------------------------------------------------------------------------

void SandboxManager::start_reaper(std::chrono::milliseconds period) {
    reaper_ = std::thread([this, period] {
        std::unique_lock lock(reaper_mutex_);
        while (!stopping_) {
            lock.unlock();
            try {
                reap();
            } catch (const std::exception& e) {
                logger()->warn("TTL reaper: {}", e.what());
            }
            lock.lock();
            reaper_wake_.wait_for(lock, period, [&] { return stopping_; });
        }
    });
}

void SandboxManager::reap() {
    for (const auto& id : store_.expired_sandboxes()) {
        auto record = store_.sandbox_by_id(id);
        if (!record || record->state == "killed") {
            continue;
        }
        auto found = live(id);
        try {
            if (record->on_expire == "hibernate") {
                if (found && record->state == "running") {
                    // Without waiting: a sandbox with calls in flight is tried again on the next
                    // pass, and holds up no other sandbox's expiry meanwhile.
                    hibernate_live(*found, std::chrono::milliseconds(0));
                }
                store_.set_expiry(id, std::nullopt);  // the TTL is spent
                logger()->info("sbx={} expired: hibernated", id);
            } else if (found) {
                kill_live(found, "ttl_expired");
            } else {
                store_.set_ended(id, "ttl_expired");
            }
        } catch (const http::HttpError& e) {
            if (e.status() == 409) {
                logger()->debug("sbx={} expired; hibernating once its calls end: {}", id, e.what());
            } else {
                logger()->warn("sbx={} expired, but: {}", id, e.what());
            }
        } catch (const std::exception& e) {
            logger()->warn("sbx={} expired, but: {}", id, e.what());
        }
    }
}

}  // namespace holt::sandbox
