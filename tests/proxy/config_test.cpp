#include "config.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "holt/common/error.hpp"
#include "route_table.hpp"

namespace holt::proxy {
namespace {

using ::testing::HasSubstr;

std::string error_of(const std::string& yaml) {
    try {
        parse_config(yaml, "test.yaml");
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

TEST(Config, DefaultsWithoutAFile) {
    Config c = parse_config("", "empty");
    EXPECT_EQ(c.domain, "holt.localhost");
    EXPECT_EQ(c.listen.port, 8080);
    ASSERT_TRUE(c.admin_listen);
    EXPECT_FALSE(c.tls.enabled);
    auto services = c.effective_services();
    ASSERT_FALSE(services.empty());
    EXPECT_EQ(services.front().prefix, "/v1/sandboxes");
    EXPECT_EQ(services.front().upstream, "http://127.0.0.1:7070");
}

TEST(Config, ReadsEveryPart) {
    Config c = parse_config(R"(
domain: holt.example.com
listen: 0.0.0.0:80
admin_listen: off
workers: 4
sandbox_api: http://127.0.0.1:7171
services:
  - {prefix: /v1/sandboxes, upstream: "http://127.0.0.1:7171"}
  - {prefix: /v1/databases, upstream: "http://127.0.0.1:7272"}
tls:
  enabled: true
  listen: "[::1]:443"
  redirect_http: true
  certificates:
    - {cert: /etc/holt/a.crt, key: /etc/holt/a.key}
limits: {header_bytes: 8192, body_bytes: 0, max_requests_per_connection: 10}
timeouts: {idle_ms: 1000, header_ms: 2000}
wake: {timeout_ms: 5000, max_waiting: 3}
access_log: false
)",
                            "full");
    EXPECT_EQ(c.domain, "holt.example.com");
    EXPECT_EQ(c.listen.host, "0.0.0.0");
    EXPECT_FALSE(c.admin_listen);
    EXPECT_EQ(c.workers, 4);
    ASSERT_EQ(c.services.size(), 2u);
    EXPECT_EQ(c.services[1].upstream, "http://127.0.0.1:7272");
    EXPECT_TRUE(c.tls.enabled);
    EXPECT_EQ(c.tls.listen.host, "::1");
    EXPECT_EQ(c.tls.listen.port, 443);
    EXPECT_EQ(c.tls.listen.to_string(), "[::1]:443");
    EXPECT_TRUE(c.tls.redirect_http);
    ASSERT_EQ(c.tls.certificates.size(), 1u);
    EXPECT_EQ(c.limits.header_bytes, 8192u);
    EXPECT_EQ(c.limits.body_bytes, 0u);
    EXPECT_EQ(c.timeouts.idle.count(), 1000);
    EXPECT_EQ(c.timeouts.header.count(), 2000);
    EXPECT_EQ(c.wake.max_waiting, 3u);
    EXPECT_FALSE(c.access_log);
}

TEST(Config, ErrorsNameKeyLineAndExpectation) {
    EXPECT_THAT(error_of("workers: lots\n"),
                HasSubstr("config test.yaml: workers (line 1): expected a whole number from 1 to "
                          "256, got \"lots\""));
    EXPECT_THAT(error_of("limits:\n  header_bytes: -5\n"),
                HasSubstr("limits.header_bytes (line 2): expected a whole number"));
    EXPECT_THAT(error_of("listen: localhost\n"), HasSubstr("listen (line 1): expected HOST:PORT"));
    EXPECT_THAT(error_of("listen: 127.0.0.1:99999\n"), HasSubstr("bad port"));
    EXPECT_THAT(error_of("domain: Holt.Test\n"), HasSubstr("expected a lower-case DNS name"));
    EXPECT_THAT(error_of("access_log: maybe\n"), HasSubstr("expected true or false"));
    EXPECT_THAT(error_of("sandbox_api: ftp://x\n"), HasSubstr("expected an http:// URL"));
    EXPECT_THAT(error_of("services:\n  - {prefix: v1, upstream: http://a:1}\n"),
                HasSubstr("services[0].prefix (line 2): expected a path starting with /"));
    EXPECT_THAT(error_of("timeouts: {idel_ms: 5}\n"),
                HasSubstr("timeouts.idel_ms (line 1): unknown key"));
    EXPECT_THAT(error_of("tls: {redirect_http: true}\n"),
                HasSubstr("false while tls.enabled is false"));
    EXPECT_THAT(error_of("tls: {enabled: true, dev_certificate: false}\n"),
                HasSubstr("at least one certificate"));
    EXPECT_THAT(error_of("domain: [a\n"), HasSubstr("not valid YAML"));
    EXPECT_THAT(error_of("- a\n- b\n"), HasSubstr("expected a mapping"));
}

TEST(ListenAddress, Parses) {
    auto a = parse_listen_address("127.0.0.1:0");
    EXPECT_EQ(a.host, "127.0.0.1");
    EXPECT_EQ(a.port, 0);
    EXPECT_THROW(parse_listen_address(":80"), Error);
    EXPECT_THROW(parse_listen_address("host:"), Error);
    EXPECT_THROW(parse_listen_address("host:http"), Error);
}

TEST(RouteTarget, ParsesBothForms) {
    auto address = parse_route_target("http://127.0.0.1:8080");
    ASSERT_TRUE(address);
    EXPECT_EQ(address->kind, RouteTarget::Kind::address);
    EXPECT_EQ(address->host, "127.0.0.1");
    EXPECT_EQ(address->port, 8080);

    auto sandbox = parse_route_target("sandbox://sbx-0123456789abcdef:3000");
    ASSERT_TRUE(sandbox);
    EXPECT_EQ(sandbox->kind, RouteTarget::Kind::sandbox);
    EXPECT_EQ(sandbox->sandbox_id, "sbx-0123456789abcdef");
    EXPECT_EQ(sandbox->port, 3000);

    EXPECT_FALSE(parse_route_target("http://127.0.0.1"));  // no port
    EXPECT_FALSE(parse_route_target("https://127.0.0.1:443"));
    EXPECT_FALSE(parse_route_target("http://127.0.0.1:8080/path"));
    EXPECT_FALSE(parse_route_target("http://127.0.0.1:0"));
    EXPECT_FALSE(parse_route_target("not a url"));
}

}  // namespace
}  // namespace holt::proxy
