#include "holt/vm/agent_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/algorithm/hex.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value_from.hpp>
#include <boost/json/value_to.hpp>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <istream>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "holt/agent_protocol/frame.hpp"
#include "holt/agent_protocol/messages.hpp"
#include "holt/common/log.hpp"
#include "holt/common/unique_fd.hpp"

namespace holt::vm {
namespace {

namespace proto = holt::agent_protocol;
namespace json = boost::json;
using proto::Channel;
using proto::Frame;
using proto::FrameType;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// How long one handshake attempt waits before the hello is sent again.
constexpr auto kHelloRetry = 1s;
// How long connect_unix waits between attempts to connect to the socket.
constexpr auto kConnectRetry = 2ms;
// Fresh entropy for the guest's RNG in the hello after a restore.
constexpr std::size_t kRestoreEntropyBytes = 64;
// Extra time wait() allows beyond a command's timeout and kill grace.
constexpr auto kExitMargin = 10s;
// The host returns read_file credit once it has consumed this fraction of the window.
constexpr std::uint32_t kReadWindow = proto::kDefaultFileWindow;
constexpr std::uint32_t kReadCreditUnit = kReadWindow / 4;

std::string seconds_text(Clock::duration d) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1fs", std::chrono::duration<double>(d).count());
    return text;
}

std::string random_nonce() {
    std::random_device device;
    std::uniform_int_distribution<std::uint64_t> dist;
    char text[40];
    std::snprintf(text, sizeof text, "%016llx%016llx",
                  static_cast<unsigned long long>(dist(device)),
                  static_cast<unsigned long long>(dist(device)));
    return text;
}

// `size` bytes from the host's kernel RNG, hex-encoded.
std::string random_hex(std::size_t size) {
    std::string bytes(size, '\0');
    if (::getrandom(bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size())) {
        throw_errno("getrandom");
    }
    std::string hex;
    boost::algorithm::hex_lower(bytes, std::back_inserter(hex));
    return hex;
}

// Waits for `events` on fd until the deadline. False on timeout.
bool wait_fd(int fd, short events, Clock::time_point deadline, int wake_fd = -1) {
    for (;;) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) {
            return false;
        }
        pollfd fds[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
        int n = ::poll(fds, wake_fd >= 0 ? 2 : 1,
                       static_cast<int>(std::min<long long>(left.count(), 60'000)));
        if (n > 0) {
            return true;
        }
        if (n < 0 && errno != EINTR) {
            return true;  // let the following read or write report the error
        }
    }
}

// Writes all of `bytes` to a non-blocking fd, waiting at most `timeout` for each bit of
// progress. Throws holt::Error.
void write_all(int fd, std::string_view bytes, std::chrono::milliseconds timeout) {
    while (!bytes.empty()) {
        ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == ENOTSOCK) {
            n = ::write(fd, bytes.data(), bytes.size());
        }
        if (n > 0) {
            bytes.remove_prefix(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            if (!wait_fd(fd, POLLOUT, Clock::now() + timeout)) {
                throw Error("write to the agent: no progress for " + seconds_text(timeout) +
                            " (is the guest stuck?)");
            }
            continue;
        }
        throw Error(std::string("write to the agent: ") + std::strerror(errno));
    }
}

void set_nonblocking(int fd) {
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        throw_errno("set O_NONBLOCK on the agent connection");
    }
}

// Converts a JSON value of an agent reply. The guest is untrusted: a malformed reply is a
// holt::Error naming the call, whatever Boost.JSON threw.
template <typename T>
T convert(const json::value& value, const std::string& what) {
    try {
        return json::value_to<T>(value);
    } catch (const std::exception& e) {
        throw Error(what + ": malformed reply from the agent: " + e.what());
    }
}

json::object parse_payload(const Frame& frame, const std::string& what) {
    try {
        return proto::parse_object(frame.payload);
    } catch (const std::exception& e) {
        throw Error(what + ": malformed message from the agent: " + e.what());
    }
}

std::int64_t integer_field(const json::object& object, std::string_view key,
                           const std::string& what) {
    try {
        return proto::FieldReader(object, "reply").integer(key);
    } catch (const std::exception& e) {
        throw Error(what + ": malformed message from the agent: " + e.what());
    }
}

// What the handshake learned, plus bytes that followed the hello_ack.
struct Handshake {
    proto::HelloAck ack;
    std::string leftover;
};

// Sends the sync sequence and a hello, then skips everything up to the agent's sync sequence
// and a hello_ack with our nonce. Throws holt::Error on timeout or a closed connection.
Handshake handshake(int fd, Clock::time_point deadline, const AgentClientOptions& options) {
    const std::string& client_name = options.client_name;
    const std::string nonce = random_nonce();
    // Each attempt carries the clock of the moment it is sent.
    auto hello_frame = [&] {
        proto::Hello hello{nonce, proto::kProtocolVersion, client_name};
        if (options.after_restore) {
            hello.set_time_unix_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count();
            hello.add_entropy_hex = random_hex(kRestoreEntropyBytes);
        }
        return proto::encode_frame(FrameType::kHello, Channel::kNone, 0,
                                   json::serialize(json::value_from(hello)));
    };
    // While hunting for the agent's answer, anything but a small hello_ack is noise.
    proto::FrameDecoder decoder(true, {.max_payload = 0, .max_json = 4096});
    const Clock::time_point start = Clock::now();
    std::string buffer(64 * 1024, '\0');
    for (int attempt = 0;; ++attempt) {
        std::string out;
        if (attempt > 0) {
            // The agent may sit in the middle of a frame of an earlier host it never saw leave:
            // zeros complete that frame and then fail its header check, which makes the agent
            // look for the sync sequence that follows.
            out.assign(proto::kHeaderSize + proto::kMaxPayloadSize, '\0');
        }
        out.append(proto::sync_magic());
        out.append(hello_frame());
        write_all(
            fd, out,
            std::max(1ms, std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now())));

        if (attempt > 0 && options.while_waiting) {
            options.while_waiting();
        }
        const Clock::time_point resend = std::min(deadline, Clock::now() + kHelloRetry);
        while (Clock::now() < resend) {
            if (!wait_fd(fd, POLLIN, resend)) {
                break;
            }
            ssize_t n = ::read(fd, buffer.data(), buffer.size());
            if (n == 0) {
                throw Error("handshake: the connection closed");
            }
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) {
                    continue;
                }
                throw Error(std::string("handshake: read: ") + std::strerror(errno));
            }
            std::string_view input(buffer.data(), static_cast<std::size_t>(n));
            Frame frame;
            for (;;) {
                auto status = decoder.decode(input, frame);
                if (status == proto::FrameDecoder::kNeedMore) {
                    break;
                }
                if (status == proto::FrameDecoder::kFrame && frame.type == FrameType::kHelloAck) {
                    try {
                        auto ack = json::value_to<proto::HelloAck>(
                            json::value(proto::parse_object(frame.payload)));
                        if (ack.nonce == nonce) {
                            return Handshake{std::move(ack), std::string(input)};
                        }
                    } catch (const proto::MessageError&) {
                    }
                }
                decoder.resync();  // not our answer: look for the next sync sequence
            }
        }
        if (Clock::now() >= deadline) {
            throw Error("handshake: no answer after " + seconds_text(Clock::now() - start));
        }
    }
}

