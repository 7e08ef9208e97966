#include "holt/common/files.hpp"

#include <unistd.h>

#include <fstream>
#include <iterator>
#include <thread>

#include "holt/common/error.hpp"

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

void write_file_atomically(const std::filesystem::path& path, const std::string& content) {
    std::filesystem::path tmp = path;
    // Unique per process and thread: two writers of one file must not share a temporary.
    tmp += ".tmp." + std::to_string(::getpid()) + "." +
           std::to_string(std::hash<std::thread::id>{}(std::this_thread::get_id()));
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << content;
        out.flush();
        if (!out) {
            throw Error("write " + tmp.string() + " failed");
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::filesystem::remove(tmp, ec);
        throw Error("replace " + path.string() + ": " + ec.message());
    }
}

}  // namespace holt
