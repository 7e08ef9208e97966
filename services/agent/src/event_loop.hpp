#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>

#include "holt/common/unique_fd.hpp"

namespace holt::agent {

// A single-threaded epoll loop with timers. Handlers run on the loop; an exception thrown by one
// is logged and does not stop the loop (the agent is PID 1 and must keep running).
class EventLoop {
  public:
    using Clock = std::chrono::steady_clock;
    using Handler = std::function<void(std::uint32_t events)>;
    using WatchId = std::uint64_t;
    using TimerId = std::uint64_t;

    EventLoop();

    // Calls `handler` with the epoll events of `fd` (EPOLLIN, EPOLLOUT, EPOLLHUP, ...). The fd
    // must stay open until unwatch(). Returns an id that stays unique even when fd numbers are
    // reused, so events of a watch removed during a batch are never delivered to its successor.
    WatchId watch(int fd, std::uint32_t events, Handler handler);
    void modify(WatchId id, std::uint32_t events);
    void unwatch(WatchId id);

    TimerId add_timer(Clock::duration delay, std::function<void()> callback);
    void cancel_timer(TimerId id);

    // Waits for fd events or the next timer, at most `max_wait` (nullopt: no limit), then runs
    // the handlers of what happened.
    void run_once(std::optional<Clock::duration> max_wait);

  private:
    struct Watch {
        int fd;
        std::uint32_t events;
        std::shared_ptr<Handler> handler;
    };

    void run_due_timers();

    UniqueFd epoll_;
    std::uint64_t next_id_ = 1;
    std::unordered_map<WatchId, Watch> watches_;
    std::map<std::pair<Clock::time_point, TimerId>, std::function<void()>> timers_;
    std::unordered_map<TimerId, Clock::time_point> timer_deadlines_;
};

}  // namespace holt::agent
