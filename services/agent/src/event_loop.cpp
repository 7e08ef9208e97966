#include "event_loop.hpp"

#include <sys/epoll.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

#include "log.hpp"

namespace holt::agent {
namespace {

constexpr int kMaxEvents = 64;

}  // namespace

EventLoop::EventLoop() : epoll_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (!epoll_) {
        throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
    }
}

EventLoop::WatchId EventLoop::watch(int fd, std::uint32_t events, Handler handler) {
    WatchId id = next_id_++;
    epoll_event event{};
    event.events = events;
    event.data.u64 = id;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) {
        throw std::runtime_error("epoll add fd " + std::to_string(fd) + ": " +
                                 std::strerror(errno));
    }
    watches_.emplace(id, Watch{fd, events, std::make_shared<Handler>(std::move(handler))});
    return id;
}

void EventLoop::modify(WatchId id, std::uint32_t events) {
    auto it = watches_.find(id);
    if (it == watches_.end() || it->second.events == events) {
        return;
    }
    epoll_event event{};
    event.events = events;
    event.data.u64 = id;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, it->second.fd, &event) != 0) {
        throw std::runtime_error("epoll modify fd " + std::to_string(it->second.fd) + ": " +
                                 std::strerror(errno));
    }
    it->second.events = events;
}

void EventLoop::unwatch(WatchId id) {
    auto it = watches_.find(id);
    if (it == watches_.end()) {
        return;
    }
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second.fd, nullptr);
    watches_.erase(it);
}

EventLoop::TimerId EventLoop::add_timer(Clock::duration delay, std::function<void()> callback) {
    TimerId id = next_id_++;
    Clock::time_point deadline = Clock::now() + delay;
    timers_.emplace(std::make_pair(deadline, id), std::move(callback));
    timer_deadlines_.emplace(id, deadline);
    return id;
}

void EventLoop::cancel_timer(TimerId id) {
    auto it = timer_deadlines_.find(id);
    if (it == timer_deadlines_.end()) {
        return;
    }
    timers_.erase(std::make_pair(it->second, id));
    timer_deadlines_.erase(it);
}

void EventLoop::run_due_timers() {
    const Clock::time_point now = Clock::now();
    while (!timers_.empty() && timers_.begin()->first.first <= now) {
        auto node = timers_.extract(timers_.begin());
        timer_deadlines_.erase(node.key().second);
        try {
            node.mapped()();
        } catch (const std::exception& e) {
            log::error("timer: ", e.what());
        }
    }
}

void EventLoop::run_once(std::optional<Clock::duration> max_wait) {
    int timeout_ms = -1;
    std::optional<Clock::duration> wait = max_wait;
    if (!timers_.empty()) {
        Clock::duration until_timer = timers_.begin()->first.first - Clock::now();
        if (!wait || until_timer < *wait) {
            wait = until_timer;
        }
    }
    if (wait) {
        // Round up, so a timer is not polled for in a busy loop just before it is due.
        auto ms = std::chrono::ceil<std::chrono::milliseconds>(*wait).count();
        timeout_ms = ms < 0 ? 0 : static_cast<int>(std::min<long long>(ms, 60'000));
    }

    epoll_event events[kMaxEvents];
    int count = ::epoll_wait(epoll_.get(), events, kMaxEvents, timeout_ms);
    if (count < 0 && errno != EINTR) {
        log::error("epoll_wait: ", std::strerror(errno));
    }
    for (int i = 0; i < count; ++i) {
        auto it = watches_.find(events[i].data.u64);
        if (it == watches_.end()) {
            continue;  // unwatched by an earlier handler of this batch
        }
        // Keep the handler alive even if it unwatches itself.
        std::shared_ptr<Handler> handler = it->second.handler;
        try {
            (*handler)(events[i].events);
        } catch (const std::exception& e) {
            log::error("event handler: ", e.what());
        }
    }
    run_due_timers();
}

}  // namespace holt::agent
