#include "holt/vm/engine.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <future>
#include <optional>
#include <set>
#include <thread>

#include "holt/common/child_process.hpp"
#include "holt/common/error.hpp"
#include "holt/common/files.hpp"
#include "holt/common/log.hpp"
#include "holt/vm/agent_client.hpp"
#include "holt/vm/memory_pages.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kConsoleLinesInErrors = 15;
// The disk every VM boots from; its QEMU node and device keep this name across snapshots.
constexpr const char* kRootDisk = "root";

std::size_t memory_bytes(const MachineSpec& spec) {
    return static_cast<std::size_t>(spec.memory_mib) << 20;
}

long elapsed_ms(Clock::time_point since) {
    return static_cast<long>(
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - since).count());
}

std::string utc_now() {
    std::time_t now = std::time(nullptr);
    char text[32];
    std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    return text;
}

// A short fingerprint of `text` for directory names (FNV-1a: stable across builds and hosts).
std::string hash_text(const std::string& text) {
    std::uint64_t hash = 14695981039346656037ull;
    for (unsigned char c : text) {
        hash = (hash ^ c) * 1099511628211ull;
    }
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(hash));
    return hex;
}

// Holds an exclusive flock on a file for as long as it lives: serialises the making of one
// template snapshot across processes.
class FileLock {
  public:
    explicit FileLock(const fs::path& path) {
        fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd_ < 0 || ::flock(fd_, LOCK_EX) != 0) {
            throw_errno("lock " + path.string());
        }
    }
    // The lock if nobody holds it now, else nothing.
    static std::optional<FileLock> try_lock(const fs::path& path) {
        int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            return std::nullopt;
        }
        if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
            ::close(fd);
            return std::nullopt;
        }
        return std::optional<FileLock>(std::in_place, fd);
    }
    explicit FileLock(int locked_fd) : fd_(locked_fd) {}
    FileLock(FileLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    ~FileLock() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    FileLock(const FileLock&) = delete;
    FileLock& operator=(const FileLock&) = delete;

  private:
    int fd_ = -1;
};

// A qcow2 overlay over `snapshot`'s disk that nothing has written to yet. Every overlay over the
// same backing file starts out byte for byte the same, so restores copy this one (about a
// millisecond) instead of running qemu-img for each VM (tens of milliseconds).
fs::path empty_overlay(const Snapshot& snapshot) {
    fs::path path = snapshot.dir() / "overlay.qcow2";
    if (!fs::exists(path)) {
        fs::path tmp = path;
        tmp += "." + random_id("tmp");
        create_overlay(snapshot.disk()->path(), "qcow2", tmp);
        fs::rename(tmp, path);
    }
    return path;
}

}  // namespace

void create_overlay(const fs::path& base, const std::string& base_format, const fs::path& overlay) {
    CommandResult result = run_command({"qemu-img", "create", "-q", "-f", "qcow2", "-F",
                                        base_format, "-b", base.string(), overlay.string()});
    if (!result.status.success()) {
        throw Error("create overlay " + overlay.string() + " over " + base.string() + ": " +
                    result.status.describe() + ": " + result.output);
    }
}

Vm::Vm(RuntimeDir dir, VmRecord record, MachineSpec spec, std::shared_ptr<DiskLayer> root_disk,
       std::optional<VmNetwork> network, std::unique_ptr<Machine> machine,
       std::unique_ptr<AgentClient> agent)
    : dir_(std::move(dir)),
      record_(std::move(record)),
      spec_(std::move(spec)),
      root_disk_(std::move(root_disk)),
      network_(std::move(network)),
      machine_(std::move(machine)),
      agent_(std::move(agent)) {
    write_record();
}

Vm::~Vm() {
    kill();
}

void Vm::write_record() {
    record_.disk_chain = root_disk_->chain();
    record_.write(dir_.path());
}

void Vm::detach() {
    agent_.reset();
    record_.detached = true;
    write_record();
    // Nothing of it may go with this object: the layers it stands on stay until a sweep finds
    // nothing names them.
    for (auto layer = root_disk_; layer; layer = layer->backing()) {
        layer->set_persistent(true);
    }
    machine_->detach();
    if (network_) {
        network_->detach();
    }
    holt::log::get("vm")->info("vm={} detached", id());
    dir_.detach();
}

AgentClient& Vm::reconnect_agent(std::chrono::milliseconds timeout) {
    // The agent serves one host connection at a time: close ours before opening the next.
    agent_.reset();
    agent_ = with_context("reconnect to the agent of " + id(), [&] {
        return AgentClient::connect_unix(machine_->agent_socket(), Clock::now() + timeout);
    });
    return *agent_;
}

