#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace holt::cli {

// One line of an exec NDJSON stream (see ExecEvent in docs/api/sandbox.yaml):
//   start {pid}, stdout/stderr {data | data_b64}, exit {exit_code, signal, timed_out,
//   duration_ms}, error {code, message}.
struct ExecEvent {
    std::string type;
    // The output bytes of a stdout/stderr event (`data_b64` decoded).
    std::string data;
    std::optional<long long> pid;
    std::optional<int> exit_code;
    std::optional<int> signal;
    bool timed_out = false;
    double duration_ms = 0;
    std::string code;
    std::string message;
};

// Parses one NDJSON line; throws holt::Error when it is not a JSON object with a string `type`.
ExecEvent parse_exec_event(std::string_view line);

// Exit code with which the command line tool reports a command's end, as shells do: the exit
// code, 128 + the signal number, or 124 (as timeout(1)) when its timeout killed it.
int exit_status_of(const ExecEvent& exit);

constexpr int kTimedOutExit = 124;

// Follows an exec stream: passes output to the sinks as it comes and keeps the exit event.
// An `error` event throws the ApiError it carries.
class ExecStream {
  public:
    using Sink = std::function<void(std::string_view bytes)>;

    ExecStream(Sink on_stdout, Sink on_stderr);

    void on_line(std::string_view line);

    // The exit event; throws holt::Error if the stream ended without one.
    const ExecEvent& exit() const;
    std::optional<long long> pid() const { return pid_; }

  private:
    Sink on_stdout_;
    Sink on_stderr_;
    std::optional<ExecEvent> exit_;
    std::optional<long long> pid_;
};

}  // namespace holt::cli
