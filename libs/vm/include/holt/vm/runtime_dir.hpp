#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace holt::vm {

// The private directory of one running VM under RUNTIME_ROOT/<id>/: its sockets, logs, disk
// overlay and the hypervisor's pid file. The owner holds an flock on <id>/lock for as long as the
// directory is in use; destroying the RuntimeDir removes the directory and everything in it.
// A directory whose lock nobody holds was left by a process that died; sweep_stale() removes it.
class RuntimeDir {
  public:
    // Creates RUNTIME_ROOT/<prefix>-<8 random hex digits>, mode 0700, and locks it.
    static RuntimeDir create(const std::filesystem::path& runtime_root, const std::string& prefix);

    RuntimeDir(RuntimeDir&& other) noexcept;
    RuntimeDir& operator=(RuntimeDir&& other) noexcept;
    RuntimeDir(const RuntimeDir&) = delete;
    RuntimeDir& operator=(const RuntimeDir&) = delete;
    ~RuntimeDir();

    const std::string& id() const { return id_; }
    const std::filesystem::path& path() const { return path_; }

    // Records the pid of the hypervisor that serves this directory, for sweep_stale().
    void record_hypervisor_pid(int pid) const;

    // Removes every directory under `runtime_root` whose owner has died, killing the hypervisor
    // it recorded if that process still runs, and calling `before_remove` with the directory so
    // the caller can remove what the directory's records name. Returns the ids it removed.
    static std::vector<std::string> sweep_stale(
        const std::filesystem::path& runtime_root,
        const std::function<void(const std::filesystem::path&)>& before_remove = {});

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