void Vm::stop() {
    if (machine_->running() && agent_) {
        try {
            ExecRequest sync;
            sync.argv = {"sync"};
            sync.timeout = std::chrono::seconds(5);
            agent_->run(sync);
        } catch (const std::exception& e) {
            holt::log::get("vm")->warn("vm={} could not sync before stop: {}", id(), e.what());
        }
    }
    agent_.reset();
    machine_->stop(std::chrono::seconds(3));
    holt::log::get("vm")->info("vm={} stopped", id());
}

void Vm::kill() {
    agent_.reset();
    if (machine_) {
        machine_->kill();
    }
}

namespace {

// Paths end up inside qcow2 headers and QEMU command lines, where a relative one would be read
// against another directory.
EngineOptions with_absolute_paths(EngineOptions options) {
    options.data_dir = fs::absolute(options.data_dir);
    if (!options.run_dir.empty()) {
        options.run_dir = fs::absolute(options.run_dir);
    }
    return options;
}

}  // namespace

Engine::Engine(EngineOptions options)
    : options_(with_absolute_paths(std::move(options))),
      images_(options_.data_dir, options_.recipes_dir),
      driver_(options_.qemu) {}

fs::path Engine::run_dir() const {
    return options_.run_dir.empty() ? options_.data_dir / "run" : options_.run_dir;
}

std::string Engine::new_layer_name(const std::string& owner) const {
    return random_id(owner) + ".qcow2";
}

AcceleratorChoice Engine::accelerator(const std::string& probe_template) {
    std::lock_guard lock(accel_mutex_);
    if (!accel_) {
        TemplateImage image = images_.get(probe_template);
        accel_ = choose_accelerator(options_.accel, driver_, image, vms_dir(),
                                    options_.data_dir / "accelerator.json");
        auto logger = holt::log::get("vm");
        if (accel_->accel == Accelerator::tcg && options_.accel == AcceleratorMode::automatic &&
            !accel_->cached) {
            logger->warn("accelerator: TCG (software emulation, slower): {}", accel_->reason);
        } else {
            logger->info("accelerator: {} ({})", to_string(accel_->accel), accel_->reason);
        }
    }
    return *accel_;
}

std::vector<std::string> Engine::sweep_stale_vms() {
    auto may_remove = [&](const fs::path& dir) {
        if (RuntimeDir::running_hypervisor(dir) < 0) {
            return true;  // nothing runs: only leftovers
        }
        try {
            auto record = VmRecord::read(dir);
            return !record || (!record->detached && record->owner == options_.owner);
        } catch (const Error&) {
            return true;
        }
    };
    // Only the VM's own writable layer: the ones under it may be shared, and collect_layers()
    // removes them once nothing names them.
    auto remove_own_layer = [&](const fs::path& dir) {
        try {
            if (auto record = VmRecord::read(dir);
                record && record->disk_chain.front().parent_path() == layers_dir()) {
                std::error_code ec;
                fs::remove(record->disk_chain.front(), ec);
            }
        } catch (const Error&) {
        }
    };
    std::vector<std::string> removed =
        RuntimeDir::sweep_stale(vms_dir(), remove_own_layer, may_remove);
    for (const auto& id : removed) {
        holt::log::get("vm")->info("vm={} removed: left behind by a process that died", id);
    }
    // A VM's network belongs to a VM exactly while that VM's runtime directory exists, under any
    // Holt process's run directory.
    VmNetwork::sweep_stale([](const std::string& id) { return RuntimeDir::exists_anywhere(id); },
                           options_.network);
    RuntimeDir::sweep_host_registry();
    collect_layers();
    collect_template_snapshots();
    return removed;
}

