#include "file_ops.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json/value_from.hpp>
#include <boost/json/value_to.hpp>
#include <filesystem>
#include <system_error>
#include <vector>

#include "holt/agent_protocol/messages.hpp"
#include "log.hpp"
#include "op_error.hpp"

namespace holt::agent {

namespace json = boost::json;
using proto::Channel;
using proto::FileType;
using proto::FrameType;

namespace {

// Chunks a reader sends per pump() call before it lets the next reader go.
constexpr int kChunksPerPump = 4;
// Entries of a listing are sent in events of about this many bytes of JSON.
constexpr std::size_t kListEventBytes = 64 * 1024;
constexpr std::int64_t kDefaultListLimit = 10000;
constexpr std::int64_t kMaxListDepth = 64;

std::string required_path(const proto::FieldReader& reader, const char* op,
                          const char* key = "path") {
    std::string path = reader.string(key);
    if (path.empty() || path.front() != '/') {
        throw OpError("EINVAL", std::string(op) + " '" + path + "': the path must be absolute");
    }
    return path;
}

FileType file_type(mode_t mode) {
    if (S_ISDIR(mode)) {
        return FileType::kDirectory;
    }
    if (S_ISLNK(mode)) {
        return FileType::kSymlink;
    }
    if (S_ISFIFO(mode)) {
        return FileType::kFifo;
    }
    if (S_ISSOCK(mode)) {
        return FileType::kSocket;
    }
    if (S_ISCHR(mode)) {
        return FileType::kCharDevice;
    }
    if (S_ISBLK(mode)) {
        return FileType::kBlockDevice;
    }
    return FileType::kRegular;
}

std::chrono::system_clock::time_point mtime_of(const struct stat& st) {
    return std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::seconds(st.st_mtim.tv_sec) +
            std::chrono::nanoseconds(st.st_mtim.tv_nsec)));
}

std::string parent_of(const std::string& path) {
    std::size_t slash = path.find_last_of('/');
    return slash == 0 ? "/" : path.substr(0, slash);
}

// mkdir -p: creates the missing directories of `path` with `mode`.
void make_parents(const std::string& path, mode_t mode, const std::string& what) {
    std::size_t at = 1;
    while (at <= path.size()) {
        std::size_t slash = path.find('/', at);
        std::string prefix = path.substr(0, slash);
        if (!prefix.empty() && ::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST) {
            throw errno_error(what + ": mkdir " + prefix);
        }
        if (slash == std::string::npos) {
            break;
        }
        at = slash + 1;
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        throw errno_error(what + ": " + path);
    }
    if (!S_ISDIR(st.st_mode)) {
        throw errno_error(ENOTDIR, what + ": " + path);
    }
}

bool write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

}  // namespace

FileStreams::~FileStreams() {
    on_session_end();
}

void FileStreams::start_write(std::uint32_t stream, const json::object& request) {
    proto::FieldReader reader(request, "write_file request");
    const std::string path = required_path(reader, "write");
    auto options = json::value_to<proto::WriteOptions>(json::value(request));
    const std::string what = "write " + path;

    if (options.make_parents) {
        make_parents(parent_of(path), 0755, what);
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        throw errno_error(EISDIR, what);
    }

    Writer writer;
    writer.path = path;
    if (options.append) {
        writer.fd.reset(
            ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, options.mode));
        if (!writer.fd) {
            throw errno_error(what);
        }
    } else {
        // Write next to the target and rename on success, so readers never see half a file.
        const std::string dir = parent_of(path);
        std::string temp = dir + (dir == "/" ? "" : "/") + "." +
                           path.substr(path.find_last_of('/') + 1) + ".holt-XXXXXX";
        writer.fd.reset(::mkostemp(temp.data(), O_CLOEXEC));
        if (!writer.fd) {
            throw errno_error(what);
        }
        writer.temp_path = temp;
        if (::fchmod(writer.fd.get(), options.mode) != 0) {
            int err = errno;
            ::unlink(temp.c_str());
            throw errno_error(err, what + ": chmod");
        }
    }
    writer.window = proto::kDefaultFileWindow;
    writers_.emplace(stream, std::move(writer));
    outbox_.send_json(FrameType::kEvent, stream,
                      {{"event", "ready"}, {"window", proto::kDefaultFileWindow}});
}

