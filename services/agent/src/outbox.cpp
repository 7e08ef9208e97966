#include "outbox.hpp"

#include <boost/json/serialize.hpp>

namespace holt::agent {
namespace {

// Small frames are appended to the last chunk up to this size, so a burst of them costs one
// write system call instead of one each.
constexpr std::size_t kChunkSize = 256 * 1024;
// Emptied chunks kept for reuse.
constexpr std::size_t kSpareChunks = 6;

}  // namespace

void Outbox::set_enabled(bool enabled) {
    enabled_ = enabled;
    if (!enabled) {
        clear();
    }
}

std::string& Outbox::tail_chunk(std::size_t need) {
    if (chunks_.empty() || chunks_.back().size() + need > kChunkSize) {
        // Chunks are recycled: fresh pages for every 256 KiB would cost a page fault per page,
        // which is expensive in a guest under TCG.
        if (!spare_.empty()) {
            chunks_.push_back(std::move(spare_.back()));
            spare_.pop_back();
        } else {
            chunks_.emplace_back();
        }
        chunks_.back().reserve(std::max(need, kChunkSize));
    }
    return chunks_.back();
}

void Outbox::recycle(std::string&& chunk) {
    if (spare_.size() < kSpareChunks && chunk.capacity() <= kChunkSize * 2) {
        chunk.clear();
        spare_.push_back(std::move(chunk));
    }
}

void Outbox::send(proto::FrameType type, proto::Channel channel, std::uint32_t stream,
                  std::string_view payload) {
    if (!enabled_) {
        return;
    }
    std::string& chunk = tail_chunk(proto::kHeaderSize + payload.size());
    proto::append_frame(chunk, type, channel, stream, payload);
    bytes_ += proto::kHeaderSize + payload.size();
}

void Outbox::send_json(proto::FrameType type, std::uint32_t stream,
                       const boost::json::object& payload) {
    std::string text = boost::json::serialize(payload);
    if (text.size() > proto::kMaxJsonSize) {
        // Only a reply could grow this large (a huge error message); never send a frame the
        // host would reject as a protocol error.
        text = boost::json::serialize(boost::json::object{
            {"ok", false},
            {"error", boost::json::object{{"code", "E2BIG"},
                                          {"message", "reply larger than the JSON limit"}}}});
    }
    send(type, proto::Channel::kNone, stream, text);
}

void Outbox::send_raw(std::string_view bytes) {
    if (!enabled_) {
        return;
    }
    tail_chunk(bytes.size()).append(bytes);
    bytes_ += bytes.size();
}

void Outbox::clear() {
    while (!chunks_.empty()) {
        recycle(std::move(chunks_.front()));
        chunks_.pop_front();
    }
    front_offset_ = 0;
    bytes_ = 0;
}

Outbox::FlushResult Outbox::flush(Link& link) {
    while (!chunks_.empty()) {
        const std::string& front = chunks_.front();
        ssize_t n = link.write(front.data() + front_offset_, front.size() - front_offset_);
        if (n < 0) {
            return FlushResult::kFailed;
        }
        if (n == 0) {
            return FlushResult::kBlocked;
        }
        front_offset_ += static_cast<std::size_t>(n);
        bytes_ -= static_cast<std::size_t>(n);
        if (front_offset_ == front.size()) {
            recycle(std::move(chunks_.front()));
            chunks_.pop_front();
            front_offset_ = 0;
        }
    }
    return FlushResult::kDone;
}

}  // namespace holt::agent