void Engine::collect_template_snapshots() {
    const fs::path root = template_snapshots_dir();
    std::error_code ec;
    if (!fs::is_directory(root, ec)) {
        return;
    }
    // The template snapshot directories that running VMs anywhere on this host, and this
    // engine's kept snapshots, stand on (their RAM file or their disk layer).
    std::set<fs::path> used;
    auto note = [&](const fs::path& file) {
        if (file.parent_path().parent_path() == root) {
            used.insert(file.parent_path());
        }
    };
    for (const auto& link : fs::directory_iterator(RuntimeDir::kHostRegistry, ec)) {
        std::error_code link_ec;
        fs::path vm_dir = fs::read_symlink(link.path(), link_ec);
        if (link_ec) {
            continue;
        }
        try {
            if (auto record = VmRecord::read(vm_dir)) {
                note(record->memory_file);
                for (const auto& layer : record->disk_chain) {
                    note(layer);
                }
            }
        } catch (const std::exception&) {
            return;  // never delete what an unreadable record might name
        }
    }
    for (const auto& id : list_snapshots()) {
        try {
            SnapshotManifest m = Snapshot::read_manifest(snapshots_dir() / id);
            note(m.memory_base);
            for (const auto& layer : m.disk_chain) {
                note(layer);
            }
        } catch (const Error&) {
            return;
        }
    }

    for (const auto& entry : fs::directory_iterator(root, ec)) {
        const fs::path dir = entry.path();
        if (!entry.is_directory() || dir.extension() == ".partial" || used.contains(dir)) {
            continue;
        }
        // "<name>-<key hash>"; one this Holt cannot read (partial, another format) is stale too.
        std::string name = dir.filename().string();
        name = name.substr(0, name.rfind('-'));
        try {
            SnapshotManifest m = Snapshot::read_manifest(dir);
            VmOptions options{.template_name = m.template_name,
                              .vcpus = m.vcpus,
                              .memory_mib = m.memory_mib,
                              .extra_kernel_args = m.kernel_args};
            if (m.network) {
                options.network = NetworkPolicy{};
            }
            name = template_snapshot_name(options);
            if (dir.filename() == name + "-" + hash_text(template_snapshot_key(options))) {
                continue;  // the one creates restore from now
            }
        } catch (const std::exception&) {
            // Unreadable, or its template is gone: nothing makes it current again.
        }
        // Stale and unused. A young one may be another Holt version's current snapshot, about to
        // be restored from; and a maker of this name holds its lock.
        auto age = fs::file_time_type::clock::now() - fs::last_write_time(dir, ec);
        if (ec || age < options_.stale_template_grace) {
            continue;
        }
        auto lock = FileLock::try_lock(root / (name + ".lock"));
        if (!lock) {
            continue;
        }
        holt::log::get("vm")->info("template snapshot {} removed: it is stale and nothing uses it",
                                   dir.filename().string());
        fs::remove_all(dir, ec);
    }
}

VmRecord Engine::new_record(const std::string& id, const std::string& template_name,
                            const MachineSpec& spec, const NetworkPolicy& policy) const {
    return VmRecord{
        .id = id,
        .owner = options_.owner,
        .template_name = template_name,
        .created_at = utc_now(),
        .vcpus = spec.vcpus,
        .memory_mib = spec.memory_mib,
        .accel = spec.accel,
        .kernel = spec.kernel,
        .initrd = spec.initrd,
        .kernel_args = spec.kernel_args,
        .memory_file = spec.memory.file,
        .memory_shared = spec.memory.shared,
        .network = spec.netns_fd >= 0,
        .policy = policy,
    };
}

std::shared_ptr<DiskLayer> Engine::layer(const fs::path& path, std::shared_ptr<DiskLayer> backing,
                                         bool persistent) {
    std::lock_guard lock(layers_mutex_);
    if (auto existing = layers_[path].lock()) {
        return existing;
    }
    std::erase_if(layers_, [](const auto& entry) { return entry.second.expired(); });
    auto made = std::make_shared<DiskLayer>(path, std::move(backing), persistent);
    layers_[path] = made;
    return made;
}

std::shared_ptr<DiskLayer> Engine::open_chain(const std::vector<fs::path>& chain,
                                              bool top_persistent) {
    // Layers under the top one may be shared with VMs and snapshots this process does not know
    // (other processes, detached VMs): they are never deleted from here, but by collect_layers()
    // once nothing names them.
    std::shared_ptr<DiskLayer> below;
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
        bool is_top = it + 1 == chain.rend();
        below = layer(*it, below, is_top ? top_persistent : true);
    }
    return below;
}

void Engine::collect_layers() {
    std::set<fs::path> named;
    auto name_chain = [&](const std::vector<fs::path>& chain) {
        named.insert(chain.begin(), chain.end());
    };
    std::error_code ec;
    for (const auto& vm : fs::directory_iterator(vms_dir(), ec)) {
        try {
            // A fork's snapshot names no layer its parent's vm.json does not.
            if (auto record = VmRecord::read(vm.path())) {
                name_chain(record->disk_chain);
            }
        } catch (const std::exception&) {
            return;  // never delete what an unreadable record might name
        }
    }
    for (const auto& id : list_snapshots()) {
        try {
            name_chain(Snapshot::read_manifest(snapshots_dir() / id).disk_chain);
        } catch (const Error&) {
            return;
        }
    }
    {
        std::lock_guard lock(layers_mutex_);
        for (const auto& [path, weak] : layers_) {
            if (!weak.expired()) {
                named.insert(path);
            }
        }
    }
    for (const auto& entry : fs::directory_iterator(layers_dir(), ec)) {
        auto age = fs::file_time_type::clock::now() - fs::last_write_time(entry.path(), ec);
        if (!ec && age > options_.unnamed_layer_grace && !named.contains(entry.path())) {
            holt::log::get("vm")->info("disk layer {} removed: nothing uses it",
                                       entry.path().filename().string());
            fs::remove(entry.path(), ec);
        }
    }
}

