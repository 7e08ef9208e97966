#include "process_table.hpp"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json/value_from.hpp>

#include "log.hpp"
#include "op_error.hpp"

namespace holt::agent {

namespace json = boost::json;
using proto::Channel;
using proto::FrameType;
using Clock = std::chrono::steady_clock;

namespace {

// Reads per readiness event of one output pipe.
constexpr int kReadsPerEvent = 8;
// Stdin credit is returned in units of at least this size (or when the queue empties).
constexpr std::size_t kCreditUnit = 16 * 1024;
// End-of-file on a terminal: the VEOF character of the default line discipline (^D).
constexpr char kTerminalEof = '\x04';

// How messages name a command: its argv[0], or its shell command line (shortened).
std::string command_name(const agent_protocol::ExecSpec& spec) {
    if (spec.shell.empty()) {
        return spec.argv.front();
    }
    constexpr std::size_t kMax = 60;
    return "'" + (spec.shell.size() > kMax ? spec.shell.substr(0, kMax) + "..." : spec.shell) + "'";
}

// Signals a process group; falls back to the process itself if it has not yet become a group
// leader (a child killed right after fork, before its setsid).
void kill_group(pid_t pid, int sig) {
    if (::kill(-pid, sig) != 0) {
        ::kill(pid, sig);
    }
}

}  // namespace

struct ProcessTable::Output {
    Channel channel;
    UniqueFd fd;
    std::optional<EventLoop::WatchId> watch;
    bool paused = false;
    RingBuffer ring{0};

    bool open() const { return static_cast<bool>(fd); }
};

struct ProcessTable::Process {
    enum class State { kStarting, kRunning, kFinished };

    std::uint64_t number = 0;
    std::string id;
    pid_t pid = -1;
    std::vector<std::string> argv;
    std::string name;            // for messages: argv[0], or the shell command
    SpawnOptions spawn_options;  // kept to describe a failure to start
    bool background = false;
    bool terminal = false;
    State state = State::kStarting;
    Clock::time_point start = Clock::now();
    std::chrono::system_clock::time_point started_at = std::chrono::system_clock::now();
    std::optional<std::chrono::milliseconds> timeout;
    std::chrono::milliseconds kill_grace{0};

    UniqueFd status_fd;
    std::optional<EventLoop::WatchId> status_watch;
    Output out{Channel::kStdout};
    Output err{Channel::kStderr};

    UniqueFd stdin_fd;
    std::optional<EventLoop::WatchId> stdin_watch;
    std::string stdin_pending;
    bool stdin_eof = false;
    std::uint32_t stdin_owner = 0;  // the stream whose stdin frames are accepted
    std::size_t stdin_credit = 0;   // consumed bytes not yet returned to the owner

    bool reaped = false;
    bool timed_out = false;
    std::optional<agent_protocol::ExitStatus> exit;
    std::optional<EventLoop::TimerId> timeout_timer;
    std::optional<EventLoop::TimerId> drain_timer;

