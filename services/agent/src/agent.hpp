#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "event_loop.hpp"
#include "file_ops.hpp"
#include "holt/agent_protocol/frame.hpp"
#include "link.hpp"
#include "outbox.hpp"
#include "process_table.hpp"

namespace holt::agent {

// The guest agent: one host session at a time over a Link, serving requests on multiplexed
// streams from a single-threaded event loop.
//
// A session starts with the host's hello (after its sync sequence) and ends when the link
// reports the host gone or a new hello arrives. At the end of a session foreground commands are
// killed, file transfers abandoned (temporary files removed) and queued output dropped;
// background processes keep running and keep their output in ring buffers.
class Agent {
  public:
    Agent(std::unique_ptr<Link> link, bool pid1);
    ~Agent();

    // Serves until stdin closes (stdio link) or, unless PID 1, SIGTERM or SIGINT arrives.
    void run();

  private:
    void on_data(std::string_view bytes);
    void on_frame(proto::Frame& frame);
    void on_hello(const proto::Frame& frame);
    void on_request(std::uint32_t stream, std::string_view payload);
    void on_disconnect();
    void on_signals();
    void end_session(const char* why, bool reset_decoder);
    void flush();

    const bool pid1_;
    EventLoop loop_;
    std::unique_ptr<Link> link_;
    Outbox outbox_;
    proto::FrameDecoder decoder_{/*expect_sync=*/true};
    ProcessTable processes_;
    FileStreams files_;
    UniqueFd signals_;
    bool session_ = false;
    std::string session_nonce_;
    bool stop_ = false;
    std::uint64_t protocol_errors_ = 0;
};

}  // namespace holt::agent
