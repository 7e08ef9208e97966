#pragma once

#include <boost/json/object.hpp>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "holt/agent_protocol/frame.hpp"
#include "link.hpp"

namespace holt::agent {

namespace proto = holt::agent_protocol;

// Frames waiting to be written to the host. Producers of bulk data (process output, file reads)
// stop while it holds more than kHighWater bytes and resume below kLowWater, so the agent never
// buffers without bound when the host reads slowly.
class Outbox {
  public:
    static constexpr std::size_t kHighWater = 1024 * 1024;
    static constexpr std::size_t kLowWater = 256 * 1024;

    // While disabled (no host session), frames are discarded.
    void set_enabled(bool enabled);
    bool enabled() const { return enabled_; }

    void send(proto::FrameType type, proto::Channel channel, std::uint32_t stream,
              std::string_view payload);
    void send_json(proto::FrameType type, std::uint32_t stream, const boost::json::object& payload);
    // Raw bytes (the sync sequence).
    void send_raw(std::string_view bytes);

    bool congested() const { return bytes_ >= kHighWater; }
    bool below_low_water() const { return bytes_ < kLowWater; }
    bool empty() const { return bytes_ == 0; }
    std::size_t size() const { return bytes_; }
    void clear();

    enum class FlushResult { kDone, kBlocked, kFailed };
    // Writes queued bytes to the link until all are written or it would block.
    FlushResult flush(Link& link);

  private:
    std::string& tail_chunk(std::size_t need);
    void recycle(std::string&& chunk);

    bool enabled_ = false;
    std::deque<std::string> chunks_;
    std::vector<std::string> spare_;
    std::size_t front_offset_ = 0;  // bytes of chunks_.front() already written
    std::size_t bytes_ = 0;
};

}  // namespace holt::agent