    std::uint32_t exec_stream = 0;  // the stream that started it, while the host is there
    std::vector<std::uint32_t> subscribers;
};

ProcessTable::ProcessTable(EventLoop& loop, Outbox& outbox) : loop_(loop), outbox_(outbox) {}

ProcessTable::~ProcessTable() {
    for (auto& [number, p] : processes_) {
        for (auto watch : {p->status_watch, p->out.watch, p->err.watch, p->stdin_watch}) {
            if (watch) {
                loop_.unwatch(*watch);
            }
        }
        for (auto timer : {p->timeout_timer, p->drain_timer}) {
            if (timer) {
                loop_.cancel_timer(*timer);
            }
        }
    }
}

ProcessTable::Process& ProcessTable::find(const std::string& id, const char* op) const {
    for (const auto& [number, p] : processes_) {
        if (p->id == id) {
            return *p;
        }
    }
    throw OpError("ENOENT", std::string(op) + " " + id + ": no such process");
}

void ProcessTable::exec(std::uint32_t stream, const agent_protocol::ExecSpec& spec) {
    SpawnOptions options;
    options.argv =
        spec.shell.empty() ? spec.argv : std::vector<std::string>{"/bin/sh", "-c", spec.shell};
    const std::string what = "exec " + command_name(spec);
    try {
        options.user = resolve_user(spec.user);
    } catch (const OpError& e) {
        throw OpError(e.code(), what + ": " + e.what());
    }
    options.cwd = spec.cwd;
    if (options.cwd.empty()) {
        struct stat st {};
        options.cwd = ::stat(options.user.home.c_str(), &st) == 0 && S_ISDIR(st.st_mode)
                          ? options.user.home
                          : "/";
    }
    options.env = build_environment(options.user, spec.pty.has_value(), env_defaults_, spec.env);
    options.pipe_stdin = spec.pipe_stdin;
    options.pty = spec.pty;

    SpawnedProcess spawned;
    try {
        spawned = spawn(options);
    } catch (const OpError& e) {
        throw OpError(e.code(), what + ": " + e.what());
    }

    auto owned = std::make_unique<Process>();
    Process& p = *owned;
    p.number = next_id_++;
    p.id = "p-" + std::to_string(p.number);
    p.pid = spawned.pid;
    p.argv = options.argv;
    p.name = command_name(spec);
    p.background = spec.background;
    p.terminal = spec.pty.has_value();
    p.timeout = spec.timeout;
    p.kill_grace = spec.kill_grace;
    p.status_fd = std::move(spawned.status_fd);
    p.out.fd = std::move(spawned.stdout_fd);
    p.err.fd = std::move(spawned.stderr_fd);
    p.stdin_fd = std::move(spawned.stdin_fd);
    if (p.background) {
        p.out.ring = RingBuffer(kRingCapacity);
        p.err.ring = RingBuffer(kRingCapacity);
    }
    p.spawn_options = std::move(options);
    p.exec_stream = stream;
    p.subscribers.push_back(stream);
    streams_[stream] = &p;
    by_pid_[p.pid] = &p;
    processes_.emplace(p.number, std::move(owned));

    p.status_watch =
        loop_.watch(p.status_fd.get(), EPOLLIN, [this, &p](std::uint32_t) { on_status(p); });
    log::debug("exec ", p.id, " pid ", p.pid, ": ", p.name, p.background ? " (background)" : "");
}

bool ProcessTable::alive(std::uint64_t number) const {
    return processes_.count(number) != 0;
}

// The status pipe tells whether exec succeeded (EOF) or why the child could not start. Returns
// false when the process entry is gone (it could not start).
bool ProcessTable::on_status(Process& p) {
    if (p.state != Process::State::kStarting) {
        return true;
    }
    ChildFailure failure;
    ssize_t n = ::read(p.status_fd.get(), &failure, sizeof failure);
    if (n < 0 && errno == EAGAIN) {
        return true;
    }
    loop_.unwatch(*p.status_watch);
    p.status_watch.reset();
    p.status_fd.reset();
    if (n == 0) {
        on_started(p);
        return true;
    }
    if (n != static_cast<ssize_t>(sizeof failure)) {
        failure = ChildFailure{ChildFailure::kExec, n < 0 ? errno : EIO};
    }
    // Could not start: one error reply, and the entry goes (the child exits with 127 and is
    // reaped as an unknown pid).
    const std::string message =
        "exec " + p.name + ": " + describe_failure(failure, p.spawn_options);
    log::debug(p.id, ": ", message);
    for (std::uint32_t stream : p.subscribers) {
        outbox_.send_json(FrameType::kReply, stream,
                          proto::error_reply({proto::errno_name(failure.err), message}));
    }
    erase(p);
    return false;
}

void ProcessTable::send_started(Process& p, std::uint32_t stream, bool with_stdin) {
    json::object event{{"event", "started"},
                       {"process_id", p.id},
                       {"pid", p.pid},
                       {"stdin_window", with_stdin ? proto::kDefaultStdinWindow : 0},
                       {"dropped_stdout", p.out.ring.dropped()},
                       {"dropped_stderr", p.err.ring.dropped()}};
    outbox_.send_json(FrameType::kEvent, stream, event);
}

void ProcessTable::on_started(Process& p) {
    p.state = Process::State::kRunning;
    const bool stdin_open = static_cast<bool>(p.stdin_fd);
    if (stdin_open && p.exec_stream != 0) {
        p.stdin_owner = p.exec_stream;
    }
    for (std::uint32_t stream : p.subscribers) {
        send_started(p, stream, stdin_open && stream == p.stdin_owner);
    }
    start_output(p, p.out);
    start_output(p, p.err);
    if (p.timeout) {
        p.timeout_timer = loop_.add_timer(*p.timeout, [this, &p] {
            p.timeout_timer.reset();
            on_timeout(p);
        });
    }
}

void ProcessTable::start_output(Process& p, Output& out) {
    if (!out.open() || out.watch) {
        return;
    }
    out.paused = false;
    out.watch =
        loop_.watch(out.fd.get(), EPOLLIN, [this, &p, &out](std::uint32_t) { on_output(p, out); });
}

void ProcessTable::on_output(Process& p, Output& out) {
    read_buffer_.resize(proto::kDataChunkSize);
    for (int i = 0; i < kReadsPerEvent; ++i) {
        // Flow control: while the host is behind, leave the bytes in the pipe (the process then
        // blocks on write). Without a reader the output only goes to the ring buffer.
        if (!p.subscribers.empty() && outbox_.congested()) {
            loop_.unwatch(*out.watch);  // unwatch, not modify: a closed pipe keeps reporting HUP
            out.watch.reset();
            out.paused = true;
            return;
        }
        ssize_t n = ::read(out.fd.get(), read_buffer_.data(), read_buffer_.size());
        if (n > 0) {
            deliver(p, out, std::string_view(read_buffer_.data(), static_cast<std::size_t>(n)));
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            return;
        }
        // EOF, or EIO from a terminal whose other side is closed.
        close_output(p, out);
        return;
    }
}

void ProcessTable::deliver(Process& p, Output& out, std::string_view data) {
    if (p.background) {
        out.ring.append(data);
    }
    for (std::uint32_t stream : p.subscribers) {
        outbox_.send(FrameType::kData, out.channel, stream, data);
    }
}

void ProcessTable::close_output(Process& p, Output& out) {
    if (out.watch) {
        loop_.unwatch(*out.watch);
        out.watch.reset();
    }
    out.fd.reset();
    out.paused = false;
    for (std::uint32_t stream : p.subscribers) {
        outbox_.send(FrameType::kEof, out.channel, stream, {});
    }
    maybe_finish(p);
}

void ProcessTable::resume_output() {
    for (auto& [number, p] : processes_) {
        for (Output* out : {&p->out, &p->err}) {
            if (out->paused) {
                start_output(*p, *out);
            }
        }
    }
}

bool ProcessTable::on_stdin(std::uint32_t stream, std::string_view data, bool eof) {
    auto it = streams_.find(stream);
    if (it == streams_.end()) {
        return false;
    }
    Process& p = *it->second;
    if (stream != p.stdin_owner) {
        return true;  // another stream owns stdin now (a later attach)
    }
    if (!p.stdin_fd) {
        // Stdin is closed (the process exited or closed it): drop the bytes but return the
        // credit, so the host is never left waiting for a window that cannot come.
        return_stdin_credit(p, data.size(), true);
        return true;
    }
    if (p.stdin_pending.size() + data.size() > 2 * std::size_t{proto::kDefaultStdinWindow}) {
        log::warn(p.id, ": host sent stdin beyond its window; dropping ", data.size(), " bytes");
        return true;
    }
    p.stdin_pending.append(data);
    p.stdin_eof = p.stdin_eof || eof;
    on_stdin_writable(p);
    return true;
}

void ProcessTable::on_stdin_writable(Process& p) {
    std::size_t written = 0;
    while (p.stdin_fd && !p.stdin_pending.empty()) {
        ssize_t n = ::write(p.stdin_fd.get(), p.stdin_pending.data() + written,
                            p.stdin_pending.size() - written);
        if (n > 0) {
            written += static_cast<std::size_t>(n);
            if (written == p.stdin_pending.size()) {
                break;
            }
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            break;
        }
        // EPIPE: the process closed its stdin. What is left will never be read.
        written = p.stdin_pending.size();
        close_stdin(p);
        break;
    }
    p.stdin_pending.erase(0, written);
    return_stdin_credit(p, written, p.stdin_pending.empty());

    if (!p.stdin_fd) {
        return;
    }
    if (!p.stdin_pending.empty()) {
        if (!p.stdin_watch) {
            p.stdin_watch = loop_.watch(p.stdin_fd.get(), EPOLLOUT,
                                        [this, &p](std::uint32_t) { on_stdin_writable(p); });
        }
        return;
    }
    if (p.stdin_watch) {
        loop_.unwatch(*p.stdin_watch);
        p.stdin_watch.reset();
    }
    if (p.stdin_eof) {
        if (p.terminal) {
            // The terminal is also the process's output: send ^D instead of closing it.
            [[maybe_unused]] ssize_t n = ::write(p.stdin_fd.get(), &kTerminalEof, 1);
            p.stdin_eof = false;
        } else {
            close_stdin(p);
        }
    }
}

void ProcessTable::close_stdin(Process& p) {
    if (p.stdin_watch) {
        loop_.unwatch(*p.stdin_watch);
        p.stdin_watch.reset();
    }
    p.stdin_fd.reset();
    p.stdin_pending.clear();
}

void ProcessTable::return_stdin_credit(Process& p, std::size_t bytes, bool flush) {
    p.stdin_credit += bytes;
    if (p.stdin_owner == 0 || p.stdin_credit == 0 || (!flush && p.stdin_credit < kCreditUnit)) {
        return;
    }
    outbox_.send(FrameType::kWindow, Channel::kStdin, p.stdin_owner,
                 proto::encode_window(static_cast<std::uint32_t>(p.stdin_credit)));
    p.stdin_credit = 0;
}

void ProcessTable::reap() {
    for (;;) {
        int status = 0;
        pid_t pid = ::waitpid(-1, &status, WNOHANG);
        if (pid <= 0) {
            return;  // 0: children remain but none ended; -1: ECHILD
        }
        auto it = by_pid_.find(pid);
        if (it == by_pid_.end()) {
            log::trace("reaped pid ", pid, " (not a command of the agent)");
            continue;
        }
        Process& p = *it->second;
        by_pid_.erase(it);
        on_exit(p, status);
    }
}

void ProcessTable::on_exit(Process& p, int wait_status) {
    p.reaped = true;
    agent_protocol::ExitStatus exit;
    if (WIFEXITED(wait_status)) {
        exit.exit_code = WEXITSTATUS(wait_status);
    } else if (WIFSIGNALED(wait_status)) {
        exit.signal = WTERMSIG(wait_status);
    }
    exit.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - p.start);
    p.exit = exit;
    if (p.timeout_timer) {
        loop_.cancel_timer(*p.timeout_timer);
        p.timeout_timer.reset();
    }
    // The status pipe is complete now that the child is gone.
    if (p.state == Process::State::kStarting && !on_status(p)) {
        return;
    }
    if (p.out.open() || p.err.open()) {
        p.drain_timer = loop_.add_timer(kDrainGrace, [this, &p] {
            p.drain_timer.reset();
            on_drain_deadline(p);
        });
    }
    maybe_finish(p);
}

