#include "holt/agent_protocol/frame.hpp"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace holt::agent_protocol {
namespace {

using Status = FrameDecoder::DecodeStatus;

// Decodes everything in `bytes`, feeding it in pieces of `piece` bytes.
std::vector<Frame> decode_all(FrameDecoder& decoder, std::string_view bytes, std::size_t piece) {
    std::vector<Frame> frames;
    while (!bytes.empty()) {
        std::string_view input = bytes.substr(0, piece);
        bytes.remove_prefix(input.size());
        Frame frame;
        for (;;) {
            Status status = decoder.decode(input, frame);
            if (status == Status::kFrame) {
                frames.push_back(std::move(frame));
                continue;
            }
            EXPECT_NE(status, Status::kError) << decoder.error();
            if (status == Status::kError) {
                return frames;
            }
            break;
        }
        EXPECT_TRUE(input.empty());
    }
    return frames;
}

std::string header(std::uint8_t magic, std::uint8_t type, std::uint8_t channel, std::uint8_t flags,
                   std::uint32_t stream, std::uint32_t length) {
    std::string out;
    out.push_back(static_cast<char>(magic));
    out.push_back(static_cast<char>(type));
    out.push_back(static_cast<char>(channel));
    out.push_back(static_cast<char>(flags));
    for (std::uint32_t v : {stream, length}) {
        for (int shift = 24; shift >= 0; shift -= 8) {
            out.push_back(static_cast<char>((v >> shift) & 0xff));
        }
    }
    return out;
}

Status decode_once(FrameDecoder& decoder, std::string_view bytes, Frame& frame) {
    return decoder.decode(bytes, frame);
}

TEST(FrameCodec, HeaderLayoutIsBigEndian) {
    std::string bytes = encode_frame(FrameType::kData, Channel::kStdout, 0x01020304, "xyz");
    ASSERT_EQ(bytes.size(), kHeaderSize + 3);
    EXPECT_EQ(bytes.substr(0, kHeaderSize), header(kFrameMagic, 6, 2, 0, 0x01020304, 3));
    EXPECT_EQ(bytes.substr(kHeaderSize), "xyz");
}

TEST(FrameCodec, RoundTripsFramesFedInAnyPieces) {
    std::string stream;
    std::vector<Frame> sent;
    std::mt19937 random(7);
    for (int i = 0; i < 50; ++i) {
        Frame frame;
        frame.type = i % 3 == 0 ? FrameType::kRequest : FrameType::kData;
        frame.channel = frame.type == FrameType::kData ? Channel::kFile : Channel::kNone;
        frame.stream = static_cast<std::uint32_t>(i * 7919);
        frame.payload.resize(random() % 5000);
        for (char& c : frame.payload) {
            c = static_cast<char>(random());
        }
        append_frame(stream, frame.type, frame.channel, frame.stream, frame.payload);
        sent.push_back(std::move(frame));
    }
    append_frame(stream, FrameType::kEof, Channel::kStdin, 3, "");

    for (std::size_t piece :
         {std::size_t{1}, std::size_t{5}, std::size_t{12}, std::size_t{4096}, stream.size()}) {
        FrameDecoder decoder;
        std::vector<Frame> got = decode_all(decoder, stream, piece);
        ASSERT_EQ(got.size(), sent.size() + 1) << "piece " << piece;
        for (std::size_t i = 0; i < sent.size(); ++i) {
            EXPECT_EQ(got[i].type, sent[i].type);
            EXPECT_EQ(got[i].channel, sent[i].channel);
            EXPECT_EQ(got[i].stream, sent[i].stream);
            EXPECT_EQ(got[i].payload, sent[i].payload);
        }
        EXPECT_EQ(got.back().type, FrameType::kEof);
        EXPECT_TRUE(got.back().payload.empty());
        EXPECT_TRUE(decoder.idle());
    }
}

TEST(FrameCodec, RejectsOversizedFrameFromItsHeaderAlone) {
    FrameDecoder decoder;
    // Only the header: the decoder must refuse before any payload arrives (no allocation of the
    // announced size, no waiting for 4 GiB).
    std::string bytes = header(kFrameMagic, 6, 4, 0, 1, 0xFFFFFFFF);
    Frame frame;
    EXPECT_EQ(decode_once(decoder, bytes, frame), Status::kError);
    EXPECT_TRUE(decoder.failed());
    EXPECT_NE(decoder.error().find("too large"), std::string::npos) << decoder.error();
    EXPECT_NE(decoder.error().find("4294967295"), std::string::npos) << decoder.error();

    // The decoder stays failed and consumes nothing more.
    std::string more = encode_frame(FrameType::kEof, Channel::kStdin, 1, "");
    std::string_view input = more;
    EXPECT_EQ(decoder.decode(input, frame), Status::kError);
    EXPECT_EQ(input.size(), more.size());
}

TEST(FrameCodec, RejectsJsonFramesAboveTheJsonLimit) {
    FrameDecoder decoder;
    Frame frame;
    EXPECT_EQ(decode_once(decoder, header(kFrameMagic, 3, 0, 0, 1, kMaxJsonSize + 1), frame),
              Status::kError);
    EXPECT_NE(decoder.error().find("request frame too large"), std::string::npos);

    // A data frame of the same size is fine.
    FrameDecoder data_decoder;
    std::string payload(kMaxJsonSize + 1, 'x');
    std::vector<Frame> got =
        decode_all(data_decoder, encode_frame(FrameType::kData, Channel::kFile, 1, payload), 999);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].payload.size(), payload.size());
}

