#include "agent.hpp"

#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <boost/json/value_from.hpp>
#include <boost/json/value_to.hpp>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "holt/agent_protocol/messages.hpp"
#include "log.hpp"
#include "op_error.hpp"
#include "system_ops.hpp"
#include "version.hpp"

namespace holt::agent {

namespace json = boost::json;
using proto::Channel;
using proto::FrameType;

namespace {

// Signals the agent handles through its signalfd (they are blocked in main()).
sigset_t handled_signals() {
    sigset_t set;
    ::sigemptyset(&set);
    for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGHUP}) {
        ::sigaddset(&set, sig);
    }
    return set;
}

// "TERM", "SIGTERM" or 15.
int parse_signal(const proto::FieldReader& reader) {
    if (auto number = reader.optional_integer("signal")) {
        if (*number < 1 || *number >= NSIG) {
            reader.fail("signal", "not a signal number");
        }
        return static_cast<int>(*number);
    }
    std::string name = reader.required_string("signal");
    if (name.rfind("SIG", 0) == 0) {
        name = name.substr(3);
    }
    for (int sig = 1; sig < NSIG; ++sig) {
        const char* abbrev = ::sigabbrev_np(sig);
        if (abbrev != nullptr && name == abbrev) {
            return sig;
        }
    }
    reader.fail("signal", "unknown signal '" + name + "'");
}

}  // namespace

Agent::Agent(std::unique_ptr<Link> link, bool pid1)
    : pid1_(pid1), link_(std::move(link)), processes_(loop_, outbox_), files_(outbox_) {
    sigset_t set = handled_signals();
    signals_.reset(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!signals_) {
        throw std::runtime_error(std::string("signalfd: ") + std::strerror(errno));
    }
    loop_.watch(signals_.get(), EPOLLIN, [this](std::uint32_t) { on_signals(); });
}

Agent::~Agent() = default;

void Agent::run() {
    link_->start(loop_, Link::Callbacks{
                            .on_connect = [this] { decoder_.reset(true); },
                            .on_data = [this](std::string_view bytes) { on_data(bytes); },
                            .on_disconnect = [this] { on_disconnect(); },
                            .on_writable = [this] { flush(); },
                        });
    // A child may have ended before the signalfd existed.
    processes_.reap();
    while (!stop_) {
        const bool busy = session_ && files_.ready() && !outbox_.congested();
        loop_.run_once(
            busy ? std::optional<EventLoop::Clock::duration>(EventLoop::Clock::duration::zero())
                 : std::nullopt);
        try {
            if (session_) {
                files_.pump();
            }
            flush();
        } catch (const std::exception& e) {
            log::error("main loop: ", e.what());
        }
    }
    log::info("stopping; killing the commands still running");
    processes_.kill_all();
}

