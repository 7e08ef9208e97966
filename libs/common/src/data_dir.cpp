#include "holt/common/data_dir.hpp"

#include <unistd.h>

#include <cstdlib>

namespace holt {

std::filesystem::path default_data_dir() {
    if (const char* env = std::getenv("HOLT_DATA_DIR"); env && *env) {
        return env;
    }
    if (geteuid() == 0) {
        return "/var/lib/holt";
    }
    if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg && *xdg) {
        return std::filesystem::path(xdg) / "holt";
    }
    const char* home = std::getenv("HOME");
    return std::filesystem::path(home ? home : "/tmp") / ".local/share/holt";
}

}  // namespace holt
