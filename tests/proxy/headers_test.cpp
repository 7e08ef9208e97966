#include "headers.hpp"

#include <gtest/gtest.h>

#include <boost/beast/http/field.hpp>

namespace holt::proxy {
namespace {

namespace bhttp = boost::beast::http;

TEST(RemoveHopByHop, DropsStandardAndNamedHeaders) {
    bhttp::fields f;
    f.set(bhttp::field::host, "shop.holt.test");
    f.set(bhttp::field::connection, "keep-alive, X-Private, Content-Length");
    f.set("X-Private", "secret");
    f.set(bhttp::field::keep_alive, "timeout=5");
    f.set(bhttp::field::proxy_authorization, "Basic xyz");
    f.set(bhttp::field::te, "trailers");
    f.set(bhttp::field::trailer, "X-Checksum");
    f.set(bhttp::field::upgrade, "h2c");
    f.set(bhttp::field::content_length, "12");
    f.set("X-Kept", "yes");
    remove_hop_by_hop(f, false);
    EXPECT_EQ(f.count(bhttp::field::connection), 0u);
    EXPECT_EQ(f.count("X-Private"), 0u);
    EXPECT_EQ(f.count(bhttp::field::keep_alive), 0u);
    EXPECT_EQ(f.count(bhttp::field::proxy_authorization), 0u);
    EXPECT_EQ(f.count(bhttp::field::te), 0u);
    EXPECT_EQ(f.count(bhttp::field::trailer), 0u);
    EXPECT_EQ(f.count(bhttp::field::upgrade), 0u);
    // Framing and the host are not the client's to remove.
    EXPECT_EQ(f[bhttp::field::content_length], "12");
    EXPECT_EQ(f[bhttp::field::host], "shop.holt.test");
    EXPECT_EQ(f["X-Kept"], "yes");
}

TEST(RemoveHopByHop, KeepsTheUpgradePairForWebSockets) {
    bhttp::fields f;
    f.set(bhttp::field::connection, "keep-alive, Upgrade");
    f.set(bhttp::field::upgrade, "websocket");
    f.set(bhttp::field::sec_websocket_key, "dGhlIHNhbXBsZSBub25jZQ==");
    ASSERT_TRUE(is_upgrade(f));
    remove_hop_by_hop(f, true);
    EXPECT_EQ(f[bhttp::field::connection], "Upgrade");
    EXPECT_EQ(f[bhttp::field::upgrade], "websocket");
    EXPECT_EQ(f[bhttp::field::sec_websocket_key], "dGhlIHNhbXBsZSBub25jZQ==");
}

TEST(IsUpgrade, NeedsBothHeaders) {
    bhttp::fields f;
    f.set(bhttp::field::connection, "upgrade");
    EXPECT_FALSE(is_upgrade(f));
    f.set(bhttp::field::upgrade, "websocket");
    EXPECT_TRUE(is_upgrade(f));
    f.set(bhttp::field::connection, "close");
    EXPECT_FALSE(is_upgrade(f));
}

TEST(SetForwarded, ReplacesWhatTheClientSent) {
    bhttp::fields f;
    f.set("X-Forwarded-For", "6.6.6.6");
    f.set("X-Forwarded-Proto", "https");
    set_forwarded(f, {"127.0.0.1", false, "shop.holt.test:8080"});
    EXPECT_EQ(f["X-Forwarded-For"], "127.0.0.1");
    EXPECT_EQ(f["X-Forwarded-Proto"], "http");
    EXPECT_EQ(f["X-Forwarded-Host"], "shop.holt.test:8080");
    EXPECT_EQ(f.count("X-Forwarded-For"), 1u);
}

}  // namespace
}  // namespace holt::proxy
