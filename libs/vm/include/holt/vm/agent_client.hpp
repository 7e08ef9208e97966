#pragma once

// The host's client of the guest agent (services/agent), speaking the agent protocol
// (docs/agent-protocol.md) over one byte stream: the unix socket QEMU serves for the guest's
// virtio-serial port, or any connected socket.
//
// One reader thread per client dispatches frames to per-stream state, so calls from several
// threads run concurrently (each uses its own stream). Every call has a bounded wait; a guest that
// stops answering makes calls fail with holt::Error instead of hanging. Errors the guest reports
// ("read /x: No such file or directory") are AgentError with the errno name as code().

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "holt/agent_protocol/types.hpp"
#include "holt/common/error.hpp"

namespace holt::vm {

using agent_protocol::DirEntry;
using agent_protocol::ExitStatus;
using agent_protocol::FileStat;
using agent_protocol::FileType;
using agent_protocol::HealthInfo;
using agent_protocol::ProcessInfo;
using agent_protocol::TerminalSize;
using agent_protocol::WriteOptions;

// An error the agent reported for one request. code() is an errno name ("ENOENT", "EISDIR",
// "EACCES", ...) or "EINVAL" for a request the agent rejected, so callers can map it (404, 400).
class AgentError : public Error {
  public:
    AgentError(std::string code, const std::string& message)
        : Error(message), code_(std::move(code)) {}

    const std::string& code() const { return code_; }

  private:
    std::string code_;
};

struct AgentClientOptions {
    // Longest wait for the reply to a control call (health, stat, list, signal, ...).
    std::chrono::milliseconds call_timeout{std::chrono::seconds(30)};
    // Longest a transfer (file data, stdin) may go without progress.
    std::chrono::milliseconds io_timeout{std::chrono::seconds(30)};
    // The timeout of a foreground command whose request sets none; also the longest wait() of a
    // session without a timeout of its own.
    std::chrono::milliseconds default_exec_timeout{std::chrono::minutes(10)};
    // Shown in the agent's log.
    std::string client_name = "holt";
    // Called between connection attempts and hello retries while connect_unix() waits for the
    // agent (about once a second at most); it may throw to give up early, e.g. when the VM died.
    std::function<void()> while_waiting;
    // The VM was just restored from a snapshot: the hello asks the agent to set the guest's
    // clock to the host's and to reseed its RNG with fresh host entropy before it answers, and
    // the connection fails if it does not.
    bool after_restore = false;
};

// What to run (see agent_protocol::ExecSpec for argv, shell, env, cwd, user, pipe_stdin,
// timeout, kill_grace, pty and background), plus what run() needs.
struct ExecRequest : agent_protocol::ExecSpec {
    // run(): bytes for the command's stdin, which is then closed (implies pipe_stdin).
    std::optional<std::string> stdin_data;
    // run(): output kept per stream; the rest is dropped and ExecResult::output_truncated set.
    std::size_t max_output = 16 * 1024 * 1024;
};

struct ExecResult {
    ExitStatus status;
    std::string stdout_data;
    std::string stderr_data;
    bool output_truncated = false;
    std::string process_id;
};

// Called on the client's reader thread, in the order the command produced the bytes. They must
// not block for long (they hold up every other stream of the client) and must not wait for
// another reply of the same client.
struct ExecCallbacks {
    std::function<void(std::string_view)> on_stdout;
    std::function<void(std::string_view)> on_stderr;
};

// A started (or attached) command. Destroying a session whose command still runs stops receiving
// its output; a foreground command is then killed, a background one keeps running.
class ExecSession {
  public:
    virtual ~ExecSession() = default;

    virtual const std::string& process_id() const = 0;
    virtual int pid() const = 0;

    // Sends bytes to the command's stdin, waiting for the agent's window (io_timeout at most).
    // Returns false when the command has already ended. Needs pipe_stdin (or a pty).
    virtual bool write_stdin(std::string_view data) = 0;
    virtual void close_stdin() = 0;
    // Signals the command's process group.
    virtual void signal(int sig) = 0;
    virtual void resize(TerminalSize size) = 0;

    // The exit status once the command ended (and its output was delivered), or nullopt when
    // `timeout` passed first.
    virtual std::optional<ExitStatus> wait_for(std::chrono::milliseconds timeout) = 0;
    // Waits for the exit status, at most the command's timeout plus its kill grace plus a
    // margin (default_exec_timeout when it has none). Throws holt::Error when that passes.
    virtual ExitStatus wait() = 0;
};

class AgentClient {
  public:
    using Clock = std::chrono::steady_clock;

