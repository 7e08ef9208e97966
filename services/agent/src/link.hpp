#pragma once

// The agent's byte stream to the host: the virtio-serial port agent.0 (in a guest), a listening
// unix, TCP or vsock socket that accepts one host at a time, or stdin/stdout.

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "event_loop.hpp"

namespace holt::agent {

class Link {
  public:
    struct Callbacks {
        // A new host connection (sockets); for virtio-serial and stdio the first bytes tell.
        std::function<void()> on_connect;
        std::function<void(std::string_view bytes)> on_data;
        // The host went away: its bytes in flight are lost and new ones will start with a sync.
        std::function<void()> on_disconnect;
        // The outgoing side can take more bytes.
        std::function<void()> on_writable;
    };

    virtual ~Link() = default;

    virtual void start(EventLoop& loop, Callbacks callbacks) = 0;
    // True while a host is (as far as the agent knows) on the other end.
    virtual bool connected() const = 0;
    // Writes up to `size` bytes without blocking. Returns the count written, 0 when the link
    // would block, -1 when the host is gone (the link then reports on_disconnect itself).
    virtual ssize_t write(const char* data, std::size_t size) = 0;
    // Asks for on_writable once the link can take bytes again.
    virtual void want_writable(bool want) = 0;
    // Drops the current host (after a protocol error on a socket); no-op where it cannot.
    virtual void drop() = 0;
    // False for stdio: once the host is gone it cannot come back and the agent exits.
    virtual bool can_reconnect() const = 0;
    virtual std::string describe() const = 0;
};

// "unix:/path", "tcp:PORT", "tcp:HOST:PORT", "vsock:PORT". Throws std::runtime_error.
std::unique_ptr<Link> make_listen_link(const std::string& address);
std::unique_ptr<Link> make_stdio_link();
// The virtio-serial port with this name, found through /sys/class/virtio-ports.
std::unique_ptr<Link> make_virtio_link(const std::string& port_name);

}  // namespace holt::agent