TEST(FrameCodec, EncoderRefusesPayloadsAboveTheLimits) {
    EXPECT_THROW(
        encode_frame(FrameType::kData, Channel::kFile, 1, std::string(kMaxPayloadSize + 1, 'x')),
        std::length_error);
    EXPECT_THROW(
        encode_frame(FrameType::kReply, Channel::kNone, 1, std::string(kMaxJsonSize + 1, 'x')),
        std::length_error);
}

TEST(FrameCodec, RejectsGarbage) {
    struct Case {
        std::string bytes;
        std::string expected;
    };
    const std::vector<Case> cases = {
        {"GET / HTTP/1.1\r\n", "bad frame magic 0x47"},
        {header(kFrameMagic, 0, 0, 0, 1, 0), "unknown frame type 0"},
        {header(kFrameMagic, 200, 0, 0, 1, 0), "unknown frame type 200"},
        {header(kFrameMagic, 6, 0, 0, 1, 0), "invalid channel 0 for a data frame"},
        {header(kFrameMagic, 6, 9, 0, 1, 0), "invalid channel 9"},
        {header(kFrameMagic, 3, 2, 0, 1, 0), "invalid channel 2 for a request frame"},
        {header(kFrameMagic, 3, 0, 0x80, 1, 0), "reserved flags 0x80"},
        {header(kFrameMagic, 8, 4, 0, 1, 3), "window frame with a payload of 3 bytes"},
        {header(kFrameMagic, 7, 1, 0, 1, 1), "eof frame with a payload"},
    };
    for (const Case& c : cases) {
        FrameDecoder decoder;
        Frame frame;
        EXPECT_EQ(decode_once(decoder, c.bytes, frame), Status::kError) << c.expected;
        EXPECT_NE(decoder.error().find(c.expected), std::string::npos)
            << "got: " << decoder.error() << ", expected: " << c.expected;
    }
}

TEST(FrameCodec, GarbageIsReportedOnItsFirstByte) {
    FrameDecoder decoder;
    Frame frame;
    std::string_view input = "\x01";
    EXPECT_EQ(decoder.decode(input, frame), Status::kError);
    // The offending byte is not consumed, so a resync can look at it.
    EXPECT_EQ(input.size(), 1u);
}

TEST(FrameCodec, RandomBytesNeverCrashOrHoldMoreThanOneFrame) {
    std::mt19937 random(42);
    for (int round = 0; round < 200; ++round) {
        std::string bytes(1 + random() % 256, '\0');
        for (char& c : bytes) {
            c = static_cast<char>(random());
        }
        // Give it a plausible start so headers get checked beyond the magic.
        bytes[0] = static_cast<char>(kFrameMagic);
        FrameDecoder decoder;
        std::string_view input = bytes;
        Frame frame;
        Status status;
        do {
            status = decoder.decode(input, frame);
            EXPECT_LE(frame.payload.capacity(), kMaxPayloadSize);
        } while (status == Status::kFrame);
        if (status == Status::kError) {
            EXPECT_FALSE(decoder.error().empty());
        }
    }
}

TEST(SyncScanner, FindsTheSequenceSplitAnywhere) {
    const std::string magic(sync_magic());
    // Junk that contains partial matches of the sequence before the real one.
    const std::string junk = "abc" + magic.substr(0, 5) + "x" + magic.substr(0, 15) + "\xF0\xF0";
    const std::string stream = junk + magic + "TAIL";
    for (std::size_t piece = 1; piece <= stream.size(); ++piece) {
        SyncScanner scanner;
        bool found = false;
        std::string rest;
        for (std::size_t at = 0; at < stream.size(); at += piece) {
            std::string_view input = std::string_view(stream).substr(at, piece);
            if (found) {
                rest.append(input);
                continue;
            }
            if (scanner.scan(input)) {
                found = true;
                rest.append(input);
            }
        }
        EXPECT_TRUE(found) << "piece " << piece;
        EXPECT_EQ(rest, "TAIL") << "piece " << piece;
    }
}

