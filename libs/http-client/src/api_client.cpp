#include "holt/http_client/api_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>
#include <vector>

namespace holt::http_client {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;

namespace {

// Bytes per piece of a streamed body, each way.
constexpr std::size_t kChunkSize = 1 << 20;
// Error answers are read whole; more than this is not an error object.
constexpr std::size_t kErrorBodyLimit = 1 << 20;
// JSON answers (lists of sandboxes, keys) are read whole up to this size.
constexpr std::size_t kJsonBodyLimit = 256 << 20;

std::string describe(const Request& request, std::string_view target) {
    return std::string(http::to_string(request.method)) + " " + std::string(target);
}

// Runs one request; transport failures get the request as context ("GET /v1/x: connect ..."),
// while API errors, which carry their own code and message, pass through unchanged.
template <typename Fn>
decltype(auto) in_request(const std::string& what, Fn&& fn) {
    try {
        return std::forward<Fn>(fn)();
    } catch (const ApiError&) {
        throw;
    } catch (const std::exception& e) {
        throw Error(what + ": " + e.what());
    }
}

// One TCP connection to the API for one request.
class Connection {
  public:
    Connection(const std::string& host, const std::string& port, std::chrono::milliseconds timeout)
        : stream_(ioc_), timeout_(timeout) {
        tcp::resolver resolver(ioc_);
        beast::error_code ec;
        auto endpoints = resolver.resolve(host, port, ec);
        if (ec) {
            throw Error("resolve " + host + ": " + ec.message());
        }
        stream_.expires_after(timeout_);
        stream_.connect(endpoints, ec);
        if (ec) {
            throw Error(
                "connect " + host + ":" + port + ": " + ec.message() +
                (ec == asio::error::connection_refused ? " (is the service running?)" : ""));
        }
    }

    ~Connection() {
        beast::error_code ec;
        stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    }

    beast::tcp_stream& stream() { return stream_; }
    beast::flat_buffer& buffer() { return buffer_; }

    void arm(std::optional<std::chrono::milliseconds> timeout) {
        if (timeout) {
            stream_.expires_after(*timeout);
        } else {
            stream_.expires_never();
        }
    }
    void arm() { arm(timeout_); }

    // Reads the rest of an error answer whose header `parser` has read, and throws it.
    template <class Parser>
    [[noreturn]] void throw_error_answer(Parser& header_parser) {
        int status = header_parser.get().result_int();
        http::response_parser<http::string_body> parser(std::move(header_parser));
        parser.body_limit(kErrorBodyLimit);
        beast::error_code ec;
        arm();
        http::read(stream_, buffer_, parser, ec);
        throw ApiError::from_response(status, parser.get().body());
    }

  private:
    asio::io_context ioc_;
    beast::tcp_stream stream_;
    beast::flat_buffer buffer_;
    std::chrono::milliseconds timeout_;
};

template <class Body>
void set_headers(http::request<Body>& req, const ClientOptions& options, const std::string& host) {
    req.set(http::field::host, host);
    req.set(http::field::user_agent, options.user_agent);
    req.set(http::field::accept, "application/json, application/x-ndjson");
    if (!options.api_key.empty()) {
        req.set(http::field::authorization, "Bearer " + options.api_key);
    }
}

// Sends `request` (with its JSON body, if any) as the head of a fresh exchange on `conn`.
void send_request(Connection& conn, const Request& request, const std::string& target,
                  const ClientOptions& options, const std::string& host) {
    http::request<http::string_body> req{request.method, target, 11};
    set_headers(req, options, host);
    if (request.json) {
        req.set(http::field::content_type, "application/json");
        req.body() = json::serialize(*request.json);
    }
    req.prepare_payload();
    conn.arm();
    beast::error_code ec;
    http::write(conn.stream(), req, ec);
    if (ec) {
        throw Error("send request: " + ec.message());
    }
}

// Reads a whole JSON answer (or throws the error it carries).
json::value read_json_answer(Connection& conn) {
    http::response_parser<http::string_body> parser;
    parser.body_limit(kJsonBodyLimit);
    conn.arm();
    beast::error_code ec;
    http::read(conn.stream(), conn.buffer(), parser, ec);
    if (ec) {
        throw Error("read answer: " + ec.message());
    }
    int status = parser.get().result_int();
    const std::string& body = parser.get().body();
    if (status >= 400) {
        throw ApiError::from_response(status, body);
    }
    if (body.empty()) {
        return nullptr;
    }
    json::value v = json::parse(body, ec);
    if (ec) {
        throw Error("answer (HTTP " + std::to_string(status) + ") is not JSON: " + ec.message());
    }
    return v;
}

}  // namespace

ApiError::ApiError(int status, std::string code, std::string message)
    : Error(code + ": " + message),
      status_(status),
      code_(std::move(code)),
      message_(std::move(message)) {}

ApiError ApiError::from_response(int status, std::string_view body) {
    beast::error_code ec;
    json::value v = json::parse(body, ec);
    if (!ec && v.is_object()) {
        if (const auto* err = v.as_object().if_contains("error"); err && err->is_object()) {
            const auto& o = err->as_object();
            const auto* code = o.if_contains("code");
            const auto* message = o.if_contains("message");
            if (code && code->is_string()) {
                return ApiError(status, std::string(code->as_string()),
                                message && message->is_string() ? std::string(message->as_string())
                                                                : std::string());
            }
        }
    }
    std::string text(body.substr(0, 500));
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
        text.pop_back();
    }
    if (text.empty()) {
        text = "HTTP " + std::to_string(status) + " " +
               std::string(http::obsolete_reason(static_cast<http::status>(status)));
    }
    return ApiError(status, "http_" + std::to_string(status), text);
}

