#pragma once

// holt-proxy's counters, served in the Prometheus text format on the admin port (/metrics).
// Every update is a relaxed atomic add: safe from every worker thread, no lock on the request
// path.

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace holt::proxy {

// What kind of route answered a request; the label `route` of the request metrics.
enum class RouteKind { api, app, sandbox, unknown, redirect, count };
const char* route_kind_name(RouteKind kind);

class Metrics {
  public:
    // One finished request: its route kind, the status sent (0: none, the connection broke),
    // its whole duration and the body bytes received from the client and sent to it.
    void request(RouteKind kind, unsigned status, double seconds, std::uint64_t bytes_in,
                 std::uint64_t bytes_out);

    std::atomic<std::int64_t> open_connections{0};
    std::atomic<std::uint64_t> connections_total{0};
    std::atomic<std::uint64_t> connections_refused{0};  // over limits.max_connections
    std::atomic<std::uint64_t> tls_handshake_failures{0};
    std::atomic<std::uint64_t> upstream_connects{0};
    std::atomic<std::uint64_t> upstream_reuses{0};
    std::atomic<std::uint64_t> upstream_failures{0};  // connect or exchange failed: 502/504
    std::atomic<std::uint64_t> wakes_started{0};
    std::atomic<std::uint64_t> wakes_failed{0};
    std::atomic<std::uint64_t> wake_waits{0};  // requests held for a wake
    std::atomic<std::uint64_t> wake_queue_full{0};
    std::atomic<std::int64_t> websocket_tunnels{0};
    std::atomic<std::uint64_t> route_reloads{0};
    std::atomic<std::int64_t> routes{0};
    std::atomic<std::uint64_t> route_listener_errors{0};

    // The Prometheus exposition of everything above.
    std::string render() const;

  private:
    static constexpr std::array<double, 11> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                        0.1,   0.25,   0.5,   1.0,  5.0};
    static constexpr std::size_t kKinds = static_cast<std::size_t>(RouteKind::count);
    struct PerKind {
        std::array<std::atomic<std::uint64_t>, 6> status_class{};  // none, 1xx .. 5xx
        std::array<std::atomic<std::uint64_t>, kBuckets.size() + 1> buckets{};
        std::atomic<std::uint64_t> micros_sum{0};
        std::atomic<std::uint64_t> bytes_in{0};
        std::atomic<std::uint64_t> bytes_out{0};
    };
    std::array<PerKind, kKinds> kinds_{};
};

}  // namespace holt::proxy