// ---------------------------------------------------------------------------------------------

// The frames of one stream, filled by the reader thread.
struct Stream {
    std::uint32_t id = 0;
    std::mutex mutex;
    std::condition_variable changed;
    std::deque<Frame> frames;
    bool ended = false;        // the reply arrived, or the connection failed
    std::string failure;       // set when the connection failed
    std::uint64_t window = 0;  // credit the agent granted for our data
    // When set, data and eof frames go here (on the reader thread) instead of `frames`.
    std::function<void(const Frame&)> on_data;
    // Held while on_data runs; detach() waits for a running call, so that no callback runs once
    // its owner is gone. Recursive: an owner may go away from inside its own callback.
    std::recursive_mutex callback_mutex;
    bool detached = false;

    bool is_ended() {
        std::lock_guard lock(mutex);
        return ended;
    }

    void detach() {
        std::lock_guard lock(callback_mutex);
        detached = true;
    }
};

// The connection: writes from any thread, one reader thread, the table of open streams.
class Connection {
  public:
    Connection(UniqueFd fd, AgentClientOptions options, Handshake handshake)
        : fd_(std::move(fd)),
          wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
          options_(std::move(options)),
          ack_(std::move(handshake.ack)),
          leftover_(std::move(handshake.leftover)) {
        if (wake_.get() < 0) {
            throw_errno("agent connection: eventfd");
        }
    }

    const AgentClientOptions& options() const { return options_; }
    const proto::HelloAck& ack() const { return ack_; }

    bool connected() const {
        std::lock_guard lock(mutex_);
        return !closed_;
    }