// The process exited but something it left behind still holds its output pipes.
void ProcessTable::on_drain_deadline(Process& p) {
    const std::uint64_t number = p.number;
    for (Output* out : {&p.out, &p.err}) {
        if (out->paused) {
            // Still draining under flow control: the host is slow, not the pipe stuck.
            p.drain_timer = loop_.add_timer(kDrainGrace, [this, &p] {
                p.drain_timer.reset();
                on_drain_deadline(p);
            });
            return;
        }
    }
    // Take what is already in the pipes, then stop reading. Each step may finish the process
    // (and erase a foreground one), so check it is still there before the next.
    for (Output* out : {&p.out, &p.err}) {
        if (alive(number) && p.state != Process::State::kFinished && out->open()) {
            on_output(p, *out);
        }
    }
    for (Output* out : {&p.out, &p.err}) {
        if (alive(number) && p.state != Process::State::kFinished && out->open()) {
            log::debug(p.id, ": ", proto::to_string(out->channel),
                       " still open after the process exited; closing it");
            close_output(p, *out);
        }
    }
}

void ProcessTable::on_timeout(Process& p) {
    if (p.reaped || p.state == Process::State::kFinished) {
        return;
    }
    p.timed_out = true;
    const pid_t group = p.pid;
    log::debug(p.id, ": timed out after ", p.timeout->count(), " ms; SIGTERM to its group");
    kill_group(group, SIGTERM);
    // SIGKILL whatever is left of the group after the grace period, even if the leader is gone
    // by then (the timer holds the group id, not the process).
    loop_.add_timer(p.kill_grace, [group] { ::kill(-group, SIGKILL); });
}

