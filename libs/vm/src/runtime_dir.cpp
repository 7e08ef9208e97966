#include "holt/vm/runtime_dir.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <iterator>
#include <random>
#include <thread>

#include "holt/common/error.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;

// Locks DIR/lock; the creator makes the file, a sweeper only opens an existing one.
int lock_directory(const fs::path& dir, bool create) {
    int fd = ::open((dir / "lock").c_str(), O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
    if (fd < 0) {
        return -1;
    }
    if (::flock(fd, LOCK_EX | (create ? 0 : LOCK_NB)) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// Kills the hypervisor recorded in `dir` if it still runs.
void kill_recorded_hypervisor(const fs::path& dir) {
    int pid = RuntimeDir::running_hypervisor(dir);
    if (pid < 0) {
        return;
    }
    ::kill(pid, SIGKILL);
    for (int i = 0; i < 100 && ::kill(pid, 0) == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

// How long a runtime directory may take to be made before a sweep counts it as abandoned.
constexpr auto kMinimumAgeToSweep = std::chrono::seconds(10);

// Lists `dir` as the runtime directory of VM `id` in the host-wide registry. Best effort: without
// it, only the network sweep loses the ability to tell this VM is alive.
void register_host_wide(const std::string& id, const fs::path& dir) {
    std::error_code ec;
    fs::create_directories(RuntimeDir::kHostRegistry, ec);
    fs::path link = fs::path(RuntimeDir::kHostRegistry) / id;
    fs::remove(link, ec);
    fs::create_directory_symlink(dir, link, ec);
}

void unregister_host_wide(const std::string& id) {
    std::error_code ec;
    fs::remove(fs::path(RuntimeDir::kHostRegistry) / id, ec);
}

}  // namespace

std::string random_id(const std::string& prefix) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    char hex[9];
    std::snprintf(hex, sizeof(hex), "%08x", static_cast<unsigned>(rng()));
    return prefix + "-" + hex;
}

RuntimeDir RuntimeDir::create(const fs::path& runtime_root, const std::string& prefix) {
    std::error_code ec;
    fs::create_directories(runtime_root, ec);
    if (ec) {
        throw Error("create runtime directory " + runtime_root.string() + ": " + ec.message());
    }
    for (int attempt = 0; attempt < 8; ++attempt) {
        std::string id = random_id(prefix);
        fs::path path = runtime_root / id;
        // Made and locked under a hidden name, then renamed: a sweep never sees the directory
        // unlocked under its real name.
        fs::path hidden = runtime_root / ("." + id);
        if (::mkdir(hidden.c_str(), 0700) != 0) {
            if (errno == EEXIST) {
                continue;
            }
            throw_errno("create runtime directory " + hidden.string());
        }
        int fd = lock_directory(hidden, /*create=*/true);
        if (fd < 0 ||
            ::renameat2(AT_FDCWD, hidden.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) != 0) {
            int err = errno;
            if (fd >= 0) {
                ::close(fd);
            }
            fs::remove_all(hidden, ec);
            if (err == EEXIST) {
                continue;
            }
            throw Error("create runtime directory " + path.string() + ": " + errno_text(err));
        }
        register_host_wide(id, path);
        return RuntimeDir(id, path, fd);
    }
    throw Error("could not find a free VM id under " + runtime_root.string());
}

RuntimeDir RuntimeDir::adopt(const fs::path& runtime_root, const std::string& id) {
    fs::path path = runtime_root / id;
    if (id.empty() || id.find('/') != std::string::npos || !fs::is_directory(path)) {
        throw Error("no VM " + id + " under " + runtime_root.string());
    }
    int fd = lock_directory(path, /*create=*/false);
    if (fd < 0) {
        throw Error("VM " + id + " is owned by a running process");
    }
    register_host_wide(id, path);
    return RuntimeDir(id, path, fd);
}

bool RuntimeDir::exists_anywhere(const std::string& id) {
    std::error_code ec;
    fs::path dir = fs::read_symlink(fs::path(kHostRegistry) / id, ec);
    return !ec && fs::is_directory(dir, ec);
}

int RuntimeDir::running_hypervisor(const fs::path& dir) {
    std::ifstream pid_file(dir / "hypervisor.pid");
    int pid = 0;
    if (!(pid_file >> pid) || pid <= 1) {
        return -1;
    }
    // A recycled pid is not the VM's hypervisor: that one's command line names `dir`.
    std::ifstream cmdline("/proc/" + std::to_string(pid) + "/cmdline");
    std::string args((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
    return args.find(dir.string()) == std::string::npos ? -1 : pid;
}

void RuntimeDir::sweep_host_registry() {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(kHostRegistry, ec)) {
        if (!fs::exists(entry.path(), ec)) {  // follows the link: false when its target is gone
            fs::remove(entry.path(), ec);
        }
    }
}

bool RuntimeDir::is_owned(const fs::path& dir) {
    int fd = lock_directory(dir, /*create=*/false);
    if (fd < 0) {
        return errno != ENOENT;
    }
    ::close(fd);
    return false;
}

void RuntimeDir::detach() {
    path_.clear();
    if (lock_fd_ >= 0) {
        ::close(lock_fd_);
        lock_fd_ = -1;
    }
}

RuntimeDir::RuntimeDir(std::string id, fs::path path, int lock_fd)
    : id_(std::move(id)), path_(std::move(path)), lock_fd_(lock_fd) {}

RuntimeDir::RuntimeDir(RuntimeDir&& other) noexcept
    : id_(std::move(other.id_)),
      path_(std::move(other.path_)),
      lock_fd_(std::exchange(other.lock_fd_, -1)) {
    other.path_.clear();
}

RuntimeDir& RuntimeDir::operator=(RuntimeDir&& other) noexcept {
    if (this != &other) {
        release();
        id_ = std::move(other.id_);
        path_ = std::move(other.path_);
        lock_fd_ = std::exchange(other.lock_fd_, -1);
        other.path_.clear();
    }
    return *this;
}

RuntimeDir::~RuntimeDir() {
    release();
}

void RuntimeDir::release() {
    if (!path_.empty()) {
        std::error_code ec;
        fs::remove_all(path_, ec);
        unregister_host_wide(id_);
        path_.clear();
    }
    if (lock_fd_ >= 0) {
        ::close(lock_fd_);
        lock_fd_ = -1;
    }
}

void RuntimeDir::record_hypervisor_pid(int pid) const {
    std::ofstream out(path_ / "hypervisor.pid");
    out << pid << "\n";
}

std::vector<std::string> RuntimeDir::sweep_stale(
    const fs::path& runtime_root, const std::function<void(const fs::path&)>& before_remove,
    const std::function<bool(const fs::path&)>& may_remove) {
    std::vector<std::string> removed;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(runtime_root, ec)) {
        if (!entry.is_directory()) {
            continue;
        }
        // A hidden directory is one being made (see create()); only an old one is stale.
        if (entry.path().filename().string().front() == '.') {
            auto age = fs::file_time_type::clock::now() - fs::last_write_time(entry.path(), ec);
            if (!ec && age > kMinimumAgeToSweep) {
                fs::remove_all(entry.path(), ec);
            }
            continue;
        }
        int fd = lock_directory(entry.path(), /*create=*/false);
        if (fd < 0 && errno != ENOENT) {
            continue;  // its owner is alive
        }
        if (may_remove && !may_remove(entry.path())) {
            if (fd >= 0) {
                ::close(fd);
            }
            continue;
        }
        kill_recorded_hypervisor(entry.path());
        if (before_remove) {
            before_remove(entry.path());
        }
        fs::remove_all(entry.path(), ec);
        unregister_host_wide(entry.path().filename().string());
        if (fd >= 0) {
            ::close(fd);
        }
        removed.push_back(entry.path().filename().string());
    }
    return removed;
}

}  // namespace holt::vm