    std::shared_ptr<Stream> open_stream(std::function<void(const Frame&)> on_data = {}) {
        auto stream = std::make_shared<Stream>();
        stream->on_data = std::move(on_data);
        std::lock_guard lock(mutex_);
        if (closed_) {
            throw Error("agent connection closed: " + close_reason_);
        }
        do {
            stream->id = next_stream_++;
            if (next_stream_ == 0) {
                next_stream_ = 1;
            }
        } while (streams_.count(stream->id) != 0);
        streams_.emplace(stream->id, stream);
        return stream;
    }

    void close_stream(const Stream& stream) {
        std::lock_guard lock(mutex_);
        streams_.erase(stream.id);
    }

    void send(FrameType type, Channel channel, std::uint32_t stream, std::string_view payload) {
        std::string bytes = proto::encode_frame(type, channel, stream, payload);
        std::lock_guard lock(write_mutex_);
        {
            std::lock_guard state(mutex_);
            if (closed_) {
                throw Error("agent connection closed: " + close_reason_);
            }
        }
        try {
            write_all(fd_.get(), bytes, options_.io_timeout);
        } catch (const Error& e) {
            // A frame may be half written: the stream is unusable from here on.
            fail(e.what());
            throw Error(std::string("agent connection closed: ") + e.what());
        }
    }

    void send_json(FrameType type, std::uint32_t stream, const json::object& payload) {
        send(type, Channel::kNone, stream, json::serialize(payload));
    }

    // Tells the agent to drop a stream, ignoring a connection that is already gone.
    void cancel(const Stream& stream) {
        close_stream(stream);
        try {
            send(FrameType::kCancel, Channel::kNone, stream.id, {});
        } catch (const Error&) {
        }
    }

    // The next frame of a stream. Throws holt::Error when the connection fails or `timeout`
    // passes first (`what` names the call).
    Frame next(Stream& stream, std::chrono::milliseconds timeout, const std::string& what) {
        std::unique_lock lock(stream.mutex);
        if (!stream.changed.wait_for(
                lock, timeout, [&] { return !stream.frames.empty() || !stream.failure.empty(); })) {
            throw Error(what + ": no answer from the agent after " + seconds_text(timeout));
        }
        if (stream.frames.empty()) {
            throw Error(what + ": agent connection closed: " + stream.failure);
        }
        Frame frame = std::move(stream.frames.front());
        stream.frames.pop_front();
        return frame;
    }

    // A request and its reply, for operations that answer with one reply (events are passed to
    // on_event). Throws AgentError for an error reply.
    json::object call(json::object request, const std::string& what,
                      const std::function<void(const json::object&)>& on_event = {}) {
        auto stream = open_stream();
        try {
            send_json(FrameType::kRequest, stream->id, request);
            for (;;) {
                Frame frame = next(*stream, options_.call_timeout, what);
                if (frame.type == FrameType::kEvent && on_event) {
                    on_event(parse_payload(frame, what));
                } else if (frame.type == FrameType::kReply) {
                    return reply_fields(frame, what);
                }
            }
        } catch (...) {
            if (!stream->is_ended()) {
                cancel(*stream);
            }
            throw;
        }
    }

    // The fields of a successful reply; AgentError for an error reply.
    static json::object reply_fields(const Frame& frame, const std::string& what) {
        json::object reply = parse_payload(frame, what);
        if (auto error = proto::reply_error(reply)) {
            throw AgentError(error->code, error->message);
        }
        return reply;
    }

    // Waits until the agent granted credit on a stream (or the stream ended). Returns the
    // credit, 0 when the stream ended.
    std::uint64_t wait_window(Stream& stream, const std::string& what) {
        std::unique_lock lock(stream.mutex);
        if (!stream.changed.wait_for(lock, options_.io_timeout, [&] {
                return stream.window > 0 || stream.ended || !stream.frames.empty();
            })) {
            throw Error(what + ": the agent granted no window for " +
                        seconds_text(options_.io_timeout));
        }
        if (!stream.failure.empty()) {
            throw Error(what + ": agent connection closed: " + stream.failure);
        }
        return stream.window;
    }

    void take_window(Stream& stream, std::uint64_t bytes) {
        std::lock_guard lock(stream.mutex);
        stream.window -= std::min(stream.window, bytes);
    }