TEST(FrameDecoderSync, SkipsJunkBeforeTheSyncSequence) {
    std::string stream = "junk from an earlier connection";
    // Half a frame, as if the writer had been cut off.
    stream +=
        encode_frame(FrameType::kData, Channel::kStdout, 9, std::string(100, 'z')).substr(0, 40);
    stream += sync_magic();
    stream += encode_frame(FrameType::kHelloAck, Channel::kNone, 0, "{}");

    FrameDecoder decoder(/*expect_sync=*/true);
    std::vector<Frame> got = decode_all(decoder, stream, 3);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].type, FrameType::kHelloAck);
    EXPECT_EQ(got[0].payload, "{}");
}

TEST(FrameDecoderSync, ResyncFindsASequenceThatStartedInsideARejectedHeader) {
    // Five junk bytes that pass the magic check, then the sync sequence: the 12-byte header the
    // decoder rejects holds the first 7 bytes of the sequence.
    std::string stream = std::string(1, static_cast<char>(kFrameMagic)) + "\x03\x00\x00\x00";
    stream += sync_magic();
    stream += encode_frame(FrameType::kHello, Channel::kNone, 0, "{\"a\":1}");

    FrameDecoder decoder;
    std::string_view input = stream;
    Frame frame;
    ASSERT_EQ(decoder.decode(input, frame), Status::kError);
    decoder.resync();
    ASSERT_EQ(decoder.decode(input, frame), Status::kFrame) << decoder.error();
    EXPECT_EQ(frame.type, FrameType::kHello);
    EXPECT_EQ(frame.payload, "{\"a\":1}");
}

TEST(FrameDecoderSync, AcceptsASyncSequenceBetweenFrames) {
    std::string stream = encode_frame(FrameType::kReply, Channel::kNone, 1, "{}");
    stream += sync_magic();
    stream += encode_frame(FrameType::kHelloAck, Channel::kNone, 0, "{\"n\":2}");
    for (std::size_t piece : {std::size_t{1}, std::size_t{7}, stream.size()}) {
        FrameDecoder decoder;
        std::vector<Frame> got = decode_all(decoder, stream, piece);
        ASSERT_EQ(got.size(), 2u) << "piece " << piece;
        EXPECT_EQ(got[1].type, FrameType::kHelloAck);
    }
}

TEST(FrameDecoderSync, SkipsZeroPaddingBetweenFrames) {
    std::string stream = encode_frame(FrameType::kEof, Channel::kFile, 1, "");
    stream += std::string(5000, '\0');
    stream += sync_magic();
    stream += std::string(3, '\0');
    stream += encode_frame(FrameType::kHello, Channel::kNone, 0, "{}");
    for (std::size_t piece : {std::size_t{1}, std::size_t{100}, stream.size()}) {
        FrameDecoder decoder;
        std::vector<Frame> got = decode_all(decoder, stream, piece);
        ASSERT_EQ(got.size(), 2u) << "piece " << piece;
        EXPECT_EQ(got[1].type, FrameType::kHello);
    }
}

TEST(FrameDecoderSync, RejectsABrokenSyncSequenceBetweenFrames) {
    std::string stream = encode_frame(FrameType::kReply, Channel::kNone, 1, "{}");
    stream += std::string(sync_magic()).substr(0, 6) + "xyz";
    FrameDecoder decoder;
    std::string_view input = stream;
    Frame frame;
    ASSERT_EQ(decoder.decode(input, frame), Status::kFrame);
    EXPECT_EQ(decoder.decode(input, frame), Status::kError);
    EXPECT_EQ(decoder.error(), "broken sync sequence between frames");
    EXPECT_EQ(input, "xyz");
}

TEST(FrameDecoderSync, ResetDropsAPartialFrame) {
    FrameDecoder decoder;
    std::string first = encode_frame(FrameType::kData, Channel::kFile, 1, std::string(50, 'a'));
    std::string_view input = std::string_view(first).substr(0, 20);
    Frame frame;
    EXPECT_EQ(decoder.decode(input, frame), Status::kNeedMore);
    EXPECT_FALSE(decoder.idle());
    decoder.reset(false);
    EXPECT_TRUE(decoder.idle());
    std::vector<Frame> got =
        decode_all(decoder, encode_frame(FrameType::kCancel, Channel::kNone, 4, ""), 100);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].type, FrameType::kCancel);
    EXPECT_EQ(got[0].stream, 4u);
}

TEST(WindowFrames, CarryA32BitCredit) {
    std::uint32_t credit = 0;
    EXPECT_TRUE(decode_window(encode_window(0xDEADBEEF), credit));
    EXPECT_EQ(credit, 0xDEADBEEFu);
    EXPECT_FALSE(decode_window("abc", credit));
}

}  // namespace
}  // namespace holt::agent_protocol
