#include "host_name.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace holt::proxy {

namespace {

bool is_label(std::string_view s) {
    if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') {
        return false;
    }
    return std::all_of(s.begin(), s.end(), [](char c) {
        return std::islower(static_cast<unsigned char>(c)) ||
               std::isdigit(static_cast<unsigned char>(c)) || c == '-';
    });
}

}  // namespace

std::string host_without_port(std::string_view host) {
    std::string_view name = host;
    if (!name.empty() && name.front() == '[') {
        auto close = name.find(']');
        name = close == std::string_view::npos ? name.substr(1) : name.substr(1, close - 1);
    } else if (auto colon = name.rfind(':');
               colon != std::string_view::npos && name.find(':') == colon) {
        name = name.substr(0, colon);
    }
    if (!name.empty() && name.back() == '.') {
        name.remove_suffix(1);
    }
    std::string out(name);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

HostTarget parse_host(std::string_view host, std::string_view domain) {
    HostTarget target;
    if (host.size() <= domain.size() + 1 || !host.ends_with(domain) ||
        host[host.size() - domain.size() - 1] != '.') {
        return target;
    }
    std::string_view label = host.substr(0, host.size() - domain.size() - 1);
    if (!is_label(label)) {
        return target;  // empty, deeper ("a.b.DOMAIN") or with odd characters
    }
    target.label = std::string(label);
    if (label == "api") {
        target.kind = HostTarget::Kind::api;
        return target;
    }

    // PORT-SANDBOXID: a port number, a dash, and the rest is the sandbox id.
    auto dash = label.find('-');
    if (dash != std::string_view::npos && dash > 0 && dash <= 5) {
        std::string_view digits = label.substr(0, dash);
        unsigned port = 0;
        auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
        if (ec == std::errc() && end == digits.data() + digits.size()) {
            if (port == 0 || port > 65535 || digits.front() == '0' || dash + 1 >= label.size()) {
                return target;  // looks like a port form but is not a valid one
            }
            target.kind = HostTarget::Kind::sandbox_port;
            target.port = static_cast<std::uint16_t>(port);
            target.sandbox_id = std::string(label.substr(dash + 1));
            return target;
        }
    }

    // BRANCH--APP or APP.
    if (auto sep = label.find("--"); sep != std::string_view::npos) {
        std::string_view branch = label.substr(0, sep);
        std::string_view app = label.substr(sep + 2);
        if (!is_label(branch) || !is_label(app) || app.find("--") != std::string_view::npos) {
            return target;
        }
        target.kind = HostTarget::Kind::app;
        target.branch = std::string(branch);
        target.app = std::string(app);
        return target;
    }
    target.kind = HostTarget::Kind::app;
    target.app = std::string(label);
    return target;
}

bool path_has_prefix(std::string_view target, std::string_view prefix) {
    if (!target.starts_with(prefix)) {
        return false;
    }
    if (target.size() == prefix.size() || prefix.ends_with('/')) {
        return true;
    }
    char next = target[prefix.size()];
    return next == '/' || next == '?';
}

}  // namespace holt::proxy