    // The reader thread: decode frames and route them to their streams until the connection
    // ends.
    void read_loop() {
        proto::FrameDecoder decoder;
        std::string buffer(256 * 1024, '\0');
        std::string reason = "closed by the agent";
        try {
            std::string_view input = leftover_;
            for (;;) {
                Frame frame;
                for (;;) {
                    auto status = decoder.decode(input, frame);
                    if (status == proto::FrameDecoder::kNeedMore) {
                        break;
                    }
                    if (status == proto::FrameDecoder::kError) {
                        throw Error("protocol error from the agent: " + decoder.error());
                    }
                    dispatch(frame);
                }
                pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
                if (::poll(fds, 2, -1) < 0) {
                    if (errno == EINTR) {
                        continue;
                    }
                    throw Error(std::string("poll: ") + std::strerror(errno));
                }
                if (fds[1].revents != 0) {
                    reason = "closed by the host";
                    break;
                }
                ssize_t n = ::read(fd_.get(), buffer.data(), buffer.size());
                if (n == 0) {
                    break;
                }
                if (n < 0) {
                    if (errno == EAGAIN || errno == EINTR) {
                        input = {};
                        continue;
                    }
                    throw Error(std::string("read: ") + std::strerror(errno));
                }
                input = std::string_view(buffer.data(), static_cast<std::size_t>(n));
            }
        } catch (const std::exception& e) {
            reason = e.what();
            log::get("agent")->warn("agent connection failed: {}", reason);
        }
        fail(reason);
    }

    // Ends the connection: the reader stops and every waiting call fails.
    void shutdown() {
        std::uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof one);
    }

  private:
    void dispatch(Frame& frame) {
        std::shared_ptr<Stream> stream;
        {
            std::lock_guard lock(mutex_);
            auto it = streams_.find(frame.stream);
            if (it == streams_.end()) {
                return;  // a stream we gave up on
            }
            stream = it->second;
            if (frame.type == FrameType::kReply) {
                streams_.erase(it);
            }
        }
        if (frame.type == FrameType::kWindow) {
            std::uint32_t credit = 0;
            if (proto::decode_window(frame.payload, credit)) {
                std::lock_guard lock(stream->mutex);
                stream->window += credit;
            }
            stream->changed.notify_all();
            return;
        }
        if (stream->on_data && (frame.type == FrameType::kData || frame.type == FrameType::kEof)) {
            try {
                std::lock_guard lock(stream->callback_mutex);
                if (!stream->detached) {
                    stream->on_data(frame);
                }
            } catch (const std::exception& e) {
                // A failing callback loses its own output, not the connection.
                log::get("agent")->warn("output callback of stream {} failed: {}", frame.stream,
                                        e.what());
            }
            return;
        }
        {
            std::lock_guard lock(stream->mutex);
            if (frame.type == FrameType::kReply) {
                stream->ended = true;
            }
            stream->frames.push_back(std::move(frame));
        }
        stream->changed.notify_all();
    }

    void fail(const std::string& reason) {
        std::unordered_map<std::uint32_t, std::shared_ptr<Stream>> streams;
        {
            std::lock_guard lock(mutex_);
            if (closed_) {
                return;
            }
            closed_ = true;
            close_reason_ = reason;
            streams.swap(streams_);
        }
        ::shutdown(fd_.get(), SHUT_RDWR);
        shutdown();
        for (auto& [id, stream] : streams) {
            {
                std::lock_guard lock(stream->mutex);
                stream->ended = true;
                stream->failure = reason;
            }
            stream->changed.notify_all();
        }
    }

    UniqueFd fd_;
    UniqueFd wake_;
    const AgentClientOptions options_;
    const proto::HelloAck ack_;
    std::string leftover_;
    std::mutex write_mutex_;
    mutable std::mutex mutex_;
    bool closed_ = false;
    std::string close_reason_;
    std::uint32_t next_stream_ = 1;
    std::unordered_map<std::uint32_t, std::shared_ptr<Stream>> streams_;
};

// ---------------------------------------------------------------------------------------------

class ExecSessionImpl final : public ExecSession {
  public:
    ExecSessionImpl(std::shared_ptr<Connection> connection, std::shared_ptr<Stream> stream,
                    std::string process_id, int pid, bool stdin_open,
                    std::chrono::milliseconds wait_budget)
        : connection_(std::move(connection)),
          stream_(std::move(stream)),
          process_id_(std::move(process_id)),
          pid_(pid),
          stdin_open_(stdin_open),
          wait_budget_(wait_budget) {}

    ~ExecSessionImpl() override {
        if (!finished()) {
            connection_->cancel(*stream_);
        }
        stream_->detach();
    }

    const std::string& process_id() const override { return process_id_; }
    int pid() const override { return pid_; }

