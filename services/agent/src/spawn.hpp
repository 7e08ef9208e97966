#pragma once

// Starting a child process: user lookup, environment, pipes or a pseudo-terminal, fork and exec
// with failures reported through a close-on-exec status pipe.

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "holt/agent_protocol/types.hpp"
#include "holt/common/unique_fd.hpp"

namespace holt::agent {

struct UserIdentity {
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary groups from /etc/group
    std::string name;
    std::string home;
    // False when the command runs as the agent's own user (no setuid needed).
    bool switch_user = false;
};

// Resolves a user name or numeric uid through /etc/passwd and /etc/group (read with fgetpwent
// and fgetgrent: getpwnam would need NSS, which a static binary lacks). Empty: the agent's own
// user. Throws OpError EINVAL for an unknown name.
UserIdentity resolve_user(const std::string& user);

// The environment of a command: PATH, HOME, LANG, USER, LOGNAME (and TERM on a terminal), then
// `defaults` (set_env), then `overrides` (the request), as "KEY=VALUE" strings.
std::vector<std::string> build_environment(const UserIdentity& user, bool terminal,
                                           const std::map<std::string, std::string>& defaults,
                                           const std::map<std::string, std::string>& overrides);

struct SpawnOptions {
    std::vector<std::string> argv;
    std::vector<std::string> env;
    std::string cwd;
    UserIdentity user;
    bool pipe_stdin = false;
    std::optional<agent_protocol::TerminalSize> pty;
};

struct SpawnedProcess {
    pid_t pid = -1;
    UniqueFd stdin_fd;   // write end of the stdin pipe or the terminal; empty for /dev/null
    UniqueFd stdout_fd;  // read end of the stdout pipe or the terminal
    UniqueFd stderr_fd;  // read end of the stderr pipe; empty on a terminal
    UniqueFd status_fd;  // EOF once exec succeeded; a ChildFailure when it did not
};

// What the child writes to the status pipe when it cannot start the command.
struct ChildFailure {
    enum Step : int { kExec, kChdir, kSetgroups, kSetgid, kSetuid, kTerminal, kStdio };
    int step = kExec;
    int err = 0;
};

// Forks and starts the command in a new session (its own process group). Every fd of the parent
// end is non-blocking and close-on-exec. Throws OpError when pipes, terminal or fork fail.
SpawnedProcess spawn(const SpawnOptions& options);

// "No such file or directory" for exec, "chdir /x: No such file or directory" for the others.
std::string describe_failure(const ChildFailure& failure, const SpawnOptions& options);

// Sets the window size of a terminal.
void set_window_size(int fd, const agent_protocol::TerminalSize& size);

}  // namespace holt::agent
