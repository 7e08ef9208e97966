// The NDJSON exec stream: line splitting across arbitrary chunks, event parsing, exit codes.

#include "exec_stream.hpp"

#include <gtest/gtest.h>

#include "holt/http_client/api_client.hpp"
#include "holt/http_client/ndjson.hpp"

namespace holt::cli {
namespace {

using http_client::NdjsonSplitter;

TEST(NdjsonSplitterTest, LinesAcrossChunks) {
    std::vector<std::string> lines;
    NdjsonSplitter splitter([&](std::string_view line) { lines.emplace_back(line); });
    splitter.feed("{\"a\":1}\n{\"b\"");
    EXPECT_EQ(lines.size(), 1u);
    splitter.feed(":2}\r\n\n");
    splitter.feed("{\"c\"");
    splitter.feed(":3}");
    EXPECT_EQ(lines.size(), 2u);
    splitter.finish();
    EXPECT_EQ(lines, (std::vector<std::string>{"{\"a\":1}", "{\"b\":2}", "{\"c\":3}"}));
}

TEST(NdjsonSplitterTest, ByteByByte) {
    std::string stream = "one\ntwo\nthree\n";
    std::vector<std::string> lines;
    NdjsonSplitter splitter([&](std::string_view line) { lines.emplace_back(line); });
    for (char c : stream) {
        splitter.feed(std::string_view(&c, 1));
    }
    splitter.finish();
    EXPECT_EQ(lines, (std::vector<std::string>{"one", "two", "three"}));
}

TEST(NdjsonSplitterTest, OverlongLineIsAnError) {
    NdjsonSplitter splitter([](std::string_view) {}, 8);
    splitter.feed("12345");
    EXPECT_THROW(splitter.feed("67890"), holt::Error);
}

TEST(ExecEventTest, Parses) {
    auto start = parse_exec_event(R"({"type":"start","pid":42})");
    EXPECT_EQ(start.type, "start");
    EXPECT_EQ(start.pid, 42);
    auto out = parse_exec_event(R"({"type":"stdout","data":"hé\n"})");
    EXPECT_EQ(out.data, "hé\n");
    auto bin = parse_exec_event(R"({"type":"stderr","data_b64":"/wA="})");
    EXPECT_EQ(bin.data, std::string("\xff\x00", 2));
    auto exit = parse_exec_event(
        R"({"type":"exit","exit_code":null,"signal":9,"timed_out":false,"duration_ms":12.5})");
    EXPECT_FALSE(exit.exit_code);
    EXPECT_EQ(exit.signal, 9);
    EXPECT_DOUBLE_EQ(exit.duration_ms, 12.5);
}

TEST(ExecEventTest, RejectsMalformedLines) {
    EXPECT_THROW(parse_exec_event("not json"), holt::Error);
    EXPECT_THROW(parse_exec_event(R"(["type"])"), holt::Error);
    EXPECT_THROW(parse_exec_event(R"({"type":1})"), holt::Error);
    EXPECT_THROW(parse_exec_event(R"({"type":"exit","exit_code":"x"})"), holt::Error);
    EXPECT_THROW(parse_exec_event(R"({"type":"stdout","data_b64":"@@@"})"), holt::Error);
}

TEST(ExecEventTest, ExitStatus) {
    ExecEvent e;
    e.exit_code = 3;
    EXPECT_EQ(exit_status_of(e), 3);
    e.exit_code.reset();
    e.signal = 15;
    EXPECT_EQ(exit_status_of(e), 143);
    e.timed_out = true;
    EXPECT_EQ(exit_status_of(e), kTimedOutExit);
}

TEST(ExecStreamTest, FollowsAStream) {
    std::string out, err;
    ExecStream stream([&](std::string_view b) { out += b; }, [&](std::string_view b) { err += b; });
    stream.on_line(R"({"type":"start","pid":7})");
    stream.on_line(R"({"type":"stdout","data":"a"})");
    stream.on_line(R"({"type":"stderr","data":"b"})");
    stream.on_line(R"({"type":"progress","whatever":1})");
    stream.on_line(R"({"type":"stdout","data":"c"})");
    EXPECT_THROW(stream.exit(), holt::Error);
    stream.on_line(R"({"type":"exit","exit_code":0,"signal":null,"timed_out":false})");
    EXPECT_EQ(out, "ac");
    EXPECT_EQ(err, "b");
    EXPECT_EQ(stream.pid(), 7);
    EXPECT_EQ(exit_status_of(stream.exit()), 0);
}

TEST(ExecStreamTest, ErrorEventThrowsItsCode) {
    ExecStream stream([](std::string_view) {}, [](std::string_view) {});
    try {
        stream.on_line(R"({"type":"error","code":"unavailable","message":"VM did not answer"})");
        FAIL() << "no exception";
    } catch (const http_client::ApiError& e) {
        EXPECT_EQ(e.code(), "unavailable");
        EXPECT_EQ(e.message(), "VM did not answer");
    }
}

}  // namespace
}  // namespace holt::cli
