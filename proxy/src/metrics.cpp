#include "metrics.hpp"

#include <fmt/format.h>

namespace holt::proxy {

const char* route_kind_name(RouteKind kind) {
    switch (kind) {
        case RouteKind::api:
            return "api";
        case RouteKind::app:
            return "app";
        case RouteKind::sandbox:
            return "sandbox";
        case RouteKind::redirect:
            return "redirect";
        default:
            return "unknown";
    }
}

void Metrics::request(RouteKind kind, unsigned status, double seconds, std::uint64_t bytes_in,
                      std::uint64_t bytes_out) {
    auto& k = kinds_[static_cast<std::size_t>(kind)];
    std::size_t cls = status >= 100 && status < 600 ? status / 100 : 0;
    k.status_class[cls].fetch_add(1, std::memory_order_relaxed);
    std::size_t bucket = 0;
    while (bucket < kBuckets.size() && seconds > kBuckets[bucket]) {
        ++bucket;
    }
    k.buckets[bucket].fetch_add(1, std::memory_order_relaxed);
    k.micros_sum.fetch_add(static_cast<std::uint64_t>(seconds * 1e6), std::memory_order_relaxed);
    k.bytes_in.fetch_add(bytes_in, std::memory_order_relaxed);
    k.bytes_out.fetch_add(bytes_out, std::memory_order_relaxed);
}

std::string Metrics::render() const {
    std::string out;
    auto load = [](const auto& a) { return a.load(std::memory_order_relaxed); };
    auto simple = [&](const char* name, const char* type, const char* help, auto value) {
        out += fmt::format("# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}\n", name, help, type, value);
    };

    out +=
        "# HELP holt_proxy_requests_total Requests answered, by route kind and status class.\n"
        "# TYPE holt_proxy_requests_total counter\n";
    static const char* classes[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (std::size_t i = 0; i < kKinds; ++i) {
        for (std::size_t c = 0; c < 6; ++c) {
            out += fmt::format("holt_proxy_requests_total{{route=\"{}\",status=\"{}\"}} {}\n",
                               route_kind_name(static_cast<RouteKind>(i)), classes[c],
                               load(kinds_[i].status_class[c]));
        }
    }
    out +=
        "# HELP holt_proxy_request_duration_seconds Time from a request's head to the end of "
        "its response.\n# TYPE holt_proxy_request_duration_seconds histogram\n";
    for (std::size_t i = 0; i < kKinds; ++i) {
        const char* kind = route_kind_name(static_cast<RouteKind>(i));
        std::uint64_t cumulative = 0;
        for (std::size_t b = 0; b <= kBuckets.size(); ++b) {
            cumulative += load(kinds_[i].buckets[b]);
            std::string le = b < kBuckets.size() ? fmt::format("{}", kBuckets[b]) : "+Inf";
            out += fmt::format(
                "holt_proxy_request_duration_seconds_bucket{{route=\"{}\",le=\"{}\"}} {}\n", kind,
                le, cumulative);
        }
        out += fmt::format("holt_proxy_request_duration_seconds_sum{{route=\"{}\"}} {}\n", kind,
                           static_cast<double>(load(kinds_[i].micros_sum)) / 1e6);
        out += fmt::format("holt_proxy_request_duration_seconds_count{{route=\"{}\"}} {}\n", kind,
                           cumulative);
    }
    out +=
        "# HELP holt_proxy_body_bytes_total Body bytes, from clients (in) and to them (out).\n"
        "# TYPE holt_proxy_body_bytes_total counter\n";
    for (std::size_t i = 0; i < kKinds; ++i) {
        const char* kind = route_kind_name(static_cast<RouteKind>(i));
        out += fmt::format("holt_proxy_body_bytes_total{{route=\"{}\",direction=\"in\"}} {}\n",
                           kind, load(kinds_[i].bytes_in));
        out += fmt::format("holt_proxy_body_bytes_total{{route=\"{}\",direction=\"out\"}} {}\n",
                           kind, load(kinds_[i].bytes_out));
    }
    simple("holt_proxy_open_connections", "gauge", "Client connections open now.",
           load(open_connections));
    simple("holt_proxy_connections_total", "counter", "Client connections accepted.",
           load(connections_total));
    simple("holt_proxy_connections_refused_total", "counter",
           "Client connections closed at once: over limits.max_connections.",
           load(connections_refused));
    simple("holt_proxy_tls_handshake_failures_total", "counter", "TLS handshakes that failed.",
           load(tls_handshake_failures));
    simple("holt_proxy_upstream_connects_total", "counter", "New connections to upstreams.",
           load(upstream_connects));
    simple("holt_proxy_upstream_reuses_total", "counter",
           "Requests sent on a pooled upstream connection.", load(upstream_reuses));
    simple("holt_proxy_upstream_failures_total", "counter",
           "Upstream connects or exchanges that failed (502/504 or a cut response).",
           load(upstream_failures));
    simple("holt_proxy_wakes_total", "counter", "Wakes of hibernated targets asked for.",
           load(wakes_started));
    simple("holt_proxy_wake_failures_total", "counter", "Wakes that failed or timed out.",
           load(wakes_failed));
    simple("holt_proxy_wake_waits_total", "counter", "Requests held while their target woke.",
           load(wake_waits));
    simple("holt_proxy_wake_queue_full_total", "counter",
           "Requests refused (503): too many already held for one target.", load(wake_queue_full));
    simple("holt_proxy_websocket_tunnels", "gauge", "Upgraded connections open now.",
           load(websocket_tunnels));
    simple("holt_proxy_route_reloads_total", "counter", "Route table loads from the database.",
           load(route_reloads));
    simple("holt_proxy_routes", "gauge", "App and preview routes in the table.", load(routes));
    simple("holt_proxy_route_listener_errors_total", "counter",
           "Lost or failed connections of the route listener (routes may be stale).",
           load(route_listener_errors));
    return out;
}

}  // namespace holt::proxy