    virtual ~AgentClient() = default;

    // Connects to the agent behind a unix socket (QEMU's chardev for the guest's agent.0 port),
    // retrying the connection and the handshake until the agent answers or `deadline` passes.
    // Throws holt::Error ("connect to agent at ...: handshake: no answer after 5.0s").
    static std::unique_ptr<AgentClient> connect_unix(const std::filesystem::path& socket,
                                                     Clock::time_point deadline,
                                                     AgentClientOptions options = {});
    // Takes over a connected stream socket (a socketpair to an agent process in tests, or a TCP
    // connection) and performs the handshake before `deadline`.
    static std::unique_ptr<AgentClient> adopt(int fd, Clock::time_point deadline,
                                              AgentClientOptions options = {});

    // False once the connection failed or was closed; every call then throws.
    virtual bool connected() const = 0;
    // What the agent said in the handshake.
    virtual const std::string& agent_version() const = 0;
    virtual const std::string& boot_id() const = 0;

    virtual HealthInfo health() = 0;

    // Runs a command to its end and returns its output. A foreground command without a timeout
    // gets default_exec_timeout. Throws AgentError when it cannot start (ENOENT, EACCES, ...).
    virtual ExecResult run(const ExecRequest& request) = 0;
    // Starts a command and streams its output to `callbacks`. Returns once it has started.
    virtual std::unique_ptr<ExecSession> start(const ExecRequest& request,
                                               ExecCallbacks callbacks) = 0;
    // Re-attaches to a process (typically a background one started by an earlier connection):
    // its buffered output is replayed, then live output follows, then the exit.
    virtual std::unique_ptr<ExecSession> attach(const std::string& process_id,
                                                ExecCallbacks callbacks) = 0;
    virtual std::vector<ProcessInfo> processes() = 0;
    // Signals a process's group.
    virtual void signal(const std::string& process_id, int sig) = 0;
    // Drops an exited background process from the agent's table.
    virtual void forget(const std::string& process_id) = 0;

    // Streams `data` into a guest file (written to a temporary file and renamed into place
    // unless appending). Returns the bytes written.
    virtual std::uint64_t write_file(const std::string& guest_path, std::istream& data,
                                     const WriteOptions& options) = 0;
    virtual std::uint64_t write_file_from(const std::string& guest_path,
                                          const std::filesystem::path& host_path,
                                          const WriteOptions& options) = 0;
    // Streams a guest file to `sink` (called on the calling thread) or to `out`.
    virtual std::uint64_t read_file(const std::string& guest_path,
                                    const std::function<void(std::string_view)>& sink) = 0;
    virtual std::uint64_t read_file(const std::string& guest_path, std::ostream& out) = 0;
    virtual std::uint64_t read_file_to(const std::string& guest_path,
                                       const std::filesystem::path& host_path) = 0;

    virtual FileStat stat(const std::string& guest_path, bool follow_symlinks) = 0;
    // Entries below `guest_path`, `depth` levels down (1: the directory itself), sorted by name
    // within each directory, at most `limit` of them.
    virtual std::vector<DirEntry> list(const std::string& guest_path, int depth,
                                       std::size_t limit) = 0;
    virtual void mkdir(const std::string& guest_path, bool parents, std::uint32_t mode) = 0;
    virtual void remove(const std::string& guest_path, bool recursive) = 0;
    virtual void rename(const std::string& from, const std::string& to) = 0;

    // After a restore: the guest's wall clock, fresh entropy (up to 4096 bytes), and the default
    // environment of later commands.
    virtual void set_time(std::chrono::system_clock::time_point now) = 0;
    virtual void add_entropy(std::span<const std::byte> bytes) = 0;
    virtual void set_env(const std::map<std::string, std::string>& env,
                         const std::vector<std::string>& unset) = 0;

    // Convenience overloads.
    FileStat stat(const std::string& guest_path) { return stat(guest_path, true); }
    std::vector<DirEntry> list(const std::string& guest_path, int depth = 1) {
        return list(guest_path, depth, 10000);
    }
    std::uint64_t write_file(const std::string& guest_path, std::istream& data) {
        return write_file(guest_path, data, WriteOptions{});
    }
};

}  // namespace holt::vm