    bool write_stdin(std::string_view data) override {
        const std::string what = "write stdin of " + process_id_;
        if (!stdin_open_) {
            throw Error(what + ": its stdin is not connected to the host (set pipe_stdin)");
        }
        while (!data.empty()) {
            std::uint64_t window = connection_->wait_window(*stream_, what);
            if (finished()) {
                return false;
            }
            if (window == 0) {
                continue;  // woken by an event frame
            }
            const std::size_t size = static_cast<std::size_t>(
                std::min<std::uint64_t>({window, data.size(), proto::kDataChunkSize}));
            connection_->take_window(*stream_, size);
            connection_->send(FrameType::kData, Channel::kStdin, stream_->id, data.substr(0, size));
            data.remove_prefix(size);
        }
        return true;
    }

    void close_stdin() override {
        if (!finished()) {
            connection_->send(FrameType::kEof, Channel::kStdin, stream_->id, {});
        }
    }

    void signal(int sig) override {
        connection_->call(
            {{"op", proto::op::kSignal}, {"process_id", process_id_}, {"signal", sig}},
            "signal " + process_id_);
    }

    void resize(TerminalSize size) override {
        connection_->call({{"op", proto::op::kResize},
                           {"process_id", process_id_},
                           {"rows", size.rows},
                           {"cols", size.cols}},
                          "resize " + process_id_);
    }

    std::optional<ExitStatus> wait_for(std::chrono::milliseconds timeout) override {
        const std::string what = "wait for " + process_id_;
        std::unique_lock lock(stream_->mutex);
        stream_->changed.wait_for(lock, timeout, [&] { return stream_->ended; });
        if (!stream_->failure.empty()) {
            throw Error(what + ": agent connection closed: " + stream_->failure);
        }
        if (!stream_->ended) {
            return std::nullopt;
        }
        while (!stream_->frames.empty() && stream_->frames.front().type != FrameType::kReply) {
            stream_->frames.pop_front();
        }
        json::object reply = Connection::reply_fields(stream_->frames.front(), what);
        return convert<ExitStatus>(json::value(std::move(reply)), what);
    }

    ExitStatus wait() override {
        if (auto status = wait_for(wait_budget_)) {
            return *status;
        }
        throw Error("wait for " + process_id_ + ": still running after " +
                    seconds_text(wait_budget_));
    }

  private:
    bool finished() const { return stream_->is_ended(); }

    std::shared_ptr<Connection> connection_;
    std::shared_ptr<Stream> stream_;
    std::string process_id_;
    int pid_;
    bool stdin_open_;
    std::chrono::milliseconds wait_budget_;
};

class AgentClientImpl final : public AgentClient {
  public:
    AgentClientImpl(UniqueFd fd, AgentClientOptions options, Handshake handshake)
        : connection_(std::make_shared<Connection>(std::move(fd), std::move(options),
                                                   std::move(handshake))),
          reader_([connection = connection_.get()] { connection->read_loop(); }) {}

    ~AgentClientImpl() override {
        // Background processes in the guest are not touched: the agent only ends the
        // foreground commands of a host that leaves.
        connection_->shutdown();
        reader_.join();
    }

    bool connected() const override { return connection_->connected(); }
    const std::string& agent_version() const override { return connection_->ack().agent_version; }
    const std::string& boot_id() const override { return connection_->ack().boot_id; }

    HealthInfo health() override {
        return convert<HealthInfo>(
            json::value(connection_->call({{"op", proto::op::kHealth}}, "health")), "health");
    }

    ExecResult run(const ExecRequest& request) override {
        ExecResult result;
        std::mutex output_mutex;
        auto collect = [&](std::string& into) {
            return [&](std::string_view bytes) {
                std::lock_guard lock(output_mutex);
                const std::size_t room =
                    request.max_output - std::min(request.max_output, into.size());
                if (bytes.size() > room) {
                    result.output_truncated = true;
                }
                into.append(bytes.substr(0, room));
            };
        };
        ExecRequest effective = request;
        if (request.stdin_data) {
            effective.pipe_stdin = true;
        }
        std::unique_ptr<ExecSession> session =
            start(effective, {collect(result.stdout_data), collect(result.stderr_data)});
        if (request.stdin_data) {
            session->write_stdin(*request.stdin_data);
            session->close_stdin();
        }
        result.status = session->wait();
        result.process_id = session->process_id();
        std::lock_guard lock(output_mutex);
        return result;
    }

