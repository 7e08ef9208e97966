// Validation of request bodies: what the API accepts and the 400s it answers otherwise.

#include "requests.hpp"

#include <gtest/gtest.h>

#include <boost/json.hpp>

namespace {

namespace json = boost::json;
using holt::http::HttpError;
using holt::sandbox::parse_create;
using holt::sandbox::parse_exec;
using holt::sandbox::parse_signal;

int status_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const HttpError& e) {
        return e.status();
    }
    return 0;
}

TEST(ParseCreate, AcceptsAFullRequest) {
    auto spec = parse_create(json::parse(R"({"template": "base", "ttl_seconds": 30,
        "on_expire": "hibernate", "env": {"A": "1"}, "metadata": {"k": "v"}, "vcpus": 2,
        "memory_mib": 256, "network": {"allow_egress": ["203.0.113.0/24"]}})"));
    EXPECT_EQ(spec.template_name, "base");
    EXPECT_EQ(spec.ttl_seconds, 30);
    EXPECT_EQ(spec.on_expire, "hibernate");
    EXPECT_EQ(spec.env.at("A"), "1");
    EXPECT_EQ(spec.metadata.at("k"), "v");
    EXPECT_EQ(spec.vcpus, 2);
    EXPECT_EQ(spec.memory_mib, 256);
    ASSERT_TRUE(spec.network);
    EXPECT_EQ(spec.network->at(0), "203.0.113.0/24");
}

TEST(ParseCreate, DefaultsAndNulls) {
    auto spec = parse_create(json::parse(R"({"template": "base", "ttl_seconds": null})"));
    EXPECT_FALSE(spec.ttl_seconds);
    EXPECT_EQ(spec.vcpus, 1);
    EXPECT_EQ(spec.memory_mib, 512);
    EXPECT_EQ(spec.on_expire, "kill");
    EXPECT_FALSE(spec.network);
}

TEST(ParseCreate, RejectsBadInputWith400) {
    for (const char* body : {
             R"([])",
             R"({})",
             R"({"template": 7})",
             R"({"template": "a", "snapshot_id": "b"})",
             R"({"template": "base", "ttl_seconds": 0})",
             R"({"template": "base", "ttl_seconds": "10"})",
             R"({"template": "base", "ttl_seconds": 1.5})",
             R"({"template": "base", "vcpus": 5})",
             R"({"template": "base", "memory_mib": 64})",
             R"({"template": "base", "memory_mib": 99999999999999999999})",
             R"({"template": "base", "env": {"A": 1}})",
             R"({"template": "base", "env": []})",
             R"({"template": "base", "on_expire": "explode"})",
             R"({"template": "base", "network": {"allow_egress": ["10.0.0.0/33"]}})",
             R"({"template": "base", "network": {"allow_egress": "0.0.0.0/0"}})",
         }) {
        EXPECT_EQ(status_of([&] { parse_create(json::parse(body)); }), 400) << body;
    }
}

TEST(ParseExec, CmdOrArgv) {
    auto shell = parse_exec(json::parse(R"({"cmd": "echo hi", "timeout_seconds": 2.5,
        "stdin": "x", "env": {"A": "b"}, "cwd": "/tmp"})"));
    EXPECT_EQ(shell.request.shell, "echo hi");
    EXPECT_EQ(shell.request.timeout, std::chrono::milliseconds(2500));
    EXPECT_EQ(shell.request.stdin_data, "x");
    EXPECT_TRUE(shell.request.pipe_stdin);
    auto argv = parse_exec(json::parse(R"({"argv": ["ls", "-l"], "stream": true,
        "timeout_seconds": 0})"));
    EXPECT_EQ(argv.request.argv.size(), 2u);
    EXPECT_TRUE(argv.stream);
    EXPECT_FALSE(argv.request.timeout);
    EXPECT_EQ(parse_exec(json::parse(R"({"cmd": "x"})")).request.timeout, std::chrono::seconds(60));
}

TEST(ParseExec, ATinyTimeoutIsStillATimeout) {
    auto params = parse_exec(json::parse(R"({"cmd": "sleep 5", "timeout_seconds": 0.0001})"));
    ASSERT_TRUE(params.request.timeout);
    EXPECT_EQ(*params.request.timeout, std::chrono::milliseconds(1));
}

TEST(ParseExec, RejectsBadInputWith400) {
    for (const char* body : {
             R"({})",
             R"({"cmd": "a", "argv": ["b"]})",
             R"({"argv": []})",
             R"({"argv": [1]})",
             R"({"cmd": "a", "timeout_seconds": -1})",
             R"({"cmd": "a", "timeout_seconds": "5"})",
             R"({"cmd": "a", "stream": "yes"})",
             R"({"cmd": "a", "stream": true, "background": true})",
             R"({"cmd": "a", "stdin": 5})",
             R"("cmd")",
         }) {
        EXPECT_EQ(status_of([&] { parse_exec(json::parse(body)); }), 400) << body;
    }
}

