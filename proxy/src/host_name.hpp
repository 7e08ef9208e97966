#pragma once

// What a request's Host names under the proxy's domain:
//   api.DOMAIN              the platform's own API (by path prefix)
//   PORT-SANDBOXID.DOMAIN   port PORT of sandbox SANDBOXID ("8080-sbx-0123456789abcdef")
//   BRANCH--APP.DOMAIN      the preview of branch BRANCH of app APP
//   APP.DOMAIN              app APP
// Anything else (another domain, a deeper name, the bare domain) is unknown.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace holt::proxy {

struct HostTarget {
    enum class Kind { unknown, api, sandbox_port, app };
    Kind kind = Kind::unknown;
    std::string label;       // the first label, lower-cased: "8080-sbx-1", "main--shop", "shop"
    std::string sandbox_id;  // sandbox_port
    std::uint16_t port = 0;  // sandbox_port
    std::string app;         // app
    std::string branch;      // app: empty for the app itself
};

// The host name of a Host header value, lower-cased and without a port or a trailing dot
// ("Shop.Holt.Test:8080" -> "shop.holt.test", "[::1]:80" -> "::1").
std::string host_without_port(std::string_view host_header);

// Classifies `host` (as host_without_port returns it) under `domain` (lower case).
HostTarget parse_host(std::string_view host, std::string_view domain);

// The path matches a service prefix: equal to it, or followed by '/' or '?'.
bool path_has_prefix(std::string_view target, std::string_view prefix);

}  // namespace holt::proxy
