#include "host_name.hpp"

#include <gtest/gtest.h>

namespace holt::proxy {
namespace {

using Kind = HostTarget::Kind;

TEST(HostWithoutPort, StripsPortCaseAndTrailingDot) {
    EXPECT_EQ(host_without_port("Shop.Holt.Test:8080"), "shop.holt.test");
    EXPECT_EQ(host_without_port("shop.holt.test."), "shop.holt.test");
    EXPECT_EQ(host_without_port("[::1]:80"), "::1");
    EXPECT_EQ(host_without_port("::1"), "::1");
    EXPECT_EQ(host_without_port(""), "");
}

TEST(ParseHost, Api) {
    auto t = parse_host("api.holt.test", "holt.test");
    EXPECT_EQ(t.kind, Kind::api);
}

TEST(ParseHost, SandboxPort) {
    auto t = parse_host("8080-sbx-0123456789abcdef.holt.test", "holt.test");
    ASSERT_EQ(t.kind, Kind::sandbox_port);
    EXPECT_EQ(t.port, 8080);
    EXPECT_EQ(t.sandbox_id, "sbx-0123456789abcdef");
}

TEST(ParseHost, SandboxPortOutOfRangeOrMalformedIsUnknown) {
    EXPECT_EQ(parse_host("70000-sbx-1.holt.test", "holt.test").kind, Kind::unknown);
    EXPECT_EQ(parse_host("0-sbx-1.holt.test", "holt.test").kind, Kind::unknown);
    EXPECT_EQ(parse_host("080-sbx-1.holt.test", "holt.test").kind, Kind::unknown);
}

TEST(ParseHost, AppAndPreview) {
    auto app = parse_host("shop.holt.test", "holt.test");
    ASSERT_EQ(app.kind, Kind::app);
    EXPECT_EQ(app.app, "shop");
    EXPECT_EQ(app.branch, "");

    auto preview = parse_host("feature-x--shop.holt.test", "holt.test");
    ASSERT_EQ(preview.kind, Kind::app);
    EXPECT_EQ(preview.app, "shop");
    EXPECT_EQ(preview.branch, "feature-x");
}

TEST(ParseHost, AppNameWithDigitsIsNotAPort) {
    auto t = parse_host("web2-shop.holt.test", "holt.test");
    ASSERT_EQ(t.kind, Kind::app);
    EXPECT_EQ(t.app, "web2-shop");
}

TEST(ParseHost, OtherNamesAreUnknown) {
    EXPECT_EQ(parse_host("holt.test", "holt.test").kind, Kind::unknown);
    EXPECT_EQ(parse_host("a.b.holt.test", "holt.test").kind, Kind::unknown);
    EXPECT_EQ(parse_host("shop.other.test", "holt.test").kind, Kind::unknown);
    EXPECT_EQ(parse_host("evilholt.test", "holt.test").kind, Kind::unknown);
    EXPECT_EQ(parse_host("-shop.holt.test", "holt.test").kind, Kind::unknown);
    EXPECT_EQ(parse_host("a--b--c.holt.test", "holt.test").kind, Kind::unknown);
    EXPECT_EQ(parse_host("sh_op.holt.test", "holt.test").kind, Kind::unknown);
    EXPECT_EQ(parse_host("", "holt.test").kind, Kind::unknown);
}

TEST(PathHasPrefix, MatchesWholeSegmentsOnly) {
    EXPECT_TRUE(path_has_prefix("/v1/sandboxes", "/v1/sandboxes"));
    EXPECT_TRUE(path_has_prefix("/v1/sandboxes/sbx-1/exec", "/v1/sandboxes"));
    EXPECT_TRUE(path_has_prefix("/v1/sandboxes?state=running", "/v1/sandboxes"));
    EXPECT_FALSE(path_has_prefix("/v1/sandboxesx", "/v1/sandboxes"));
    EXPECT_FALSE(path_has_prefix("/v1", "/v1/sandboxes"));
    EXPECT_TRUE(path_has_prefix("/anything", "/"));
}

}  // namespace
}  // namespace holt::proxy