void ProcessTable::maybe_finish(Process& p) {
    if (p.state == Process::State::kRunning && p.reaped && !p.out.open() && !p.err.open()) {
        finish(p);
    }
}

void ProcessTable::finish(Process& p) {
    p.state = Process::State::kFinished;
    p.exit->timed_out = p.timed_out;
    if (p.drain_timer) {
        loop_.cancel_timer(*p.drain_timer);
        p.drain_timer.reset();
    }
    close_stdin(p);
    json::object reply = json::value_from(*p.exit).as_object();
    reply["process_id"] = p.id;
    reply = proto::ok_reply(std::move(reply));
    for (std::uint32_t stream : p.subscribers) {
        outbox_.send_json(FrameType::kReply, stream, reply);
        streams_.erase(stream);
    }
    p.subscribers.clear();
    p.stdin_owner = 0;
    log::debug(p.id, " ended: ",
               p.exit->exit_code ? "exit " + std::to_string(*p.exit->exit_code)
                                 : "signal " + std::to_string(p.exit->signal.value_or(0)),
               p.timed_out ? " (timed out)" : "");
    if (!p.background) {
        erase(p);
        return;
    }
    trim_exited();
}

void ProcessTable::erase(Process& p) {
    for (auto* watch : {&p.status_watch, &p.out.watch, &p.err.watch, &p.stdin_watch}) {
        if (*watch) {
            loop_.unwatch(**watch);
        }
    }
    for (auto timer : {p.timeout_timer, p.drain_timer}) {
        if (timer) {
            loop_.cancel_timer(*timer);
        }
    }
    for (std::uint32_t stream : p.subscribers) {
        streams_.erase(stream);
    }
    if (!p.reaped) {
        by_pid_.erase(p.pid);
    }
    processes_.erase(p.number);
}