Engine::ColdBooted Engine::cold_boot(const VmOptions& options, const TemplateImage& image,
                                     Accelerator accel, const RuntimeDir& dir,
                                     const fs::path& root_disk, MemorySpec memory,
                                     Clock::time_point started) {
    ColdBooted vm;
    vm.spec = MachineSpec{
        .id = dir.id(),
        .vcpus = options.vcpus,
        .memory_mib = options.memory_mib,
        .accel = accel,
        .kernel = image.kernel,
        .initrd = image.initrd,
        .kernel_args = options.extra_kernel_args,
        .disks = {DiskSpec{.id = kRootDisk, .path = root_disk, .format = "qcow2"}},
        .memory = std::move(memory),
        .runtime_dir = dir.path(),
    };
    if (options.network) {
        vm.network = VmNetwork::create(dir.id(), *options.network, options_.network);
        vm.spec.netns_fd = vm.network->netns_fd();
    }
    vm.machine = driver_.start(vm.spec);
    dir.record_hypervisor_pid(vm.machine->pid());
    auto timeout = options.boot_timeout.count() > 0 ? options.boot_timeout : options_.boot_timeout;
    vm.agent = wait_for_agent(*vm.machine, started + timeout);
    return vm;
}

std::unique_ptr<Vm> Engine::boot(const VmOptions& options) {
    auto started = Clock::now();
    TemplateImage image = images_.get(options.template_name);
    Accelerator accel = accelerator(options.template_name).accel;

    RuntimeDir dir = RuntimeDir::create(vms_dir(), "vm");
    std::string id = dir.id();
    return with_context("boot " + id + " from template " + options.template_name, [&] {
        fs::create_directories(layers_dir());
        auto root = layer(layers_dir() / new_layer_name(id), nullptr, false);
        with_context("create disk overlay",
                     [&] { create_overlay(image.rootfs, image.rootfs_format, root->path()); });

        ColdBooted vm = cold_boot(options, image, accel, dir, root->path(), {}, started);
        holt::log::get("vm")->info("vm={} booted template={} accel={} in {} ms", id,
                                   options.template_name, to_string(accel), elapsed_ms(started));
        VmRecord record = new_record(id, options.template_name, vm.spec,
                                     options.network.value_or(NetworkPolicy{}));
        return std::make_unique<Vm>(std::move(dir), std::move(record), std::move(vm.spec),
                                    std::move(root), std::move(vm.network), std::move(vm.machine),
                                    std::move(vm.agent));
    });
}

std::unique_ptr<Vm> Engine::create(const VmOptions& options) {
    return restore(template_snapshot(options), options.template_name,
                   options.network.value_or(NetworkPolicy{}));
}

std::string Engine::template_snapshot_name(const VmOptions& options) {
    return options.template_name + "-" + std::to_string(options.vcpus) + "cpu-" +
           std::to_string(options.memory_mib) + "m" + (options.network ? "-net" : "");
}

std::string Engine::template_snapshot_key(const VmOptions& options) {
    TemplateImage image = images_.get(options.template_name);
    Accelerator accel = accelerator(options.template_name).accel;
    // Everything the saved guest depends on; a snapshot made from anything else is stale.
    std::string key = "format=" + std::to_string(kSnapshotFormat) + ";recipe=" + image.recipe_hash +
                      ";kernel=" + image.kernel.string() + ";initrd=" + image.initrd.string() +
                      "@" + file_stamp(image.initrd) + ";accel=" + to_string(accel) +
                      ";qemu=" + file_stamp(driver_.command_line(MachineSpec{}).front()) +
                      ";machine=" + driver_.machine_signature(accel) + " " +
                      options.extra_kernel_args + ";network=" + (options.network ? "yes" : "no");
    for (const auto& command : image.warmup) {
        key += ";warmup=" + command;
    }
    return key;
}

fs::path Engine::template_snapshots_dir() const {
    return options_.data_dir / "snapshots" / "templates";
}

