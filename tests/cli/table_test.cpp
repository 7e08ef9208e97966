// Human output: aligned tables and the API's objects rendered as rows.

#include "table.hpp"

#include <gtest/gtest.h>

#include <boost/json.hpp>

namespace holt::cli {
namespace {

namespace json = boost::json;

TEST(TableTest, AlignsColumnsAndTrimsTheLastOne) {
    Table t({"ID", "STATE", "NOTE"});
    t.add_row({"sbx-1", "running", ""});
    t.add_row({"sbx-12345", "killed", "x"});
    EXPECT_EQ(t.render(),
              "ID         STATE    NOTE\n"
              "sbx-1      running\n"
              "sbx-12345  killed   x\n");
}

TEST(TableTest, CountsCharactersNotBytes) {
    Table t({"A", "B"});
    t.add_row({"héé", "1"});
    t.add_row({"abcd", "2"});
    EXPECT_EQ(t.render(),
              "A     B\n"
              "héé   1\n"
              "abcd  2\n");
}

TEST(TableTest, ShortRowsArePadded) {
    Table t({"A", "B"});
    t.add_row({"x"});
    EXPECT_EQ(t.render(), "A  B\nx\n");
}

TEST(FieldTextTest, Kinds) {
    auto v = json::parse(
        R"({"s":"x","n":3,"z":null,"b":true,"o":{"k":"v","k2":"w"},"a":["p","q"],"e":{}})");
    EXPECT_EQ(field_text(v, "s"), "x");
    EXPECT_EQ(field_text(v, "n"), "3");
    EXPECT_EQ(field_text(v, "z"), "-");
    EXPECT_EQ(field_text(v, "missing"), "-");
    EXPECT_EQ(field_text(v, "b"), "yes");
    EXPECT_EQ(field_text(v, "o"), "k=v,k2=w");
    EXPECT_EQ(field_text(v, "a"), "p q");
    EXPECT_EQ(field_text(v, "e"), "-");
}

TEST(RenderTest, Sandboxes) {
    auto list = json::parse(R"([
        {"id":"sbx-a","template":"base","state":"running","vcpus":1,"memory_mib":512,
         "created_at":"2026-12-03T19:00:00Z","expires_at":null,"metadata":{"team":"ml"}},
        {"id":"sbx-b","template":"code-interpreter","state":"killed","end_reason":"ttl_expired",
         "vcpus":2,"memory_mib":1024,"created_at":"2026-12-03T18:00:00Z",
         "expires_at":"2026-12-03T18:05:00Z","metadata":{}}])")
                    .as_array();
    EXPECT_EQ(
        render_sandboxes(list),
        "ID     TEMPLATE          STATE                 VCPUS  MEMORY    CREATED               "
        "EXPIRES               METADATA\n"
        "sbx-a  base              running               1      512 MiB   2026-12-03T19:00:00Z  "
        "-                     team=ml\n"
        "sbx-b  code-interpreter  killed (ttl_expired)  2      1024 MiB  2026-12-03T18:00:00Z  "
        "2026-12-03T18:05:00Z  -\n");
}

TEST(RenderTest, SandboxDetails) {
    auto s = json::parse(R"({"id":"sbx-a","template":"base","state":"running","vcpus":1,
        "memory_mib":512,"created_at":"t0","ttl_seconds":300,"expires_at":"t1","on_expire":"kill",
        "metadata":{},"network":{"allow_egress":["10.0.0.0/8"]},"parent_id":"sbx-p"})");
    std::string text = render_sandbox_details(s);
    EXPECT_NE(text.find("id:         sbx-a\n"), std::string::npos) << text;
    EXPECT_NE(text.find("ttl:        300s\n"), std::string::npos) << text;
    EXPECT_NE(text.find("network:    egress to 10.0.0.0/8\n"), std::string::npos) << text;
    EXPECT_NE(text.find("parent:     sbx-p\n"), std::string::npos) << text;
    EXPECT_EQ(text.find("end reason"), std::string::npos) << text;
}

TEST(RenderTest, KeysProcessesTemplates) {
    auto keys = json::parse(R"([{"id":"key-1","name":"ci","prefix":"holt_ab","created_at":"t",
        "revoked_at":null}])")
                    .as_array();
    EXPECT_EQ(render_keys(keys),
              "ID     NAME  PREFIX   CREATED  REVOKED\n"
              "key-1  ci    holt_ab  t        -\n");
    auto procs = json::parse(R"([{"pid":5,"argv":["sleep","9"],"running":true},
        {"pid":6,"argv":["false"],"running":false,"exit_code":1},
        {"pid":7,"argv":["x"],"running":false,"exit_code":null,"signal":9}])")
                     .as_array();
    EXPECT_EQ(render_processes(procs),
              "PID  STATE    EXIT      COMMAND\n"
              "5    running  -         sleep 9\n"
              "6    exited   1         false\n"
              "7    exited   signal 9  x\n");
    auto templates = json::parse(R"([{"name":"base","built":true}])").as_array();
    EXPECT_EQ(render_templates(templates), "NAME  BUILT\nbase  yes\n");
}

}  // namespace
}  // namespace holt::cli
