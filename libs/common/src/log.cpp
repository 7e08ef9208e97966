#include "holt/common/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <mutex>

namespace holt::log {
namespace {

std::mutex registry_mutex;

spdlog::level::level_enum level_from_env(const std::string& level) {
    std::string name = level;
    if (name.empty()) {
        const char* env = std::getenv("HOLT_LOG");
        name = env ? env : "info";
    }
    return spdlog::level::from_str(name);
}

}  // namespace

void init(const std::string& level) {
    std::lock_guard lock(registry_mutex);
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
    spdlog::set_level(level_from_env(level));
}

std::shared_ptr<spdlog::logger> get(const std::string& component) {
    std::lock_guard lock(registry_mutex);
    if (auto existing = spdlog::get(component)) {
        return existing;
    }
    auto logger = spdlog::stderr_color_mt(component);
    logger->set_level(spdlog::get_level());
    return logger;
}

}  // namespace holt::log