std::shared_ptr<Snapshot> Engine::template_snapshot(const VmOptions& options) {
    const std::string name = template_snapshot_name(options);
    const std::string key = template_snapshot_key(options);

    // The first caller for a name and key opens or makes the snapshot; later ones wait for it,
    // while creates of other templates and sizes go on.
    std::promise<std::shared_ptr<Snapshot>> promise;
    for (;;) {
        std::shared_future<std::shared_ptr<Snapshot>> ready;
        {
            std::lock_guard lock(templates_mutex_);
            auto it = templates_.find(name);
            if (it != templates_.end() && it->second.key == key) {
                ready = it->second.snapshot;
            } else {
                templates_[name] = TemplateEntry{key, promise.get_future().share()};
            }
        }
        if (!ready.valid()) {
            break;  // this call makes it
        }
        auto snapshot = ready.get();  // rethrows what the maker failed with
        if (fs::exists(snapshot->dir() / "snapshot.json")) {
            return snapshot;
        }
        // Deleted since (by hand, or by the sweep of another Holt version that found it stale):
        // forget it, unless another call has already, and open or make it again.
        std::lock_guard lock(templates_mutex_);
        auto it = templates_.find(name);
        if (it != templates_.end() &&
            it->second.snapshot.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
            try {
                if (it->second.snapshot.get() == snapshot) {
                    templates_.erase(it);
                }
            } catch (const std::exception&) {
            }
        }
    }
    try {
        auto snapshot = open_or_make_template_snapshot(options, name, key);
        promise.set_value(snapshot);
        return snapshot;
    } catch (...) {
        promise.set_exception(std::current_exception());
        // The next create tries again.
        std::lock_guard lock(templates_mutex_);
        if (auto it = templates_.find(name); it != templates_.end() && it->second.key == key) {
            templates_.erase(it);
        }
        throw;
    }
}

std::shared_ptr<Snapshot> Engine::open_or_make_template_snapshot(const VmOptions& options,
                                                                 const std::string& name,
                                                                 const std::string& key) {
    fs::path root = template_snapshots_dir();
    fs::create_directories(root);
    FileLock file_lock(root / (name + ".lock"));
    // One directory per key: a template snapshot in use is never rebuilt in place, since the
    // disks of VMs restored from it name its files.
    fs::path dir = root / (name + "-" + hash_text(key));

    std::shared_ptr<Snapshot> snapshot;
    std::string problem;
    try {
        snapshot = Snapshot::open(dir, /*persistent=*/true);
        if (snapshot->manifest().key != key) {
            problem = "it was made from another image, QEMU or configuration";
            snapshot.reset();
        }
    } catch (const Error& e) {
        problem = e.what();
    }
    if (snapshot) {
        return snapshot;
    }
    if (fs::exists(dir)) {
        holt::log::get("vm")->warn("template snapshot {} is unusable ({}); making it again", name,
                                   problem);
    }
    return make_template_snapshot(options, key, dir);
}

std::shared_ptr<Snapshot> Engine::make_template_snapshot(const VmOptions& options,
                                                         const std::string& key,
                                                         const fs::path& dir) {
    auto started = Clock::now();
    TemplateImage image = images_.get(options.template_name);
    Accelerator accel = accelerator(options.template_name).accel;
    fs::path tmp = dir;
    tmp += ".partial";
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp);
    // A failed attempt leaves nothing: its disk and RAM file can be as large as the VM.
    struct RemoveUnlessRenamed {
        const fs::path& path;
        ~RemoveUnlessRenamed() {
            std::error_code ignored;
            fs::remove_all(path, ignored);
        }
    } cleanup{tmp};

    return with_context("make template snapshot " + dir.filename().string(), [&] {
        RuntimeDir runtime = RuntimeDir::create(vms_dir(), "tpl");
        with_context("create disk overlay", [&] {
            create_overlay(image.rootfs, image.rootfs_format, tmp / "disk.qcow2");
        });
        // The NIC is part of the saved device state, so a template for networked VMs boots with
        // one (in a throwaway namespace; clones get their own).
        ColdBooted vm = cold_boot(options, image, accel, runtime, tmp / "disk.qcow2",
                                  {.file = tmp / "memory", .shared = true}, started);
        for (const auto& command : image.warmup) {
            with_context("warm-up command `" + command + "`", [&] {
                ExecRequest warmup;
                warmup.shell = command;
                warmup.timeout = std::chrono::minutes(2);
                auto result = vm.agent->run(warmup);
                if (!result.status.exit_code || *result.status.exit_code != 0) {
                    throw Error("it failed: " + result.stderr_data);
                }
            });
        }
        vm.agent.reset();
        vm.machine->save_state(tmp / "state", SavedRam::shared_file);
        vm.machine->stop(std::chrono::seconds(3));

        SnapshotManifest manifest{
            .kind = "template",
            .source = options.template_name,
            .template_name = options.template_name,
            .key = key,
            .vcpus = options.vcpus,
            .memory_mib = options.memory_mib,
            .accel = accel,
            .kernel = image.kernel,
            .initrd = image.initrd,
            .kernel_args = options.extra_kernel_args,
            .ram = SavedRam::shared_file,
            .disk = "disk.qcow2",
            .network = options.network.has_value(),
            .created_at = utc_now(),
        };
        Snapshot::write_manifest(tmp, manifest);
        fs::remove_all(dir, ec);
        fs::rename(tmp, dir);
        holt::log::get("vm")->info("template snapshot {} made in {} ms", dir.filename().string(),
                                   elapsed_ms(started));
        return Snapshot::open(dir, /*persistent=*/true);
    });
}

