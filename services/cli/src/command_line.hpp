#pragma once

#include <iosfwd>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "holt/http_client/api_client.hpp"

namespace holt::cli {

// What a command line asks for, before anything is sent: the API calls and how to show their
// answers. Built by parse_command_line, carried out by run() (runner.hpp).
enum class Action {
    Call,      // send `requests` in turn, show each answer
    Exec,      // send requests[0] (an exec) and follow its NDJSON stream
    Upload,    // stream `local` into `sandbox_id`:`remote`
    Download,  // stream `sandbox_id`:`remote` into `local`
};

enum class View {
    None,            // nothing (for --json: nothing either, the answer is empty)
    Sandboxes,       // {"sandboxes":[...]} or one Sandbox, as a table
    SandboxDetails,  // one Sandbox, one field per line
    Snapshots,       // {"snapshots":[...]} or one Snapshot
    Keys,            // {"keys":[...]} or one Key (with its secret, once)
    Processes,       // {"processes":[...]}
    Templates,       // {"templates":[...]}
    Pid,             // {"pid"} of a background exec
    Id,              // the id of what a delete removed
};

struct Plan {
    Action action = Action::Call;
    std::vector<http_client::Request> requests;
    View view = View::None;
    // Print only the ids of the objects answered (create, fork, ls -q).
    bool quiet = false;
    // Exec: send this process's stdin as the command's stdin.
    bool read_stdin = false;
    // Copy: "-" is stdin (upload) or stdout (download).
    std::string local;
    std::string sandbox_id;
    std::string remote;
    std::optional<std::string> mode;
};

struct GlobalOptions {
    std::string api_url = "http://127.0.0.1:7070";
    std::string api_key;
    bool json = false;
};

struct Invocation {
    GlobalOptions global;
    Plan plan;
};

// A command line that does not make sense (exit status 2).
class UsageError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

constexpr int kUsageExit = 2;

// Parses a command line (argv[0] included). Answers the invocation, or the exit status when
// parsing ends the program: 0 after --help (printed to `out`), 2 after a usage error (printed
// to `err`). HOLT_API_URL and HOLT_API_KEY are read from the environment.
std::variant<Invocation, int> parse_command_line(int argc, const char* const* argv,
                                                 std::ostream& out, std::ostream& err);

// "sbx-1:/a/b" -> {"sbx-1", "/a/b"}; nullopt for a local path ("./a:b", "/tmp/x", "-").
struct RemotePath {
    std::string sandbox_id;
    std::string path;
};
std::optional<RemotePath> parse_remote_path(const std::string& arg);

}  // namespace holt::cli
