// holt: the command-line client of the Holt API (sandboxes, snapshots, API keys).
// See docs/cli.md.

#include <iostream>
#include <variant>

#include "command_line.hpp"
#include "runner.hpp"

int main(int argc, char** argv) {
    auto parsed = holt::cli::parse_command_line(argc, argv, std::cout, std::cerr);
    if (const int* exit_status = std::get_if<int>(&parsed)) {
        return *exit_status;
    }
    return holt::cli::run(std::get<holt::cli::Invocation>(parsed), std::cout, std::cerr);
}
