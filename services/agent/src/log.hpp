#pragma once

// The agent's logging: one line per event on stderr (the guest console when the agent is PID 1).
// The agent does not use spdlog so that the static binary stays small.

#include <sstream>
#include <string>

namespace holt::agent::log {

enum class Level { kTrace, kDebug, kInfo, kWarn, kError };

void set_level(Level level);
// Parses "trace", "debug", "info", "warn" or "error"; false for anything else.
bool parse_level(const std::string& name, Level& level);
bool enabled(Level level);
void write(Level level, const std::string& message);

// log::info("exec ", id, " pid ", pid);
template <typename... Parts>
void line(Level level, const Parts&... parts) {
    if (!enabled(level)) {
        return;
    }
    std::ostringstream text;
    (text << ... << parts);
    write(level, text.str());
}

template <typename... Parts>
void trace(const Parts&... parts) {
    line(Level::kTrace, parts...);
}
template <typename... Parts>
void debug(const Parts&... parts) {
    line(Level::kDebug, parts...);
}
template <typename... Parts>
void info(const Parts&... parts) {
    line(Level::kInfo, parts...);
}
template <typename... Parts>
void warn(const Parts&... parts) {
    line(Level::kWarn, parts...);
}
template <typename... Parts>
void error(const Parts&... parts) {
    line(Level::kError, parts...);
}

}  // namespace holt::agent::log
