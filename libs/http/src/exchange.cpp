#include "holt/http/exchange.hpp"

#include <boost/asio/write.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/url/parse.hpp>

#include "connection.hpp"

namespace holt::http {

using detail::asio::ip::tcp;
namespace asio = detail::asio;
namespace beast = detail::beast;
namespace bhttp = detail::bhttp;

std::string error_body(const std::string& code, const std::string& message) {
    boost::json::object error{{"code", code}, {"message", message}};
    return boost::json::serialize(boost::json::object{{"error", std::move(error)}});
}

Exchange::Exchange(detail::Connection& connection) : connection_(connection) {
    const auto& request = connection_.parser->get();
    method_ = std::string(request.method_string());
    target_ = std::string(request.target());
    remote_ = connection_.remote;
    auto url = boost::urls::parse_origin_form(target_);
    if (!url) {
        valid_target_ = false;
        path_ = target_;
        return;
    }
    path_ = std::string(url->path());
    for (auto param : url->params()) {
        query_.emplace_back(param.key, param.value);
    }
    // An encoded NUL (%00) would cut ids and paths short wherever C strings are involved (the
    // database, the guest's file system) while the rest of the code sees the whole string.
    auto has_nul = [](const std::string& text) { return text.find('\0') != std::string::npos; };
    if (has_nul(path_)) {
        valid_target_ = false;
    }
    for (const auto& [key, value] : query_) {
        if (has_nul(key) || has_nul(value)) {
            valid_target_ = false;
        }
    }
}

std::optional<std::string> Exchange::query(std::string_view name) const {
    for (const auto& [key, value] : query_) {
        if (key == name) {
            return value;
        }
    }
    return std::nullopt;
}

const std::string& Exchange::param(const std::string& name) const {
    static const std::string empty;
    auto it = params_.find(name);
    return it == params_.end() ? empty : it->second;
}

std::optional<std::string> Exchange::header(std::string_view name) const {
    const auto& request = connection_.parser->get();
    auto it = request.find(beast::string_view(name.data(), name.size()));
    if (it == request.end()) {
        return std::nullopt;
    }
    return std::string(it->value());
}

std::optional<std::uint64_t> Exchange::content_length() const {
    auto length = connection_.parser->content_length();
    if (!length) {
        return std::nullopt;
    }
    return *length;
}

bool Exchange::body_complete() const {
    return connection_.parser->is_done();
}

std::size_t Exchange::read_body_some(char* data, std::size_t size) {
    auto& parser = *connection_.parser;
    if (parser.is_done() || size == 0) {
        return 0;
    }
    if (connection_.broken) {
        throw bad_request("the request body cannot be read any more");
    }
    // A client that asked whether to send its body ("Expect: 100-continue") is told to go on
    // once a handler wants the body.
    if (!connection_.continue_sent) {
        connection_.continue_sent = true;
        auto expect = header("Expect");
        if (expect && beast::iequals(*expect, "100-continue")) {
            bhttp::response<bhttp::empty_body> go_on{bhttp::status::continue_, 11};
            auto ec = connection_.run(
                [&](auto handler) {
                    bhttp::async_write(connection_.stream, go_on, std::move(handler));
                },
                connection_.options.io_timeout);
            if (ec) {
                connection_.broken = true;
                throw bad_request("send 100 Continue: " + ec.message());
            }
        }
    }
    auto& body = parser.get().body();
    body.data = data;
    body.size = size;
    auto ec = connection_.run(
        [&](auto handler) {
            bhttp::async_read(connection_.stream, connection_.buffer, parser, std::move(handler));
        },
        connection_.options.io_timeout);
    if (ec == bhttp::error::need_buffer) {
        ec = {};
    }
    if (ec) {
        connection_.broken = true;
        throw bad_request("read request body: " + ec.message());
    }
    return size - body.size;
}

std::string Exchange::read_body(std::size_t limit) {
    if (auto length = content_length(); length && *length > limit) {
        connection_.broken = true;  // the unread body is still on the socket
        throw payload_too_large("request body of " + std::to_string(*length) +
                                " bytes is over the limit of " + std::to_string(limit) + " bytes");
    }
    std::string body;
    char chunk[16 * 1024];
    while (std::size_t n = read_body_some(chunk, sizeof(chunk))) {
        if (body.size() + n > limit) {
            connection_.broken = true;
            throw payload_too_large("request body is over the limit of " + std::to_string(limit) +
                                    " bytes");
        }
        body.append(chunk, n);
    }
    return body;
}

boost::json::value Exchange::read_json(std::size_t limit) {
    std::string body = read_body(limit);
    if (body.find_first_not_of(" \t\r\n") == std::string::npos) {
        return boost::json::object{};
    }
    boost::json::error_code ec;
    boost::json::parse_options options;
    options.max_depth = 32;
    auto value = boost::json::parse(body, ec, {}, options);
    if (ec) {
        throw bad_request("request body is not valid JSON: " + ec.message());
    }
    return value;
}

void Exchange::set_header(std::string name, std::string value) {
    response_headers_.emplace_back(std::move(name), std::move(value));
}

namespace {

// Whether the connection can carry another request after this one.
bool keep_alive(const detail::Connection& connection) {
    return connection.parser->get().keep_alive() && connection.parser->is_done() &&
           !connection.broken;
}

template <typename Message>
void add_headers(Message& message, const std::vector<std::pair<std::string, std::string>>& headers,
                 const detail::Connection& connection) {
    message.set(bhttp::field::server, connection.options.server_name);
    for (const auto& [name, value] : headers) {
        message.set(name, value);
    }
    message.keep_alive(keep_alive(connection));
}

}  // namespace

void Exchange::respond(int status, std::string_view content_type, std::string body) {
    if (responded_) {
        return;
    }
    responded_ = true;
    bhttp::response<bhttp::string_body> response{static_cast<bhttp::status>(status), 11};
    add_headers(response, response_headers_, connection_);
    if (!content_type.empty()) {
        response.set(bhttp::field::content_type,
                     beast::string_view(content_type.data(), content_type.size()));
    }
    response.body() = std::move(body);
    response.prepare_payload();
    auto ec = connection_.run(
        [&](auto handler) { bhttp::async_write(connection_.stream, response, std::move(handler)); },
        connection_.options.io_timeout);
    if (ec) {
        client_gone_ = true;
        connection_.broken = true;
    }
}

void Exchange::respond_json(int status, const boost::json::value& body) {
    respond(status, "application/json", boost::json::serialize(body) + "\n");
}

void Exchange::respond_empty(int status) {
    respond(status, "", "");
}

void Exchange::respond_error(const HttpError& error) {
    respond(error.status(), "application/json", error_body(error.code(), error.what()) + "\n");
}

void Exchange::begin_stream(int status, std::string_view content_type) {
    if (responded_) {
        return;
    }
    responded_ = true;
    streaming_ = true;
    bhttp::response<bhttp::empty_body> response{static_cast<bhttp::status>(status), 11};
    add_headers(response, response_headers_, connection_);
    response.set(bhttp::field::content_type,
                 beast::string_view(content_type.data(), content_type.size()));
    response.chunked(true);
    bhttp::response_serializer<bhttp::empty_body> serializer{response};
    auto ec = connection_.run(
        [&](auto handler) {
            bhttp::async_write_header(connection_.stream, serializer, std::move(handler));
        },
        connection_.options.io_timeout);
    if (ec) {
        client_gone_ = true;
        connection_.broken = true;
    }
}

bool Exchange::write_chunk(std::string_view data) {
    if (client_gone_ || !streaming_) {
        return false;
    }
    if (data.empty()) {
        return true;  // an empty chunk would end the body
    }
    auto ec = connection_.run(
        [&](auto handler) {
            asio::async_write(connection_.stream,
                              bhttp::make_chunk(asio::const_buffer(data.data(), data.size())),
                              std::move(handler));
        },
        connection_.options.io_timeout);
    if (ec) {
        client_gone_ = true;
        connection_.broken = true;
        return false;
    }
    return true;
}

void Exchange::end_stream() {
    if (client_gone_ || !streaming_) {
        return;
    }
    streaming_ = false;
    auto ec = connection_.run(
        [&](auto handler) {
            asio::async_write(connection_.stream, bhttp::make_chunk_last(), std::move(handler));
        },
        connection_.options.io_timeout);
    if (ec) {
        client_gone_ = true;
        connection_.broken = true;
    }
}

}  // namespace holt::http