std::unique_ptr<Vm> Engine::restore(const std::shared_ptr<Snapshot>& snapshot,
                                    const std::string& template_name,
                                    const std::optional<NetworkPolicy>& policy) {
    auto started = Clock::now();
    const SnapshotManifest& m = snapshot->manifest();
    RuntimeDir dir = RuntimeDir::create(vms_dir(), "vm");
    std::string id = dir.id();
    return with_context("restore " + id + " from snapshot " + m.source, [&] {
        fs::create_directories(layers_dir());
        auto root = layer(layers_dir() / new_layer_name(id), snapshot->disk(), false);
        with_context("create disk overlay",
                     [&] { fs::copy_file(empty_overlay(*snapshot), root->path()); });
        MachineSpec spec{
            .id = id,
            .vcpus = m.vcpus,
            .memory_mib = m.memory_mib,
            .accel = m.accel,
            .kernel = m.kernel,
            .initrd = m.initrd,
            .kernel_args = m.kernel_args,
            .disks = {DiskSpec{.id = kRootDisk, .path = root->path(), .format = "qcow2"}},
            .memory = {.file = snapshot->memory_file(), .shared = false},
            .incoming = m.ram,
            .runtime_dir = dir.path(),
        };
        NetworkPolicy vm_policy = policy.value_or(NetworkPolicy{m.allow_egress});
        std::optional<VmNetwork> network;
        if (m.network) {
            network = VmNetwork::create(id, vm_policy, options_.network);
            spec.netns_fd = network->netns_fd();
        }
        auto logger = holt::log::get("vm");
        logger->debug("vm={} restore: overlay ready after {} ms", id, elapsed_ms(started));
        std::unique_ptr<Machine> machine = driver_.start(spec);
        dir.record_hypervisor_pid(machine->pid());
        logger->debug("vm={} restore: QEMU up after {} ms", id, elapsed_ms(started));
        if (m.ram == SavedRam::none) {
            load_private_pages(
                snapshot->pages_file(),
                find_ram_mapping(machine->pid(), spec.memory.file, memory_bytes(spec)));
        }
        machine->load_state(snapshot->state_file());
        logger->debug("vm={} restore: state loaded after {} ms", id, elapsed_ms(started));

        // Every restore resumes with the snapshot's clock and RNG state: the agent fixes both
        // as it answers, before the guest runs anything for its user.
        auto agent = wait_for_agent(*machine, Clock::now() + options_.restore_timeout,
                                    /*after_restore=*/true);

        holt::log::get("vm")->info("vm={} restored from {} in {} ms", id, m.source,
                                   elapsed_ms(started));
        VmRecord record = new_record(id, template_name.empty() ? m.template_name : template_name,
                                     spec, vm_policy);
        return std::make_unique<Vm>(std::move(dir), std::move(record), std::move(spec),
                                    std::move(root), std::move(network), std::move(machine),
                                    std::move(agent));
    });
}