ApiClient::ApiClient(ClientOptions options) : options_(std::move(options)) {
    auto parsed = boost::urls::parse_absolute_uri(options_.api_url);
    if (!parsed) {
        throw Error("API URL \"" + options_.api_url + "\": " + parsed.error().message());
    }
    if (parsed->scheme() != "http") {
        // TODO(cli): https; the edge proxy terminates TLS, and this client speaks plain HTTP only.
        throw Error("API URL \"" + options_.api_url + "\": only http:// URLs are supported");
    }
    host_ = parsed->host();
    if (host_.empty()) {
        throw Error("API URL \"" + options_.api_url + "\": no host");
    }
    if (parsed->host_type() == boost::urls::host_type::ipv6) {
        host_ = host_.substr(1, host_.size() - 2);  // resolve wants the address without brackets
    }
    port_ = parsed->has_port() ? std::string(parsed->port()) : "80";
    base_path_ = parsed->path();
    while (!base_path_.empty() && base_path_.back() == '/') {
        base_path_.pop_back();
    }
}

std::string ApiClient::target(std::string_view path, const Query& query) const {
    boost::urls::url url;
    url.set_path(base_path_ + std::string(path));
    for (const auto& [key, value] : query) {
        url.params().append({key, value});
    }
    std::string out(url.encoded_path());
    if (url.has_query()) {
        out += "?";
        out += url.encoded_query();
    }
    return out;
}

json::value ApiClient::call(const Request& request) {
    std::string target = this->target(request.path, request.query);
    return in_request(describe(request, target), [&] {
        Connection conn(host_, port_, options_.timeout);
        send_request(conn, request, target, options_, host_);
        return read_json_answer(conn);
    });
}

int ApiClient::stream(const Request& request, const BodySink& sink,
                      std::optional<std::chrono::milliseconds> read_timeout) {
    std::string target = this->target(request.path, request.query);
    return in_request(describe(request, target), [&] {
        Connection conn(host_, port_, options_.timeout);
        send_request(conn, request, target, options_, host_);

        http::response_parser<http::buffer_body> parser;
        parser.body_limit(boost::none);
        conn.arm();
        beast::error_code ec;
        http::read_header(conn.stream(), conn.buffer(), parser, ec);
        if (ec) {
            throw Error("read answer: " + ec.message());
        }
        int status = parser.get().result_int();
        if (status >= 400) {
            conn.throw_error_answer(parser);
        }
        std::vector<char> buffer(kChunkSize);
        while (!parser.is_done()) {
            parser.get().body().data = buffer.data();
            parser.get().body().size = buffer.size();
            conn.arm(read_timeout);
            // read_some hands over what has arrived; read would wait to fill the whole buffer.
            http::read_some(conn.stream(), conn.buffer(), parser, ec);
            if (ec == http::error::need_buffer) {
                ec = {};
            }
            if (ec) {
                throw Error("read answer: " + ec.message());
            }
            std::size_t n = buffer.size() - parser.get().body().size;
            if (n > 0) {
                sink(std::string_view(buffer.data(), n));
            }
        }
        return status;
    });
}

json::value ApiClient::send_body(const Request& request, const BodySource& source,
                                 std::optional<std::uint64_t> content_length,
                                 std::string_view content_type) {
    std::string target = this->target(request.path, request.query);
    return in_request(describe(request, target), [&] {
        Connection conn(host_, port_, options_.timeout);
        http::request<http::buffer_body> req{request.method, target, 11};
        set_headers(req, options_, host_);
        req.set(http::field::content_type, content_type);
        if (content_length) {
            req.content_length(*content_length);
        } else {
            req.chunked(true);
        }
        req.body().data = nullptr;
        req.body().more = true;
        http::request_serializer<http::buffer_body> serializer(req);

        // The service may answer (an error) before it has read the whole body and close the
        // connection; a failed write is then followed by reading that answer.
        beast::error_code ec;
        conn.arm();
        http::write_header(conn.stream(), serializer, ec);
        std::vector<char> buffer(kChunkSize);
        std::uint64_t sent = 0;
        while (!ec) {
            std::size_t n = source(buffer.data(), buffer.size());
            sent += n;
            if (content_length && sent > *content_length) {
                throw Error("the body is longer than its announced " +
                            std::to_string(*content_length) + " bytes (did the file grow?)");
            }
            if (n == 0 && content_length && sent != *content_length) {
                throw Error("the body ended after " + std::to_string(sent) + " of its " +
                            std::to_string(*content_length) + " bytes (did the file shrink?)");
            }
            req.body().data = n > 0 ? buffer.data() : nullptr;
            req.body().size = n;
            req.body().more = n > 0;
            conn.arm();
            http::write(conn.stream(), serializer, ec);
            if (ec == http::error::need_buffer) {
                ec = {};
            }
            if (n == 0) {
                break;
            }
        }
        if (ec) {
            try {
                read_json_answer(conn);
            } catch (const ApiError&) {
                throw;
            } catch (const std::exception&) {
            }
            throw Error("send body: " + ec.message());
        }
        return read_json_answer(conn);
    });
}

}  // namespace holt::http_client