void FileStreams::fail_write(std::uint32_t stream, Writer& writer, const std::string& code,
                             const std::string& message) {
    writer.failed = true;
    writer.fd.reset();
    if (!writer.temp_path.empty()) {
        ::unlink(writer.temp_path.c_str());
        writer.temp_path.clear();
    }
    outbox_.send_json(FrameType::kReply, stream, proto::error_reply({code, message}));
}

bool FileStreams::on_data(std::uint32_t stream, std::string_view data) {
    auto it = writers_.find(stream);
    if (it == writers_.end()) {
        return false;
    }
    Writer& writer = it->second;
    if (writer.failed) {
        return true;
    }
    if (data.size() > writer.window) {
        fail_write(stream, writer, "EPROTO",
                   "write " + writer.path + ": the host sent more data than its window allowed");
        return true;
    }
    if (!write_all(writer.fd.get(), data)) {
        OpError error = errno_error("write " + writer.path);
        fail_write(stream, writer, error.code(), error.what());
        return true;
    }
    writer.bytes += data.size();
    // The bytes are on their way to disk: the host may send as many again.
    outbox_.send(FrameType::kWindow, Channel::kFile, stream,
                 proto::encode_window(static_cast<std::uint32_t>(data.size())));
    return true;
}

bool FileStreams::on_eof(std::uint32_t stream) {
    auto it = writers_.find(stream);
    if (it == writers_.end()) {
        return false;
    }
    Writer& writer = it->second;
    if (!writer.failed) {
        const std::string what = "write " + writer.path;
        if (::close(writer.fd.release()) != 0) {
            OpError error = errno_error(what);
            fail_write(stream, writer, error.code(), error.what());
        } else if (!writer.temp_path.empty() &&
                   ::rename(writer.temp_path.c_str(), writer.path.c_str()) != 0) {
            OpError error = errno_error(what + ": rename into place");
            fail_write(stream, writer, error.code(), error.what());
        } else {
            outbox_.send_json(FrameType::kReply, stream,
                              proto::ok_reply({{"bytes", writer.bytes}}));
        }
    }
    writers_.erase(it);
    return true;
}

bool FileStreams::on_window(std::uint32_t stream, std::uint32_t credit) {
    auto it = readers_.find(stream);
    if (it == readers_.end()) {
        return writers_.count(stream) != 0;
    }
    it->second.window += credit;
    return true;
}

bool FileStreams::on_cancel(std::uint32_t stream) {
    if (auto it = writers_.find(stream); it != writers_.end()) {
        if (!it->second.temp_path.empty()) {
            ::unlink(it->second.temp_path.c_str());
        }
        writers_.erase(it);
        return true;
    }
    return readers_.erase(stream) != 0;
}

void FileStreams::on_session_end() {
    for (auto& [stream, writer] : writers_) {
        if (!writer.temp_path.empty()) {
            ::unlink(writer.temp_path.c_str());
        }
    }
    writers_.clear();
    readers_.clear();
}

void FileStreams::start_read(std::uint32_t stream, const json::object& request) {
    proto::FieldReader reader(request, "read_file request");
    const std::string path = required_path(reader, "read");
    const std::string what = "read " + path;
    const std::int64_t offset = reader.integer("offset", 0);
    const std::int64_t length = reader.integer("length", -1);
    const std::int64_t window = reader.integer("window", proto::kDefaultFileWindow);
    if (offset < 0 || window <= 0) {
        throw OpError("EINVAL", what + ": offset and window must not be negative");
    }

    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (!fd) {
        throw errno_error(what);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
        throw errno_error(what);
    }
    if (S_ISDIR(st.st_mode)) {
        throw errno_error(EISDIR, what);
    }
    if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode)) {
        throw OpError("EINVAL", what + ": not a regular file or device");
    }
    if (offset > 0 && ::lseek(fd.get(), offset, SEEK_SET) < 0) {
        throw errno_error(what + ": seek");
    }

    Reader state;
    state.path = path;
    state.fd = std::move(fd);
    state.window = static_cast<std::uint64_t>(window);
    state.remaining = length < 0 ? UINT64_MAX : static_cast<std::uint64_t>(length);
    readers_.emplace(stream, std::move(state));
    outbox_.send_json(FrameType::kEvent, stream,
                      {{"event", "ready"},
                       {"size", static_cast<std::uint64_t>(st.st_size)},
                       {"mode", st.st_mode & 07777}});
}

