#include "holt/agent_protocol/messages.hpp"

#include <gtest/gtest.h>

#include <cerrno>

namespace holt::agent_protocol {
namespace {

using namespace std::chrono_literals;

json::value parse(std::string_view text) {
    return json::value(parse_object(text));
}

template <typename T>
T round_trip(const T& value) {
    json::value encoded = json::value_from(value);
    // Through text too, as on the wire.
    return json::value_to<T>(parse(serialize(encoded.as_object())));
}

TEST(Messages, ExecSpecRoundTrips) {
    ExecSpec spec;
    spec.argv = {"ls", "-l", "/tmp"};
    spec.env = {{"A", "1"}, {"B", "two words"}};
    spec.cwd = "/srv";
    spec.user = "nobody";
    spec.pipe_stdin = true;
    spec.timeout = 1500ms;
    spec.kill_grace = 250ms;
    spec.pty = TerminalSize{40, 120};
    spec.background = true;

    ExecSpec got = round_trip(spec);
    EXPECT_EQ(got.argv, spec.argv);
    EXPECT_EQ(got.env, spec.env);
    EXPECT_EQ(got.cwd, "/srv");
    EXPECT_EQ(got.user, "nobody");
    EXPECT_TRUE(got.pipe_stdin);
    EXPECT_EQ(got.timeout, 1500ms);
    EXPECT_EQ(got.kill_grace, 250ms);
    ASSERT_TRUE(got.pty.has_value());
    EXPECT_EQ(got.pty->rows, 40);
    EXPECT_EQ(got.pty->cols, 120);
    EXPECT_TRUE(got.background);
}

TEST(Messages, ExecSpecNeedsExactlyOneOfArgvAndShell) {
    EXPECT_THROW(json::value_to<ExecSpec>(parse(R"({"op":"exec"})")), MessageError);
    EXPECT_THROW(json::value_to<ExecSpec>(parse(R"({"argv":["a"],"shell":"b"})")), MessageError);
    ExecSpec shell = json::value_to<ExecSpec>(parse(R"({"shell":"echo hi"})"));
    EXPECT_EQ(shell.shell, "echo hi");
    EXPECT_FALSE(shell.timeout.has_value());
}

TEST(Messages, NumericUserIsAccepted) {
    ExecSpec spec = json::value_to<ExecSpec>(parse(R"({"argv":["id"],"user":1000})"));
    EXPECT_EQ(spec.user, "1000");
}

TEST(Messages, WrongTypesNameTheField) {
    try {
        json::value_to<ExecSpec>(parse(R"({"argv":"ls"})"));
        FAIL() << "no exception";
    } catch (const MessageError& e) {
        EXPECT_STREQ(e.what(), "exec request: field 'argv': expected an array of strings");
    }
    try {
        json::value_to<ExecSpec>(parse(R"({"argv":["ls"],"pty":{"rows":0}})"));
        FAIL() << "no exception";
    } catch (const MessageError& e) {
        EXPECT_STREQ(e.what(), "terminal size: field 'rows': must be between 1 and 65535");
    }
}

TEST(Messages, ParseObjectRejectsGarbageAndDeepNesting) {
    EXPECT_THROW(parse_object("not json"), MessageError);
    EXPECT_THROW(parse_object("[1,2]"), MessageError);
    EXPECT_THROW(parse_object(std::string(100, '[') + std::string(100, ']')), MessageError);
    EXPECT_NO_THROW(parse_object(R"({"a":{"b":[1,2,{"c":null}]}})"));
}

TEST(Messages, ProcessInfoRoundTrips) {
    ProcessInfo info;
    info.id = "p-12";
    info.pid = 345;
    info.argv = {"/bin/sh", "-c", "sleep 1"};
    info.background = true;
    info.running = false;
    info.exit = ExitStatus{std::nullopt, 9, true, 1234ms};
    info.started_at = std::chrono::system_clock::time_point(1700000000123ms);
    info.dropped_stdout = 7;

    ProcessInfo got = round_trip(info);
    EXPECT_EQ(got.id, "p-12");
    EXPECT_EQ(got.pid, 345);
    EXPECT_EQ(got.argv, info.argv);
    EXPECT_TRUE(got.background);
    EXPECT_FALSE(got.running);
    ASSERT_TRUE(got.exit.has_value());
    EXPECT_FALSE(got.exit->exit_code.has_value());
    EXPECT_EQ(got.exit->signal, 9);
    EXPECT_TRUE(got.exit->timed_out);
    EXPECT_EQ(got.exit->duration, 1234ms);
    EXPECT_EQ(got.started_at, info.started_at);
    EXPECT_EQ(got.dropped_stdout, 7u);
}

TEST(Messages, FileStatAndDirEntryRoundTrip) {
    FileStat stat;
    stat.path = "/etc/motd";
    stat.type = FileType::kSymlink;
    stat.size = 1ull << 40;
    stat.mode = 04755;
    stat.mtime = std::chrono::system_clock::time_point(1600000000000ms);
    stat.uid = 1000;
    stat.gid = 100;
    stat.link_target = "/usr/share/motd";
    FileStat got = round_trip(stat);
    EXPECT_EQ(got.path, stat.path);
    EXPECT_EQ(got.type, FileType::kSymlink);
    EXPECT_EQ(got.size, stat.size);
    EXPECT_EQ(got.mode, 04755u);
    EXPECT_EQ(got.mtime, stat.mtime);
    EXPECT_EQ(got.link_target, stat.link_target);

    DirEntry entry{"a/b", "b", FileType::kDirectory, 4096, 0755, stat.mtime};
    DirEntry entry_got = round_trip(entry);
    EXPECT_EQ(entry_got.path, "a/b");
    EXPECT_EQ(entry_got.name, "b");
    EXPECT_EQ(entry_got.type, FileType::kDirectory);

    EXPECT_THROW(json::value_to<DirEntry>(parse(R"({"path":"x","type":"weird"})")), MessageError);
}

TEST(Messages, ReplyEnvelope) {
    json::object ok = ok_reply({{"bytes", 5}});
    EXPECT_FALSE(reply_error(ok).has_value());
    EXPECT_EQ(ok.at("bytes").as_int64(), 5);

    auto error = reply_error(error_reply({"ENOENT", "read /nope: No such file or directory"}));
    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(error->code, "ENOENT");
    EXPECT_EQ(error->message, "read /nope: No such file or directory");

    auto malformed = reply_error(json::object{{"hello", 1}});
    ASSERT_TRUE(malformed.has_value());
    EXPECT_EQ(malformed->code, "EPROTO");
}

TEST(Messages, ErrnoNames) {
    EXPECT_EQ(errno_name(ENOENT), "ENOENT");
    EXPECT_EQ(errno_name(EISDIR), "EISDIR");
    EXPECT_EQ(errno_name(99999), "E99999");
}

TEST(Messages, HelloCarriesTheProtocolVersion) {
    Hello hello{"abc", kProtocolVersion, "test"};
    Hello got = round_trip(hello);
    EXPECT_EQ(got.nonce, "abc");
    EXPECT_EQ(got.protocol_version, kProtocolVersion);
    EXPECT_THROW(json::value_to<Hello>(parse("{}")), MessageError);
}

TEST(Messages, AHelloAfterARestoreCarriesTheClockAndEntropyAndItsAckSaysWhetherTheyWereSet) {
    Hello plain = round_trip(Hello{"abc", kProtocolVersion, "test"});
    EXPECT_EQ(plain.set_time_unix_ns, 0);
    EXPECT_TRUE(plain.add_entropy_hex.empty());
    EXPECT_FALSE(json::value_from(plain).as_object().contains("set_time_unix_ns"));

    Hello restored{"abc", kProtocolVersion, "test", 1'700'000'000'123'456'789, "00ff"};
    Hello got = round_trip(restored);
    EXPECT_EQ(got.set_time_unix_ns, 1'700'000'000'123'456'789);
    EXPECT_EQ(got.add_entropy_hex, "00ff");

    HelloAck ack;
    ack.nonce = "abc";
    ack.restore_error = "set_time: Operation not permitted";
    HelloAck ack_got = round_trip(ack);
    EXPECT_FALSE(ack_got.restored);
    EXPECT_EQ(ack_got.restore_error, "set_time: Operation not permitted");
    ack.restored = true;
    EXPECT_TRUE(round_trip(ack).restored);
}

}  // namespace
}  // namespace holt::agent_protocol
