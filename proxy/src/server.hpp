#pragma once

// The edge proxy's network side: listeners, one session per client connection, the relay to
// upstreams and their connection pools. Asynchronous (Boost.Asio coroutines over Beast), one
// io_context per worker thread; every worker accepts on its own SO_REUSEPORT socket, so a
// connection, its session and its upstream connections stay on one thread and need no locks.
// docs/proxy.md describes the behaviour; this header keeps Asio and Beast out of its includers.

#include <cstdint>
#include <memory>

#include "config.hpp"

namespace holt::proxy {

class Metrics;
class RouteTable;
class SandboxDirectory;
class TlsContexts;

struct ServerParts {
    const Config* config = nullptr;
    RouteTable* routes = nullptr;
    SandboxDirectory* sandboxes = nullptr;  // nullptr: sandbox ports answer 503
    Metrics* metrics = nullptr;
    TlsContexts* tls = nullptr;  // nullptr: no HTTPS listener
};

class ProxyServer {
  public:
    // Binds every listener (HTTP, HTTPS when configured, admin); throws holt::Error when one
    // cannot be bound.
    explicit ProxyServer(ServerParts parts);
    ~ProxyServer();
    ProxyServer(const ProxyServer&) = delete;
    ProxyServer& operator=(const ProxyServer&) = delete;

    std::uint16_t http_port() const;
    std::uint16_t https_port() const;  // 0 without TLS
    std::uint16_t admin_port() const;  // 0 without an admin listener

    // Serves until stop(), then lets requests in flight finish (timeouts.shutdown_grace at most)
    // and returns the number of client connections still open when it gave up.
    std::size_t run();
    // Stops accepting, closes idle connections, and lets busy ones finish their current
    // request (answered with Connection: close). Thread-safe; not async-signal-safe.
    void stop();

    struct Impl;

  private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace holt::proxy
