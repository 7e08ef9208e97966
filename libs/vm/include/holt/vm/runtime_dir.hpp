#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace holt::vm {

// The private directory of one running VM under RUNTIME_ROOT/<id>/: its sockets, logs, disk
// overlay and the hypervisor's pid file. The owner holds an flock on <id>/lock for as long as the
// directory is in use; destroying the RuntimeDir removes the directory and everything in it.
// A directory whose lock nobody holds was left by a process that died; sweep_stale() removes it,
// unless another process adopts it first.
//
// Every runtime directory is also listed host-wide, as the symlink kHostRegistry/<id>, so that
// host-wide resources named after a VM (its network namespace) can be tied to a VM of any Holt
// process, whatever its runtime root (exists_anywhere()).
class RuntimeDir {
  public:
    static constexpr const char* kHostRegistry = "/run/holt/vms";

    // Creates RUNTIME_ROOT/<prefix>-<8 random hex digits>, mode 0700, and locks it.
    static RuntimeDir create(const std::filesystem::path& runtime_root, const std::string& prefix);
    // Locks the existing RUNTIME_ROOT/<id> whose owner has died (or detached). Throws
    // holt::Error if it does not exist or a live process owns it.
    static RuntimeDir adopt(const std::filesystem::path& runtime_root, const std::string& id);
    // True while the runtime directory of VM `id` exists under any runtime root: its VM runs,
    // or what it left awaits a sweep.
    static bool exists_anywhere(const std::string& id);
    // Removes host registry entries whose runtime directory is gone (left by a process killed
    // before it removed them).
    static void sweep_host_registry();
    // True while a live process owns the runtime directory `dir`.
    static bool is_owned(const std::filesystem::path& dir);

    RuntimeDir(RuntimeDir&& other) noexcept;
    RuntimeDir& operator=(RuntimeDir&& other) noexcept;
    RuntimeDir(const RuntimeDir&) = delete;
    RuntimeDir& operator=(const RuntimeDir&) = delete;
    ~RuntimeDir();

    const std::string& id() const { return id_; }
    const std::filesystem::path& path() const { return path_; }

    // Records the pid of the hypervisor that serves this directory, for sweep_stale().
    void record_hypervisor_pid(int pid) const;
    // The pid record_hypervisor_pid() recorded in `dir` if that process still runs and is the
    // VM's hypervisor (not a recycled pid), else -1.
    static int running_hypervisor(const std::filesystem::path& dir);

    // Gives up ownership but leaves the directory as it is, for a later adopt().
    void detach();

    // Removes every directory under `runtime_root` whose owner has died and that `may_remove`
    // (if given) accepts, killing the hypervisor it recorded if that process still runs, and
    // calling `before_remove` with the directory so the caller can remove what the directory's
    // records name. Returns the ids it removed.
    static std::vector<std::string> sweep_stale(
        const std::filesystem::path& runtime_root,
        const std::function<void(const std::filesystem::path&)>& before_remove = {},
        const std::function<bool(const std::filesystem::path&)>& may_remove = {});

  private:
    RuntimeDir(std::string id, std::filesystem::path path, int lock_fd);
    void release();

    std::string id_;
    std::filesystem::path path_;
    int lock_fd_ = -1;
};

// A fresh random id such as "vm-3f2a9c1d".
std::string random_id(const std::string& prefix);

}  // namespace holt::vm
