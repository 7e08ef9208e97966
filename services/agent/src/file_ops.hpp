#pragma once

// File operations of the agent: streamed reads and writes with flow control, and the one-shot
// operations stat, list, mkdir, remove and rename. Errors name the operation, the path and the
// errno ("read /nope: No such file or directory", code ENOENT).

#include <boost/json/object.hpp>
#include <cstdint>
#include <map>
#include <string>

#include "holt/common/unique_fd.hpp"
#include "outbox.hpp"

namespace holt::agent {

class FileStreams {
  public:
    explicit FileStreams(Outbox& outbox) : outbox_(outbox) {}
    ~FileStreams();

    // write_file: answers with a "ready" event carrying the window, then takes data frames.
    void start_write(std::uint32_t stream, const boost::json::object& request);
    // read_file: answers with a "ready" event carrying the size; pump() sends the data.
    void start_read(std::uint32_t stream, const boost::json::object& request);

    bool owns_stream(std::uint32_t stream) const {
        return writers_.count(stream) != 0 || readers_.count(stream) != 0;
    }
    // Host frames; each returns false when `stream` is not a file stream.
    bool on_data(std::uint32_t stream, std::string_view data);
    bool on_eof(std::uint32_t stream);
    bool on_window(std::uint32_t stream, std::uint32_t credit);
    bool on_cancel(std::uint32_t stream);
    void on_session_end();

    // Sends file data of readers that have window, until the outbox is congested.
    void pump();
    // True when pump() has something to do.
    bool ready() const;

  private:
    struct Writer {
        std::string path;
        std::string temp_path;  // empty when appending in place
        UniqueFd fd;
        std::uint64_t bytes = 0;
        std::uint64_t window = 0;  // bytes the host may still send
        bool failed = false;       // an error was replied; frames are dropped until eof/cancel
    };
    struct Reader {
        std::string path;
        UniqueFd fd;
        std::uint64_t window = 0;     // bytes the agent may still send
        std::uint64_t remaining = 0;  // of the requested length
        std::uint64_t bytes = 0;
    };

    void fail_write(std::uint32_t stream, Writer& writer, const std::string& code,
                    const std::string& message);
    // Reads and sends one chunk; false when the reader is done (and removed).
    bool read_chunk(std::uint32_t stream, Reader& reader);

    Outbox& outbox_;
    std::map<std::uint32_t, Writer> writers_;
    std::map<std::uint32_t, Reader> readers_;
    std::string buffer_;
};

// One-shot operations: each returns the fields of its successful reply or throws OpError.
boost::json::object stat_path(const boost::json::object& request);
// Streams the entries as "entries" events on `stream` before returning the reply fields.
boost::json::object list_directory(Outbox& outbox, std::uint32_t stream,
                                   const boost::json::object& request);
boost::json::object make_directory(const boost::json::object& request);
boost::json::object remove_path(const boost::json::object& request);
boost::json::object rename_path(const boost::json::object& request);

}  // namespace holt::agent
