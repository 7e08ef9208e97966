#include "holt/common/child_process.hpp"

#include <linux/close_range.h>
#include <poll.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <boost/process/args.hpp>
#include <boost/process/child.hpp>
#include <boost/process/exe.hpp>
#include <boost/process/extend.hpp>
#include <boost/process/io.hpp>
#include <boost/process/pipe.hpp>
#include <boost/process/search_path.hpp>
#include <csignal>
#include <cstring>
#include <thread>
#include <utility>

#include "holt/common/error.hpp"

namespace holt {
namespace {

namespace bp = boost::process;

ExitStatus status_from_wait(int raw) {
    ExitStatus status;
    if (WIFSIGNALED(raw)) {
        status.signal = WTERMSIG(raw);
    } else if (WIFEXITED(raw)) {
        status.exit_code = WEXITSTATUS(raw);
    }
    return status;
}

// What the child does between fork and exec (see SpawnOptions).
struct ChildSetup : bp::extend::handler {
    bool die_with_parent = false;
    int network_namespace_fd = -1;

    template <typename Executor>
    void on_exec_setup(Executor& exec) const {
        if (die_with_parent) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        }
        if (network_namespace_fd >= 0 && ::setns(network_namespace_fd, CLONE_NEWNET) != 0) {
            exec.set_error(std::error_code(errno, std::system_category()),
                           "enter network namespace");
        }
        // The child gets stdin, stdout and stderr only. Descriptors this process opened without
        // O_CLOEXEC (Asio's sockets among them) would otherwise live on in a QEMU that outlives
        // us, holding our listening port.
        ::syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
    }
};

template <typename... Extra>
bp::child launch(const std::vector<std::string>& argv, const SpawnOptions& options,
                 Extra&&... extra) {
    std::vector<std::string> args(argv.begin() + 1, argv.end());
    if (options.output_file.empty()) {
        return bp::child(bp::exe = find_executable(argv.front()), bp::args = args,
                         bp::std_in < bp::null, std::forward<Extra>(extra)...);
    }
    return bp::child(bp::exe = find_executable(argv.front()), bp::args = args,
                     bp::std_in<bp::null, (bp::std_out & bp::std_err)> options.output_file.string(),
                     std::forward<Extra>(extra)...);
}

}  // namespace

std::string find_executable(const std::string& name) {
    if (name.find('/') != std::string::npos) {
        return name;
    }
    auto found = bp::search_path(name);
    if (found.empty()) {
        throw Error(name + ": command not found in PATH");
    }
    return found.string();
}

std::string ExitStatus::describe() const {
    if (signal != 0) {
        return "killed by signal " + std::to_string(signal) + " (" + strsignal(signal) + ")";
    }
    return "exit code " + std::to_string(exit_code);
}

ChildProcess ChildProcess::spawn(const std::vector<std::string>& argv,
                                 const SpawnOptions& options) {
    if (argv.empty()) {
        throw Error("spawn: empty command");
    }
    try {
        bp::child child = launch(argv, options,
                                 ChildSetup{.die_with_parent = options.die_with_parent,
                                            .network_namespace_fd = options.network_namespace_fd});
        ChildProcess process;
        process.pid_ = child.id();
        // We reap it ourselves with waitpid from here on.
        child.detach();
        return process;
    } catch (const std::exception& e) {
        throw Error("start " + argv.front() + ": " + e.what());
    }
}

ChildProcess ChildProcess::adopt(pid_t pid) {
    int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (fd < 0) {
        throw_errno("adopt process " + std::to_string(pid));
    }
    ChildProcess process;
    process.pid_ = pid;
    process.pidfd_ = fd;
    if (!process.running()) {
        throw Error("adopt process " + std::to_string(pid) + ": it has ended");
    }
    return process;
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      pidfd_(std::exchange(other.pidfd_, -1)),
      status_(other.status_) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
    if (this != &other) {
        kill_and_wait();
        close_pidfd();
        pid_ = std::exchange(other.pid_, -1);
        pidfd_ = std::exchange(other.pidfd_, -1);
        status_ = other.status_;
    }
    return *this;
}

ChildProcess::~ChildProcess() {
    kill_and_wait();
    close_pidfd();
}

void ChildProcess::close_pidfd() {
    if (pidfd_ >= 0) {
        ::close(pidfd_);
        pidfd_ = -1;
    }
}

void ChildProcess::release() {
    close_pidfd();
    pid_ = -1;
}

pid_t ChildProcess::pid() const {
    return pid_;
}

bool ChildProcess::running() {
    if (pid_ < 0 || status_) {
        return false;
    }
    if (pidfd_ >= 0) {
        // A pidfd becomes readable when its process ends.
        pollfd p{.fd = pidfd_, .events = POLLIN, .revents = 0};
        if (::poll(&p, 1, 0) > 0) {
            status_ = ExitStatus{.exit_code = -1};
            return false;
        }
        return true;
    }
    int raw = 0;
    pid_t r = ::waitpid(pid_, &raw, WNOHANG);
    if (r == pid_) {
        status_ = status_from_wait(raw);
        return false;
    }
    if (r < 0 && errno == ECHILD) {
        status_ = ExitStatus{.exit_code = -1};
        return false;
    }
    return true;
}

std::optional<ExitStatus> ChildProcess::wait_for(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (running()) {
        if (std::chrono::steady_clock::now() >= deadline) {
            return std::nullopt;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return status_;
}

void ChildProcess::send_signal(int signal) {
    if (running()) {
        ::kill(pid_, signal);
    }
}

void ChildProcess::kill_and_wait() {
    if (!running()) {
        return;
    }
    if (pidfd_ >= 0) {
        ::syscall(SYS_pidfd_send_signal, pidfd_, SIGKILL, nullptr, 0);
        pollfd p{.fd = pidfd_, .events = POLLIN, .revents = 0};
        while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
        }
        status_ = ExitStatus{.signal = SIGKILL};
        return;
    }
    ::kill(pid_, SIGKILL);
    int raw = 0;
    while (::waitpid(pid_, &raw, 0) < 0 && errno == EINTR) {
    }
    status_ = status_from_wait(raw);
}

CommandResult run_command(const std::vector<std::string>& argv, bool capture) {
    if (argv.empty()) {
        throw Error("run: empty command");
    }
    std::vector<std::string> args(argv.begin() + 1, argv.end());
    CommandResult result;
    try {
        if (capture) {
            bp::ipstream output;
            bp::child child(bp::exe = find_executable(argv.front()), bp::args = args,
                            bp::std_in<bp::null, (bp::std_out & bp::std_err)> output);
            std::string line;
            while (std::getline(output, line)) {
                result.output += line;
                result.output += '\n';
            }
            child.wait();
            result.status = status_from_wait(child.native_exit_code());
        } else {
            bp::child child(bp::exe = find_executable(argv.front()), bp::args = args,
                            bp::std_in < bp::null);
            child.wait();
            result.status = status_from_wait(child.native_exit_code());
        }
    } catch (const std::exception& e) {
        throw Error("run " + argv.front() + ": " + e.what());
    }
    return result;
}

}  // namespace holt
