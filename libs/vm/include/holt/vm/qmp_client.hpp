#pragma once

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace holt::vm {

// A client of QEMU's machine protocol (QMP) on a unix socket: JSON commands in, one JSON reply
// per command out, with asynchronous events interleaved. Every call has a deadline; a QEMU that
// stops answering yields a holt::Error, never a hang. Not thread-safe: one owner drives it.
class QmpClient {
  public:
    using Clock = std::chrono::steady_clock;

    // Connects to `socket` (retrying while QEMU creates it) and negotiates capabilities.
    static QmpClient connect(const std::filesystem::path& socket, Clock::time_point deadline);

    QmpClient(QmpClient&& other) noexcept;
    QmpClient& operator=(QmpClient&& other) noexcept;
    QmpClient(const QmpClient&) = delete;
    QmpClient& operator=(const QmpClient&) = delete;
    ~QmpClient();

    // Runs `command` and returns its "return" value. A QMP error becomes a holt::Error naming
    // the command and QEMU's description of the failure.
    boost::json::value execute(const std::string& command, boost::json::object arguments = {},
                               std::chrono::milliseconds timeout = std::chrono::seconds(10));

    // Passes an open file descriptor to QEMU under `name` (QMP "getfd"), for "fd:" migrations.
    void send_fd(const std::string& name, int fd,
                 std::chrono::milliseconds timeout = std::chrono::seconds(10));

    // Events received so far (STOP, RESUME, SHUTDOWN, ...), oldest first; clears the list.
    std::vector<boost::json::object> take_events();

  private:
    explicit QmpClient(int fd);

    void send_line(const std::string& line, int pass_fd);
    boost::json::object read_message(Clock::time_point deadline);
    boost::json::value await_reply(const std::string& command, std::uint64_t id,
                                   Clock::time_point deadline);

    int fd_ = -1;
    std::uint64_t next_id_ = 1;
    std::string buffer_;
    std::vector<boost::json::object> events_;
};

}  // namespace holt::vm