void ProcessTable::trim_exited() {
    std::size_t exited = 0;
    for (const auto& [number, p] : processes_) {
        exited += p->state == Process::State::kFinished;
    }
    for (auto it = processes_.begin(); exited > kMaxExited && it != processes_.end();) {
        Process& p = *(it++)->second;
        if (p.state == Process::State::kFinished) {
            erase(p);
            --exited;
        }
    }
}

void ProcessTable::unsubscribe(Process& p, std::uint32_t stream) {
    std::erase(p.subscribers, stream);
    streams_.erase(stream);
    if (p.stdin_owner == stream) {
        p.stdin_owner = 0;
        p.stdin_credit = 0;
    }
    if (p.exec_stream == stream) {
        p.exec_stream = 0;
    }
}

bool ProcessTable::on_cancel(std::uint32_t stream) {
    auto it = streams_.find(stream);
    if (it == streams_.end()) {
        return false;
    }
    Process& p = *it->second;
    // Cancelling the exec of a foreground command ends the command; anything else detaches.
    if (!p.background && stream == p.exec_stream && p.state != Process::State::kFinished) {
        log::debug(p.id, ": exec cancelled by the host; killing its group");
        kill_group(p.pid, SIGKILL);
    }
    unsubscribe(p, stream);
    return true;
}

void ProcessTable::on_session_end() {
    std::vector<Process*> all;
    for (auto& [number, p] : processes_) {
        all.push_back(p.get());
    }
    for (Process* p : all) {
        for (std::uint32_t stream : std::vector<std::uint32_t>(p->subscribers)) {
            unsubscribe(*p, stream);
        }
        if (!p->background && p->state != Process::State::kFinished) {
            log::debug(p->id, ": host went away; killing the foreground command");
            kill_group(p->pid, SIGKILL);
        }
    }
    streams_.clear();
}

