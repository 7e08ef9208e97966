#pragma once

// Header rewriting between a client and an upstream (RFC 9110 section 7.6.1).

#include <boost/beast/http/fields.hpp>
#include <string>

namespace holt::proxy {

// Removes the hop-by-hop headers: Connection and every header it names, Keep-Alive,
// Proxy-Connection, Proxy-Authenticate, Proxy-Authorization, TE, Trailer and Upgrade. Message
// framing (Content-Length, Transfer-Encoding) is left to the relay, which keeps it consistent
// with the body it sends. With `keep_upgrade` the pair "Connection: Upgrade" and "Upgrade" stays,
// for a WebSocket handshake passed through.
void remove_hop_by_hop(boost::beast::http::fields& fields, bool keep_upgrade);

struct ForwardedFor {
    std::string client_address;  // "127.0.0.1", "::1"
    bool tls = false;
    std::string host;  // the Host the client asked for
};

// Sets X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host. The proxy is the edge: what a
// client sent in these headers is not trusted and is replaced.
void set_forwarded(boost::beast::http::fields& fields, const ForwardedFor& forwarded);

// Whether the request asks for a protocol upgrade (a WebSocket handshake): "Connection" lists
// "upgrade" and "Upgrade" is present.
bool is_upgrade(const boost::beast::http::fields& fields);

}  // namespace holt::proxy
