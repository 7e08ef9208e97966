// The parts of the HTTP client that need no server: URLs, request targets, error answers.

#include "holt/http_client/api_client.hpp"

#include <gtest/gtest.h>

namespace holt::http_client {
namespace {

TEST(ApiClientTest, TargetEncodesTheQuery) {
    ApiClient client({.api_url = "http://127.0.0.1:7070"});
    EXPECT_EQ(client.target("/v1/sandboxes", {}), "/v1/sandboxes");
    EXPECT_EQ(client.target("/v1/sandboxes/sbx-1/files", {{"path", "/a b/c&d=e"}}),
              "/v1/sandboxes/sbx-1/files?path=/a%20b/c%26d=e");
    EXPECT_EQ(client.target("/v1/sandboxes", {{"metadata[team]", "ml"}, {"state", "running"}}),
              "/v1/sandboxes?metadata[team]=ml&state=running");
}

TEST(ApiClientTest, BasePathOfTheUrl) {
    ApiClient client({.api_url = "http://api.example:80/holt/"});
    EXPECT_EQ(client.target("/v1/keys", {}), "/holt/v1/keys");
}

TEST(ApiClientTest, RejectsUrlsItCannotServe) {
    EXPECT_THROW(ApiClient({.api_url = "not a url"}), holt::Error);
    EXPECT_THROW(ApiClient({.api_url = "https://api.example"}), holt::Error);
    EXPECT_THROW(ApiClient({.api_url = "ftp://x"}), holt::Error);
}

TEST(ApiErrorTest, FromTheApiErrorObject) {
    auto e = ApiError::from_response(
        404, R"({"error":{"code":"not_found","message":"sandbox sbx-1 not found"}})");
    EXPECT_EQ(e.status(), 404);
    EXPECT_EQ(e.code(), "not_found");
    EXPECT_EQ(e.message(), "sandbox sbx-1 not found");
    EXPECT_STREQ(e.what(), "not_found: sandbox sbx-1 not found");
}

TEST(ApiErrorTest, FromABodyThatIsNotAnErrorObject) {
    auto e = ApiError::from_response(502, "<html>Bad Gateway</html>\n");
    EXPECT_EQ(e.code(), "http_502");
    EXPECT_EQ(e.message(), "<html>Bad Gateway</html>");
    auto empty = ApiError::from_response(503, "");
    EXPECT_EQ(empty.message(), "HTTP 503 Service Unavailable");
    auto other_json = ApiError::from_response(400, R"({"detail":"x"})");
    EXPECT_EQ(other_json.code(), "http_400");
}

}  // namespace
}  // namespace holt::http_client