std::shared_ptr<Snapshot> Engine::save_running(Vm& vm, bool resume, const fs::path& dir,
                                               bool keep) {
    fs::create_directories(dir);
    auto frozen = vm.root_disk_;
    // A VM whose RAM maps a memory file copy-on-write (every VM restored from a template) saves
    // only the pages it wrote; any other saves all of its RAM.
    const bool pages_over_file = !vm.spec_.memory.file.empty() && !vm.spec_.memory.shared;
    const SavedRam ram = pages_over_file ? SavedRam::none : SavedRam::all;
    return with_context("snapshot " + vm.id(), [&] {
        auto& machine = *vm.machine_;
        machine.pause();
        try {
            if (resume) {
                auto next = layer(layers_dir() / new_layer_name(vm.id()), frozen, false);
                machine.switch_disk_overlay(kRootDisk, next->path());
                vm.root_disk_ = next;
                vm.write_record();
            }
            machine.save_state(dir / "state", ram);
            if (ram == SavedRam::none) {
                save_private_pages(
                    find_ram_mapping(machine.pid(), vm.spec_.memory.file, memory_bytes(vm.spec_)),
                    dir / "memory.pages");
            }
        } catch (...) {
            // A failed save must not leave the VM frozen, or its half-written state behind.
            std::error_code ec;
            fs::remove_all(dir, ec);
            if (machine.running()) {
                machine.resume();
            }
            throw;
        }
        if (resume) {
            machine.resume();
        }
        SnapshotManifest manifest{
            .kind = "vm",
            .source = vm.id(),
            .template_name = vm.template_name(),
            .key = "",
            .vcpus = vm.spec_.vcpus,
            .memory_mib = vm.spec_.memory_mib,
            .accel = vm.spec_.accel,
            .kernel = vm.spec_.kernel,
            .initrd = vm.spec_.initrd,
            .kernel_args = vm.spec_.kernel_args,
            .ram = ram,
            .memory_base = pages_over_file ? vm.spec_.memory.file : fs::path(),
            .disk = frozen->path(),
            .disk_chain = frozen->chain(),
            .network = vm.spec_.netns_fd >= 0,
            .allow_egress = vm.network_policy().allow_egress_cidrs,
            .created_at = utc_now(),
        };
        Snapshot::write_manifest(dir, manifest);
        if (keep) {
            frozen->set_persistent(true);
        }
        return std::make_shared<Snapshot>(dir, manifest, frozen, keep);
    });
}

std::shared_ptr<Snapshot> Engine::snapshot(Vm& vm) {
    auto started = Clock::now();
    auto snapshot = save_running(vm, /*resume=*/true, snapshots_dir() / random_id("snap"),
                                 /*keep=*/true);
    holt::log::get("vm")->info("vm={} snapshot {} taken in {} ms", vm.id(), snapshot->id(),
                               elapsed_ms(started));
    return snapshot;
}

std::vector<std::unique_ptr<Vm>> Engine::fork(Vm& parent, int count) {
    // The children need the snapshot's state only while they load it; it lives with the parent.
    auto snapshot = save_running(parent, /*resume=*/true, parent.runtime_dir() / random_id("fork"),
                                 /*keep=*/false);
    std::vector<std::future<std::unique_ptr<Vm>>> pending;
    for (int i = 0; i < count; ++i) {
        pending.push_back(std::async(std::launch::async, [&] { return restore(snapshot); }));
    }
    std::vector<std::unique_ptr<Vm>> children;
    std::exception_ptr failure;
    for (auto& child : pending) {
        try {
            children.push_back(child.get());
        } catch (...) {
            failure = std::current_exception();
        }
    }
    if (failure) {
        std::rethrow_exception(failure);  // the children made so far are removed with the vector
    }
    return children;
}

std::shared_ptr<Snapshot> Engine::hibernate(std::unique_ptr<Vm>& vm) {
    auto started = Clock::now();
    // On failure the VM runs on.
    auto snapshot = save_running(*vm, /*resume=*/false, snapshots_dir() / random_id("snap"),
                                 /*keep=*/true);
    std::string id = vm->id();
    vm.reset();
    holt::log::get("vm")->info("vm={} hibernated as {} in {} ms", id, snapshot->id(),
                               elapsed_ms(started));
    return snapshot;
}

std::unique_ptr<Vm> Engine::wake(const std::shared_ptr<Snapshot>& hibernated) {
    auto vm = restore(hibernated);
    hibernated->remove();
    return vm;
}

std::shared_ptr<Snapshot> Engine::open_snapshot(const std::string& id) {
    if (id.empty() || id.find('/') != std::string::npos || id == "." || id == "..") {
        throw Error("no snapshot \"" + id + "\"");
    }
    fs::path dir = snapshots_dir() / id;
    SnapshotManifest manifest = Snapshot::read_manifest(dir);
    auto disk = open_chain(manifest.disk_chain, /*top_persistent=*/true);
    return std::make_shared<Snapshot>(dir, std::move(manifest), std::move(disk),
                                      /*persistent=*/true);
}

void Engine::delete_snapshot(const std::string& id) {
    std::shared_ptr<Snapshot> snapshot;
    try {
        snapshot = open_snapshot(id);
    } catch (const Error& e) {
        // An unusable snapshot goes too; collect_layers() removes its layer, if it has one left.
        if (!fs::exists(snapshots_dir() / id / "snapshot.json")) {
            throw;
        }
        holt::log::get("vm")->warn("snapshot {} is unusable ({}); deleting what is left", id,
                                   e.what());
        fs::remove_all(snapshots_dir() / id);
        return;
    }
    snapshot->remove();
    holt::log::get("vm")->info("snapshot {} deleted", id);
}

