#include "config.hpp"

#include <yaml-cpp/yaml.h>

#include <boost/url/parse.hpp>
#include <charconv>
#include <fstream>
#include <set>
#include <sstream>

#include "holt/common/error.hpp"

namespace holt::proxy {

namespace {

// Reads typed values out of a YAML mapping and names the full key and line in every error.
class Reader {
  public:
    Reader(std::string origin, std::string path, YAML::Node node)
        : origin_(std::move(origin)), path_(std::move(path)), node_(std::move(node)) {
        if (node_ && !node_.IsNull() && !node_.IsMap()) {
            fail(path_.empty() ? "the document" : path_, node_, "a mapping");
        }
    }

    // Every key of the mapping must be one of `known`: a misspelt key is an error, not ignored.
    void only(const std::set<std::string>& known) const {
        if (!node_ || !node_.IsMap()) {
            return;
        }
        for (const auto& entry : node_) {
            auto key = entry.first.as<std::string>();
            if (!known.count(key)) {
                std::string names;
                for (const auto& k : known) {
                    names += (names.empty() ? "" : ", ") + k;
                }
                throw Error(where(full(key), entry.first) + ": unknown key (known: " + names + ")");
            }
        }
    }

    YAML::Node get(const std::string& key) const {
        if (!node_ || !node_.IsMap()) {
            return {};
        }
        return node_[key];
    }

    Reader child(const std::string& key) const { return Reader(origin_, full(key), get(key)); }
    bool has(const std::string& key) const {
        auto n = get(key);
        return n && !n.IsNull();
    }

    void string(const std::string& key, std::string& out) const {
        auto n = get(key);
        if (!n || n.IsNull()) {
            return;
        }
        if (!n.IsScalar()) {
            fail(full(key), n, "a string");
        }
        out = n.as<std::string>();
    }

    void boolean(const std::string& key, bool& out) const {
        auto n = get(key);
        if (!n || n.IsNull()) {
            return;
        }
        bool value = false;
        if (!n.IsScalar() || !YAML::convert<bool>::decode(n, value)) {
            fail(full(key), n, "true or false");
        }
        out = value;
    }

    // A whole number in [min, max].
    template <typename Int>
    void integer(const std::string& key, Int& out, std::uint64_t min, std::uint64_t max) const {
        auto n = get(key);
        if (!n || n.IsNull()) {
            return;
        }
        std::string expected =
            "a whole number from " + std::to_string(min) + " to " + std::to_string(max);
        if (!n.IsScalar()) {
            fail(full(key), n, expected);
        }
        const std::string& text = n.Scalar();
        std::uint64_t value = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec != std::errc() || end != text.data() + text.size() || value < min || value > max) {
            fail(full(key), n, expected);
        }
        out = static_cast<Int>(value);
    }

    void millis(const std::string& key, std::chrono::milliseconds& out) const {
        std::uint64_t value = static_cast<std::uint64_t>(out.count());
        integer(key, value, 1, 86'400'000);
        out = std::chrono::milliseconds(value);
    }

    void listen(const std::string& key, ListenAddress& out) const {
        std::string text;
        string(key, text);
        if (text.empty()) {
            return;
        }
        try {
            out = parse_listen_address(text);
        } catch (const Error& e) {
            throw Error(where(full(key), get(key)) + ": " + e.what());
        }
    }

    void url(const std::string& key, std::string& out) const {
        std::string text;
        string(key, text);
        if (text.empty()) {
            return;
        }
        auto parsed = boost::urls::parse_absolute_uri(text);
        if (!parsed || parsed->scheme() != "http" || parsed->host().empty()) {
            fail(full(key), get(key), "an http:// URL with a host");
        }
        out = text;
    }

    std::string full(const std::string& key) const {
        return path_.empty() ? key : path_ + "." + key;
    }

    [[noreturn]] void fail(const std::string& key, const YAML::Node& n,
                           const std::string& expected) const {
        std::string got = !n               ? "nothing"
                          : n.IsScalar()   ? "\"" + n.Scalar() + "\""
                          : n.IsMap()      ? "a mapping"
                          : n.IsSequence() ? "a list"
                                           : "nothing";
        throw Error(where(key, n) + ": expected " + expected + ", got " + got);
    }