    std::unique_ptr<ExecSession> start(const ExecRequest& request,
                                       ExecCallbacks callbacks) override {
        agent_protocol::ExecSpec spec = request;
        if (!spec.timeout && !spec.background) {
            spec.timeout = connection_->options().default_exec_timeout;
        }
        const std::string command = spec.shell.empty()
                                        ? (spec.argv.empty() ? std::string() : spec.argv.front())
                                        : spec.shell;
        json::object exec_request = json::value_from(spec).as_object();
        exec_request["op"] = proto::op::kExec;
        std::chrono::milliseconds budget =
            spec.timeout && spec.timeout->count() > 0
                ? *spec.timeout + spec.kill_grace +
                      std::chrono::duration_cast<std::chrono::milliseconds>(kExitMargin)
                : connection_->options().default_exec_timeout;
        return open_session(std::move(exec_request), std::move(callbacks), "exec " + command,
                            budget);
    }

    std::unique_ptr<ExecSession> attach(const std::string& process_id,
                                        ExecCallbacks callbacks) override {
        return open_session({{"op", proto::op::kAttach}, {"process_id", process_id}},
                            std::move(callbacks), "attach " + process_id,
                            connection_->options().default_exec_timeout);
    }

    std::vector<ProcessInfo> processes() override {
        json::object reply = connection_->call({{"op", proto::op::kProcesses}}, "processes");
        return convert<std::vector<ProcessInfo>>(reply["processes"], "processes");
    }

    void signal(const std::string& process_id, int sig) override {
        connection_->call({{"op", proto::op::kSignal}, {"process_id", process_id}, {"signal", sig}},
                          "signal " + process_id);
    }

    void forget(const std::string& process_id) override {
        connection_->call({{"op", proto::op::kForget}, {"process_id", process_id}},
                          "forget " + process_id);
    }

    std::uint64_t write_file(const std::string& guest_path, std::istream& data,
                             const WriteOptions& options) override {
        const std::string what = "write " + guest_path;
        json::object request = json::value_from(options).as_object();
        request["op"] = proto::op::kWriteFile;
        request["path"] = guest_path;
        auto stream = connection_->open_stream();
        try {
            connection_->send_json(FrameType::kRequest, stream->id, request);
            const auto call_timeout = connection_->options().call_timeout;
            Frame ready = connection_->next(*stream, call_timeout, what);
            if (ready.type != FrameType::kEvent) {
                Connection::reply_fields(ready, what);  // throws the agent's error
                throw Error(what + ": unexpected answer from the agent");
            }
            {
                std::lock_guard lock(stream->mutex);
                stream->window += static_cast<std::uint64_t>(
                    integer_field(parse_payload(ready, what), "window", what));
            }
            std::string chunk(proto::kDataChunkSize, '\0');
            for (;;) {
                data.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
                std::string_view piece(chunk.data(), static_cast<std::size_t>(data.gcount()));
                if (piece.empty()) {
                    if (data.bad()) {
                        throw Error(what + ": reading the host data failed");
                    }
                    break;
                }
                while (!piece.empty()) {
                    std::uint64_t window = connection_->wait_window(*stream, what);
                    throw_if_replied(*stream, what);
                    if (window == 0) {
                        continue;
                    }
                    std::size_t size =
                        static_cast<std::size_t>(std::min<std::uint64_t>(window, piece.size()));
                    connection_->take_window(*stream, size);
                    connection_->send(FrameType::kData, Channel::kFile, stream->id,
                                      piece.substr(0, size));
                    piece.remove_prefix(size);
                }
            }
            connection_->send(FrameType::kEof, Channel::kFile, stream->id, {});
            for (;;) {
                Frame frame = connection_->next(*stream, call_timeout, what);
                if (frame.type == FrameType::kReply) {
                    json::object reply = Connection::reply_fields(frame, what);
                    return static_cast<std::uint64_t>(integer_field(reply, "bytes", what));
                }
            }
        } catch (...) {
            if (!stream->is_ended()) {
                connection_->cancel(*stream);
            }
            stream->detach();
            throw;
        }
    }

    std::uint64_t write_file_from(const std::string& guest_path,
                                  const std::filesystem::path& host_path,
                                  const WriteOptions& options) override {
        std::ifstream in(host_path, std::ios::binary);
        if (!in) {
            throw_errno("write " + guest_path + ": open " + host_path.string());
        }
        return write_file(guest_path, in, options);
    }