void Agent::on_signals() {
    signalfd_siginfo info{};
    bool child = false;
    while (::read(signals_.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
        switch (info.ssi_signo) {
            case SIGCHLD:
                child = true;
                break;
            case SIGTERM:
            case SIGINT:
                if (pid1_) {
                    log::info("ignoring ", ::sigabbrev_np(static_cast<int>(info.ssi_signo)),
                              ": the agent is PID 1");
                } else {
                    log::info("received SIG", ::sigabbrev_np(static_cast<int>(info.ssi_signo)));
                    stop_ = true;
                }
                break;
            default:
                break;
        }
    }
    if (child) {
        processes_.reap();
    }
}

void Agent::on_data(std::string_view bytes) {
    proto::Frame frame;
    for (;;) {
        auto status = decoder_.decode(bytes, frame);
        if (status == proto::FrameDecoder::kNeedMore) {
            return;
        }
        if (status == proto::FrameDecoder::kError) {
            // Garbage from the host: skip to its next sync sequence. Logged sparingly, since
            // a confused host could send a lot of it.
            if (protocol_errors_++ % 100 == 0) {
                log::warn("protocol error from the host (", protocol_errors_,
                          " so far): ", decoder_.error(), "; waiting for a sync sequence");
            }
            decoder_.resync();
            continue;
        }
        try {
            on_frame(frame);
        } catch (const std::exception& e) {
            log::error("handling a ", proto::to_string(frame.type), " frame on stream ",
                       frame.stream, ": ", e.what());
        }
    }
}

void Agent::on_frame(proto::Frame& frame) {
    if (frame.type == FrameType::kHello) {
        on_hello(frame);
        return;
    }
    if (!session_) {
        log::debug("ignoring a ", proto::to_string(frame.type), " frame before hello");
        return;
    }
    switch (frame.type) {
        case FrameType::kRequest:
            on_request(frame.stream, frame.payload);
            break;
        case FrameType::kData:
        case FrameType::kEof: {
            const bool eof = frame.type == FrameType::kEof;
            if (frame.channel == Channel::kStdin) {
                processes_.on_stdin(frame.stream, frame.payload, eof);
            } else if (frame.channel == Channel::kFile) {
                eof ? files_.on_eof(frame.stream) : files_.on_data(frame.stream, frame.payload);
            }
            break;
        }
        case FrameType::kWindow: {
            std::uint32_t credit = 0;
            if (frame.channel == Channel::kFile && proto::decode_window(frame.payload, credit)) {
                files_.on_window(frame.stream, credit);
            }
            break;
        }
        case FrameType::kCancel:
            if (!processes_.on_cancel(frame.stream)) {
                files_.on_cancel(frame.stream);
            }
            break;
        default:
            log::debug("ignoring a ", proto::to_string(frame.type), " frame from the host");
            break;
    }
}

void Agent::on_hello(const proto::Frame& frame) {
    proto::Hello hello;
    try {
        hello = json::value_to<proto::Hello>(json::value(proto::parse_object(frame.payload)));
    } catch (const std::exception& e) {
        log::warn("invalid hello: ", e.what());
        return;
    }
    if (session_ && hello.nonce == session_nonce_) {
        // The host sent its hello again before our answer reached it (it retries after a
        // second, e.g. while the guest boots): answer again, the session goes on.
        log::debug("repeated hello of the current session");
    } else {
        if (session_) {
            // The host reconnected without the agent noticing it leave.
            end_session("a new hello arrived", /*reset_decoder=*/false);
        }
        session_ = true;
        session_nonce_ = hello.nonce;
        outbox_.set_enabled(true);
        log::info("host session started (client '", hello.client, "', protocol ",
                  hello.protocol_version, ")");
        if (hello.protocol_version != proto::kProtocolVersion) {
            log::warn("the host speaks protocol version ", hello.protocol_version, ", this agent ",
                      proto::kProtocolVersion);
        }
    }
    proto::HelloAck ack;
    if (hello.set_time_unix_ns != 0 || !hello.add_entropy_hex.empty()) {
        // A restored VM: its clock and RNG are the snapshot's until these are applied.
        try {
            if (hello.set_time_unix_ns != 0) {
                set_time({{"unix_ns", hello.set_time_unix_ns}});
            }
            if (!hello.add_entropy_hex.empty()) {
                add_entropy({{"data_hex", hello.add_entropy_hex}});
            }
            ack.restored = true;
        } catch (const std::exception& e) {
            ack.restore_error = e.what();
            log::error("after restore: ", e.what());
        }
    }
    ack.nonce = hello.nonce;
    ack.protocol_version = proto::kProtocolVersion;
    ack.agent_version = kAgentVersion;
    ack.boot_id = boot_id();
    ack.uptime = uptime();
    ack.pid = static_cast<int>(::getpid());
    outbox_.send_raw(proto::sync_magic());
    outbox_.send_json(FrameType::kHelloAck, 0, json::value_from(ack).as_object());
}

void Agent::on_request(std::uint32_t stream, std::string_view payload) {
    std::string op = "request";
    try {
        if (stream == 0) {
            throw OpError("EPROTO", "requests need a stream id other than 0");
        }
        if (processes_.owns_stream(stream) || files_.owns_stream(stream)) {
            throw OpError("EPROTO", "stream " + std::to_string(stream) + " is already in use");
        }
        json::object request = proto::parse_object(payload);
        proto::FieldReader reader(request, "request");
        op = reader.required_string("op");
        namespace ops = proto::op;

        json::object reply;
        // Streaming operations answer on their stream later.
        if (op == ops::kExec) {
            processes_.exec(stream, json::value_to<proto::ExecSpec>(json::value(request)));
            return;
        }
        if (op == ops::kAttach) {
            processes_.attach(stream, reader.required_string("process_id"),
                              reader.boolean("replay", true));
            return;
        }
        if (op == ops::kWriteFile) {
            files_.start_write(stream, request);
            return;
        }
        if (op == ops::kReadFile) {
            files_.start_read(stream, request);
            return;
        }

        if (op == ops::kHealth) {
            reply = health(processes_.running(), pid1_);
        } else if (op == ops::kSignal) {
            processes_.signal(reader.required_string("process_id"), parse_signal(reader),
                              reader.boolean("group", true));
        } else if (op == ops::kResize) {
            processes_.resize(reader.required_string("process_id"),
                              json::value_to<proto::TerminalSize>(json::value(request)));
        } else if (op == ops::kProcesses) {
            reply["processes"] = json::value_from(processes_.list());
        } else if (op == ops::kForget) {
            processes_.forget(reader.required_string("process_id"));
        } else if (op == ops::kStat) {
            reply = stat_path(request);
        } else if (op == ops::kList) {
            reply = list_directory(outbox_, stream, request);
        } else if (op == ops::kMkdir) {
            reply = make_directory(request);
        } else if (op == ops::kRemove) {
            reply = remove_path(request);
        } else if (op == ops::kRename) {
            reply = rename_path(request);
        } else if (op == ops::kSetTime) {
            reply = set_time(request);
        } else if (op == ops::kAddEntropy) {
            reply = add_entropy(request);
        } else if (op == ops::kSetEnv) {
            std::map<std::string, std::string> env;
            if (const json::object* set = reader.object("env")) {
                for (const auto& item : *set) {
                    if (!item.value().is_string()) {
                        reader.fail("env", "values must be strings");
                    }
                    env.emplace(item.key(), item.value().get_string());
                }
            }
            processes_.set_env(env, reader.strings("unset"));
        } else if (op == ops::kFreeze || op == ops::kThaw) {
            throw OpError("ENOSYS", op + ": not implemented by this agent yet");
        } else {
            throw OpError("ENOSYS", "unknown operation '" + op + "'");
        }
        outbox_.send_json(FrameType::kReply, stream, proto::ok_reply(std::move(reply)));
    } catch (const OpError& e) {
        outbox_.send_json(FrameType::kReply, stream, proto::error_reply({e.code(), e.what()}));
    } catch (const proto::MessageError& e) {
        outbox_.send_json(FrameType::kReply, stream,
                          proto::error_reply({"EINVAL", op + ": " + e.what()}));
    } catch (const std::exception& e) {
        log::error(op, " on stream ", stream, ": ", e.what());
        outbox_.send_json(FrameType::kReply, stream,
                          proto::error_reply({"EIO", op + ": internal error: " + e.what()}));
    }
}

void Agent::on_disconnect() {
    end_session("the host went away", /*reset_decoder=*/true);
    if (!link_->can_reconnect()) {
        stop_ = true;
    }
}

void Agent::end_session(const char* why, bool reset_decoder) {
    if (reset_decoder) {
        decoder_.reset(true);
    }
    if (!session_) {
        return;
    }
    log::info("host session ended: ", why);
    session_ = false;
    processes_.on_session_end();
    files_.on_session_end();
    outbox_.set_enabled(false);
}

void Agent::flush() {
    if (!outbox_.empty() && link_->connected()) {
        switch (outbox_.flush(*link_)) {
            case Outbox::FlushResult::kFailed:
                link_->drop();
                on_disconnect();
                return;
            case Outbox::FlushResult::kBlocked:
                link_->want_writable(true);
                break;
            case Outbox::FlushResult::kDone:
                link_->want_writable(false);
                break;
        }
    }
    if (outbox_.below_low_water()) {
        processes_.resume_output();
    }
}

}  // namespace holt::agent
