// Command lines of `holt` parsed into the API requests they will send, without a server.

#include "command_line.hpp"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cstdlib>
#include <sstream>

namespace holt::cli {
namespace {

namespace json = boost::json;
using http_client::Verb;

struct Parsed {
    std::variant<Invocation, int> result;
    std::string out, err;

    const Invocation& inv() const { return std::get<Invocation>(result); }
    const Plan& plan() const { return inv().plan; }
    int exit_status() const { return std::get<int>(result); }
};

Parsed parse(std::vector<const char*> args) {
    args.insert(args.begin(), "holt");
    std::ostringstream out, err;
    auto result = parse_command_line(static_cast<int>(args.size()), args.data(), out, err);
    return {std::move(result), out.str(), err.str()};
}

class CommandLineTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ::unsetenv("HOLT_API_URL");
        ::unsetenv("HOLT_API_KEY");
    }
};

TEST_F(CommandLineTest, CreateSendsEveryOption) {
    auto p = parse({"sandbox",
                    "create",
                    "--template",
                    "code-interpreter",
                    "--ttl",
                    "300",
                    "-e",
                    "A=1",
                    "-e",
                    "B=x=y",
                    "-m",
                    "team=ml",
                    "--vcpus",
                    "2",
                    "--memory",
                    "1024",
                    "--allow-egress",
                    "10.0.0.0/8",
                    "--on-expire",
                    "hibernate"});
    ASSERT_EQ(p.plan().requests.size(), 1u);
    const auto& r = p.plan().requests[0];
    EXPECT_EQ(r.method, Verb::post);
    EXPECT_EQ(r.path, "/v1/sandboxes");
    EXPECT_EQ(*r.json, json::parse(R"({"template":"code-interpreter","ttl_seconds":300,
        "on_expire":"hibernate","env":{"A":"1","B":"x=y"},"metadata":{"team":"ml"},"vcpus":2,
        "memory_mib":1024,"network":{"allow_egress":["10.0.0.0/8"]}})"));
    EXPECT_EQ(p.plan().view, View::Sandboxes);
}

TEST_F(CommandLineTest, CreateFromSnapshotWithNetwork) {
    auto p = parse({"sandbox", "create", "--snapshot", "snap-1", "--network", "-q"});
    EXPECT_EQ(*p.plan().requests[0].json, json::parse(R"({"snapshot_id":"snap-1","network":{}})"));
    EXPECT_TRUE(p.plan().quiet);
}

TEST_F(CommandLineTest, CreateNeedsTemplateOrSnapshot) {
    auto p = parse({"sandbox", "create"});
    EXPECT_EQ(p.exit_status(), kUsageExit);
    EXPECT_NE(p.err.find("--template or --snapshot"), std::string::npos);
    EXPECT_EQ(parse({"sandbox", "create", "-t", "a", "--snapshot", "b"}).exit_status(), kUsageExit);
}

TEST_F(CommandLineTest, BadKeyValueIsAUsageError) {
    auto p = parse({"sandbox", "create", "-t", "base", "-e", "NOEQUALS"});
    EXPECT_EQ(p.exit_status(), kUsageExit);
    EXPECT_NE(p.err.find("KEY=VALUE"), std::string::npos);
}

TEST_F(CommandLineTest, UsageErrorsExitWithTwo) {
    EXPECT_EQ(parse({}).exit_status(), kUsageExit);
    EXPECT_EQ(parse({"sandbox"}).exit_status(), kUsageExit);
    EXPECT_EQ(parse({"sandbox", "get"}).exit_status(), kUsageExit);
    EXPECT_EQ(parse({"sandbox", "create", "-t", "x", "--ttl", "abc"}).exit_status(), kUsageExit);
    EXPECT_EQ(parse({"sandbox", "fork", "sbx-1", "--count", "17"}).exit_status(), kUsageExit);
    EXPECT_EQ(parse({"sandbox", "ls", "--state", "weird"}).exit_status(), kUsageExit);
    EXPECT_EQ(parse({"nonsense"}).exit_status(), kUsageExit);
}

