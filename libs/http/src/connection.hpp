#pragma once

// The socket side of one HTTP connection, private to holt_http. Its thread makes blocking calls
// with timeouts by starting one asynchronous Beast operation at a time on the connection's own
// io_context and running that context until the operation ends.

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <chrono>
#include <optional>
#include <string>

#include "holt/http/server.hpp"

namespace holt::http::detail {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;

class Connection {
  public:
    Connection(const ServerOptions& options, asio::ip::tcp::socket::native_handle_type fd);

    // Starts `start(handler)` and runs the context until it completes or `timeout` passes.
    template <typename Start>
    beast::error_code run(Start&& start, std::chrono::milliseconds timeout) {
        beast::error_code result;
        stream.expires_after(timeout);
        std::forward<Start>(start)([&result](beast::error_code ec, std::size_t) { result = ec; });
        ioc.restart();
        ioc.run();
        return result;
    }

    const ServerOptions& options;
    asio::io_context ioc;
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    std::optional<bhttp::request_parser<bhttp::buffer_body>> parser;
    std::string remote;
    bool continue_sent = false;
    // The connection cannot carry another request (a broken body, a write that failed).
    bool broken = false;
    // Set while the thread waits for the next request head, when stop() may cancel the wait.
    std::atomic<bool> idle{false};
};

}  // namespace holt::http::detail
