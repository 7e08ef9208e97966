#include "holt/http/server.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <thread>

#include "connection.hpp"
#include "holt/common/error.hpp"
#include "holt/common/log.hpp"

namespace holt::http {

namespace asio = detail::asio;
namespace beast = detail::beast;
namespace bhttp = detail::bhttp;
using asio::ip::tcp;

namespace detail {

Connection::Connection(const ServerOptions& server_options, tcp::socket::native_handle_type fd)
    : options(server_options), stream(ioc) {
    stream.socket().assign(tcp::v4(), fd);
    beast::error_code ec;
    stream.socket().set_option(tcp::no_delay(true), ec);  // small chunks of streamed output
    auto endpoint = stream.socket().remote_endpoint(ec);
    if (!ec) {
        remote = endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
    }
}

}  // namespace detail

struct Server::Impl {
    ServerOptions options;
    Handler handler;
    std::shared_ptr<spdlog::logger> log;
    asio::io_context ioc;
    tcp::acceptor acceptor{ioc};

    std::mutex mutex;
    std::condition_variable idle;
    std::set<detail::Connection*> connections;
    std::size_t active = 0;
    std::atomic<bool> stopping{false};

    void accept_next();
    void serve(tcp::socket::native_handle_type fd);
    void serve_requests(detail::Connection& connection);
    void refuse(tcp::socket& socket);
};

void Server::Impl::accept_next() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
        if (ec) {
            if (!stopping && ec != asio::error::operation_aborted) {
                log->warn("accept: {}", ec.message());
                accept_next();
            }
            return;
        }
        {
            std::lock_guard lock(mutex);
            if (active >= options.max_connections) {
                refuse(socket);
                accept_next();
                return;
            }
            ++active;
        }
        auto fd = socket.release();
        std::thread([this, fd] { serve(fd); }).detach();
        accept_next();
    });
}

// Over the connection limit: one short answer, written without waiting, then close.
void Server::Impl::refuse(tcp::socket& socket) {
    static const std::string answer =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Connection: close\r\nContent-Length: " +
        std::to_string(error_body("unavailable", "too many connections; try again later").size() +
                       1) +
        "\r\n\r\n" + error_body("unavailable", "too many connections; try again later") + "\n";
    beast::error_code ec;
    socket.non_blocking(true, ec);
    socket.write_some(asio::buffer(answer), ec);
    socket.close(ec);
    log->warn("refused a connection: {} connections are open already", options.max_connections);
}

void Server::Impl::serve(tcp::socket::native_handle_type fd) {
    {
        detail::Connection connection(options, fd);
        {
            std::lock_guard lock(mutex);
            connections.insert(&connection);
        }
        try {
            serve_requests(connection);
        } catch (const std::exception& e) {
            log->warn("connection {}: {}", connection.remote, e.what());
        }
        {
            std::lock_guard lock(mutex);
            connections.erase(&connection);
        }
        beast::error_code ec;
        connection.stream.socket().shutdown(tcp::socket::shutdown_both, ec);
        connection.stream.socket().close(ec);
    }
    std::lock_guard lock(mutex);
    --active;
    idle.notify_all();
}