    std::uint64_t read_file(const std::string& guest_path,
                            const std::function<void(std::string_view)>& sink) override {
        const std::string what = "read " + guest_path;
        auto stream = connection_->open_stream();
        try {
            connection_->send_json(
                FrameType::kRequest, stream->id,
                {{"op", proto::op::kReadFile}, {"path", guest_path}, {"window", kReadWindow}});
            std::uint32_t unacked = 0;
            for (;;) {
                Frame frame = connection_->next(*stream, connection_->options().io_timeout, what);
                if (frame.type == FrameType::kData) {
                    sink(frame.payload);
                    unacked += static_cast<std::uint32_t>(frame.payload.size());
                    if (unacked >= kReadCreditUnit) {
                        connection_->send(FrameType::kWindow, Channel::kFile, stream->id,
                                          proto::encode_window(unacked));
                        unacked = 0;
                    }
                } else if (frame.type == FrameType::kReply) {
                    json::object reply = Connection::reply_fields(frame, what);
                    return static_cast<std::uint64_t>(integer_field(reply, "bytes", what));
                }
            }
        } catch (...) {
            if (!stream->is_ended()) {
                connection_->cancel(*stream);
            }
            stream->detach();
            throw;
        }
    }

    std::uint64_t read_file(const std::string& guest_path, std::ostream& out) override {
        std::uint64_t bytes = read_file(guest_path, [&](std::string_view data) {
            out.write(data.data(), static_cast<std::streamsize>(data.size()));
            if (!out) {
                throw Error("read " + guest_path + ": writing the host copy failed");
            }
        });
        out.flush();
        return bytes;
    }

    std::uint64_t read_file_to(const std::string& guest_path,
                               const std::filesystem::path& host_path) override {
        std::ofstream out(host_path, std::ios::binary | std::ios::trunc);
        if (!out) {
            throw_errno("read " + guest_path + ": open " + host_path.string());
        }
        return read_file(guest_path, out);
    }

    FileStat stat(const std::string& guest_path, bool follow_symlinks) override {
        json::object reply = connection_->call(
            {{"op", proto::op::kStat}, {"path", guest_path}, {"follow", follow_symlinks}},
            "stat " + guest_path);
        return convert<FileStat>(reply["stat"], "stat " + guest_path);
    }

    std::vector<DirEntry> list(const std::string& guest_path, int depth,
                               std::size_t limit) override {
        const std::string what = "list " + guest_path;
        std::vector<DirEntry> entries;
        connection_->call(
            {{"op", proto::op::kList}, {"path", guest_path}, {"depth", depth}, {"limit", limit}},
            what, [&](const json::object& event) {
                if (const json::value* items = event.if_contains("entries")) {
                    auto batch = convert<std::vector<DirEntry>>(*items, what);
                    entries.insert(entries.end(), batch.begin(), batch.end());
                }
            });
        return entries;
    }

    void mkdir(const std::string& guest_path, bool parents, std::uint32_t mode) override {
        connection_->call(
            {{"op", proto::op::kMkdir}, {"path", guest_path}, {"parents", parents}, {"mode", mode}},
            "mkdir " + guest_path);
    }

    void remove(const std::string& guest_path, bool recursive) override {
        connection_->call(
            {{"op", proto::op::kRemove}, {"path", guest_path}, {"recursive", recursive}},
            "remove " + guest_path);
    }

    void rename(const std::string& from, const std::string& to) override {
        connection_->call({{"op", proto::op::kRename}, {"from", from}, {"to", to}},
                          "rename " + from);
    }

