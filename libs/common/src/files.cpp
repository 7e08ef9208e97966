#include "holt/common/files.hpp"

#include <fstream>
#include <iterator>

namespace holt {

std::string file_stamp(const std::filesystem::path& path) {
    std::error_code size_error;
    std::error_code time_error;
    auto size = std::filesystem::file_size(path, size_error);
    auto time = std::filesystem::last_write_time(path, time_error);
    if (size_error || time_error) {
        return "missing";
    }
    return std::to_string(size) + "@" + std::to_string(time.time_since_epoch().count());
}

std::string read_text_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace holt