std::vector<std::string> Engine::list_snapshots() const {
    std::vector<std::pair<fs::file_time_type, std::string>> found;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(snapshots_dir(), ec)) {
        if (fs::exists(entry.path() / "snapshot.json")) {
            found.emplace_back(fs::last_write_time(entry.path() / "snapshot.json", ec),
                               entry.path().filename().string());
        }
    }
    std::sort(found.begin(), found.end());
    std::vector<std::string> ids;
    for (auto& [time, id] : found) {
        ids.push_back(std::move(id));
    }
    return ids;
}

std::unique_ptr<Vm> Engine::adopt(const std::string& id) {
    auto started = Clock::now();
    return with_context("adopt " + id, [&] {
        RuntimeDir dir = RuntimeDir::adopt(vms_dir(), id);
        // From here on a failure leaves everything as it was found, for a sweep or a later try.
        std::optional<VmNetwork> network;
        std::unique_ptr<Machine> machine;
        try {
            std::optional<VmRecord> record = VmRecord::read(dir.path());
            if (!record) {
                throw Error("it has no vm.json: it was never fully made");
            }
            int pid = RuntimeDir::running_hypervisor(dir.path());
            if (pid < 0) {
                throw Error("its hypervisor has ended");
            }
            MachineSpec spec{
                .id = id,
                .vcpus = record->vcpus,
                .memory_mib = record->memory_mib,
                .accel = record->accel,
                .kernel = record->kernel,
                .initrd = record->initrd,
                .kernel_args = record->kernel_args,
                .disks = {DiskSpec{
                    .id = kRootDisk, .path = record->disk_chain.front(), .format = "qcow2"}},
                .memory = {.file = record->memory_file, .shared = record->memory_shared},
                .runtime_dir = dir.path(),
            };
            if (record->network) {
                network = VmNetwork::adopt(id, options_.network);
                spec.netns_fd = network->netns_fd();
            }
            machine = driver_.attach(spec, pid);
            auto agent = with_context("connect to its agent", [&] {
                return AgentClient::connect_unix(machine->agent_socket(),
                                                 Clock::now() + options_.restore_timeout);
            });
            auto root = open_chain(record->disk_chain, /*top_persistent=*/false);
            // A detached VM stays detached (sweeps leave it alone) until it is detached again or
            // goes; an adopter that dies mid-operation must not make it sweepable.
            record->owner = options_.owner;
            auto vm = std::make_unique<Vm>(std::move(dir), std::move(*record), std::move(spec),
                                           std::move(root), std::move(network), std::move(machine),
                                           std::move(agent));
            holt::log::get("vm")->info("vm={} adopted in {} ms", id, elapsed_ms(started));
            return vm;
        } catch (...) {
            if (machine) {
                machine->detach();
            }
            if (network) {
                network->detach();
            }
            dir.detach();
            throw;
        }
    });
}

std::vector<VmInfo> Engine::list_vms() const {
    std::vector<VmInfo> vms;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(vms_dir(), ec)) {
        if (!entry.is_directory()) {
            continue;
        }
        VmInfo info{.id = entry.path().filename().string()};
        try {
            info.record = VmRecord::read(entry.path());
        } catch (const Error&) {
        }
        info.owned = RuntimeDir::is_owned(entry.path());
        info.hypervisor_running = RuntimeDir::running_hypervisor(entry.path()) >= 0;
        vms.push_back(std::move(info));
    }
    std::sort(vms.begin(), vms.end(), [](const VmInfo& a, const VmInfo& b) { return a.id < b.id; });
    return vms;
}

std::unique_ptr<AgentClient> Engine::wait_for_agent(Machine& machine, Clock::time_point deadline,
                                                    bool after_restore) {
    auto console_tail = [&] {
        std::string tail = tail_of_file(machine.console_log(), kConsoleLinesInErrors);
        return tail.empty() ? std::string("(the console is empty)") : tail;
    };
    auto guest_stopped = [&] {
        return Error("wait for agent: the guest stopped before its agent answered (QEMU " +
                     machine.exit_reason().value_or("ended") + "); last console lines:\n" +
                     console_tail());
    };
    // One connection and one handshake for the whole wait: abandoning a handshake the agent is
    // about to answer would make it start (and end) a session per attempt.
    AgentClientOptions options;
    options.after_restore = after_restore;
    options.while_waiting = [&] {
        if (!machine.running()) {
            throw guest_stopped();
        }
    };
    try {
        return AgentClient::connect_unix(machine.agent_socket(), deadline, options);
    } catch (const Error& e) {
        if (!machine.running()) {
            throw guest_stopped();
        }
        throw Error("wait for agent: no answer before the deadline (" + std::string(e.what()) +
                    "); last console lines:\n" + console_tail());
    }
}

}  // namespace holt::vm