void ProcessTable::attach(std::uint32_t stream, const std::string& id, bool replay) {
    Process& p = find(id, "attach");
    if (p.state == Process::State::kStarting) {
        throw OpError("EAGAIN", "attach " + id + ": the process is still starting");
    }
    const bool take_stdin = static_cast<bool>(p.stdin_fd);
    if (take_stdin) {
        p.stdin_owner = stream;
        p.stdin_credit = 0;
    }
    send_started(p, stream, take_stdin);
    if (replay) {
        for (Output* out : {&p.out, &p.err}) {
            out->ring.for_each([&](std::string_view piece) {
                while (!piece.empty()) {
                    std::string_view chunk = piece.substr(0, proto::kDataChunkSize);
                    outbox_.send(FrameType::kData, out->channel, stream, chunk);
                    piece.remove_prefix(chunk.size());
                }
            });
        }
    }
    for (Output* out : {&p.out, &p.err}) {
        if (!out->open() && !(p.terminal && out == &p.err)) {
            outbox_.send(FrameType::kEof, out->channel, stream, {});
        }
    }
    if (p.state == Process::State::kFinished) {
        json::object reply = json::value_from(*p.exit).as_object();
        reply["process_id"] = p.id;
        outbox_.send_json(FrameType::kReply, stream, proto::ok_reply(std::move(reply)));
        return;
    }
    p.subscribers.push_back(stream);
    streams_[stream] = &p;
}

void ProcessTable::signal(const std::string& id, int sig, bool group) {
    Process& p = find(id, "signal");
    if (p.reaped && !group) {
        throw OpError("ESRCH", "signal " + id + ": the process has exited");
    }
    if (p.state == Process::State::kFinished) {
        throw OpError("ESRCH", "signal " + id + ": the process has exited");
    }
    if (::kill(group ? -p.pid : p.pid, sig) != 0) {
        throw errno_error("signal " + id);
    }
}

void ProcessTable::resize(const std::string& id, const agent_protocol::TerminalSize& size) {
    Process& p = find(id, "resize");
    if (!p.terminal) {
        throw OpError("ENOTTY", "resize " + id + ": the process has no terminal");
    }
    if (!p.stdin_fd && !p.out.open()) {
        throw OpError("ESRCH", "resize " + id + ": the process has exited");
    }
    set_window_size(p.out.open() ? p.out.fd.get() : p.stdin_fd.get(), size);
}

void ProcessTable::forget(const std::string& id) {
    Process& p = find(id, "forget");
    if (p.state != Process::State::kFinished) {
        throw OpError("EBUSY", "forget " + id + ": the process is still running");
    }
    erase(p);
}

std::vector<agent_protocol::ProcessInfo> ProcessTable::list() const {
    std::vector<agent_protocol::ProcessInfo> out;
    for (const auto& [number, p] : processes_) {
        agent_protocol::ProcessInfo info;
        info.id = p->id;
        info.pid = p->pid;
        info.argv = p->argv;
        info.background = p->background;
        info.running = p->state != Process::State::kFinished;
        if (p->state == Process::State::kFinished) {
            info.exit = p->exit;
        }
        info.started_at = p->started_at;
        info.dropped_stdout = p->out.ring.dropped();
        info.dropped_stderr = p->err.ring.dropped();
        out.push_back(std::move(info));
    }
    return out;
}

int ProcessTable::running() const {
    int count = 0;
    for (const auto& [number, p] : processes_) {
        count += p->state != Process::State::kFinished;
    }
    return count;
}

void ProcessTable::set_env(const std::map<std::string, std::string>& set,
                           const std::vector<std::string>& unset) {
    for (const std::string& key : unset) {
        env_defaults_.erase(key);
    }
    for (const auto& [key, value] : set) {
        env_defaults_[key] = value;
    }
}

void ProcessTable::kill_all() {
    for (auto& [number, p] : processes_) {
        if (p->state != Process::State::kFinished) {
            kill_group(p->pid, SIGKILL);
        }
    }
}

}  // namespace holt::agent
