#pragma once

// holt-proxy's configuration: a YAML file (docs/proxy.md lists every key) with command-line
// overrides. Parsing checks every value and names the key, the line and what was expected.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace holt::proxy {

// "HOST:PORT" split; the host may be a bracketed IPv6 literal ("[::1]:8080").
struct ListenAddress {
    std::string host;
    std::uint16_t port = 0;
    std::string to_string() const;
};

// Parses "HOST:PORT"; throws holt::Error naming the text when it is not one.
ListenAddress parse_listen_address(const std::string& text);

// Where a platform service under api.DOMAIN is reached: requests whose path starts with
// `prefix` ("/v1/sandboxes") go to `upstream` ("http://127.0.0.1:7070").
struct ServiceRoute {
    std::string prefix;
    std::string upstream;
};

// An operator certificate: PEM chain and key. The names it serves are its own (its SANs).
struct CertificateFiles {
    std::filesystem::path cert;
    std::filesystem::path key;
};

struct TlsConfig {
    bool enabled = false;
    ListenAddress listen{"127.0.0.1", 8443};
    // Create (once) a development CA and a wildcard certificate for *.DOMAIN under
    // DATA_DIR/proxy/tls, used for names no operator certificate covers.
    bool dev_certificate = true;
    std::vector<CertificateFiles> certificates;
    // Answer plain-HTTP requests with a redirect to https:// instead of proxying them.
    bool redirect_http = false;
};

struct Limits {
    std::size_t header_bytes = 16 * 1024;  // request or response head; beyond: 431 / 502
    // A request body larger than this is refused (413) or cut off; 0: no limit.
    std::uint64_t body_bytes = 1ull << 30;
    std::size_t max_requests_per_connection = 1000;  // then Connection: close
    std::size_t max_connections = 10000;             // per process; beyond, accepted and closed
};

struct Timeouts {
    std::chrono::milliseconds idle{60'000};      // waiting for the next request on a connection
    std::chrono::milliseconds header{10'000};    // from a request's first byte to its whole head
    std::chrono::milliseconds read{60'000};      // one body read from a client or an upstream
    std::chrono::milliseconds write{60'000};     // one write to a client or an upstream
    std::chrono::milliseconds connect{5'000};    // connecting to an upstream
    std::chrono::milliseconds response{60'000};  // from the request sent to the response head
    std::chrono::milliseconds tunnel_idle{300'000};    // a WebSocket tunnel with no traffic
    std::chrono::milliseconds shutdown_grace{10'000};  // in-flight requests after SIGTERM
};

struct UpstreamPool {
    std::size_t max_idle_per_target = 64;    // per worker thread
    std::chrono::milliseconds idle{30'000};  // an idle pooled connection is closed after
};

struct WakeConfig {
    std::chrono::milliseconds timeout{60'000};  // how long a request is held for a wake
    std::size_t max_waiting = 256;              // requests held per target; beyond: 503
};

struct Config {
    std::string domain = "holt.localhost";
    ListenAddress listen{"127.0.0.1", 8080};
    std::optional<ListenAddress> admin_listen = ListenAddress{"127.0.0.1", 9090};
    int workers = 2;
    std::string data_dir;      // empty: holt::default_data_dir()
    std::string database_url;  // empty: $HOLT_DATABASE_URL, else the private cluster
    // The sandbox service, for wakes; also the default upstream of /v1/sandboxes.
    std::string sandbox_api = "http://127.0.0.1:7070";
    std::vector<ServiceRoute> services;  // empty: /v1/sandboxes -> sandbox_api
    TlsConfig tls;
    Limits limits;
    Timeouts timeouts;
    UpstreamPool upstream;
    WakeConfig wake;
    bool access_log = true;
    std::string log_level;

    // The services under api.DOMAIN, with the default filled in.
    std::vector<ServiceRoute> effective_services() const;
};

// Reads `path`. Throws holt::Error("config FILE: KEY (line N): expected ..., got ...").
Config load_config(const std::filesystem::path& path);
// Parses YAML text; `origin` names it in errors.
Config parse_config(const std::string& yaml, const std::string& origin);

}  // namespace holt::proxy
