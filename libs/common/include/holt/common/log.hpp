#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace holt::log {

// Sets up logging for a binary: one line per event on stderr, level from `level` ("info",
// "debug", ...) or, when empty, from the HOLT_LOG environment variable (default "info").
void init(const std::string& level = "");

// The logger of one component ("vm", "agent", ...). Loggers share the sinks set up by init().
std::shared_ptr<spdlog::logger> get(const std::string& component);

}  // namespace holt::log
