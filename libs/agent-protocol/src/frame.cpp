#include "holt/agent_protocol/frame.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace holt::agent_protocol {
namespace {

void put_u32(std::uint8_t* out, std::uint32_t value) {
    out[0] = static_cast<std::uint8_t>(value >> 24);
    out[1] = static_cast<std::uint8_t>(value >> 16);
    out[2] = static_cast<std::uint8_t>(value >> 8);
    out[3] = static_cast<std::uint8_t>(value);
}

std::uint32_t get_u32(const std::uint8_t* in) {
    return (std::uint32_t{in[0]} << 24) | (std::uint32_t{in[1]} << 16) |
           (std::uint32_t{in[2]} << 8) | std::uint32_t{in[3]};
}

std::string hex_byte(std::uint8_t byte) {
    char text[8];
    std::snprintf(text, sizeof text, "0x%02x", byte);
    return text;
}

// Which channels a frame type may name.
bool channel_allowed(FrameType type, Channel channel) {
    switch (type) {
        case FrameType::kData:
        case FrameType::kEof:
        case FrameType::kWindow:
            return channel != Channel::kNone;
        default:
            return channel == Channel::kNone;
    }
}

}  // namespace

std::string_view sync_magic() {
    return {reinterpret_cast<const char*>(kSyncMagic.data()), kSyncMagic.size()};
}

const char* to_string(FrameType type) {
    switch (type) {
        case FrameType::kHello:
            return "hello";
        case FrameType::kHelloAck:
            return "hello_ack";
        case FrameType::kRequest:
            return "request";
        case FrameType::kEvent:
            return "event";
        case FrameType::kReply:
            return "reply";
        case FrameType::kData:
            return "data";
        case FrameType::kEof:
            return "eof";
        case FrameType::kWindow:
            return "window";
        case FrameType::kCancel:
            return "cancel";
    }
    return "unknown";
}

const char* to_string(Channel channel) {
    switch (channel) {
        case Channel::kNone:
            return "none";
        case Channel::kStdin:
            return "stdin";
        case Channel::kStdout:
            return "stdout";
        case Channel::kStderr:
            return "stderr";
        case Channel::kFile:
            return "file";
    }
    return "unknown";
}

bool is_json(FrameType type) {
    switch (type) {
        case FrameType::kHello:
        case FrameType::kHelloAck:
        case FrameType::kRequest:
        case FrameType::kEvent:
        case FrameType::kReply:
            return true;
        default:
            return false;
    }
}

void append_frame(std::string& out, FrameType type, Channel channel, std::uint32_t stream,
                  std::string_view payload) {
    const std::size_t limit = is_json(type) ? kMaxJsonSize : kMaxPayloadSize;
    if (payload.size() > limit) {
        throw std::length_error(std::string("agent protocol: ") + to_string(type) + " frame of " +
                                std::to_string(payload.size()) + " bytes exceeds the limit of " +
                                std::to_string(limit));
    }
    std::uint8_t header[kHeaderSize];
    header[0] = kFrameMagic;
    header[1] = static_cast<std::uint8_t>(type);
    header[2] = static_cast<std::uint8_t>(channel);
    header[3] = 0;
    put_u32(header + 4, stream);
    put_u32(header + 8, static_cast<std::uint32_t>(payload.size()));
    out.append(reinterpret_cast<const char*>(header), kHeaderSize);
    out.append(payload);
}

std::string encode_frame(FrameType type, Channel channel, std::uint32_t stream,
                         std::string_view payload) {
    std::string out;
    out.reserve(kHeaderSize + payload.size());
    append_frame(out, type, channel, stream, payload);
    return out;
}

std::string encode_window(std::uint32_t credit) {
    std::string out(4, '\0');
    put_u32(reinterpret_cast<std::uint8_t*>(out.data()), credit);
    return out;
}

bool decode_window(std::string_view payload, std::uint32_t& credit) {
    if (payload.size() != 4) {
        return false;
    }
    credit = get_u32(reinterpret_cast<const std::uint8_t*>(payload.data()));
    return true;
}

bool SyncScanner::scan(std::string_view& input) {
    std::size_t i = 0;
    while (i < input.size()) {
        if (matched_ == 0) {
            // Fast path: jump to the next candidate first byte.
            const void* hit = std::memchr(input.data() + i, kSyncMagic[0], input.size() - i);
            if (hit == nullptr) {
                input.remove_prefix(input.size());
                return false;
            }
            i = static_cast<std::size_t>(static_cast<const char*>(hit) - input.data());
        }
        const auto byte = static_cast<std::uint8_t>(input[i]);
        if (byte == kSyncMagic[matched_]) {
            ++i;
            if (++matched_ == kSyncMagic.size()) {
                matched_ = 0;
                input.remove_prefix(i);
                return true;
            }
        } else if (matched_ > 0) {
            // kSyncMagic has no prefix that is also a suffix, so a mismatch restarts the match
            // at this same byte.
            matched_ = 0;
        } else {
            ++i;
        }
    }
    input.remove_prefix(input.size());
    return false;
}

