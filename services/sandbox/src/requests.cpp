#include "requests.hpp"

#include <signal.h>
#include <string.h>

#include <algorithm>
#include <boost/beast/core/detail/base64.hpp>
#include <boost/json.hpp>
#include <cmath>
#include <ctime>

namespace holt::sandbox {

namespace json = boost::json;
using http::bad_request;

namespace {

const json::object& as_object(const json::value& body) {
    if (!body.is_object()) {
        throw bad_request("the request body must be a JSON object");
    }
    return body.as_object();
}

std::optional<std::int64_t> int_field(const json::object& body, const char* name) {
    auto* v = body.if_contains(name);
    if (!v || v->is_null()) {
        return std::nullopt;
    }
    if (v->is_int64()) {
        return v->as_int64();
    }
    if (v->is_uint64() && v->as_uint64() <= static_cast<std::uint64_t>(INT64_MAX)) {
        return static_cast<std::int64_t>(v->as_uint64());
    }
    if (v->is_double() && std::floor(v->as_double()) == v->as_double() &&
        std::fabs(v->as_double()) < 1e15) {
        return static_cast<std::int64_t>(v->as_double());
    }
    throw bad_request(std::string("field \"") + name + "\" must be an integer");
}

bool bool_field(const json::object& body, const char* name, bool fallback) {
    auto* v = body.if_contains(name);
    if (!v || v->is_null()) {
        return fallback;
    }
    if (!v->is_bool()) {
        throw bad_request(std::string("field \"") + name + "\" must be true or false");
    }
    return v->as_bool();
}

// The database and the guest take text as C strings, which a NUL would cut short.
void check_no_nul(std::string_view text, const std::string& field) {
    if (text.find('\0') != std::string_view::npos) {
        throw bad_request("field \"" + field + "\" must not contain a NUL character");
    }
}

enum class MapKeys { any, env_names };

StringMap map_field(const json::object& body, const char* name, MapKeys keys = MapKeys::any) {
    StringMap out;
    auto* v = body.if_contains(name);
    if (!v || v->is_null()) {
        return out;
    }
    if (!v->is_object()) {
        throw bad_request(std::string("field \"") + name + "\" must be an object of strings");
    }
    for (const auto& [k, value] : v->as_object()) {
        if (!value.is_string()) {
            throw bad_request(std::string("field \"") + name + "." + std::string(k) +
                              "\" must be a string");
        }
        std::string field = std::string(name) + "." + std::string(k);
        check_no_nul(k, field);
        check_no_nul(value.as_string(), field);
        if (keys == MapKeys::env_names && (k.empty() || k.find('=') != std::string_view::npos)) {
            throw bad_request(std::string("field \"") + name + "\" has the variable name \"" +
                              std::string(k) + "\": names must be non-empty and have no '='");
        }
        out[std::string(k)] = std::string(value.as_string());
    }
    return out;
}

constexpr std::int64_t kMaxTtlSeconds = 10LL * 365 * 24 * 3600;

std::int64_t in_range(std::int64_t value, const char* name, std::int64_t low, std::int64_t high) {
    if (value < low || value > high) {
        throw bad_request(std::string("field \"") + name + "\" must be between " +
                          std::to_string(low) + " and " + std::to_string(high) + ", not " +
                          std::to_string(value));
    }
    return value;
}

// a.b.c.d/n with each part in range.
bool is_ipv4_cidr(const std::string& text) {
    unsigned a, b, c, d, n;
    char tail;
    if (std::sscanf(text.c_str(), "%u.%u.%u.%u/%u%c", &a, &b, &c, &d, &n, &tail) != 5) {
        return false;
    }
    return a < 256 && b < 256 && c < 256 && d < 256 && n <= 32;
}

}  // namespace

std::string string_field(const json::object& body, const char* name, const std::string& fallback) {
    auto* v = body.if_contains(name);
    if (!v || v->is_null()) {
        return fallback;
    }
    if (!v->is_string()) {
        throw bad_request(std::string("field \"") + name + "\" must be a string");
    }
    check_no_nul(v->as_string(), name);
    return std::string(v->as_string());
}

UpdateSpec parse_update(const json::value& value) {
    const auto& body = as_object(value);
    UpdateSpec spec;
    for (const auto& [key, field] : body) {
        if (key == "ttl_seconds") {
            spec.set_ttl = true;
            if (auto ttl = int_field(body, "ttl_seconds")) {
                spec.ttl_seconds = in_range(*ttl, "ttl_seconds", 1, kMaxTtlSeconds);
            }
        } else if (key == "on_expire") {
            spec.on_expire = string_field(body, "on_expire");
            if (*spec.on_expire != "kill" && *spec.on_expire != "hibernate") {
                throw bad_request("field \"on_expire\" must be \"kill\" or \"hibernate\"");
            }
        } else if (key == "metadata") {
            spec.metadata = map_field(body, "metadata");
        } else {
            throw bad_request("field \"" + std::string(key) +
                              "\" cannot be changed (a sandbox takes ttl_seconds, on_expire and "
                              "metadata)");
        }
    }
    return spec;
}

CreateSpec parse_create(const json::value& value) {
    const auto& body = as_object(value);
    CreateSpec spec;
    spec.template_name = string_field(body, "template");
    spec.snapshot_id = string_field(body, "snapshot_id");
    if (spec.template_name.empty() == spec.snapshot_id.empty()) {
        throw bad_request("give exactly one of \"template\" and \"snapshot_id\"");
    }
    if (auto ttl = int_field(body, "ttl_seconds")) {
        spec.ttl_seconds = in_range(*ttl, "ttl_seconds", 1, kMaxTtlSeconds);
    }
    spec.on_expire = string_field(body, "on_expire", "kill");
    if (spec.on_expire != "kill" && spec.on_expire != "hibernate") {
        throw bad_request("field \"on_expire\" must be \"kill\" or \"hibernate\"");
    }
    spec.env = map_field(body, "env", MapKeys::env_names);
    spec.metadata = map_field(body, "metadata");
    if (!spec.snapshot_id.empty()) {
        for (const char* size : {"vcpus", "memory_mib"}) {
            if (auto* v = body.if_contains(size); v && !v->is_null()) {
                throw bad_request(std::string("field \"") + size +
                                  "\" cannot be set with \"snapshot_id\": a sandbox made from a "
                                  "snapshot has the snapshot's size");
            }
        }
    }
    spec.vcpus = static_cast<int>(in_range(int_field(body, "vcpus").value_or(1), "vcpus", 1, 4));
    spec.memory_mib = static_cast<int>(
        in_range(int_field(body, "memory_mib").value_or(512), "memory_mib", 128, 4096));
    if (auto* net = body.if_contains("network"); net && !net->is_null()) {
        if (!net->is_object()) {
            throw bad_request("field \"network\" must be an object");
        }
        std::vector<std::string> cidrs;
        if (auto* allow = net->as_object().if_contains("allow_egress");
            allow && !allow->is_null()) {
            if (!allow->is_array()) {
                throw bad_request("field \"network.allow_egress\" must be an array of CIDRs");
            }
            for (const auto& c : allow->as_array()) {
                if (!c.is_string() || !is_ipv4_cidr(std::string(c.as_string()))) {
                    throw bad_request("network.allow_egress: " + json::serialize(c) +
                                      " is not an IPv4 CIDR such as 203.0.113.0/24");
                }
                cidrs.emplace_back(c.as_string());
            }
        }
        spec.network = std::move(cidrs);
    }
    return spec;
}

ExecParams parse_exec(const json::value& value) {
    const auto& body = as_object(value);
    ExecParams out;
    auto& req = out.request;
    std::string cmd = string_field(body, "cmd");
    auto* argv = body.if_contains("argv");
    bool has_argv = argv && !argv->is_null();
    if (cmd.empty() == !has_argv) {
        throw bad_request("give exactly one of \"cmd\" and \"argv\"");
    }
    if (has_argv) {
        if (!argv->is_array() || argv->as_array().empty()) {
            throw bad_request("field \"argv\" must be a non-empty array of strings");
        }
        for (const auto& a : argv->as_array()) {
            if (!a.is_string()) {
                throw bad_request("field \"argv\" must be a non-empty array of strings");
            }
            req.argv.emplace_back(a.as_string());
        }
    } else {
        req.shell = cmd;
    }
    req.env = map_field(body, "env", MapKeys::env_names);
    req.cwd = string_field(body, "cwd");
    req.user = string_field(body, "user");
    if (auto* in = body.if_contains("stdin"); in && !in->is_null()) {
        if (!in->is_string()) {
            throw bad_request("field \"stdin\" must be a string");
        }
        req.stdin_data = std::string(in->as_string());
        req.pipe_stdin = true;
    }
    double timeout = 60;
    if (auto* t = body.if_contains("timeout_seconds"); t && !t->is_null()) {
        if (!t->is_number()) {
            throw bad_request("field \"timeout_seconds\" must be a number");
        }
        timeout = t->to_number<double>();
        if (timeout < 0 || timeout > 7 * 24 * 3600 || std::isnan(timeout)) {
            throw bad_request("field \"timeout_seconds\" must be between 0 and 604800");
        }
    }
    if (timeout > 0) {
        // At least a millisecond: a tiny timeout must not round down to "none".
        req.timeout = std::chrono::milliseconds(
            std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(timeout * 1000))));
    }
    out.stream = bool_field(body, "stream", false);
    out.background = bool_field(body, "background", false);
    if (out.stream && out.background) {
        throw bad_request("\"stream\" and \"background\" cannot both be true");
    }
    return out;
}

