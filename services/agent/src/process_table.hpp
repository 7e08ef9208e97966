#pragma once

// The processes the agent started: exec and attach streams, output pumping with flow control,
// ring buffers of background processes, stdin with credit, timeouts, and reaping.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "event_loop.hpp"
#include "holt/agent_protocol/types.hpp"
#include "outbox.hpp"
#include "ring_buffer.hpp"
#include "spawn.hpp"

namespace holt::agent {

class ProcessTable {
  public:
    // Output kept per stream of a background process, for attach.
    static constexpr std::size_t kRingCapacity = 1024 * 1024;
    // Exited background processes kept for list and attach until forgotten; beyond this many the
    // oldest are dropped.
    static constexpr std::size_t kMaxExited = 256;
    // How long output pipes may stay open after the process exited (a daemon it left behind
    // holds them) before the agent stops reading and reports the exit.
    static constexpr std::chrono::milliseconds kDrainGrace{500};

    ProcessTable(EventLoop& loop, Outbox& outbox);
    ~ProcessTable();

    // Starts a command for the exec request on `stream`. Its progress follows on the stream: a
    // "started" event, data and eof frames of stdout and stderr, a reply with the exit status.
    // Throws OpError when the command cannot start (then nothing else is sent).
    void exec(std::uint32_t stream, const agent_protocol::ExecSpec& spec);
    // Streams a process's buffered output, then its live output, then its exit, on `stream`.
    void attach(std::uint32_t stream, const std::string& id, bool replay);
    void signal(const std::string& id, int sig, bool group);
    void resize(const std::string& id, const agent_protocol::TerminalSize& size);
    void forget(const std::string& id);
    std::vector<agent_protocol::ProcessInfo> list() const;
    int running() const;

    // Default environment of later commands (set_env).
    void set_env(const std::map<std::string, std::string>& set,
                 const std::vector<std::string>& unset);

    bool owns_stream(std::uint32_t stream) const { return streams_.count(stream) != 0; }
    // Host frames of a process stream; false when `stream` is not one.
    bool on_stdin(std::uint32_t stream, std::string_view data, bool eof);
    bool on_cancel(std::uint32_t stream);

    // SIGCHLD: reaps every child that ended, including orphans the agent inherited as PID 1.
    void reap();
    // The host went away: foreground processes are killed, every stream is dropped.
    void on_session_end();
    // The outbox drained below its low-water mark: read paused outputs again.
    void resume_output();
    // SIGKILLs every process group (the agent is exiting).
    void kill_all();

  private:
    struct Process;
    struct Output;

    Process& find(const std::string& id, const char* op) const;
    bool alive(std::uint64_t number) const;
    bool on_status(Process& p);
    void on_started(Process& p);
    void start_output(Process& p, Output& out);
    void on_output(Process& p, Output& out);
    void deliver(Process& p, Output& out, std::string_view data);
    void close_output(Process& p, Output& out);
    void on_stdin_writable(Process& p);
    void close_stdin(Process& p);
    void return_stdin_credit(Process& p, std::size_t bytes, bool flush);
    void on_exit(Process& p, int wait_status);
    void on_drain_deadline(Process& p);
    void on_timeout(Process& p);
    void maybe_finish(Process& p);
    void finish(Process& p);
    void unsubscribe(Process& p, std::uint32_t stream);
    void send_started(Process& p, std::uint32_t stream, bool with_stdin);
    void erase(Process& p);
    void trim_exited();

    EventLoop& loop_;
    Outbox& outbox_;
    std::uint64_t next_id_ = 1;
    std::map<std::uint64_t, std::unique_ptr<Process>> processes_;
    std::unordered_map<pid_t, Process*> by_pid_;
    std::unordered_map<std::uint32_t, Process*> streams_;
    std::map<std::string, std::string> env_defaults_;
    std::string read_buffer_;
};

}  // namespace holt::agent
