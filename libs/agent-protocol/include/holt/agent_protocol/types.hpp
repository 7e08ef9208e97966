#pragma once

// The values the agent protocol carries, as plain C++ types. They are shared by the guest agent
// and the host client (which exposes them in its API); messages.hpp converts them to and from the
// JSON payloads of control frames. This header stays free of Boost so that it is cheap to include.

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace holt::agent_protocol {

// Names of the operations a request can carry in its "op" field.
namespace op {
inline constexpr const char* kHealth = "health";
inline constexpr const char* kExec = "exec";
inline constexpr const char* kAttach = "attach";
inline constexpr const char* kSignal = "signal";
inline constexpr const char* kResize = "resize";
inline constexpr const char* kProcesses = "processes";
inline constexpr const char* kForget = "forget";
inline constexpr const char* kWriteFile = "write_file";
inline constexpr const char* kReadFile = "read_file";
inline constexpr const char* kStat = "stat";
inline constexpr const char* kList = "list";
inline constexpr const char* kMkdir = "mkdir";
inline constexpr const char* kRemove = "remove";
inline constexpr const char* kRename = "rename";
inline constexpr const char* kSetTime = "set_time";
inline constexpr const char* kAddEntropy = "add_entropy";
inline constexpr const char* kSetEnv = "set_env";
// Reserved for freezing filesystems around snapshots; the agent answers ENOSYS for now.
inline constexpr const char* kFreeze = "fs_freeze";
inline constexpr const char* kThaw = "fs_thaw";
}  // namespace op

// Flow control defaults (see docs/agent-protocol.md, "Flow control").
// Credit a receiver grants a sender of file data before the first window update.
inline constexpr std::uint32_t kDefaultFileWindow = 4 * 1024 * 1024;
// Credit the agent grants for a process's stdin.
inline constexpr std::uint32_t kDefaultStdinWindow = 256 * 1024;

struct TerminalSize {
    std::uint16_t rows = 24;
    std::uint16_t cols = 80;
};

// What to run and how. Exactly one of argv and shell is set.
struct ExecSpec {
    // argv[0] is looked up in PATH (of the command's environment) unless it contains a slash.
    std::vector<std::string> argv;
    // A command line for /bin/sh -c.
    std::string shell;
    // Merged over the agent's defaults (PATH, HOME, LANG, USER, plus set_env defaults).
    std::map<std::string, std::string> env;
    // Working directory; empty: the user's home directory if it exists, else /.
    std::string cwd;
    // User name or numeric uid, resolved through the guest's /etc/passwd; empty: the agent's user.
    std::string user;
    // True: the host streams stdin (data frames, then eof). False: stdin is /dev/null.
    bool pipe_stdin = false;
    // Kill the process group after this long (SIGTERM, then SIGKILL after kill_grace). Unset or
    // zero: no timeout.
    std::optional<std::chrono::milliseconds> timeout;
    std::chrono::milliseconds kill_grace{2000};
    // Run on a pseudo-terminal of this size; stdout and stderr then arrive merged on stdout.
    std::optional<TerminalSize> pty;
    // Keep running when the host disconnects; output is kept in a ring buffer for attach.
    bool background = false;
};

// How a process ended.
struct ExitStatus {
    std::optional<int> exit_code;  // set when it exited
    std::optional<int> signal;     // set when a signal ended it
    bool timed_out = false;        // the agent killed it because its timeout passed
    std::chrono::milliseconds duration{0};

    bool success() const { return exit_code == 0 && !timed_out; }
};

// A process the agent started, as listed by the processes op.
struct ProcessInfo {
    std::string id;  // "p-12"
    int pid = 0;
    std::vector<std::string> argv;  // for shell commands: {"/bin/sh", "-c", command}
    bool background = false;
    bool running = false;
    std::optional<ExitStatus> exit;  // set once it has ended
    std::chrono::system_clock::time_point started_at;
    // Bytes dropped from the front of each output ring buffer (background processes).
    std::uint64_t dropped_stdout = 0;
    std::uint64_t dropped_stderr = 0;
};

struct HealthInfo {
    std::string agent_version;
    int protocol_version = 0;
    std::string boot_id;
    std::chrono::milliseconds uptime{0};
    std::array<double, 3> load{};  // 1, 5 and 15 minute load averages
    int running_processes = 0;     // processes started by the agent that still run
    bool pid1 = false;             // the agent is the guest's init
};

enum class FileType { kRegular, kDirectory, kSymlink, kFifo, kSocket, kCharDevice, kBlockDevice };

const char* to_string(FileType type);
std::optional<FileType> file_type_from_string(const std::string& name);

struct FileStat {
    std::string path;
    FileType type = FileType::kRegular;
    std::uint64_t size = 0;
    std::uint32_t mode = 0;  // permission bits (07777)
    std::chrono::system_clock::time_point mtime;
    std::uint32_t uid = 0;
    std::uint32_t gid = 0;
    std::string link_target;  // for symlinks
};

struct DirEntry {
    std::string path;  // relative to the listed directory ("sub/file.txt")
    std::string name;  // last component
    FileType type = FileType::kRegular;
    std::uint64_t size = 0;
    std::uint32_t mode = 0;
    std::chrono::system_clock::time_point mtime;
};

struct WriteOptions {
    std::uint32_t mode = 0644;
    bool append = false;        // append to the file instead of replacing it
    bool make_parents = false;  // create missing parent directories
};

}  // namespace holt::agent_protocol
