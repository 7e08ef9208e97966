#include "log.hpp"

#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>

namespace holt::agent::log {
namespace {

Level current = Level::kInfo;

const char* level_name(Level level) {
    switch (level) {
        case Level::kTrace:
            return "trace";
        case Level::kDebug:
            return "debug";
        case Level::kInfo:
            return "info";
        case Level::kWarn:
            return "warning";
        case Level::kError:
            return "error";
    }
    return "?";
}

}  // namespace

void set_level(Level level) {
    current = level;
}

bool parse_level(const std::string& name, Level& level) {
    for (Level candidate :
         {Level::kTrace, Level::kDebug, Level::kInfo, Level::kWarn, Level::kError}) {
        if (name == level_name(candidate) || (candidate == Level::kWarn && name == "warn")) {
            level = candidate;
            return true;
        }
    }
    return false;
}

bool enabled(Level level) {
    return level >= current;
}

void write(Level level, const std::string& message) {
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    tm parts{};
    gmtime_r(&now.tv_sec, &parts);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &parts);
    char stamp[48];
    std::snprintf(stamp, sizeof stamp, "%s.%03dZ", date, static_cast<int>(now.tv_nsec / 1000000));
    std::string text = std::string(stamp) + " " + level_name(level) + " [agent] " + message + "\n";
    // One write per line, so lines of concurrent writers to the console do not interleave.
    [[maybe_unused]] ssize_t written = ::write(STDERR_FILENO, text.data(), text.size());
}

}  // namespace holt::agent::log
