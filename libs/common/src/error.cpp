#include "holt/common/error.hpp"

#include <cerrno>
#include <cstring>

namespace holt {

std::string errno_text(int err) {
    return std::strerror(err);
}

void throw_errno(std::string_view what) {
    int err = errno;
    throw Error(std::string(what) + ": " + errno_text(err));
}

}  // namespace holt