TEST(ParseSignal, NamesAndNumbers) {
    EXPECT_EQ(parse_signal(json::value("TERM")), 15);
    EXPECT_EQ(parse_signal(json::value("SIGKILL")), 9);
    EXPECT_EQ(parse_signal(json::value("2")), 2);
    EXPECT_EQ(parse_signal(json::value(9)), 9);
    EXPECT_EQ(status_of([] { parse_signal(json::value("NOPE")); }), 400);
    EXPECT_EQ(status_of([] { parse_signal(json::value(0)); }), 400);
    EXPECT_EQ(status_of([] { parse_signal(json::value(1000)); }), 400);
}

TEST(Utf8, ValidAndInvalid) {
    EXPECT_TRUE(holt::sandbox::is_utf8("plain"));
    EXPECT_TRUE(holt::sandbox::is_utf8("caf\xc3\xa9 \xe2\x82\xac"));
    EXPECT_FALSE(holt::sandbox::is_utf8("\xff"));
    EXPECT_FALSE(holt::sandbox::is_utf8("\xc3"));  // cut short
    EXPECT_FALSE(holt::sandbox::is_utf8("\xe2\x82"));
    json::object event;
    holt::sandbox::add_output(event, "data", std::string("\x00\xff", 2));
    EXPECT_TRUE(event.contains("data_b64"));
    EXPECT_EQ(event.at("data_b64").as_string(), "AP8=");
}

TEST(Utf8, OnlyWellFormedSequencesCount) {
    using holt::sandbox::is_utf8;
    EXPECT_TRUE(is_utf8("\xf0\x9f\x98\x80"));   // U+1F600
    EXPECT_FALSE(is_utf8("\xf5\x80\x80\x80"));  // past U+10FFFF
    EXPECT_FALSE(is_utf8("\xed\xa0\x80"));      // a surrogate
    EXPECT_FALSE(is_utf8("\xe0\x80\xaf"));      // an overlong "/"
    EXPECT_FALSE(is_utf8("\xc0\xaf"));
}

TEST(Utf8, ACharacterCutAtTheEndOfAChunkIsHeldBack) {
    using holt::sandbox::utf8_complete_prefix;
    EXPECT_EQ(utf8_complete_prefix("ab\xe2\x82"), 2u);  // the euro sign, short of its last byte
    EXPECT_EQ(utf8_complete_prefix("ab\xe2\x82\xac"), 5u);
    EXPECT_EQ(utf8_complete_prefix("ab\xf0"), 2u);
    EXPECT_EQ(utf8_complete_prefix("ab\xff"), 3u);  // invalid, not incomplete: nothing to wait for
    EXPECT_EQ(utf8_complete_prefix(""), 0u);
}

TEST(ParseUpdate, ChecksTheWholeBodyBeforeAnythingChanges) {
    using holt::sandbox::parse_update;
    auto update = parse_update(json::parse(R"({"ttl_seconds": null, "metadata": {"a": "b"}})"));
    EXPECT_TRUE(update.set_ttl);
    EXPECT_FALSE(update.ttl_seconds);
    EXPECT_EQ(update.metadata->at("a"), "b");
    for (const char* body : {
             R"({"ttl_seconds": 3000, "on_expire": "bogus"})",
             R"({"ttl_seconds": 999999999999})",
             R"({"ttl_seconds": 0})",
             R"({"vcpus": 4})",
             R"({"metadata": {"a": "\u0000"}})",
             R"([])",
         }) {
        EXPECT_EQ(status_of([&] { parse_update(json::parse(body)); }), 400) << body;
    }
}

TEST(ParseCreate, NulCharactersAndBadVariableNamesAre400) {
    for (const char* body : {
             R"({"template": "base\u0000x"})",
             R"({"template": "base", "metadata": {"a": "\u0000"}})",
             R"({"template": "base", "metadata": {"\u0000": "a"}})",
             R"({"template": "base", "env": {"A=B": "x"}})",
             R"({"template": "base", "env": {"": "x"}})",
             R"({"snapshot_id": "snap-1", "vcpus": 2})",
             R"({"snapshot_id": "snap-1", "memory_mib": 1024})",
         }) {
        EXPECT_EQ(status_of([&] { parse_create(json::parse(body)); }), 400) << body;
    }
}

TEST(GuestPath, MustBeAbsolute) {
    EXPECT_EQ(holt::sandbox::guest_path(std::string("/a/b")), "/a/b");
    EXPECT_EQ(status_of([] { holt::sandbox::guest_path(std::nullopt); }), 400);
    EXPECT_EQ(status_of([] { holt::sandbox::guest_path(std::string("rel")); }), 400);
}

}  // namespace