TEST_F(CommandLineTest, HelpExitsWithZero) {
    for (auto args : std::vector<std::vector<const char*>>{{"--help"},
                                                           {"sandbox", "--help"},
                                                           {"sandbox", "exec", "--help"},
                                                           {"sandbox", "cp", "--help"},
                                                           {"snapshot", "ls", "--help"},
                                                           {"keys", "create", "--help"}}) {
        auto p = parse(args);
        EXPECT_EQ(p.exit_status(), 0);
        EXPECT_NE(p.out.find("Usage"), std::string::npos) << p.out;
    }
}

TEST_F(CommandLineTest, ListFilters) {
    auto p = parse(
        {"sandbox", "ls", "--state", "killed", "-m", "team=ml", "-m", "env=dev", "--limit", "5"});
    const auto& r = p.plan().requests[0];
    EXPECT_EQ(r.method, Verb::get);
    EXPECT_EQ(r.path, "/v1/sandboxes");
    http_client::Query expected = {
        {"state", "killed"}, {"metadata[team]", "ml"}, {"metadata[env]", "dev"}, {"limit", "5"}};
    // Metadata keys come out of a JSON object; their order is not the command line's.
    EXPECT_EQ(r.query.size(), expected.size());
    for (const auto& pair : expected) {
        EXPECT_NE(std::find(r.query.begin(), r.query.end(), pair), r.query.end()) << pair.first;
    }
}

TEST_F(CommandLineTest, ExecArgvAfterDoubleDash) {
    auto p = parse({"sandbox", "exec", "sbx-1", "-e", "X=1", "--cwd", "/tmp", "--timeout", "5",
                    "--", "python3", "-c", "print(6*7)"});
    EXPECT_EQ(p.plan().action, Action::Exec);
    const auto& r = p.plan().requests[0];
    EXPECT_EQ(r.path, "/v1/sandboxes/sbx-1/exec");
    EXPECT_EQ(*r.json, json::parse(R"j({"argv":["python3","-c","print(6*7)"],"env":{"X":"1"},
        "cwd":"/tmp","timeout_seconds":5.0,"stream":true})j"));
}

TEST_F(CommandLineTest, ExecShellBackgroundAndStdin) {
    auto p = parse({"sandbox", "exec", "sbx-1", "-c", "ls | wc -l", "-d"});
    EXPECT_EQ(p.plan().action, Action::Call);
    EXPECT_EQ(p.plan().view, View::Pid);
    EXPECT_EQ(*p.plan().requests[0].json, json::parse(R"({"cmd":"ls | wc -l","background":true})"));
    EXPECT_TRUE(parse({"sandbox", "exec", "sbx-1", "-i", "--", "cat"}).plan().read_stdin);
    EXPECT_EQ(parse({"sandbox", "exec", "sbx-1"}).exit_status(), kUsageExit);
}

TEST_F(CommandLineTest, GlobalOptionsAnywhereAndFromEnvironment) {
    ::setenv("HOLT_API_URL", "http://10.0.0.1:9000", 1);
    ::setenv("HOLT_API_KEY", "holt_env", 1);
    auto p = parse({"sandbox", "ls", "--json"});
    EXPECT_EQ(p.inv().global.api_url, "http://10.0.0.1:9000");
    EXPECT_EQ(p.inv().global.api_key, "holt_env");
    EXPECT_TRUE(p.inv().global.json);
    auto q = parse({"--api-key", "holt_flag", "--api-url", "http://h:1", "sandbox", "ls"});
    EXPECT_EQ(q.inv().global.api_key, "holt_flag");
    EXPECT_EQ(q.inv().global.api_url, "http://h:1");
    EXPECT_FALSE(q.inv().global.json);
}

TEST_F(CommandLineTest, DefaultApiUrl) {
    EXPECT_EQ(parse({"sandbox", "ls"}).inv().global.api_url, "http://127.0.0.1:7070");
}