int parse_signal(const json::value& value) {
    if (value.is_int64() && value.as_int64() > 0 && value.as_int64() < 65) {
        return static_cast<int>(value.as_int64());
    }
    if (value.is_string()) {
        std::string name(value.as_string());
        if (!name.empty() && std::all_of(name.begin(), name.end(), ::isdigit) && name.size() < 3) {
            int n = std::stoi(name);
            if (n > 0 && n < 65) {
                return n;
            }
        }
        if (name.rfind("SIG", 0) == 0) {
            name = name.substr(3);
        }
        static const std::pair<const char*, int> kSignals[] = {
            {"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT},  {"KILL", SIGKILL},
            {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM},  {"CONT", SIGCONT},
            {"STOP", SIGSTOP}, {"ALRM", SIGALRM}, {"WINCH", SIGWINCH}};
        for (const auto& [n, sig] : kSignals) {
            if (name == n) {
                return sig;
            }
        }
    }
    throw bad_request("\"signal\" must be a signal name (TERM, KILL, INT, ...) or number, not " +
                      json::serialize(value));
}

std::string guest_path(const std::optional<std::string>& path, const char* what) {
    if (!path || path->empty()) {
        throw bad_request(std::string("query parameter \"") + what + "\" is required");
    }
    if (path->front() != '/' || path->find('\0') != std::string::npos || path->size() > 4096) {
        throw bad_request(std::string("\"") + what + "\" must be an absolute path in the guest");
    }
    return *path;
}

namespace {

json::value opt_string(const std::optional<std::string>& v) {
    return v ? json::value(*v) : json::value(nullptr);
}

json::object map_json(const StringMap& map) {
    json::object out;
    for (const auto& [k, v] : map) {
        out[k] = v;
    }
    return out;
}

json::value network_json(const std::optional<std::vector<std::string>>& network) {
    if (!network) {
        return nullptr;
    }
    json::array cidrs;
    for (const auto& c : *network) {
        cidrs.emplace_back(c);
    }
    return json::object{{"allow_egress", std::move(cidrs)}};
}

std::string rfc3339(std::chrono::system_clock::time_point t) {
    std::time_t secs = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char buf[32];
    std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string mode_string(std::uint32_t mode) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "%04o", mode & 07777);
    return buf;
}

std::string type_name(vm::FileType type) {
    switch (type) {
        case vm::FileType::kRegular:
            return "file";
        case vm::FileType::kDirectory:
            return "dir";
        case vm::FileType::kSymlink:
            return "symlink";
        default:
            return "other";
    }
}

}  // namespace