FrameDecoder::FrameDecoder(bool expect_sync, Limits limits)
    : limits_(limits), syncing_(expect_sync) {}

void FrameDecoder::reset(bool expect_sync) {
    syncing_ = expect_sync;
    scanner_.reset();
    inline_sync_ = 0;
    if (expect_sync && header_len_ > 1) {
        // A sync sequence may start inside a rejected header: scan its bytes after the first.
        // It cannot end there (it is longer than a header), so this only primes the scanner.
        std::string_view rest(reinterpret_cast<const char*>(header_.data()) + 1, header_len_ - 1);
        scanner_.scan(rest);
    }
    header_len_ = 0;
    payload_len_ = 0;
    frame_.payload.clear();
    frame_.payload.shrink_to_fit();
    error_.clear();
}

bool FrameDecoder::check_header() {
    const std::uint8_t magic = header_[0];
    const std::uint8_t type = header_[1];
    const std::uint8_t channel = header_[2];
    const std::uint8_t flags = header_[3];
    const std::uint32_t length = get_u32(header_.data() + 8);

    if (magic != kFrameMagic) {
        error_ = "bad frame magic " + hex_byte(magic) + " (expected " + hex_byte(kFrameMagic) +
                 "): garbage on the channel";
        return false;
    }
    if (type == 0 || type > kMaxFrameType) {
        error_ = "unknown frame type " + std::to_string(type);
        return false;
    }
    const auto frame_type = static_cast<FrameType>(type);
    if (channel > kMaxChannel || !channel_allowed(frame_type, static_cast<Channel>(channel))) {
        error_ = std::string("invalid channel ") + std::to_string(channel) + " for a " +
                 to_string(frame_type) + " frame";
        return false;
    }
    if (flags != 0) {
        error_ =
            "reserved flags " + hex_byte(flags) + " set in a " + to_string(frame_type) + " frame";
        return false;
    }
    const std::uint32_t limit = is_json(frame_type) ? limits_.max_json : limits_.max_payload;
    if (length > limit) {
        error_ = std::string(to_string(frame_type)) +
                 " frame too large: " + std::to_string(length) + " bytes (limit " +
                 std::to_string(limit) + ")";
        return false;
    }
    if (frame_type == FrameType::kWindow && length != 4) {
        error_ = "window frame with a payload of " + std::to_string(length) + " bytes (expected 4)";
        return false;
    }
    if ((frame_type == FrameType::kEof || frame_type == FrameType::kCancel) && length != 0) {
        error_ = std::string(to_string(frame_type)) + " frame with a payload";
        return false;
    }
    frame_.type = frame_type;
    frame_.channel = static_cast<Channel>(channel);
    frame_.stream = get_u32(header_.data() + 4);
    payload_len_ = length;
    frame_.payload.clear();
    frame_.payload.reserve(length);
    return true;
}

FrameDecoder::DecodeStatus FrameDecoder::decode(std::string_view& input, Frame& out) {
    if (failed()) {
        return kError;
    }
    if (syncing_) {
        if (!scanner_.scan(input)) {
            return kNeedMore;
        }
        syncing_ = false;
    }
    // Between frames: zero bytes are padding (a host flushing out a half frame, see kSyncMagic)
    // and a sync sequence marks a peer starting over; both are skipped, but a sync sequence
    // must be complete.
    while (header_len_ == 0 && !input.empty()) {
        const auto byte = static_cast<std::uint8_t>(input.front());
        if (inline_sync_ == 0 && byte == 0) {
            input.remove_prefix(std::min(input.size(), input.find_first_not_of('\0')));
            continue;
        }
        if (inline_sync_ == 0 && byte != kSyncMagic[0]) {
            break;
        }
        if (byte != kSyncMagic[inline_sync_]) {
            error_ = "broken sync sequence between frames";
            inline_sync_ = 0;
            return kError;
        }
        input.remove_prefix(1);
        if (++inline_sync_ == kSyncMagic.size()) {
            inline_sync_ = 0;
        }
    }
    if (inline_sync_ > 0) {
        return kNeedMore;
    }
    if (header_len_ < kHeaderSize) {
        const std::size_t take = std::min(kHeaderSize - header_len_, input.size());
        std::copy_n(input.data(), take, reinterpret_cast<char*>(header_.data()) + header_len_);
        // Reject garbage as soon as its first byte arrives rather than waiting for a header.
        if (header_len_ == 0 && take > 0 && header_[0] != kFrameMagic) {
            check_header();
            return kError;
        }
        header_len_ += take;
        input.remove_prefix(take);
        if (header_len_ < kHeaderSize) {
            return kNeedMore;
        }
        if (!check_header()) {
            return kError;
        }
    }
    const std::size_t take = std::min(payload_len_ - frame_.payload.size(), input.size());
    frame_.payload.append(input.data(), take);
    input.remove_prefix(take);
    if (frame_.payload.size() < payload_len_) {
        return kNeedMore;
    }
    out = std::move(frame_);
    frame_ = Frame{};
    header_len_ = 0;
    payload_len_ = 0;
    return kFrame;
}

}  // namespace holt::agent_protocol
