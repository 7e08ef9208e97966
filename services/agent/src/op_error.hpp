#pragma once

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include "holt/agent_protocol/messages.hpp"

namespace holt::agent {

// Ends one request with an error reply: {"code": "ENOENT", "message": "read /x: No such ..."}.
class OpError : public std::runtime_error {
  public:
    OpError(std::string code, const std::string& message)
        : std::runtime_error(message), code_(std::move(code)) {}

    const std::string& code() const { return code_; }

  private:
    std::string code_;
};

// An OpError for errno value `err`: "<what>: <strerror(err)>" with the errno's name as its code.
inline OpError errno_error(int err, const std::string& what) {
    return OpError(agent_protocol::errno_name(err), what + ": " + std::strerror(err));
}

// The same for the current errno.
inline OpError errno_error(const std::string& what) {
    return errno_error(errno, what);
}

}  // namespace holt::agent