bool FileStreams::read_chunk(std::uint32_t stream, Reader& reader) {
    const std::size_t want = static_cast<std::size_t>(
        std::min<std::uint64_t>({proto::kDataChunkSize, reader.window, reader.remaining}));
    ssize_t n = 0;
    if (want > 0) {
        buffer_.resize(want);
        do {
            n = ::read(reader.fd.get(), buffer_.data(), want);
        } while (n < 0 && errno == EINTR);
    }
    if (n > 0) {
        outbox_.send(FrameType::kData, Channel::kFile, stream,
                     std::string_view(buffer_.data(), static_cast<std::size_t>(n)));
        reader.window -= static_cast<std::uint64_t>(n);
        reader.remaining -= static_cast<std::uint64_t>(n);
        reader.bytes += static_cast<std::uint64_t>(n);
        return true;
    }
    // A character device with nothing to read right now counts as its end.
    if (n < 0 && errno != EAGAIN) {
        OpError error = errno_error("read " + reader.path);
        outbox_.send_json(FrameType::kReply, stream,
                          proto::error_reply({error.code(), error.what()}));
    } else {
        outbox_.send(FrameType::kEof, Channel::kFile, stream, {});
        outbox_.send_json(FrameType::kReply, stream, proto::ok_reply({{"bytes", reader.bytes}}));
    }
    readers_.erase(stream);
    return false;
}

void FileStreams::pump() {
    for (auto it = readers_.begin(); it != readers_.end();) {
        const std::uint32_t stream = it->first;
        Reader& reader = it->second;
        ++it;  // read_chunk may erase this reader
        for (int i = 0; i < kChunksPerPump; ++i) {
            if (outbox_.congested() || (reader.window == 0 && reader.remaining > 0)) {
                break;
            }
            if (!read_chunk(stream, reader)) {
                break;
            }
        }
    }
}

bool FileStreams::ready() const {
    for (const auto& [stream, reader] : readers_) {
        if (reader.window > 0 || reader.remaining == 0) {
            return true;
        }
    }
    return false;
}

json::object stat_path(const json::object& request) {
    proto::FieldReader reader(request, "stat request");
    const std::string path = required_path(reader, "stat");
    const bool follow = reader.boolean("follow", true);
    struct stat st {};
    if ((follow ? ::stat(path.c_str(), &st) : ::lstat(path.c_str(), &st)) != 0) {
        throw errno_error("stat " + path);
    }
    proto::FileStat out;
    out.path = path;
    out.type = file_type(st.st_mode);
    out.size = static_cast<std::uint64_t>(st.st_size);
    out.mode = st.st_mode & 07777;
    out.mtime = mtime_of(st);
    out.uid = st.st_uid;
    out.gid = st.st_gid;
    if (out.type == FileType::kSymlink) {
        std::error_code ec;
        out.link_target = std::filesystem::read_symlink(path, ec).string();
    }
    return {{"stat", json::value_from(out)}};
}

namespace {

struct Lister {
    Outbox& outbox;
    std::uint32_t stream;
    std::int64_t limit;
    std::int64_t count = 0;
    bool truncated = false;
    json::array batch;
    std::size_t batch_bytes = 0;

    void add(proto::DirEntry entry) {
        batch_bytes += entry.path.size() + entry.name.size() + 96;
        batch.push_back(json::value_from(entry));
        ++count;
        if (batch_bytes >= kListEventBytes) {
            flush();
        }
    }

    void flush() {
        if (batch.empty()) {
            return;
        }
        outbox.send_json(FrameType::kEvent, stream,
                         {{"event", "entries"}, {"entries", std::move(batch)}});
        batch = json::array();
        batch_bytes = 0;
    }

