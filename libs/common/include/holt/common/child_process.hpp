#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace holt {

// How a child process ended.
struct ExitStatus {
    int exit_code = 0;  // valid when signal == 0
    int signal = 0;     // the signal that killed it, or 0
    bool success() const { return signal == 0 && exit_code == 0; }
    std::string describe() const;  // "exit code 3", "killed by signal 9 (Killed)"
};

struct SpawnOptions {
    // Where the child's stdout and stderr go; empty: inherited from this process.
    std::filesystem::path output_file;
    // Kill the child when the *thread* that spawned it exits (PR_SET_PDEATHSIG). Only for
    // children that live no longer than one call on the spawning thread.
    bool die_with_parent = false;
    // A network namespace for the child (a descriptor such as VmNetwork::netns_fd()): it enters
    // it with setns() between fork and exec. -1: the parent's.
    int network_namespace_fd = -1;
};

// A long-running child process, such as a QEMU. The destructor kills and reaps it if it is still
// running, so no path leaves it behind (unless it was released).
class ChildProcess {
  public:
    static ChildProcess spawn(const std::vector<std::string>& argv, const SpawnOptions& options);
    // Takes charge of a running process this one did not start (a QEMU left by a process that
    // died), through a pidfd so a recycled pid is never mistaken for it. Its exit status cannot
    // be known: it ends with exit code -1. Throws holt::Error if it is not running.
    static ChildProcess adopt(pid_t pid);

    ChildProcess(ChildProcess&&) noexcept;
    ChildProcess& operator=(ChildProcess&&) noexcept;
    ~ChildProcess();

    pid_t pid() const;
    // Reaps the child if it has ended; true while it runs.
    bool running();
    // Waits up to `timeout` for the child to end; the status if it did.
    std::optional<ExitStatus> wait_for(std::chrono::milliseconds timeout);
    void send_signal(int signal);
    // SIGKILL and reap; no-op if already ended.
    void kill_and_wait();
    // Lets the process run on without this object: it is neither killed nor reaped (a later
    // process may adopt() it).
    void release();
    std::optional<ExitStatus> exit_status() const { return status_; }

  private:
    ChildProcess() = default;
    void close_pidfd();

    pid_t pid_ = -1;
    int pidfd_ = -1;  // set for adopted processes, which waitpid cannot reap
    std::optional<ExitStatus> status_;
};

// The path of program `name`: `name` itself if it contains a slash, else its first match in
// PATH. Throws holt::Error when there is none.
std::string find_executable(const std::string& name);

// Runs `argv` to completion. With capture, returns its stdout and stderr together in `output`;
// without, they go to this process's own. Throws holt::Error if it cannot be started.
struct CommandResult {
    ExitStatus status;
    std::string output;
};
CommandResult run_command(const std::vector<std::string>& argv, bool capture = true);

}  // namespace holt