void Server::Impl::serve_requests(detail::Connection& connection) {
    for (std::size_t served = 0; served < options.max_requests_per_connection; ++served) {
        if (stopping) {
            return;
        }
        connection.parser.emplace();
        connection.parser->header_limit(static_cast<std::uint32_t>(options.header_limit));
        connection.parser->body_limit(boost::none);  // handlers decide (Exchange::read_body)
        connection.continue_sent = false;

        connection.idle = true;
        if (stopping) {
            return;
        }
        auto ec = connection.run(
            [&](auto done) {
                bhttp::async_read_header(connection.stream, connection.buffer, *connection.parser,
                                         std::move(done));
            },
            served == 0 ? options.io_timeout : options.idle_timeout);
        connection.idle = false;
        if (ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
            ec == beast::error::timeout || ec == asio::error::operation_aborted ||
            ec == asio::error::connection_reset) {
            return;
        }
        if (ec) {
            // A malformed or oversized head: answer once, then close.
            int status = ec == bhttp::error::header_limit ? 431 : 400;
            bhttp::response<bhttp::string_body> response{static_cast<bhttp::status>(status), 11};
            response.set(bhttp::field::content_type, "application/json");
            response.body() = error_body(status == 431 ? "headers_too_large" : "bad_request",
                                         "malformed request: " + ec.message()) +
                              "\n";
            response.keep_alive(false);
            response.prepare_payload();
            connection.run(
                [&](auto done) {
                    bhttp::async_write(connection.stream, response, std::move(done));
                },
                options.io_timeout);
            return;
        }

        auto started = std::chrono::steady_clock::now();
        std::optional<Exchange> exchange;
        try {
            exchange.emplace(connection);
            if (!exchange->valid_target()) {
                throw bad_request("request target \"" + exchange->target() +
                                  "\" is not a valid path, or it has an encoded NUL byte (%00)");
            }
            handler(*exchange);
            if (!exchange->responded()) {
                exchange->respond_error(internal_error("the handler gave no answer"));
            }
        } catch (const HttpError& e) {
            if (exchange->responded()) {
                connection.broken = true;  // an answer is under way: cut it off
            } else {
                exchange->respond_error(e);
            }
        } catch (const std::exception& e) {
            log->error("{} {}: {}", connection.parser->get().method_string(),
                       connection.parser->get().target(), e.what());
            if (exchange && !exchange->responded()) {
                exchange->respond_error(internal_error(e.what()));
            } else {
                connection.broken = true;
            }
        }
        if (exchange) {
            log->debug("{} {} {} {} ms", connection.remote, exchange->method(), exchange->target(),
                       std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::steady_clock::now() - started)
                           .count());
        }
        if (connection.broken || !connection.parser->is_done() ||
            !connection.parser->get().keep_alive()) {
            return;
        }
    }
}

Server::Server(ServerOptions options, Handler handler) : impl_(std::make_unique<Impl>()) {
    impl_->options = std::move(options);
    impl_->handler = std::move(handler);
    impl_->log = holt::log::get(impl_->options.logger);
    with_context("listen on " + impl_->options.address + ":" + std::to_string(impl_->options.port),
                 [&] {
                     beast::error_code ec;
                     auto address = asio::ip::make_address(impl_->options.address, ec);
                     if (ec) {
                         throw Error("not an IP address: " + impl_->options.address);
                     }
                     tcp::endpoint endpoint(address, impl_->options.port);
                     auto& acceptor = impl_->acceptor;
                     acceptor.open(endpoint.protocol());
                     acceptor.set_option(asio::socket_base::reuse_address(true));
                     acceptor.bind(endpoint);
                     acceptor.listen(asio::socket_base::max_listen_connections);
                     port_ = acceptor.local_endpoint().port();
                 });
}

Server::~Server() {
    stop();
}

std::size_t Server::run() {
    impl_->accept_next();
    impl_->ioc.run();

    std::unique_lock lock(impl_->mutex);
    impl_->idle.wait_for(lock, impl_->options.shutdown_grace, [&] { return impl_->active == 0; });
    return impl_->active;
}

void Server::stop() {
    if (impl_->stopping.exchange(true)) {
        return;
    }
    asio::post(impl_->ioc, [impl = impl_.get()] {
        beast::error_code ec;
        impl->acceptor.close(ec);
    });
    // Connections waiting for their next request stop waiting; busy ones end after their answer.
    std::lock_guard lock(impl_->mutex);
    for (auto* connection : impl_->connections) {
        asio::post(connection->ioc, [connection] {
            if (connection->idle) {
                beast::error_code ec;
                connection->stream.socket().cancel(ec);
            }
        });
    }
}

}  // namespace holt::http
