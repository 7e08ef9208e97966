#pragma once

#include <iosfwd>

#include "command_line.hpp"

namespace holt::cli {

constexpr int kFailureExit = 1;

// Carries out a parsed command line against the API: human output (or the API's JSON with
// --json) to `out`, errors as "holt: CODE: MESSAGE" to `err`. Answers the exit status: 0, the
// command's own status for exec, 1 when the API or the connection failed.
int run(const Invocation& invocation, std::ostream& out, std::ostream& err);

}  // namespace holt::cli