    void set_time(std::chrono::system_clock::time_point now) override {
        auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch());
        connection_->call({{"op", proto::op::kSetTime}, {"unix_ns", ns.count()}}, "set_time");
    }

    void add_entropy(std::span<const std::byte> bytes) override {
        std::string hex;
        boost::algorithm::hex_lower(
            reinterpret_cast<const unsigned char*>(bytes.data()),
            reinterpret_cast<const unsigned char*>(bytes.data()) + bytes.size(),
            std::back_inserter(hex));
        connection_->call({{"op", proto::op::kAddEntropy}, {"data_hex", hex}}, "add_entropy");
    }

    void set_env(const std::map<std::string, std::string>& env,
                 const std::vector<std::string>& unset) override {
        json::object vars;
        for (const auto& [key, value] : env) {
            vars[key] = value;
        }
        connection_->call({{"op", proto::op::kSetEnv},
                           {"env", std::move(vars)},
                           {"unset", json::value_from(unset)}},
                          "set_env");
    }

  private:
    // An early reply on a stream we are still sending on is the agent's error.
    static void throw_if_replied(Stream& stream, const std::string& what) {
        std::lock_guard lock(stream.mutex);
        for (const Frame& frame : stream.frames) {
            if (frame.type == FrameType::kReply) {
                Connection::reply_fields(frame, what);
                throw Error(what + ": the agent ended the transfer early");
            }
        }
    }

    std::unique_ptr<ExecSession> open_session(json::object request, ExecCallbacks callbacks,
                                              const std::string& what,
                                              std::chrono::milliseconds wait_budget) {
        auto stream =
            connection_->open_stream([callbacks = std::move(callbacks)](const Frame& frame) {
                if (frame.type != FrameType::kData) {
                    return;
                }
                if (frame.channel == Channel::kStdout && callbacks.on_stdout) {
                    callbacks.on_stdout(frame.payload);
                } else if (frame.channel == Channel::kStderr && callbacks.on_stderr) {
                    callbacks.on_stderr(frame.payload);
                }
            });
        try {
            connection_->send_json(FrameType::kRequest, stream->id, request);
            Frame frame = connection_->next(*stream, connection_->options().call_timeout, what);
            if (frame.type != FrameType::kEvent) {
                Connection::reply_fields(frame, what);
                throw Error(what + ": unexpected answer from the agent");
            }
            const json::object event = parse_payload(frame, what);
            std::string process_id;
            std::int64_t pid = 0;
            std::int64_t stdin_window = 0;
            try {
                proto::FieldReader started(event, "started event");
                process_id = started.required_string("process_id");
                pid = started.integer("pid");
                stdin_window = started.integer("stdin_window");
            } catch (const std::exception& e) {
                throw Error(what + ": malformed message from the agent: " + e.what());
            }
            {
                std::lock_guard lock(stream->mutex);
                stream->window +=
                    static_cast<std::uint64_t>(std::max<std::int64_t>(0, stdin_window));
            }
            return std::make_unique<ExecSessionImpl>(connection_, stream, std::move(process_id),
                                                     static_cast<int>(pid), stdin_window > 0,
                                                     wait_budget);
        } catch (...) {
            if (!stream->is_ended()) {
                connection_->cancel(*stream);
            }
            stream->detach();
            throw;
        }
    }

    std::shared_ptr<Connection> connection_;
    std::thread reader_;
};

}  // namespace

namespace {

std::unique_ptr<AgentClient> adopt_fd(UniqueFd owned, AgentClient::Clock::time_point deadline,
                                      AgentClientOptions options) {
    const int fd = owned.get();
    set_nonblocking(fd);
    Handshake hello = handshake(fd, deadline, options);
    if (hello.ack.protocol_version != proto::kProtocolVersion) {
        throw Error("handshake: the agent speaks protocol version " +
                    std::to_string(hello.ack.protocol_version) + ", this host " +
                    std::to_string(proto::kProtocolVersion));
    }
    if (options.after_restore && !hello.ack.restored) {
        throw Error("handshake: the agent did not set the clock and reseed its RNG: " +
                    (hello.ack.restore_error.empty()
                         ? "agent " + hello.ack.agent_version + " does not know how"
                         : hello.ack.restore_error));
    }
    return std::make_unique<AgentClientImpl>(std::move(owned), std::move(options),
                                             std::move(hello));
}

}  // namespace

std::unique_ptr<AgentClient> AgentClient::adopt(int fd, Clock::time_point deadline,
                                                AgentClientOptions options) {
    return with_context("agent",
                        [&] { return adopt_fd(UniqueFd(fd), deadline, std::move(options)); });
}

std::unique_ptr<AgentClient> AgentClient::connect_unix(const std::filesystem::path& socket_path,
                                                       Clock::time_point deadline,
                                                       AgentClientOptions options) {
    const std::string what = "connect to agent at " + socket_path.string();
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socket_path.native().size() >= sizeof addr.sun_path) {
        throw Error(what + ": socket path too long");
    }
    std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.native().size() + 1);

    std::string last_error = "no attempt before the deadline";
    while (Clock::now() < deadline) {
        UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (fd.get() < 0) {
            throw_errno(what + ": socket");
        }
        if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
            // The socket may not exist yet (QEMU starting) or nobody listens yet.
            last_error = std::string("connect: ") + std::strerror(errno);
            if (options.while_waiting) {
                options.while_waiting();
            }
            std::this_thread::sleep_for(std::min<Clock::duration>(
                kConnectRetry, std::max<Clock::duration>(deadline - Clock::now(), 0s)));
            continue;
        }
        try {
            return adopt_fd(std::move(fd), deadline, options);
        } catch (const Error& e) {
            last_error = e.what();
            if (options.while_waiting) {
                options.while_waiting();
            }
        }
    }
    throw Error(what + ": " + last_error);
}

}  // namespace holt::vm
