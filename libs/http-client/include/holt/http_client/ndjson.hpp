#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace holt::http_client {

// Cuts a byte stream that arrives in arbitrary pieces into the lines of an NDJSON document.
// Each complete line (without its "\n" or "\r\n") goes to the callback as soon as its newline
// arrives; empty lines are skipped. A line longer than `max_line` bytes is an error, so a peer
// that never sends a newline cannot grow the buffer without bound.
class NdjsonSplitter {
  public:
    using LineHandler = std::function<void(std::string_view line)>;

    explicit NdjsonSplitter(LineHandler on_line, std::size_t max_line = 64 << 20);

    // Takes the next piece of the stream; throws holt::Error for an over-long line.
    void feed(std::string_view chunk);

    // The stream ended: a last line without a newline is delivered too.
    void finish();

  private:
    void emit(std::string_view line);

    LineHandler on_line_;
    std::size_t max_line_;
    std::string partial_;
};

}  // namespace holt::http_client
