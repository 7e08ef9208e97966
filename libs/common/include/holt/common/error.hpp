#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace holt {

// An error that ends one whole operation (boot a VM, build an image, run a command). Its message
// names the step that failed and the object it failed on, outermost first:
//   "boot vm-3f2a: wait for agent: no answer after 30s; last console lines: ..."
class Error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// Runs `step` and prefixes the message of any holt::Error (or std::exception) it throws with
// `context`, so errors read as a path from the operation down to the failing call.
template <typename Fn>
decltype(auto) with_context(std::string_view context, Fn&& step) {
    try {
        return std::forward<Fn>(step)();
    } catch (const std::exception& e) {
        throw Error(std::string(context) + ": " + e.what());
    }
}

// The text of errno `err` ("No such file or directory").
std::string errno_text(int err);

// Throws holt::Error("<what>: <strerror(errno)>").
[[noreturn]] void throw_errno(std::string_view what);

}  // namespace holt
