#include "headers.hpp"

#include <boost/beast/http/rfc7230.hpp>
#include <string_view>
#include <vector>

namespace holt::proxy {

namespace bhttp = boost::beast::http;

namespace {

bool iequals(std::string_view a, std::string_view b) {
    return boost::beast::iequals(a, b);
}

}  // namespace

bool is_upgrade(const bhttp::fields& fields) {
    auto connection = fields.find(bhttp::field::connection);
    if (connection == fields.end() || fields.find(bhttp::field::upgrade) == fields.end()) {
        return false;
    }
    for (auto token : bhttp::token_list(connection->value())) {
        if (iequals(token, "upgrade")) {
            return true;
        }
    }
    return false;
}

void remove_hop_by_hop(bhttp::fields& fields, bool keep_upgrade) {
    std::string upgrade;
    if (keep_upgrade) {
        if (auto it = fields.find(bhttp::field::upgrade); it != fields.end()) {
            upgrade = std::string(it->value());
        }
    }
    std::vector<std::string> named;
    for (auto it = fields.find(bhttp::field::connection);
         it != fields.end() && it->name() == bhttp::field::connection; ++it) {
        for (auto token : bhttp::token_list(it->value())) {
            named.emplace_back(token);
        }
    }
    for (const auto& name : named) {
        // Never let a client strip framing or the Host through Connection.
        if (iequals(name, "content-length") || iequals(name, "transfer-encoding") ||
            iequals(name, "host")) {
            continue;
        }
        fields.erase(name);
    }
    for (auto f :
         {bhttp::field::connection, bhttp::field::keep_alive, bhttp::field::proxy_connection,
          bhttp::field::proxy_authenticate, bhttp::field::proxy_authorization, bhttp::field::te,
          bhttp::field::trailer, bhttp::field::upgrade}) {
        fields.erase(f);
    }
    if (keep_upgrade && !upgrade.empty()) {
        fields.set(bhttp::field::connection, "Upgrade");
        fields.set(bhttp::field::upgrade, upgrade);
    }
}

void set_forwarded(bhttp::fields& fields, const ForwardedFor& forwarded) {
    fields.set("X-Forwarded-For", forwarded.client_address);
    fields.set("X-Forwarded-Proto", forwarded.tls ? "https" : "http");
    fields.set("X-Forwarded-Host", forwarded.host);
}

}  // namespace holt::proxy