    std::string where(const std::string& key, const YAML::Node& n) const {
        std::string at = "config " + origin_ + ": " + key;
        if (n && n.Mark().line >= 0) {
            at += " (line " + std::to_string(n.Mark().line + 1) + ")";
        }
        return at;
    }

    const YAML::Node& node() const { return node_; }

  private:
    std::string origin_;
    std::string path_;
    YAML::Node node_;
};

bool valid_domain(const std::string& domain) {
    if (domain.empty() || domain.size() > 200 || domain.front() == '.' || domain.back() == '.') {
        return false;
    }
    for (char c : domain) {
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.')) {
            return false;
        }
        if (std::isupper(static_cast<unsigned char>(c))) {
            return false;
        }
    }
    return true;
}

Config read(const YAML::Node& root, const std::string& origin) {
    Config c;
    Reader top(origin, "", root);
    top.only({"domain", "listen", "admin_listen", "workers", "data_dir", "database_url",
              "sandbox_api", "services", "tls", "limits", "timeouts", "upstream", "wake",
              "access_log", "log_level"});

    top.string("domain", c.domain);
    if (!valid_domain(c.domain)) {
        top.fail("domain", top.get("domain"), "a lower-case DNS name such as holt.example.com");
    }
    top.listen("listen", c.listen);
    if (top.get("admin_listen") && top.get("admin_listen").IsScalar() &&
        (top.get("admin_listen").Scalar() == "off" || top.get("admin_listen").Scalar() == "")) {
        c.admin_listen.reset();
    } else if (top.has("admin_listen")) {
        ListenAddress admin;
        top.listen("admin_listen", admin);
        c.admin_listen = admin;
    }
    top.integer("workers", c.workers, 1, 256);
    top.string("data_dir", c.data_dir);
    top.string("database_url", c.database_url);
    top.url("sandbox_api", c.sandbox_api);
    top.boolean("access_log", c.access_log);
    top.string("log_level", c.log_level);
    if (!c.log_level.empty() &&
        !std::set<std::string>{"trace", "debug", "info", "warn", "error", "off"}.count(
            c.log_level)) {
        top.fail("log_level", top.get("log_level"), "trace, debug, info, warn, error or off");
    }

    if (auto services = top.get("services"); services && !services.IsNull()) {
        if (!services.IsSequence()) {
            top.fail("services", services, "a list of {prefix, upstream}");
        }
        for (std::size_t i = 0; i < services.size(); ++i) {
            Reader entry(origin, "services[" + std::to_string(i) + "]", services[i]);
            entry.only({"prefix", "upstream"});
            ServiceRoute route;
            entry.string("prefix", route.prefix);
            if (route.prefix.empty() || route.prefix.front() != '/') {
                entry.fail(entry.full("prefix"), entry.get("prefix"), "a path starting with /");
            }
            entry.url("upstream", route.upstream);
            if (route.upstream.empty()) {
                entry.fail(entry.full("upstream"), entry.get("upstream"), "an http:// URL");
            }
            c.services.push_back(route);
        }
    }

    Reader tls = top.child("tls");
    tls.only({"enabled", "listen", "dev_certificate", "certificates", "redirect_http"});
    tls.boolean("enabled", c.tls.enabled);
    tls.listen("listen", c.tls.listen);
    tls.boolean("dev_certificate", c.tls.dev_certificate);
    tls.boolean("redirect_http", c.tls.redirect_http);
    if (auto certs = tls.get("certificates"); certs && !certs.IsNull()) {
        if (!certs.IsSequence()) {
            tls.fail("tls.certificates", certs, "a list of {cert, key}");
        }
        for (std::size_t i = 0; i < certs.size(); ++i) {
            Reader entry(origin, "tls.certificates[" + std::to_string(i) + "]", certs[i]);
            entry.only({"cert", "key"});
            std::string cert, key;
            entry.string("cert", cert);
            entry.string("key", key);
            if (cert.empty()) {
                entry.fail(entry.full("cert"), entry.get("cert"), "a PEM file path");
            }
            if (key.empty()) {
                entry.fail(entry.full("key"), entry.get("key"), "a PEM file path");
            }
            c.tls.certificates.push_back({cert, key});
        }
    }
    if (c.tls.redirect_http && !c.tls.enabled) {
        tls.fail("tls.redirect_http", tls.get("redirect_http"),
                 "false while tls.enabled is false (nowhere to redirect to)");
    }
    if (c.tls.enabled && !c.tls.dev_certificate && c.tls.certificates.empty()) {
        tls.fail("tls.certificates", tls.get("certificates"),
                 "at least one certificate when tls.dev_certificate is false");
    }

    Reader limits = top.child("limits");
    limits.only({"header_bytes", "body_bytes", "max_requests_per_connection", "max_connections"});
    limits.integer("header_bytes", c.limits.header_bytes, 1024, 1 << 20);
    limits.integer("body_bytes", c.limits.body_bytes, 0, std::uint64_t(1) << 50);
    limits.integer("max_requests_per_connection", c.limits.max_requests_per_connection, 1,
                   1'000'000);
    limits.integer("max_connections", c.limits.max_connections, 1, 1'000'000);

    Reader timeouts = top.child("timeouts");
    timeouts.only({"idle_ms", "header_ms", "read_ms", "write_ms", "connect_ms", "response_ms",
                   "tunnel_idle_ms", "shutdown_grace_ms"});
    timeouts.millis("idle_ms", c.timeouts.idle);
    timeouts.millis("header_ms", c.timeouts.header);
    timeouts.millis("read_ms", c.timeouts.read);
    timeouts.millis("write_ms", c.timeouts.write);
    timeouts.millis("connect_ms", c.timeouts.connect);
    timeouts.millis("response_ms", c.timeouts.response);
    timeouts.millis("tunnel_idle_ms", c.timeouts.tunnel_idle);
    timeouts.millis("shutdown_grace_ms", c.timeouts.shutdown_grace);

    Reader upstream = top.child("upstream");
    upstream.only({"max_idle_per_target", "idle_ms"});
    upstream.integer("max_idle_per_target", c.upstream.max_idle_per_target, 0, 10'000);
    upstream.millis("idle_ms", c.upstream.idle);

    Reader wake = top.child("wake");
    wake.only({"timeout_ms", "max_waiting"});
    wake.millis("timeout_ms", c.wake.timeout);
    wake.integer("max_waiting", c.wake.max_waiting, 1, 100'000);
    return c;
}

}  // namespace

std::string ListenAddress::to_string() const {
    bool v6 = host.find(':') != std::string::npos;
    return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

ListenAddress parse_listen_address(const std::string& text) {
    auto colon = text.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
        throw Error("expected HOST:PORT, got \"" + text + "\"");
    }
    std::string host = text.substr(0, colon);
    if (host.front() == '[') {
        if (host.back() != ']') {
            throw Error("expected HOST:PORT, got \"" + text + "\"");
        }
        host = host.substr(1, host.size() - 2);
    }
    std::string port_text = text.substr(colon + 1);
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535) {
        throw Error("bad port in \"" + text + "\" (expected 0 to 65535)");
    }
    return {host, static_cast<std::uint16_t>(port)};
}

std::vector<ServiceRoute> Config::effective_services() const {
    if (!services.empty()) {
        return services;
    }
    return {{"/v1/sandboxes", sandbox_api},
            {"/v1/snapshots", sandbox_api},
            {"/v1/templates", sandbox_api},
            {"/v1/keys", sandbox_api}};
}

Config parse_config(const std::string& yaml, const std::string& origin) {
    YAML::Node root;
    try {
        root = YAML::Load(yaml);
    } catch (const YAML::Exception& e) {
        throw Error("config " + origin + ": not valid YAML: " + e.what());
    }
    try {
        return read(root, origin);
    } catch (const YAML::Exception& e) {
        throw Error("config " + origin + ": " + e.what());
    }
}

Config load_config(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) {
        throw Error("config " + path.string() + ": cannot be read: " + errno_text(errno));
    }
    std::stringstream text;
    text << in.rdbuf();
    return parse_config(text.str(), path.string());
}

}  // namespace holt::proxy
