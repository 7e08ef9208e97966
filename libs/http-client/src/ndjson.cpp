#include "holt/http_client/ndjson.hpp"

#include "holt/common/error.hpp"

namespace holt::http_client {

NdjsonSplitter::NdjsonSplitter(LineHandler on_line, std::size_t max_line)
    : on_line_(std::move(on_line)), max_line_(max_line) {}

void NdjsonSplitter::feed(std::string_view chunk) {
    while (!chunk.empty()) {
        auto nl = chunk.find('\n');
        if (nl == std::string_view::npos) {
            if (partial_.size() + chunk.size() > max_line_) {
                throw Error("NDJSON line longer than " + std::to_string(max_line_) + " bytes");
            }
            partial_.append(chunk);
            return;
        }
        if (partial_.empty()) {
            emit(chunk.substr(0, nl));
        } else {
            partial_.append(chunk.substr(0, nl));
            std::string line = std::move(partial_);
            partial_.clear();
            emit(line);
        }
        chunk.remove_prefix(nl + 1);
    }
}

void NdjsonSplitter::finish() {
    if (!partial_.empty()) {
        std::string line = std::move(partial_);
        partial_.clear();
        emit(line);
    }
}

void NdjsonSplitter::emit(std::string_view line) {
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    if (!line.empty()) {
        on_line_(line);
    }
}

}  // namespace holt::http_client