json::value to_json(const SandboxRecord& r) {
    return json::object{
        {"id", r.id},
        {"template", r.template_name},
        {"state", r.state},
        {"vcpus", r.vcpus},
        {"memory_mib", r.memory_mib},
        {"created_at", r.created_at},
        {"ttl_seconds", r.ttl_seconds ? json::value(*r.ttl_seconds) : json::value(nullptr)},
        {"expires_at", opt_string(r.expires_at)},
        {"on_expire", r.on_expire},
        {"metadata", map_json(r.metadata)},
        {"network", network_json(r.network)},
        {"parent_id", opt_string(r.parent_id)},
        {"snapshot_id", opt_string(r.snapshot_id)},
        {"ended_at", opt_string(r.ended_at)},
        {"end_reason", opt_string(r.end_reason)},
    };
}

json::value to_json(const SnapshotRecord& r) {
    return json::object{
        {"id", r.id},
        {"name", r.name},
        {"sandbox_id", r.sandbox_id},
        {"template", r.template_name},
        {"vcpus", r.vcpus},
        {"memory_mib", r.memory_mib},
        {"created_at", r.created_at},
    };
}

json::value to_json(const KeyRecord& r) {
    return json::object{
        {"id", r.id},
        {"name", r.name},
        {"prefix", r.prefix},
        {"created_at", r.created_at},
        {"revoked_at", opt_string(r.revoked_at)},
    };
}