    // Lists `dir` (open descriptor) as `prefix` ("" for the top), `depth` levels down.
    void walk(int dir_fd, const std::string& prefix, std::int64_t depth) {
        DIR* dir = ::fdopendir(dir_fd);
        if (dir == nullptr) {
            ::close(dir_fd);
            return;
        }
        std::vector<std::string> names;
        while (dirent* entry = ::readdir(dir)) {
            std::string name = entry->d_name;
            if (name != "." && name != "..") {
                names.push_back(std::move(name));
            }
        }
        std::sort(names.begin(), names.end());
        for (const std::string& name : names) {
            if (count >= limit) {
                truncated = true;
                break;
            }
            struct stat st {};
            if (::fstatat(::dirfd(dir), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
                continue;  // removed while listing
            }
            proto::DirEntry entry;
            entry.path = prefix.empty() ? name : prefix + "/" + name;
            entry.name = name;
            entry.type = file_type(st.st_mode);
            entry.size = static_cast<std::uint64_t>(st.st_size);
            entry.mode = st.st_mode & 07777;
            entry.mtime = mtime_of(st);
            const bool descend = entry.type == FileType::kDirectory && depth > 1;
            std::string sub_prefix = entry.path;
            add(std::move(entry));
            if (descend) {
                // Unreadable subdirectories are listed but not entered.
                int sub = ::openat(::dirfd(dir), name.c_str(),
                                   O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
                if (sub >= 0) {
                    walk(sub, sub_prefix, depth - 1);
                }
            }
        }
        ::closedir(dir);
    }
};

}  // namespace

json::object list_directory(Outbox& outbox, std::uint32_t stream, const json::object& request) {
    proto::FieldReader reader(request, "list request");
    const std::string path = required_path(reader, "list");
    const std::int64_t depth =
        std::clamp<std::int64_t>(reader.integer("depth", 1), 1, kMaxListDepth);
    const std::int64_t limit = reader.integer("limit", kDefaultListLimit);
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        throw errno_error("list " + path);
    }
    Lister lister{outbox, stream, limit > 0 ? limit : kDefaultListLimit};
    lister.walk(fd, "", depth);
    lister.flush();
    return {{"count", lister.count}, {"truncated", lister.truncated}};
}

json::object make_directory(const json::object& request) {
    proto::FieldReader reader(request, "mkdir request");
    const std::string path = required_path(reader, "mkdir");
    const auto mode = static_cast<mode_t>(reader.integer("mode", 0755) & 07777);
    if (reader.boolean("parents")) {
        make_parents(path, mode, "mkdir " + path);
    } else if (::mkdir(path.c_str(), mode) != 0) {
        throw errno_error("mkdir " + path);
    }
    return {};
}

json::object remove_path(const json::object& request) {
    proto::FieldReader reader(request, "remove request");
    const std::string path = required_path(reader, "remove");
    const std::string what = "remove " + path;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        throw errno_error(what);
    }
    if (!S_ISDIR(st.st_mode)) {
        if (::unlink(path.c_str()) != 0) {
            throw errno_error(what);
        }
        return {};
    }
    if (!reader.boolean("recursive")) {
        if (::rmdir(path.c_str()) != 0) {
            throw errno_error(what);
        }
        return {};
    }
    if (std::filesystem::path(path).lexically_normal() == "/") {
        throw OpError("EINVAL", what + ": refusing to remove the root directory");
    }
    std::error_code ec;
    auto removed = std::filesystem::remove_all(path, ec);
    if (ec) {
        throw errno_error(ec.value(), what);
    }
    return {{"removed", static_cast<std::uint64_t>(removed)}};
}

json::object rename_path(const json::object& request) {
    proto::FieldReader reader(request, "rename request");
    const std::string from = required_path(reader, "rename", "from");
    const std::string to = required_path(reader, "rename", "to");
    if (::rename(from.c_str(), to.c_str()) != 0) {
        throw errno_error("rename " + from + " to " + to);
    }
    return {};
}

}  // namespace holt::agent