TEST_F(CommandLineTest, CopyDirections) {
    auto up = parse({"sandbox", "cp", "./data.csv", "sbx-1:/work/", "--mode", "0600"});
    EXPECT_EQ(up.plan().action, Action::Upload);
    EXPECT_EQ(up.plan().local, "./data.csv");
    EXPECT_EQ(up.plan().sandbox_id, "sbx-1");
    EXPECT_EQ(up.plan().remote, "/work/");
    EXPECT_EQ(up.plan().mode, "0600");
    auto down = parse({"sandbox", "cp", "sbx-2:/out.png", "-"});
    EXPECT_EQ(down.plan().action, Action::Download);
    EXPECT_EQ(down.plan().local, "-");
    EXPECT_EQ(down.plan().remote, "/out.png");
    EXPECT_EQ(parse({"sandbox", "cp", "a", "b"}).exit_status(), kUsageExit);
    EXPECT_EQ(parse({"sandbox", "cp", "sbx-1:/a", "sbx-2:/b"}).exit_status(), kUsageExit);
    EXPECT_EQ(parse({"sandbox", "cp", "a", "sbx-1:rel"}).exit_status(), kUsageExit);
    EXPECT_EQ(parse({"sandbox", "cp", "a", "sbx-1:/x", "--mode", "rw"}).exit_status(), kUsageExit);
}

TEST_F(CommandLineTest, RemotePaths) {
    EXPECT_FALSE(parse_remote_path("/tmp/a:b"));
    EXPECT_FALSE(parse_remote_path("./a:b"));
    EXPECT_FALSE(parse_remote_path("-"));
    EXPECT_FALSE(parse_remote_path(":/x"));
    auto r = parse_remote_path("sbx-9:/a/b:c");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->sandbox_id, "sbx-9");
    EXPECT_EQ(r->path, "/a/b:c");
}

TEST_F(CommandLineTest, LifecycleCommands) {
    auto fork = parse({"sandbox", "fork", "sbx-1", "--count", "3"});
    EXPECT_EQ(fork.plan().requests[0].path, "/v1/sandboxes/sbx-1/fork");
    EXPECT_EQ(*fork.plan().requests[0].json, json::parse(R"({"count":3})"));
    auto snap = parse({"sandbox", "snapshot", "sbx-1", "--name", "warm"});
    EXPECT_EQ(snap.plan().requests[0].path, "/v1/sandboxes/sbx-1/snapshots");
    EXPECT_EQ(*snap.plan().requests[0].json, json::parse(R"({"name":"warm"})"));
    EXPECT_EQ(parse({"sandbox", "hibernate", "sbx-1"}).plan().requests[0].path,
              "/v1/sandboxes/sbx-1/hibernate");
    EXPECT_EQ(parse({"sandbox", "wake", "sbx-1"}).plan().requests[0].path,
              "/v1/sandboxes/sbx-1/wake");
    auto kill = parse({"sandbox", "kill", "sbx-1", "sbx-2"});
    ASSERT_EQ(kill.plan().requests.size(), 2u);
    EXPECT_EQ(kill.plan().requests[1].method, Verb::delete_);
    EXPECT_EQ(kill.plan().requests[1].path, "/v1/sandboxes/sbx-2");
    auto ttl = parse({"sandbox", "ttl", "sbx-1", "600"});
    EXPECT_EQ(ttl.plan().requests[0].method, Verb::patch);
    EXPECT_EQ(*ttl.plan().requests[0].json, json::parse(R"({"ttl_seconds":600})"));
    EXPECT_EQ(*parse({"sandbox", "ttl", "sbx-1", "none"}).plan().requests[0].json,
              json::parse(R"({"ttl_seconds":null})"));
    EXPECT_EQ(parse({"sandbox", "ttl", "sbx-1", "10m"}).exit_status(), kUsageExit);
    EXPECT_EQ(parse({"sandbox", "ttl", "sbx-1", "0"}).exit_status(), kUsageExit);
}

TEST_F(CommandLineTest, SnapshotsAndKeys) {
    EXPECT_EQ(parse({"snapshot", "ls"}).plan().requests[0].path, "/v1/snapshots");
    auto rm = parse({"snapshot", "rm", "snap-1"});
    EXPECT_EQ(rm.plan().requests[0].method, Verb::delete_);
    EXPECT_EQ(rm.plan().requests[0].path, "/v1/snapshots/snap-1");
    auto create = parse({"keys", "create", "ci"});
    EXPECT_EQ(create.plan().requests[0].method, Verb::post);
    EXPECT_EQ(*create.plan().requests[0].json, json::parse(R"({"name":"ci"})"));
    EXPECT_EQ(parse({"keys", "ls"}).plan().requests[0].path, "/v1/keys");
    EXPECT_EQ(parse({"keys", "revoke", "key-1"}).plan().requests[0].path, "/v1/keys/key-1");
}

}  // namespace
}  // namespace holt::cli