json::value to_json(const vm::FileStat& s) {
    auto slash = s.path.find_last_of('/');
    return json::object{
        {"name", slash == std::string::npos ? s.path : s.path.substr(slash + 1)},
        {"path", s.path},
        {"type", type_name(s.type)},
        {"size", s.size},
        {"mode", mode_string(s.mode)},
        {"mtime", rfc3339(s.mtime)},
    };
}

json::value to_json(const vm::DirEntry& e, const std::string& dir) {
    std::string base = dir.size() > 1 && dir.back() == '/' ? dir.substr(0, dir.size() - 1) : dir;
    json::object out{
        {"type", type_name(e.type)},
        {"size", e.size},
        {"mode", mode_string(e.mode)},
        {"mtime", rfc3339(e.mtime)},
    };
    // A name that is not UTF-8 comes as name_b64 (and path_b64).
    add_output(out, "name", e.name);
    add_output(out, "path", (base == "/" ? "" : base) + "/" + e.path);
    return out;
}

json::value to_json(const vm::ExitStatus& s) {
    return json::object{
        {"exit_code", s.exit_code ? json::value(*s.exit_code) : json::value(nullptr)},
        {"signal", s.signal ? json::value(*s.signal) : json::value(nullptr)},
        {"timed_out", s.timed_out},
        {"duration_ms", static_cast<std::int64_t>(s.duration.count())},
    };
}

bool is_utf8(std::string_view s) {
    return utf8_valid_prefix(s) == s.size();
}

std::size_t utf8_valid_prefix(std::string_view s) {
    // RFC 3629: no overlong forms, no surrogates (U+D800..DFFF), nothing past U+10FFFF.
    auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    auto follows = [&](std::size_t k, unsigned lo, unsigned hi) {
        return k < s.size() && at(k) >= lo && at(k) <= hi;
    };
    std::size_t i = 0;
    while (i < s.size()) {
        unsigned c = at(i);
        std::size_t length = 0;
        unsigned lo = 0x80, hi = 0xBF;  // the second byte's range
        if (c < 0x80) {
            length = 1;
        } else if (c >= 0xC2 && c <= 0xDF) {
            length = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            length = 3;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            length = 4;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            return i;
        }
        if (length > 1 && !follows(i + 1, lo, hi)) {
            return i;
        }
        for (std::size_t k = 2; k < length; ++k) {
            if (!follows(i + k, 0x80, 0xBF)) {
                return i;
            }
        }
        i += length;
    }
    return i;
}

std::size_t utf8_complete_prefix(std::string_view s) {
    // Look back over at most three continuation bytes for the lead byte of the last character.
    std::size_t back = 0;
    while (back < 3 && back < s.size() &&
           (static_cast<unsigned char>(s[s.size() - 1 - back]) & 0xC0) == 0x80) {
        ++back;
    }
    if (back == s.size()) {
        return s.size();
    }
    unsigned lead = static_cast<unsigned char>(s[s.size() - 1 - back]);
    std::size_t length = lead >= 0xF5   ? 1  // not a lead byte: invalid, nothing to wait for
                         : lead >= 0xF0 ? 4
                         : lead >= 0xE0 ? 3
                         : lead >= 0xC2 ? 2
                                        : 1;
    return length > back + 1 ? s.size() - 1 - back : s.size();
}

void add_output(json::object& event, const char* key, std::string_view data) {
    if (is_utf8(data)) {
        event[key] = json::string(data);
        return;
    }
    std::string encoded(boost::beast::detail::base64::encoded_size(data.size()), '\0');
    encoded.resize(boost::beast::detail::base64::encode(encoded.data(), data.data(), data.size()));
    event[std::string(key) + "_b64"] = std::move(encoded);
}

}  // namespace holt::sandbox
