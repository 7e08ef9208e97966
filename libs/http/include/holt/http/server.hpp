#pragma once

// An HTTP/1.1 server with one thread per connection, for control APIs whose handlers block for
// a long time (boot a VM, run a command, stream a file). Every read and write has a timeout; the
// number of connections is bounded (beyond it a client gets 503 at once); a request head is
// limited in size; bodies are left to handlers (Exchange reads them on demand).
//
// A handler that throws HttpError answers with that error as JSON; any other exception answers
// 500 internal with its message. A handler that returns without answering gets 500 too.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "holt/http/exchange.hpp"

namespace holt::http {

struct ServerOptions {
    std::string address = "127.0.0.1";
    std::uint16_t port = 0;  // 0: any free port (see Server::port())
    std::size_t max_connections = 256;
    // Longest wait for the next request on a kept-alive connection.
    std::chrono::milliseconds idle_timeout{std::chrono::seconds(60)};
    // Longest a read or write of a request or response may go without completing.
    std::chrono::milliseconds io_timeout{std::chrono::seconds(60)};
    std::size_t header_limit = 16 * 1024;
    std::size_t max_requests_per_connection = 10000;
    // How long stop() lets running requests finish before run() returns anyway.
    std::chrono::milliseconds shutdown_grace{std::chrono::seconds(10)};
    std::string server_name = "holt";
    std::string logger = "http";
};

class Server {
  public:
    using Handler = std::function<void(Exchange&)>;

    // Binds and listens at once (so port() is known); throws holt::Error when it cannot.
    Server(ServerOptions options, Handler handler);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    std::uint16_t port() const { return port_; }

    // Accepts connections until stop(), then waits for running requests (shutdown_grace at
    // most). Returns the number of connections still open.
    std::size_t run();
    // Stops accepting and closes idle connections. Thread-safe; not async-signal-safe.
    void stop();

    struct Impl;

  private:
    std::unique_ptr<Impl> impl_;
    std::uint16_t port_ = 0;
};

}  // namespace holt::http
