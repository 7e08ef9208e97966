#pragma once

// The agent protocol's framing layer, shared by the guest agent and the host client.
//
// Wire format, protocol version kProtocolVersion (docs/agent-protocol.md is the full reference):
//
//   A connection is one byte stream. Each side starts what it sends with the 16-byte sync
//   sequence kSyncMagic, followed by frames. A frame is a 12-byte header and a payload:
//
//     offset  size  field
//     0       1     magic    0xA5 (kFrameMagic)
//     1       1     type     FrameType
//     2       1     channel  Channel (data, eof and window frames; 0 otherwise)
//     3       1     flags    reserved, 0
//     4       4     stream   stream id, big-endian (0: the connection itself)
//     8       4     length   payload length in bytes, big-endian, at most kMaxPayloadSize
//
//   Between two frames a sender may put zero bytes (padding) and complete sync sequences; the
//   decoder skips both.
//
//   Control frames (hello, hello_ack, request, event, reply) carry one JSON object of at most
//   kMaxJsonSize bytes; data frames carry raw bytes; a window frame carries a 4-byte big-endian
//   credit increment; eof and cancel frames are empty.
//
// The guest is untrusted: the decoder checks every header before it reserves memory, so a peer
// can make it hold at most one frame of kMaxPayloadSize bytes, and it reports garbage as an error
// instead of guessing.

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace holt::agent_protocol {

// Bumped on any change that an older peer would misread. Peers with different versions refuse
// to talk (the hello_ack says which version the agent speaks).
inline constexpr int kProtocolVersion = 1;

inline constexpr std::uint8_t kFrameMagic = 0xA5;
inline constexpr std::size_t kHeaderSize = 12;

// Hard limits. A frame larger than kMaxPayloadSize, or a control frame larger than kMaxJsonSize,
// is a protocol error.
inline constexpr std::uint32_t kMaxPayloadSize = 1024 * 1024;
inline constexpr std::uint32_t kMaxJsonSize = 256 * 1024;
// The size senders use for data frames. Receivers accept up to kMaxPayloadSize.
inline constexpr std::size_t kDataChunkSize = 64 * 1024;

// Sent by each side before its first frame, and by the agent again before every hello_ack, so a
// reader that joined the byte stream in the middle of a frame can find the start of the next one.
// No proper prefix of it is also a suffix, which keeps the scanner a simple state machine.
inline constexpr std::array<std::uint8_t, 16> kSyncMagic = {
    0xF0, 0x9F, 0x94, 0x81, 'H', 'O', 'L', 'T', '-', 'S', 'Y', 'N', 'C', 0x00, 0xC3, 0x7E};

std::string_view sync_magic();

enum class FrameType : std::uint8_t {
    kHello = 1,     // host -> agent, stream 0, JSON: opens a session
    kHelloAck = 2,  // agent -> host, stream 0, JSON: answers a hello (preceded by kSyncMagic)
    kRequest = 3,   // host -> agent, new stream, JSON: {"op": ..., ...}
    kEvent = 4,     // agent -> host, JSON: progress of a request ("started", "ready", ...)
    kReply = 5,     // agent -> host, JSON: the final answer to a request; ends the stream
    kData = 6,      // both ways, bytes of one channel of a stream
    kEof = 7,       // both ways, end of one channel of a stream
    kWindow = 8,    // both ways, grants the peer more bytes of data on one channel
    kCancel = 9,    // host -> agent: abandon a stream (see docs for what each op does)
};

// The highest frame type value this version knows; larger ones are protocol errors.
inline constexpr std::uint8_t kMaxFrameType = 9;

enum class Channel : std::uint8_t {
    kNone = 0,
    kStdin = 1,
    kStdout = 2,
    kStderr = 3,
    kFile = 4,
};

inline constexpr std::uint8_t kMaxChannel = 4;

const char* to_string(FrameType type);
const char* to_string(Channel channel);

// True for frame types whose payload is a JSON object.
bool is_json(FrameType type);

struct Frame {
    FrameType type = FrameType::kData;
    Channel channel = Channel::kNone;
    std::uint32_t stream = 0;
    std::string payload;
};

// Appends one encoded frame to `out`. The payload must respect the limits above (checked with an
// assertion-like std::length_error, since exceeding them is a bug of the sender).
void append_frame(std::string& out, FrameType type, Channel channel, std::uint32_t stream,
                  std::string_view payload);
std::string encode_frame(FrameType type, Channel channel, std::uint32_t stream,
                         std::string_view payload);

// A window frame's payload: the credit increment as 4 big-endian bytes.
std::string encode_window(std::uint32_t credit);
// Reads a window payload; false when it is not exactly 4 bytes.
bool decode_window(std::string_view payload, std::uint32_t& credit);

// Finds kSyncMagic in a byte stream fed in arbitrary pieces.
class SyncScanner {
  public:
    // Consumes bytes of `input` up to and including the end of the sync sequence. Returns true
    // when the sequence was found (input then starts right after it); false when all of input
    // was consumed without completing it.
    bool scan(std::string_view& input);
    void reset() { matched_ = 0; }

  private:
    std::size_t matched_ = 0;
};

// Turns a byte stream into frames, with memory bounded by one frame.
//
//   FrameDecoder decoder;
//   std::string_view input(buffer, n);
//   Frame frame;
//   while (decoder.decode(input, frame) == DecodeStatus::kFrame) handle(frame);
//   if (decoder.failed()) report(decoder.error());
class FrameDecoder {
  public:
    enum class DecodeStatus { kFrame, kNeedMore, kError };
    using enum DecodeStatus;

    struct Limits {
        std::uint32_t max_payload = kMaxPayloadSize;
        std::uint32_t max_json = kMaxJsonSize;
    };

    // With `expect_sync`, everything before the first kSyncMagic is skipped.
    explicit FrameDecoder(bool expect_sync = false) : FrameDecoder(expect_sync, Limits{}) {}
    FrameDecoder(bool expect_sync, Limits limits);

    // Consumes bytes from the front of `input` until one frame is complete (kFrame, the frame is
    // moved into `out`) or input runs out (kNeedMore). Zero bytes and complete sync sequences
    // between frames are skipped. On a malformed header it returns kError
    // and keeps returning it, consuming nothing, until reset() or resync().
    DecodeStatus decode(std::string_view& input, Frame& out);

    // Forgets any partial frame. With `expect_sync`, skips bytes up to the next kSyncMagic.
    void reset(bool expect_sync);
    // After an error: skip bytes up to the next kSyncMagic, then decode frames again.
    void resync() { reset(true); }

    bool failed() const { return !error_.empty(); }
    const std::string& error() const { return error_; }
    // True while the decoder is skipping bytes up to a sync sequence.
    bool syncing() const { return syncing_; }
    // True when no partial frame is held.
    bool idle() const { return !syncing_ && inline_sync_ == 0 && header_len_ == 0; }

  private:
    bool check_header();

    Limits limits_;
    bool syncing_ = false;
    SyncScanner scanner_;
    std::size_t inline_sync_ = 0;  // bytes of a sync sequence seen between frames
    std::array<std::uint8_t, kHeaderSize> header_{};
    std::size_t header_len_ = 0;
    Frame frame_;
    std::size_t payload_len_ = 0;
    std::string error_;
};

}  // namespace holt::agent_protocol
