#include "server.hpp"

#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/url/parse.hpp>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <variant>

#include "headers.hpp"
#include "holt/common/error.hpp"
#include "holt/common/log.hpp"
#include "holt/vm/network.hpp"
#include "host_name.hpp"
#include "metrics.hpp"
#include "route_table.hpp"
#include "sandbox_directory.hpp"
#include "tls.hpp"

namespace holt::proxy {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using Clock = std::chrono::steady_clock;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// How much of a body moves per read and write, per direction.
constexpr std::size_t kRelayBuffer = 64 * 1024;

// A pooled upstream connection idle for less than this is not checked before use.
constexpr std::chrono::milliseconds kTrustIdle{1000};

double millis_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// A value from a client fit for a log line: no spaces, quotes or control characters.
std::string loggable(std::string_view text, std::size_t max = 256) {
    std::string out;
    for (char c : text.substr(0, max)) {
        unsigned char u = static_cast<unsigned char>(c);
        out += (u <= 0x20 || u >= 0x7f || c == '"') ? '?' : c;
    }
    return out.empty() ? "-" : out;
}

// A message for a log line, in double quotes: no quotes or control characters inside.
std::string log_quoted(std::string_view text) {
    std::string out = "\"";
    for (char c : text.substr(0, 1024)) {
        unsigned char u = static_cast<unsigned char>(c);
        out += (u < 0x20 || u == 0x7f || c == '"') ? '\'' : c;
    }
    return out + "\"";
}

std::string html_escape(std::string_view text) {
    std::string out;
    for (char c : text) {
        switch (c) {
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '&':
                out += "&amp;";
                break;
            case '"':
                out += "&quot;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

std::string json_escape(std::string_view text) {
    std::string out;
    for (char c : text) {
        unsigned char u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20) {
            out += fmt::format("\\u{:04x}", u);
        } else {
            out += c;
        }
    }
    return out;
}

// An upstream address from a configured http:// URL.
struct Address {
    std::string host;
    std::uint16_t port = 80;
};

Address address_of_url(const std::string& url) {
    auto parsed = boost::urls::parse_absolute_uri(url);
    if (!parsed) {
        throw Error("bad upstream URL \"" + url + "\"");
    }
    Address a;
    a.host = std::string(parsed->host_address());
    a.port = parsed->has_port() ? static_cast<std::uint16_t>(std::stoi(std::string(parsed->port())))
                                : 80;
    return a;
}

// One connection to an upstream, owned by a request while in use, else by its worker's pool.
struct Upstream {
    explicit Upstream(tcp::socket socket) : stream(std::move(socket)) {}
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    std::string key;
    Clock::time_point idle_since;
};

// Where one request goes.
struct Destination {
    RouteKind kind = RouteKind::unknown;
    std::string route;   // "api:/v1/sandboxes", "app:shop", "preview:main--shop", "sandbox:8080"
    std::string target;  // "127.0.0.1:7070", "vm-12ab:8080"
    Address address;     // unless vm_id is set
    std::string vm_id;   // a sandbox's VM: connect in its namespace to the guest
    std::uint16_t port = 0;
    std::string pool_key;
    bool strip_authorization = false;  // the API key that let the request in stays here
};

struct Refusal {
    bhttp::status status;
    std::string reason;
};

// What one request did, for the access log and the metrics.
struct RequestRecord {
    Clock::time_point start = Clock::now();
    std::string method, host, path, route = "-", target = "-", error;
    RouteKind kind = RouteKind::unknown;
    unsigned status = 0;
    std::uint64_t bytes_in = 0, bytes_out = 0;
    double upstream_ms = -1;
    bool reused = false;
};

struct Shared;

class SessionBase {
  public:
    virtual ~SessionBase() = default;
    // Shutdown: an idle connection closes now, a busy one after its current request.
    virtual void drain() = 0;
};

// One thread: its io_context, its listeners, its sessions and its upstream pool.
// Declaration order matters: `sessions` outlives `ioc`, whose destruction ends the coroutines of
// sessions still open after the grace period (they erase themselves from it); sockets die first.
struct Worker {
    explicit Worker(Shared& s) : shared(s), ioc(1) {}
    Shared& shared;
    std::set<SessionBase*> sessions;
    bool stopping = false;
    asio::io_context ioc;
    std::vector<tcp::acceptor> acceptors;
    std::vector<bool> acceptor_tls;
    std::unordered_map<std::string, std::vector<std::unique_ptr<Upstream>>> idle;

    std::unique_ptr<Upstream> take(const std::string& key, std::chrono::milliseconds max_idle);
    void give(std::unique_ptr<Upstream> upstream, std::size_t max_idle_per_target);
    void sweep(std::chrono::milliseconds max_idle);
};

// A request held while its sandbox wakes.
struct WakeWait {
    explicit WakeWait(asio::any_io_executor ex) : timer(ex) {}
    asio::steady_timer timer;
    bool done = false;
    std::string error;
};

struct WakeResult {
    enum class Status { woken, failed, timed_out, queue_full } status;
    std::string message;
};

// One wake per sandbox at a time: the first request for a hibernated sandbox starts it, later
// ones wait for the same one. A waiter's timer doubles as its wake-up call.
class WakeCoordinator {
  public:
    WakeCoordinator(Shared& shared) : shared_(shared) {}
    awaitable<WakeResult> wake(const std::string& sandbox_id, const std::string& api_key);

  private:
    void finish(const std::string& sandbox_id, const std::string& error);
    Shared& shared_;
    std::mutex mutex_;
    std::map<std::string, std::vector<std::shared_ptr<WakeWait>>> waiting_;
};

// Everything the workers share.
struct Shared {
    Shared(ServerParts p) : parts(p), config(*p.config), wakes(*this) {}
    ServerParts parts;
    const Config& config;
    std::vector<std::pair<std::string, Address>> services;
    asio::thread_pool blocking{4};
    WakeCoordinator wakes;
    std::atomic<bool> draining{false};
    std::shared_ptr<spdlog::logger> log = log::get("proxy");
    std::shared_ptr<spdlog::logger> access = log::get("access");
    std::atomic<std::uint64_t> next_connection{1};
    std::uint16_t http_port = 0, https_port = 0, admin_port = 0;
    Metrics& metrics() { return *parts.metrics; }
};

// Runs `fn` on the blocking pool and resumes the awaiting coroutine on `ex` with its result.
// `fn` must not throw: failures are part of its result. (Exceptions resumed into coroutines, and
// lambdas passed by value into them, trip GCC 12's coroutine bugs; this is neither.)
template <typename Fn>
auto on_blocking_pool(Shared& shared, asio::any_io_executor ex, Fn fn) {
    using T = std::invoke_result_t<Fn>;
    return asio::async_initiate<decltype(asio::use_awaitable), void(T)>(
        [&shared, ex, fn = std::move(fn)](auto handler) mutable {
            asio::post(shared.blocking, [ex, fn = std::move(fn),
                                         handler = std::move(handler)]() mutable {
                T value = fn();
                asio::post(ex, [handler = std::move(handler), value = std::move(value)]() mutable {
                    std::move(handler)(std::move(value));
                });
            });
        },
        asio::use_awaitable);
}

// A socket in a VM's namespace, or why there is none.
struct OpenedSocket {
    int fd = -1;
    std::string error;
};

awaitable<WakeResult> WakeCoordinator::wake(const std::string& sandbox_id,
                                            const std::string& api_key) {
    auto ex = co_await asio::this_coro::executor;
    auto wait = std::make_shared<WakeWait>(ex);
    wait->timer.expires_after(shared_.config.wake.timeout);
    bool first = false;
    {
        std::lock_guard lock(mutex_);
        auto& waiters = waiting_[sandbox_id];
        if (waiters.size() >= shared_.config.wake.max_waiting) {
            shared_.metrics().wake_queue_full++;
            co_return WakeResult{WakeResult::Status::queue_full,
                                 std::to_string(waiters.size()) +
                                     " requests are already waiting for sandbox " + sandbox_id +
                                     " to wake"};
        }
        first = waiters.empty();
        waiters.push_back(wait);
    }
    shared_.metrics().wake_waits++;
    if (first) {
        shared_.metrics().wakes_started++;
        shared_.log->info("sbx={}: hibernated; waking it for a request", sandbox_id);
        asio::post(shared_.blocking, [this, sandbox_id, api_key] {
            std::string error;
            try {
                shared_.parts.sandboxes->wake(sandbox_id, api_key);
            } catch (const std::exception& e) {
                error = e.what();
            }
            finish(sandbox_id, error);
        });
    }
    co_await wait->timer.async_wait(use_tuple);
    if (!wait->done) {
        shared_.metrics().wakes_failed++;
        co_return WakeResult{WakeResult::Status::timed_out,
                             "sandbox " + sandbox_id + " did not wake within " +
                                 std::to_string(shared_.config.wake.timeout.count()) + "ms"};
    }
    if (!wait->error.empty()) {
        co_return WakeResult{WakeResult::Status::failed, wait->error};
    }
    co_return WakeResult{WakeResult::Status::woken, ""};
}

void WakeCoordinator::finish(const std::string& sandbox_id, const std::string& error) {
    std::vector<std::shared_ptr<WakeWait>> waiters;
    {
        std::lock_guard lock(mutex_);
        auto it = waiting_.find(sandbox_id);
        if (it != waiting_.end()) {
            waiters = std::move(it->second);
            waiting_.erase(it);
        }
    }
    if (error.empty()) {
        shared_.log->info("sbx={}: woken; releasing {} held requests", sandbox_id, waiters.size());
    } else {
        shared_.metrics().wakes_failed++;
        shared_.log->warn("sbx={}: wake failed: {}", sandbox_id, error);
    }
    for (auto& w : waiters) {
        asio::post(w->timer.get_executor(), [w, error] {
            w->done = true;
            w->error = error;
            w->timer.cancel();
        });
    }
}

bool peer_closed(tcp::socket& socket) {
    char byte;
    ssize_t n = ::recv(socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    // 0: the upstream closed; data: it sent something unasked (not reusable either).
    return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
}

std::unique_ptr<Upstream> Worker::take(const std::string& key, std::chrono::milliseconds max_idle) {
    auto it = idle.find(key);
    if (it == idle.end()) {
        return nullptr;
    }
    auto& list = it->second;
    while (!list.empty()) {
        auto upstream = std::move(list.back());
        list.pop_back();
        auto idle_for = Clock::now() - upstream->idle_since;
        if (idle_for >= max_idle) {
            continue;
        }
        // Upstreams close idle connections after seconds, not milliseconds: a connection idle
        // for less than kTrustIdle is used without the extra syscall of a check (a request
        // without a body that finds it closed after all is sent again on a fresh one).
        if (idle_for < kTrustIdle || !peer_closed(upstream->stream.socket())) {
            return upstream;
        }
    }
    return nullptr;
}

void Worker::give(std::unique_ptr<Upstream> upstream, std::size_t max_idle_per_target) {
    if (stopping || upstream->buffer.size() != 0) {
        return;
    }
    auto& list = idle[upstream->key];
    if (list.size() >= max_idle_per_target) {
        return;
    }
    upstream->stream.expires_never();
    upstream->idle_since = Clock::now();
    list.push_back(std::move(upstream));
}

void Worker::sweep(std::chrono::milliseconds max_idle) {
    for (auto it = idle.begin(); it != idle.end();) {
        auto& list = it->second;
        std::erase_if(list, [&](const std::unique_ptr<Upstream>& u) {
            return Clock::now() - u->idle_since >= max_idle || peer_closed(u->stream.socket());
        });
        it = list.empty() ? idle.erase(it) : std::next(it);
    }
}

bool is_timeout(const beast::error_code& ec) {
    return ec == beast::error::timeout;
}

std::string describe(const beast::error_code& ec, std::chrono::milliseconds timeout) {
    if (is_timeout(ec)) {
        return "timed out after " + std::to_string(timeout.count()) + "ms";
    }
    if (ec == bhttp::error::end_of_stream || ec == asio::error::eof) {
        return "the connection was closed";
    }
    return ec.message();
}

// One client connection. `Stream` is beast::tcp_stream or beast::ssl_stream<beast::tcp_stream>.
template <typename Stream>
class Session : public SessionBase {
  public:
    Session(Worker& worker, Stream stream, bool tls, std::string client)
        : worker_(worker),
          shared_(worker.shared),
          config_(worker.shared.config),
          stream_(std::move(stream)),
          tls_(tls),
          client_(std::move(client)),
          id_(worker.shared.next_connection++),
          relay_buffer_(new char[kRelayBuffer]),
          header_timer_(stream_.get_executor()) {
        worker_.sessions.insert(this);
        shared_.metrics().open_connections++;
        shared_.metrics().connections_total++;
    }
    ~Session() override {
        *alive_ = false;  // a header timer's handler still queued must not touch this
        worker_.sessions.erase(this);
        shared_.metrics().open_connections--;
    }

    void drain() override {
        draining_ = true;
        if (idle_) {
            beast::error_code ec;
            lower().socket().shutdown(tcp::socket::shutdown_both, ec);
            lower().cancel();
        }
    }

    awaitable<void> run();

  private:
    beast::tcp_stream& lower() { return beast::get_lowest_layer(stream_); }
    bool draining() const { return draining_ || shared_.draining; }

    awaitable<bool> serve(bhttp::request_parser<bhttp::buffer_body>& parser, RequestRecord& rec);
    awaitable<std::variant<Destination, Refusal>> resolve(
        bhttp::request_parser<bhttp::buffer_body>& parser, const std::string& host,
        RequestRecord& rec);
    awaitable<std::variant<Destination, Refusal>> resolve_sandbox(const std::string& sandbox_id,
                                                                  std::uint16_t port,
                                                                  std::optional<std::string> key,
                                                                  Destination d);
    awaitable<std::unique_ptr<Upstream>> connect(const Destination& d, std::string& error,
                                                 bool& reused, bool allow_pool);
    awaitable<bool> respond(bhttp::status status, std::string_view content_type, std::string body,
                            bool keep_alive, RequestRecord& rec, std::string location = {});
    // By value, like every coroutine parameter that may be a temporary: GCC 12 destroys
    // temporaries bound to a coroutine's reference parameters twice.
    awaitable<bool> refuse(bhttp::request_parser<bhttp::buffer_body>& parser, Refusal r,
                           RequestRecord& rec);
    awaitable<void> tunnel(Upstream& upstream, RequestRecord& rec);
    awaitable<void> close_gracefully();
    void finish(RequestRecord& rec);

    Worker& worker_;
    Shared& shared_;
    const Config& config_;
    Stream stream_;
    bool tls_;
    std::string client_;
    std::uint64_t id_;
    beast::flat_buffer buffer_;
    std::unique_ptr<char[]> relay_buffer_;
    asio::steady_timer header_timer_;
    bool header_timed_out_ = false;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
    bool idle_ = false;
    bool draining_ = false;
    std::size_t served_ = 0;
};

// Moves one message's body from `in` (whose parser has read the head) to `out` (whose
// serializer has not written anything yet), piece by piece. Each read and each write has its
// own timeout. Returns the body bytes moved; `in_error`/`out_error` say which side failed.
template <bool isRequest, typename In, typename Out>
awaitable<std::uint64_t> relay_message(In& in, beast::flat_buffer& in_buffer,
                                       bhttp::parser<isRequest, bhttp::buffer_body>& parser,
                                       Out& out, char* buffer, const Timeouts& t,
                                       beast::error_code& in_error, beast::error_code& out_error) {
    bhttp::serializer<isRequest, bhttp::buffer_body> serializer(parser.get());
    std::uint64_t moved = 0;
    bool ended = false;
    auto& body = parser.get().body();
    body.data = nullptr;
    body.more = !parser.is_done();
    // The head goes out on its own only when no body is at hand yet, so that a slow body (a
    // stream of events) does not hold the head back; otherwise head and first piece of the body
    // leave together, in one write.
    if (!parser.is_done() && in_buffer.size() == 0) {
        beast::get_lowest_layer(out).expires_after(t.write);
        auto [ec_head, n_head] = co_await bhttp::async_write_header(out, serializer, use_tuple);
        if (ec_head) {
            out_error = ec_head;
            co_return moved;
        }
    }
    while (!parser.is_done()) {
        body.data = buffer;
        body.size = kRelayBuffer;
        beast::get_lowest_layer(in).expires_after(t.read);
        auto [ec, n] = co_await bhttp::async_read_some(in, in_buffer, parser, use_tuple);
        if (ec == bhttp::error::need_buffer) {
            ec = {};
        }
        if (ec) {
            in_error = ec;
            co_return moved;
        }
        std::size_t got = kRelayBuffer - body.size;
        // No data is nullptr, not an empty piece: Beast would send an empty piece of a chunked
        // body as a chunk of size 0, which is the last-chunk marker, and then end the body again.
        body.data = got > 0 ? buffer : nullptr;
        body.size = got;
        body.more = !parser.is_done();
        if (got == 0 && body.more) {
            continue;
        }
        // A write with more == false ends the body (for chunked: the last chunk) even when the
        // serializer does not yet say it is done: it must not be ended twice.
        ended = !body.more;
        beast::get_lowest_layer(out).expires_after(t.write);
        auto [wec, w] = co_await bhttp::async_write(out, serializer, use_tuple);
        if (wec == bhttp::error::need_buffer) {
            wec = {};
        }
        if (wec) {
            out_error = wec;
            co_return moved;
        }
        moved += got;
    }
    if (!ended && !serializer.is_done()) {
        body.data = nullptr;
        body.size = 0;
        body.more = false;
        beast::get_lowest_layer(out).expires_after(t.write);
        auto [wec, w] = co_await bhttp::async_write(out, serializer, use_tuple);
        if (wec && wec != bhttp::error::need_buffer) {
            out_error = wec;
        }
    }
    co_return moved;
}

// Copies bytes from `from` to `to` until either side ends, then half-closes `to` when it can.
template <typename From, typename To>
awaitable<std::uint64_t> pump(From& from, To& to, std::chrono::milliseconds idle) {
    std::unique_ptr<char[]> buffer(new char[kRelayBuffer]);
    std::uint64_t moved = 0;
    for (;;) {
        beast::get_lowest_layer(from).expires_after(idle);
        auto [ec, n] =
            co_await from.async_read_some(asio::buffer(buffer.get(), kRelayBuffer), use_tuple);
        if (n > 0) {
            beast::get_lowest_layer(to).expires_after(idle);
            auto [wec, w] =
                co_await asio::async_write(to, asio::buffer(buffer.get(), n), use_tuple);
            if (wec) {
                break;
            }
            moved += n;
        }
        if (ec) {
            break;
        }
    }
    beast::error_code ignored;
    beast::get_lowest_layer(to).socket().shutdown(tcp::socket::shutdown_send, ignored);
    beast::get_lowest_layer(from).socket().shutdown(tcp::socket::shutdown_receive, ignored);
    co_return moved;
}

template <typename Stream>
awaitable<void> Session<Stream>::run() {
    if constexpr (!std::is_same_v<Stream, beast::tcp_stream>) {
        lower().expires_after(config_.timeouts.header);
        auto [ec] = co_await stream_.async_handshake(asio::ssl::stream_base::server, use_tuple);
        if (ec) {
            shared_.metrics().tls_handshake_failures++;
            shared_.log->debug("conn={} client={}: TLS handshake: {}", id_, client_, ec.message());
            co_return;
        }
    }
    for (;;) {
        // Wait for the first byte of the next request: the idle timeout.
        if (buffer_.size() == 0) {
            if (draining()) {
                break;
            }
            idle_ = true;
            lower().expires_after(config_.timeouts.idle);
            auto [ec, n] = co_await stream_.async_read_some(buffer_.prepare(4096), use_tuple);
            idle_ = false;
            if (ec) {
                break;  // closed, idle too long, or shut down
            }
            buffer_.commit(n);
        }

        // The head, whole, within the header timeout and the header limit.
        bhttp::request_parser<bhttp::buffer_body> parser;
        parser.header_limit(static_cast<std::uint32_t>(config_.limits.header_bytes));
        parser.body_limit(config_.limits.body_bytes == 0 ? std::numeric_limits<std::uint64_t>::max()
                                                         : config_.limits.body_bytes);
        RequestRecord rec;
        // The header timeout cancels the read rather than closing the socket (as the stream's
        // own timeout would), so that the client still learns why: 408.
        lower().expires_never();
        header_timer_.expires_after(config_.timeouts.header);
        header_timed_out_ = false;
        header_timer_.async_wait([this, alive = alive_](beast::error_code tec) {
            if (!tec && *alive) {
                header_timed_out_ = true;
                beast::error_code ignored;
                lower().socket().cancel(ignored);
            }
        });
        auto [ec, n] = co_await bhttp::async_read_header(stream_, buffer_, parser, use_tuple);
        header_timer_.cancel();
        if (header_timed_out_ && ec) {
            ec = beast::error::timeout;
        }
        if (ec) {
            if (ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
                ec == asio::error::connection_reset) {
                break;
            }
            if (ec == bhttp::error::header_limit) {
                rec.error =
                    "request head over " + std::to_string(config_.limits.header_bytes) + " bytes";
                co_await respond(bhttp::status::request_header_fields_too_large, "text/plain",
                                 "431 Request Header Fields Too Large: the request head is over " +
                                     std::to_string(config_.limits.header_bytes) + " bytes\n",
                                 false, rec);
            } else if (is_timeout(ec)) {
                rec.error = "request head not received within " +
                            std::to_string(config_.timeouts.header.count()) + "ms";
                co_await respond(bhttp::status::request_timeout, "text/plain",
                                 "408 Request Timeout: the request head did not arrive within " +
                                     std::to_string(config_.timeouts.header.count()) + "ms\n",
                                 false, rec);
            } else if (ec == bhttp::error::body_limit) {
                rec.error = "body over the limit";
                co_await respond(bhttp::status::payload_too_large, "text/plain",
                                 "413 Payload Too Large: the body is over " +
                                     std::to_string(config_.limits.body_bytes) + " bytes\n",
                                 false, rec);
            } else {
                rec.error = "bad request: " + ec.message();
                co_await respond(bhttp::status::bad_request, "text/plain",
                                 "400 Bad Request: " + ec.message() + "\n", false, rec);
            }
            finish(rec);
            break;
        }
        ++served_;
        bool keep_alive = co_await serve(parser, rec);
        finish(rec);
        if (!keep_alive) {
            break;
        }
    }
    co_await close_gracefully();
}

template <typename Stream>
awaitable<void> Session<Stream>::close_gracefully() {
    beast::error_code ec;
    if (!lower().socket().is_open()) {
        co_return;
    }
    // Send what is left, then read and drop what the client still sends for a moment, so an
    // unread request body does not turn the close into a reset that loses the answer.
    lower().socket().shutdown(tcp::socket::shutdown_send, ec);
    lower().expires_after(std::chrono::seconds(1));
    std::uint64_t drained = 0;
    while (drained < (1u << 20)) {
        auto [rec, n] = co_await lower().async_read_some(
            asio::buffer(relay_buffer_.get(), kRelayBuffer), use_tuple);
        if (rec) {
            break;
        }
        drained += n;
    }
    lower().socket().close(ec);
}

template <typename Stream>
void Session<Stream>::finish(RequestRecord& rec) {
    double ms = millis_since(rec.start);
    shared_.metrics().request(rec.kind, rec.status, ms / 1000.0, rec.bytes_in, rec.bytes_out);
    if (!config_.access_log) {
        return;
    }
    shared_.access->info(
        "conn={} client={} method={} host={} path={} route={} target={} status={} bytes_in={} "
        "bytes_out={} upstream_ms={:.2f} duration_ms={:.2f} reused={}{}{}",
        id_, client_, loggable(rec.method), loggable(rec.host), loggable(rec.path, 1024), rec.route,
        rec.target, rec.status, rec.bytes_in, rec.bytes_out, rec.upstream_ms, ms,
        rec.reused ? 1 : 0, rec.error.empty() ? "" : " error=",
        rec.error.empty() ? std::string() : log_quoted(rec.error));
}

template <typename Stream>
awaitable<bool> Session<Stream>::respond(bhttp::status status, std::string_view content_type,
                                         std::string body, bool keep_alive, RequestRecord& rec,
                                         std::string location) {
    bhttp::response<bhttp::string_body> res{status, 11};
    res.set(bhttp::field::server, "holt-proxy");
    res.set(bhttp::field::content_type, content_type);
    res.set(bhttp::field::cache_control, "no-store");
    if (!location.empty()) {
        res.set(bhttp::field::location, location);
    }
    res.body() = std::move(body);
    res.keep_alive(keep_alive && !draining());
    res.prepare_payload();
    rec.status = static_cast<unsigned>(status);
    rec.bytes_out += res.body().size();
    lower().expires_after(config_.timeouts.write);
    auto [ec, n] = co_await bhttp::async_write(stream_, res, use_tuple);
    co_return !ec && res.keep_alive();
}

template <typename Stream>
awaitable<bool> Session<Stream>::refuse(bhttp::request_parser<bhttp::buffer_body>& parser,
                                        Refusal r, RequestRecord& rec) {
    rec.error = r.reason;
    // An unread request body would be taken for the next request: such a connection closes.
    bool keep = parser.is_done() && parser.get().keep_alive();
    unsigned code = static_cast<unsigned>(r.status);
    std::string title = std::to_string(code) + " " + std::string(bhttp::obsolete_reason(r.status));
    if (rec.kind == RouteKind::api) {
        static const std::map<unsigned, std::string> codes = {
            {404, "not_found"}, {502, "bad_gateway"}, {503, "unavailable"}, {504, "timeout"}};
        auto it = codes.find(code);
        std::string body = "{\"error\":{\"code\":\"" +
                           (it == codes.end() ? "http_" + std::to_string(code) : it->second) +
                           "\",\"message\":\"" + json_escape(r.reason) + "\"}}\n";
        co_return co_await respond(r.status, "application/json", std::move(body), keep, rec);
    }
    std::string page = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" + title +
                       "</title></head>\n<body><h1>" + title + "</h1>\n<p>" +
                       html_escape(r.reason) + "</p>\n<hr><p>holt-proxy</p></body></html>\n";
    co_return co_await respond(r.status, "text/html; charset=utf-8", std::move(page), keep, rec);
}

template <typename Stream>
awaitable<std::variant<Destination, Refusal>> Session<Stream>::resolve(
    bhttp::request_parser<bhttp::buffer_body>& parser, const std::string& host,
    RequestRecord& rec) {
    auto& req = parser.get();
    HostTarget t = parse_host(host, config_.domain);
    Destination d;
    switch (t.kind) {
        case HostTarget::Kind::unknown:
            co_return Refusal{bhttp::status::not_found,
                              "No site is served at " + (host.empty() ? "this address" : host) +
                                  ". Holt serves api." + config_.domain + ", APP." +
                                  config_.domain + ", BRANCH--APP." + config_.domain +
                                  " and PORT-SANDBOX." + config_.domain + "."};
        case HostTarget::Kind::api: {
            d.kind = rec.kind = RouteKind::api;
            std::string_view target(req.target().data(), req.target().size());
            for (const auto& [prefix, address] : shared_.services) {
                if (path_has_prefix(target, prefix)) {
                    d.route = rec.route = "api:" + prefix;
                    d.address = address;
                    d.target = address.host + ":" + std::to_string(address.port);
                    d.pool_key = "tcp:" + d.target;
                    co_return d;
                }
            }
            co_return Refusal{bhttp::status::not_found,
                              "no platform service serves " + std::string(target)};
        }
        case HostTarget::Kind::app: {
            d.kind = rec.kind = RouteKind::app;
            d.route = t.branch.empty() ? "app:" + t.app : "preview:" + t.branch + "--" + t.app;
            rec.route = d.route;
            auto route = shared_.parts.routes->find(t.app, t.branch);
            if (!route) {
                co_return Refusal{bhttp::status::not_found,
                                  t.branch.empty()
                                      ? "There is no app " + t.app + " at " + host + "."
                                      : "App " + t.app + " has no preview of branch " + t.branch +
                                            " (" + host + ")."};
            }
            if (route->kind == RouteTarget::Kind::sandbox) {
                co_return co_await resolve_sandbox(route->sandbox_id, route->port, std::nullopt, d);
            }
            d.address = {route->host, route->port};
            d.target = route->host + ":" + std::to_string(route->port);
            d.pool_key = "tcp:" + d.target;
            co_return d;
        }
        case HostTarget::Kind::sandbox_port: {
            d.kind = rec.kind = RouteKind::sandbox;
            d.route = "sandbox:" + t.sandbox_id + ":" + std::to_string(t.port);
            rec.route = d.route;
            std::string key;
            auto auth = req.find(bhttp::field::authorization);
            if (auth != req.end() && auth->value().starts_with("Bearer ")) {
                key = std::string(auth->value().substr(7));
                d.strip_authorization = true;
            }
            co_return co_await resolve_sandbox(t.sandbox_id, t.port, key, d);
        }
    }
    co_return Refusal{bhttp::status::not_found, "unknown host"};
}

template <typename Stream>
awaitable<std::variant<Destination, Refusal>> Session<Stream>::resolve_sandbox(
    const std::string& sandbox_id, std::uint16_t port, std::optional<std::string> key,
    Destination d) {
    using Status = SandboxLookup::Status;
    if (!shared_.parts.sandboxes) {
        co_return Refusal{bhttp::status::service_unavailable,
                          "this proxy has no control database: sandbox ports are not served"};
    }
    auto* sandboxes = shared_.parts.sandboxes;
    for (int attempt = 0;; ++attempt) {
        auto ex = co_await asio::this_coro::executor;
        auto look = [sandboxes, sandbox_id, key]() noexcept {
            try {
                return sandboxes->lookup(sandbox_id, key);
            } catch (const std::exception& e) {
                SandboxLookup failed;
                failed.status = SandboxLookup::Status::failed;
                failed.message = "look up sandbox " + sandbox_id + ": " + e.what();
                return failed;
            }
        };
        SandboxLookup found = co_await on_blocking_pool(shared_, ex, std::move(look));
        switch (found.status) {
            case Status::failed:
                co_return Refusal{bhttp::status::bad_gateway, found.message};
            case Status::running:
                d.vm_id = found.vm_id;
                d.port = port;
                d.target = found.vm_id + ":" + std::to_string(port);
                d.pool_key = "vm:" + d.target;
                co_return d;
            case Status::unauthorized:
                co_return Refusal{bhttp::status::unauthorized, found.message};
            case Status::forbidden:
                co_return Refusal{bhttp::status::forbidden, found.message};
            case Status::not_found:
                co_return Refusal{bhttp::status::not_found, found.message};
            case Status::gone:
                co_return Refusal{bhttp::status::gone, found.message};
            case Status::no_network:
                co_return Refusal{bhttp::status::bad_gateway, found.message};
            case Status::hibernated:
                break;
        }
        if (attempt > 0) {
            co_return Refusal{bhttp::status::bad_gateway,
                              "sandbox " + sandbox_id + " is still hibernated after a wake"};
        }
        if (!key) {
            // TODO(proxy): routes to a sandbox carry no owner's key; waking them needs a
            // service credential of the proxy's own.
            co_return Refusal{bhttp::status::service_unavailable,
                              "sandbox " + sandbox_id + " is hibernated"};
        }
        auto woken = co_await shared_.wakes.wake(sandbox_id, *key);
        switch (woken.status) {
            case WakeResult::Status::woken:
                break;
            case WakeResult::Status::queue_full:
                co_return Refusal{bhttp::status::service_unavailable, woken.message};
            case WakeResult::Status::timed_out:
                co_return Refusal{bhttp::status::gateway_timeout, woken.message};
            case WakeResult::Status::failed:
                co_return Refusal{bhttp::status::bad_gateway, woken.message};
        }
    }
}

template <typename Stream>
awaitable<std::unique_ptr<Upstream>> Session<Stream>::connect(const Destination& d,
                                                              std::string& error, bool& reused,
                                                              bool allow_pool) {
    reused = false;
    if (allow_pool) {
        if (auto pooled = worker_.take(d.pool_key, config_.upstream.idle)) {
            shared_.metrics().upstream_reuses++;
            reused = true;
            co_return pooled;
        }
    }
    auto ex = co_await asio::this_coro::executor;
    std::unique_ptr<Upstream> upstream;
    tcp::endpoint endpoint;
    if (!d.vm_id.empty()) {
        auto open = [vm = d.vm_id]() noexcept {
            OpenedSocket opened;
            try {
                opened.fd = SandboxDirectory::open_socket(vm);
            } catch (const std::exception& e) {
                opened.error = e.what();
            }
            return opened;
        };
        OpenedSocket opened = co_await on_blocking_pool(shared_, ex, std::move(open));
        if (opened.fd < 0) {
            error = opened.error;
            co_return nullptr;
        }
        tcp::socket socket(ex);
        socket.assign(tcp::v4(), opened.fd);
        upstream = std::make_unique<Upstream>(std::move(socket));
        endpoint = {asio::ip::make_address(vm::kGuestAddress), d.port};
    } else {
        upstream = std::make_unique<Upstream>(tcp::socket(ex));
        beast::error_code ec;
        auto ip = asio::ip::make_address(d.address.host, ec);
        if (ec) {
            tcp::resolver resolver(ex);
            auto [rec, results] = co_await resolver.async_resolve(
                d.address.host, std::to_string(d.address.port), use_tuple);
            if (rec || results.empty()) {
                error = "resolve " + d.address.host + ": " + rec.message();
                co_return nullptr;
            }
            endpoint = *results.begin();
        } else {
            endpoint = {ip, d.address.port};
        }
    }
    upstream->key = d.pool_key;
    upstream->stream.expires_after(config_.timeouts.connect);
    auto [ec] = co_await upstream->stream.async_connect(endpoint, use_tuple);
    if (ec) {
        error = "connect to " + d.target + ": " + describe(ec, config_.timeouts.connect);
        co_return nullptr;
    }
    upstream->stream.socket().set_option(tcp::no_delay(true));
    shared_.metrics().upstream_connects++;
    co_return upstream;
}

template <typename Stream>
awaitable<bool> Session<Stream>::serve(bhttp::request_parser<bhttp::buffer_body>& parser,
                                       RequestRecord& rec) {
    auto& req = parser.get();
    rec.method = std::string(req.method_string());
    rec.path = std::string(req.target());
    std::string host_header(req[bhttp::field::host]);
    std::string host = host_without_port(host_header);
    rec.host = host;
    bool client_keep_alive = req.keep_alive();
    unsigned client_version = req.version();

    if (host_header.empty() && req.version() >= 11) {
        co_return co_await refuse(
            parser, {bhttp::status::bad_request, "an HTTP/1.1 request needs a Host header"}, rec);
    }

    // Plain HTTP redirected to HTTPS.
    if (config_.tls.redirect_http && !tls_) {
        rec.kind = RouteKind::redirect;
        std::string location = "https://" + host;
        if (shared_.https_port != 443) {
            location += ":" + std::to_string(shared_.https_port);
        }
        location += std::string(req.target());
        bool keep = parser.is_done() && client_keep_alive;
        co_return co_await respond(bhttp::status::permanent_redirect, "text/plain",
                                   "Moved to " + location + "\n", keep, rec, location);
    }

    auto resolved = co_await resolve(parser, host, rec);
    if (auto* refusal = std::get_if<Refusal>(&resolved)) {
        co_return co_await refuse(parser, *refusal, rec);
    }
    Destination& d = std::get<Destination>(resolved);
    rec.route = d.route;
    rec.target = d.target;

    // The request as the upstream sees it.
    bool upgrade = is_upgrade(req);
    bool expect_continue =
        beast::iequals(req[bhttp::field::expect], "100-continue") && req.version() >= 11;
    remove_hop_by_hop(req.base(), upgrade);
    set_forwarded(req.base(), {client_, tls_, host_header});
    if (d.strip_authorization) {
        req.erase(bhttp::field::authorization);
    }
    req.erase(bhttp::field::expect);
    req.version(11);

    bool has_body = !parser.is_done();
    auto upstream_start = Clock::now();
    std::unique_ptr<Upstream> upstream;
    std::optional<bhttp::response_parser<bhttp::buffer_body>> rp;
    // A pooled connection the upstream closed meanwhile fails at once: a request without a body
    // is sent once more on a fresh connection.
    // Failures inside the loop leave it through `failure` (or `body_too_large`) and are answered
    // after it: GCC 12 miscompiles `co_return co_await` from inside this loop (double free).
    std::optional<Refusal> failure;
    bool body_too_large = false;
    for (int attempt = 0;; ++attempt) {
        std::string error;
        bool reused = false;
        upstream = co_await connect(d, error, reused, attempt == 0);
        rec.reused = reused;
        if (!upstream) {
            shared_.metrics().upstream_failures++;
            failure = Refusal{bhttp::status::bad_gateway, error};
            break;
        }
        if (attempt == 0 && expect_continue && has_body) {
            static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
            lower().expires_after(config_.timeouts.write);
            auto [ec, n] = co_await asio::async_write(stream_, asio::buffer(kContinue), use_tuple);
            if (ec) {
                rec.error = "write 100 Continue: " + ec.message();
                co_return false;
            }
        }

        // The request, its body streamed.
        beast::error_code in_error, out_error;
        rec.bytes_in = co_await relay_message<true>(stream_, buffer_, parser, upstream->stream,
                                                    relay_buffer_.get(), config_.timeouts, in_error,
                                                    out_error);
        if (in_error) {
            rec.error = "reading the request body from the client: " +
                        describe(in_error, config_.timeouts.read);
            body_too_large = in_error == bhttp::error::body_limit;
            if (!body_too_large) {
                co_return false;
            }
            break;
        }
        if (out_error) {
            if (reused && !has_body) {
                continue;
            }
            shared_.metrics().upstream_failures++;
            failure = Refusal{bhttp::status::bad_gateway,
                              "send the request to " + d.target + ": " +
                                  describe(out_error, config_.timeouts.write)};
            break;
        }

        // The response head; 1xx answers other than 101 are skipped.
        beast::error_code ec;
        for (;;) {
            rp.emplace();
            rp->header_limit(static_cast<std::uint32_t>(config_.limits.header_bytes));
            rp->body_limit(std::numeric_limits<std::uint64_t>::max());
            if (req.method() == bhttp::verb::head) {
                rp->skip(true);
            }
            upstream->stream.expires_after(config_.timeouts.response);
            auto [hec, hn] = co_await bhttp::async_read_header(upstream->stream, upstream->buffer,
                                                               *rp, use_tuple);
            ec = hec;
            if (ec || rp->get().result_int() >= 200 ||
                rp->get().result() == bhttp::status::switching_protocols) {
                break;
            }
        }
        if (ec) {
            if (reused && !has_body &&
                (ec == bhttp::error::end_of_stream || ec == asio::error::connection_reset)) {
                continue;
            }
            shared_.metrics().upstream_failures++;
            bool timeout = is_timeout(ec);
            failure = Refusal{timeout ? bhttp::status::gateway_timeout : bhttp::status::bad_gateway,
                              d.target + " did not answer: " +
                                  (ec == bhttp::error::header_limit
                                       ? "its response head is over " +
                                             std::to_string(config_.limits.header_bytes) + " bytes"
                                       : describe(ec, config_.timeouts.response))};
            break;
        }
        break;
    }
    if (body_too_large) {
        co_return co_await respond(bhttp::status::payload_too_large, "text/plain",
                                   "413 Payload Too Large: the body is over " +
                                       std::to_string(config_.limits.body_bytes) + " bytes\n",
                                   false, rec);
    }
    if (failure) {
        co_return co_await refuse(parser, std::move(*failure), rec);
    }
    rec.upstream_ms = millis_since(upstream_start);
    auto& res = rp->get();
    rec.status = res.result_int();

    // A protocol switch (WebSocket): pass the 101 on, then carry bytes both ways.
    if (res.result() == bhttp::status::switching_protocols) {
        if (!upgrade) {
            shared_.metrics().upstream_failures++;
            co_return co_await refuse(
                parser, {bhttp::status::bad_gateway, d.target + " switched protocols unasked"},
                rec);
        }
        bhttp::response<bhttp::empty_body> head;
        head.base() = res.base();
        lower().expires_after(config_.timeouts.write);
        auto [ec, n] = co_await bhttp::async_write(stream_, head, use_tuple);
        if (!ec) {
            co_await tunnel(*upstream, rec);
        }
        co_return false;
    }

    // The response, its body streamed.
    bool keep = client_keep_alive && !draining() &&
                served_ < config_.limits.max_requests_per_connection && parser.is_done();
    bool upstream_keep = res.keep_alive() && !res.need_eof();
    if (res.need_eof() && !rp->is_done()) {
        // Delimited by the upstream's close: chunk it for an HTTP/1.1 client instead.
        if (client_version >= 11) {
            res.chunked(true);
        } else {
            keep = false;
        }
    } else if (res.chunked() && client_version < 11) {
        // HTTP/1.0 has no chunks: the body goes as it is, ended by the close.
        res.chunked(false);
        keep = false;
    }
    remove_hop_by_hop(res.base(), false);
    res.set(bhttp::field::via, "1.1 holt-proxy");
    res.version(11);
    res.keep_alive(keep);
    beast::error_code in_error, out_error;
    rec.bytes_out =
        co_await relay_message<false>(upstream->stream, upstream->buffer, *rp, stream_,
                                      relay_buffer_.get(), config_.timeouts, in_error, out_error);
    if (in_error) {
        // The head has gone out: the client can only learn of it from the cut connection.
        shared_.metrics().upstream_failures++;
        rec.error = "upstream " + d.target +
                    " broke off the response: " + describe(in_error, config_.timeouts.read);
        beast::error_code ignored;
        lower().socket().close(ignored);
        co_return false;
    }
    if (out_error) {
        rec.error =
            "writing the response to the client: " + describe(out_error, config_.timeouts.write);
        co_return false;
    }
    if (upstream_keep && rp->is_done()) {
        worker_.give(std::move(upstream), config_.upstream.max_idle_per_target);
    }
    co_return keep;
}

template <typename Stream>
awaitable<void> Session<Stream>::tunnel(Upstream& upstream, RequestRecord& rec) {
    using namespace asio::experimental::awaitable_operators;
    shared_.metrics().websocket_tunnels++;
    // Bytes that came in behind the heads belong to the tunnel.
    if (buffer_.size() > 0) {
        upstream.stream.expires_after(config_.timeouts.write);
        auto [ec, n] = co_await asio::async_write(upstream.stream, buffer_.data(), use_tuple);
        rec.bytes_in += n;
        buffer_.consume(buffer_.size());
        if (ec) {
            shared_.metrics().websocket_tunnels--;
            co_return;
        }
    }
    if (upstream.buffer.size() > 0) {
        lower().expires_after(config_.timeouts.write);
        auto [ec, n] = co_await asio::async_write(stream_, upstream.buffer.data(), use_tuple);
        rec.bytes_out += n;
        upstream.buffer.consume(upstream.buffer.size());
        if (ec) {
            shared_.metrics().websocket_tunnels--;
            co_return;
        }
    }
    auto [in, out] = co_await (pump(stream_, upstream.stream, config_.timeouts.tunnel_idle) &&
                               pump(upstream.stream, stream_, config_.timeouts.tunnel_idle));
    rec.bytes_in += in;
    rec.bytes_out += out;
    shared_.metrics().websocket_tunnels--;
}

template <typename Stream>
awaitable<void> run_session(std::shared_ptr<Session<Stream>> session) {
    co_await session->run();
}

awaitable<void> accept_loop(Worker& worker, tcp::acceptor& acceptor, bool tls) {
    Shared& shared = worker.shared;
    for (;;) {
        auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
        if (ec) {
            if (!acceptor.is_open() || worker.stopping) {
                co_return;
            }
            // Out of descriptors and the like: wait a little rather than spin.
            asio::steady_timer pause(worker.ioc, std::chrono::milliseconds(50));
            co_await pause.async_wait(use_tuple);
            continue;
        }
        if (static_cast<std::size_t>(shared.metrics().open_connections.load()) >=
            shared.config.limits.max_connections) {
            shared.metrics().connections_refused++;
            continue;  // the socket closes as it goes out of scope
        }
        beast::error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        auto remote = socket.remote_endpoint(ignored);
        std::string client = remote.address().to_string();
        if (tls) {
            using TlsStream = beast::ssl_stream<beast::tcp_stream>;
            auto session = std::make_shared<Session<TlsStream>>(
                worker,
                TlsStream(beast::tcp_stream(std::move(socket)), shared.parts.tls->server_context()),
                true, client);
            asio::co_spawn(worker.ioc, run_session(session), asio::detached);
        } else {
            auto session = std::make_shared<Session<beast::tcp_stream>>(
                worker, beast::tcp_stream(std::move(socket)), false, client);
            asio::co_spawn(worker.ioc, run_session(session), asio::detached);
        }
    }
}

// The admin port: GET /metrics (Prometheus text) and GET /healthz. One request per connection.
awaitable<void> admin_session(Shared& shared, tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    bhttp::request<bhttp::empty_body> req;
    stream.expires_after(std::chrono::seconds(10));
    auto [ec, n] = co_await bhttp::async_read(stream, buffer, req, use_tuple);
    if (ec) {
        co_return;
    }
    bhttp::response<bhttp::string_body> res{bhttp::status::ok, 11};
    res.set(bhttp::field::server, "holt-proxy");
    if (req.target() == "/metrics") {
        res.set(bhttp::field::content_type, "text/plain; version=0.0.4");
        res.body() = shared.metrics().render();
    } else if (req.target() == "/healthz") {
        res.set(bhttp::field::content_type, "text/plain");
        res.body() = shared.draining ? "draining\n" : "ok\n";
        if (shared.draining) {
            res.result(bhttp::status::service_unavailable);
        }
    } else {
        res.result(bhttp::status::not_found);
        res.set(bhttp::field::content_type, "text/plain");
        res.body() = "the admin port serves /metrics and /healthz\n";
    }
    res.keep_alive(false);
    res.prepare_payload();
    co_await bhttp::async_write(stream, res, use_tuple);
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
}

awaitable<void> admin_loop(Worker& worker, tcp::acceptor& acceptor) {
    for (;;) {
        auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
        if (ec) {
            co_return;
        }
        asio::co_spawn(worker.ioc, admin_session(worker.shared, std::move(socket)), asio::detached);
    }
}

awaitable<void> sweep_loop(Worker& worker) {
    asio::steady_timer timer(worker.ioc);
    while (!worker.stopping) {
        timer.expires_after(std::chrono::seconds(1));
        co_await timer.async_wait(use_tuple);
        worker.sweep(worker.shared.config.upstream.idle);
    }
}

tcp::acceptor bind(asio::io_context& ioc, const ListenAddress& at, bool reuse_port,
                   const std::string& what) {
    return with_context("listen for " + what + " on " + at.to_string(), [&] {
        beast::error_code ec;
        auto address = asio::ip::make_address(at.host, ec);
        if (ec) {
            tcp::resolver resolver(ioc);
            auto results = resolver.resolve(at.host, std::to_string(at.port));
            address = results.begin()->endpoint().address();
        }
        tcp::endpoint endpoint(address, at.port);
        tcp::acceptor acceptor(ioc);
        acceptor.open(endpoint.protocol());
        acceptor.set_option(asio::socket_base::reuse_address(true));
        if (reuse_port) {
            int one = 1;
            ::setsockopt(acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
        }
        acceptor.bind(endpoint, ec);
        if (ec) {
            throw Error(ec.message());
        }
        acceptor.listen(asio::socket_base::max_listen_connections);
        return acceptor;
    });
}

}  // namespace

struct ProxyServer::Impl {
    explicit Impl(ServerParts parts) : shared(parts) {}
    Shared shared;
    std::vector<std::unique_ptr<Worker>> workers;
    std::unique_ptr<tcp::acceptor> admin;
    std::mutex mutex;
    std::condition_variable stopped_cv;
    bool stop_requested = false;
};

ProxyServer::ProxyServer(ServerParts parts) : impl_(std::make_unique<Impl>(parts)) {
    Shared& shared = impl_->shared;
    const Config& config = *parts.config;
    for (const auto& service : config.effective_services()) {
        shared.services.emplace_back(service.prefix, address_of_url(service.upstream));
    }
    // Longest prefix first.
    std::stable_sort(shared.services.begin(), shared.services.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });

    ListenAddress http_at = config.listen;
    ListenAddress https_at = config.tls.listen;
    for (int i = 0; i < config.workers; ++i) {
        auto worker = std::make_unique<Worker>(shared);
        // The first worker binds the configured port (maybe 0: any); the others join it.
        worker->acceptors.push_back(bind(worker->ioc, http_at, true, "HTTP"));
        worker->acceptor_tls.push_back(false);
        http_at.port = worker->acceptors.back().local_endpoint().port();
        if (parts.tls) {
            worker->acceptors.push_back(bind(worker->ioc, https_at, true, "HTTPS"));
            worker->acceptor_tls.push_back(true);
            https_at.port = worker->acceptors.back().local_endpoint().port();
        }
        impl_->workers.push_back(std::move(worker));
    }
    shared.http_port = http_at.port;
    shared.https_port = parts.tls ? https_at.port : 0;
    if (config.admin_listen) {
        impl_->admin = std::make_unique<tcp::acceptor>(
            bind(impl_->workers.front()->ioc, *config.admin_listen, false, "admin"));
        shared.admin_port = impl_->admin->local_endpoint().port();
    }
}

ProxyServer::~ProxyServer() = default;

std::uint16_t ProxyServer::http_port() const {
    return impl_->shared.http_port;
}
std::uint16_t ProxyServer::https_port() const {
    return impl_->shared.https_port;
}
std::uint16_t ProxyServer::admin_port() const {
    return impl_->shared.admin_port;
}

std::size_t ProxyServer::run() {
    for (auto& worker : impl_->workers) {
        for (std::size_t i = 0; i < worker->acceptors.size(); ++i) {
            asio::co_spawn(worker->ioc,
                           accept_loop(*worker, worker->acceptors[i], worker->acceptor_tls[i]),
                           asio::detached);
        }
        asio::co_spawn(worker->ioc, sweep_loop(*worker), asio::detached);
    }
    if (impl_->admin) {
        asio::co_spawn(impl_->workers.front()->ioc,
                       admin_loop(*impl_->workers.front(), *impl_->admin), asio::detached);
    }
    std::vector<std::thread> threads;
    for (auto& worker : impl_->workers) {
        threads.emplace_back([w = worker.get()] {
            for (;;) {
                try {
                    w->ioc.run();
                    return;
                } catch (const std::exception& e) {
                    w->shared.log->error("worker: {}", e.what());
                }
            }
        });
    }

    // Wait for stop(), then for the workers to drain, at most the grace period.
    {
        std::unique_lock lock(impl_->mutex);
        impl_->stopped_cv.wait(lock, [&] { return impl_->stop_requested; });
    }
    auto deadline = Clock::now() + impl_->shared.config.timeouts.shutdown_grace;
    std::size_t open = 0;
    for (;;) {
        open = static_cast<std::size_t>(
            std::max<std::int64_t>(0, impl_->shared.metrics().open_connections.load()));
        if (open == 0 || Clock::now() >= deadline) {
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    for (auto& worker : impl_->workers) {
        worker->ioc.stop();
    }
    for (auto& t : threads) {
        t.join();
    }
    impl_->shared.blocking.join();
    return open;
}

void ProxyServer::stop() {
    impl_->shared.draining = true;
    for (auto& worker : impl_->workers) {
        asio::post(worker->ioc, [w = worker.get(), this] {
            w->stopping = true;
            for (auto& acceptor : w->acceptors) {
                beast::error_code ignored;
                acceptor.close(ignored);
            }
            if (w == impl_->workers.front().get() && impl_->admin) {
                beast::error_code ignored;
                impl_->admin->close(ignored);
            }
            w->idle.clear();
            // drain() may end a session, which erases itself from the set: iterate a copy.
            auto sessions = w->sessions;
            for (auto* s : sessions) {
                s->drain();
            }
        });
    }
    std::lock_guard lock(impl_->mutex);
    impl_->stop_requested = true;
    impl_->stopped_cv.notify_all();
}

}  // namespace holt::proxy
