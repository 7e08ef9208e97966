#include "holt/agent_protocol/messages.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <cstring>

namespace holt::agent_protocol {
namespace {

using std::chrono::milliseconds;
using std::chrono::system_clock;

std::int64_t to_unix_ms(system_clock::time_point t) {
    return std::chrono::duration_cast<milliseconds>(t.time_since_epoch()).count();
}

system_clock::time_point from_unix_ms(std::int64_t ms) {
    return system_clock::time_point(
        std::chrono::duration_cast<system_clock::duration>(milliseconds(ms)));
}

json::value optional_int(const std::optional<int>& value) {
    if (value) {
        return *value;
    }
    return nullptr;
}

std::optional<int> read_optional_int(const FieldReader& reader, std::string_view key) {
    if (auto value = reader.optional_integer(key)) {
        return static_cast<int>(*value);
    }
    return std::nullopt;
}

}  // namespace

const char* to_string(FileType type) {
    switch (type) {
        case FileType::kRegular:
            return "file";
        case FileType::kDirectory:
            return "dir";
        case FileType::kSymlink:
            return "symlink";
        case FileType::kFifo:
            return "fifo";
        case FileType::kSocket:
            return "socket";
        case FileType::kCharDevice:
            return "char";
        case FileType::kBlockDevice:
            return "block";
    }
    return "unknown";
}

std::optional<FileType> file_type_from_string(const std::string& name) {
    for (auto type : {FileType::kRegular, FileType::kDirectory, FileType::kSymlink, FileType::kFifo,
                      FileType::kSocket, FileType::kCharDevice, FileType::kBlockDevice}) {
        if (name == to_string(type)) {
            return type;
        }
    }
    return std::nullopt;
}

json::object parse_object(std::string_view payload) {
    json::parse_options options;
    options.max_depth = 16;
    // Guest file names and paths are bytes, not always UTF-8. They pass through as they are;
    // whoever shows them to a client encodes them (the sandbox API sends `name_b64`).
    options.allow_invalid_utf8 = true;
    boost::system::error_code ec;
    json::value value = json::parse(payload, ec, {}, options);
    if (ec) {
        throw MessageError("invalid JSON: " + ec.message());
    }
    if (!value.is_object()) {
        throw MessageError("invalid message: expected a JSON object");
    }
    return std::move(value.as_object());
}

std::string serialize(const json::object& object) {
    return json::serialize(object);
}

FieldReader::FieldReader(const json::value& value, std::string what) : what_(std::move(what)) {
    object_ = value.if_object();
    if (object_ == nullptr) {
        throw MessageError(what_ + ": expected a JSON object");
    }
}

FieldReader::FieldReader(const json::object& object, std::string what)
    : object_(&object), what_(std::move(what)) {}

const json::value* FieldReader::find(std::string_view key) const {
    const json::value* value = object_->if_contains(key);
    if (value == nullptr || value->is_null()) {
        return nullptr;
    }
    return value;
}

void FieldReader::fail(std::string_view key, std::string_view problem) const {
    throw MessageError(what_ + ": field '" + std::string(key) + "': " + std::string(problem));
}

bool FieldReader::has(std::string_view key) const {
    return find(key) != nullptr;
}

std::string FieldReader::string(std::string_view key, std::string fallback) const {
    const json::value* value = find(key);
    if (value == nullptr) {
        return fallback;
    }
    if (!value->is_string()) {
        fail(key, "expected a string");
    }
    return std::string(value->get_string());
}

std::string FieldReader::required_string(std::string_view key) const {
    if (!has(key)) {
        fail(key, "missing");
    }
    return string(key);
}

std::optional<std::int64_t> FieldReader::optional_integer(std::string_view key) const {
    const json::value* value = find(key);
    if (value == nullptr) {
        return std::nullopt;
    }
    if (value->is_int64()) {
        return value->get_int64();
    }
    if (value->is_uint64() && value->get_uint64() <= INT64_MAX) {
        return static_cast<std::int64_t>(value->get_uint64());
    }
    fail(key, "expected an integer");
}

std::int64_t FieldReader::integer(std::string_view key, std::int64_t fallback) const {
    return optional_integer(key).value_or(fallback);
}

bool FieldReader::boolean(std::string_view key, bool fallback) const {
    const json::value* value = find(key);
    if (value == nullptr) {
        return fallback;
    }
    if (!value->is_bool()) {
        fail(key, "expected true or false");
    }
    return value->get_bool();
}

double FieldReader::number(std::string_view key, double fallback) const {
    const json::value* value = find(key);
    if (value == nullptr) {
        return fallback;
    }
    if (!value->is_number()) {
        fail(key, "expected a number");
    }
    return value->to_number<double>();
}

std::vector<std::string> FieldReader::strings(std::string_view key) const {
    std::vector<std::string> out;
    const json::value* value = find(key);
    if (value == nullptr) {
        return out;
    }
    const json::array* items = value->if_array();
    if (items == nullptr) {
        fail(key, "expected an array of strings");
    }
    out.reserve(items->size());
    for (const json::value& item : *items) {
        if (!item.is_string()) {
            fail(key, "expected an array of strings");
        }
        out.emplace_back(item.get_string());
    }
    return out;
}

const json::object* FieldReader::object(std::string_view key) const {
    const json::value* value = find(key);
    if (value == nullptr) {
        return nullptr;
    }
    if (!value->is_object()) {
        fail(key, "expected an object");
    }
    return &value->get_object();
}

const json::array* FieldReader::array(std::string_view key) const {
    const json::value* value = find(key);
    if (value == nullptr) {
        return nullptr;
    }
    if (!value->is_array()) {
        fail(key, "expected an array");
    }
    return &value->get_array();
}

json::object ok_reply(json::object fields) {
    fields["ok"] = true;
    return fields;
}

json::object error_reply(const ErrorInfo& error) {
    return json::object{{"ok", false},
                        {"error", json::object{{"code", error.code}, {"message", error.message}}}};
}

std::optional<ErrorInfo> reply_error(const json::object& reply) {
    FieldReader reader(reply, "reply");
    if (reader.boolean("ok", false)) {
        return std::nullopt;
    }
    const json::object* error = reader.object("error");
    if (error == nullptr) {
        return ErrorInfo{"EPROTO", "reply without \"ok\" or \"error\""};
    }
    FieldReader fields(*error, "reply error");
    return ErrorInfo{fields.string("code", "EIO"), fields.string("message", "unknown error")};
}

std::string errno_name(int err) {
    if (const char* name = strerrorname_np(err)) {
        return name;
    }
    return "E" + std::to_string(err);
}

void tag_invoke(json::value_from_tag, json::value& out, const Hello& hello) {
    json::object o{{"nonce", hello.nonce},
                   {"protocol_version", hello.protocol_version},
                   {"client", hello.client}};
    if (hello.set_time_unix_ns != 0) {
        o["set_time_unix_ns"] = hello.set_time_unix_ns;
    }
    if (!hello.add_entropy_hex.empty()) {
        o["add_entropy_hex"] = hello.add_entropy_hex;
    }
    out = std::move(o);
}

Hello tag_invoke(json::value_to_tag<Hello>, const json::value& in) {
    FieldReader reader(in, "hello");
    return Hello{reader.required_string("nonce"),
                 static_cast<int>(reader.integer("protocol_version")), reader.string("client"),
                 reader.integer("set_time_unix_ns"), reader.string("add_entropy_hex")};
}

void tag_invoke(json::value_from_tag, json::value& out, const HelloAck& ack) {
    out = json::object{{"nonce", ack.nonce},
                       {"protocol_version", ack.protocol_version},
                       {"agent_version", ack.agent_version},
                       {"boot_id", ack.boot_id},
                       {"uptime_ms", ack.uptime.count()},
                       {"pid", ack.pid},
                       {"restored", ack.restored},
                       {"restore_error", ack.restore_error}};
}

HelloAck tag_invoke(json::value_to_tag<HelloAck>, const json::value& in) {
    FieldReader reader(in, "hello_ack");
    HelloAck ack;
    ack.nonce = reader.required_string("nonce");
    ack.protocol_version = static_cast<int>(reader.integer("protocol_version"));
    ack.agent_version = reader.string("agent_version");
    ack.boot_id = reader.string("boot_id");
    ack.uptime = milliseconds(reader.integer("uptime_ms"));
    ack.pid = static_cast<int>(reader.integer("pid"));
    ack.restored = reader.boolean("restored");
    ack.restore_error = reader.string("restore_error");
    return ack;
}

void tag_invoke(json::value_from_tag, json::value& out, const TerminalSize& size) {
    out = json::object{{"rows", size.rows}, {"cols", size.cols}};
}

TerminalSize tag_invoke(json::value_to_tag<TerminalSize>, const json::value& in) {
    FieldReader reader(in, "terminal size");
    auto dimension = [&](std::string_view key, std::int64_t fallback) {
        std::int64_t value = reader.integer(key, fallback);
        if (value < 1 || value > 65535) {
            reader.fail(key, "must be between 1 and 65535");
        }
        return static_cast<std::uint16_t>(value);
    };
    return TerminalSize{dimension("rows", 24), dimension("cols", 80)};
}

void tag_invoke(json::value_from_tag, json::value& out, const ExecSpec& spec) {
    json::object object;
    if (!spec.argv.empty()) {
        object["argv"] = json::value_from(spec.argv);
    }
    if (!spec.shell.empty()) {
        object["shell"] = spec.shell;
    }
    if (!spec.env.empty()) {
        json::object env;
        for (const auto& [key, value] : spec.env) {
            env[key] = value;
        }
        object["env"] = std::move(env);
    }
    if (!spec.cwd.empty()) {
        object["cwd"] = spec.cwd;
    }
    if (!spec.user.empty()) {
        object["user"] = spec.user;
    }
    object["stdin"] = spec.pipe_stdin;
    if (spec.timeout) {
        object["timeout_ms"] = spec.timeout->count();
    }
    object["kill_grace_ms"] = spec.kill_grace.count();
    if (spec.pty) {
        object["pty"] = json::value_from(*spec.pty);
    }
    object["background"] = spec.background;
    out = std::move(object);
}

ExecSpec tag_invoke(json::value_to_tag<ExecSpec>, const json::value& in) {
    FieldReader reader(in, "exec request");
    ExecSpec spec;
    spec.argv = reader.strings("argv");
    spec.shell = reader.string("shell");
    if (spec.argv.empty() == spec.shell.empty()) {
        throw MessageError("exec request: exactly one of 'argv' (non-empty) and 'shell' is needed");
    }
    if (const json::object* env = reader.object("env")) {
        for (const auto& item : *env) {
            if (!item.value().is_string()) {
                reader.fail("env", "values must be strings");
            }
            spec.env.emplace(item.key(), item.value().get_string());
        }
    }
    spec.cwd = reader.string("cwd");
    // A numeric uid may come as a number or as a string.
    if (const json::value* user = in.as_object().if_contains("user"); user && user->is_number()) {
        spec.user = std::to_string(reader.integer("user"));
    } else {
        spec.user = reader.string("user");
    }
    spec.pipe_stdin = reader.boolean("stdin");
    if (auto timeout = reader.optional_integer("timeout_ms"); timeout && *timeout > 0) {
        spec.timeout = milliseconds(*timeout);
    }
    spec.kill_grace =
        milliseconds(std::max<std::int64_t>(0, reader.integer("kill_grace_ms", 2000)));
    if (reader.has("pty")) {
        spec.pty = json::value_to<TerminalSize>(in.as_object().at("pty"));
    }
    spec.background = reader.boolean("background");
    return spec;
}

void tag_invoke(json::value_from_tag, json::value& out, const ExitStatus& status) {
    out = json::object{{"exit_code", optional_int(status.exit_code)},
                       {"signal", optional_int(status.signal)},
                       {"timed_out", status.timed_out},
                       {"duration_ms", status.duration.count()}};
}

ExitStatus tag_invoke(json::value_to_tag<ExitStatus>, const json::value& in) {
    FieldReader reader(in, "exit status");
    ExitStatus status;
    status.exit_code = read_optional_int(reader, "exit_code");
    status.signal = read_optional_int(reader, "signal");
    status.timed_out = reader.boolean("timed_out");
    status.duration = milliseconds(reader.integer("duration_ms"));
    return status;
}

void tag_invoke(json::value_from_tag, json::value& out, const ProcessInfo& info) {
    json::object object{{"process_id", info.id},
                        {"pid", info.pid},
                        {"argv", json::value_from(info.argv)},
                        {"background", info.background},
                        {"running", info.running},
                        {"started_at_ms", to_unix_ms(info.started_at)},
                        {"dropped_stdout", info.dropped_stdout},
                        {"dropped_stderr", info.dropped_stderr}};
    if (info.exit) {
        object["exit"] = json::value_from(*info.exit);
    } else {
        object["exit"] = nullptr;
    }
    out = std::move(object);
}

ProcessInfo tag_invoke(json::value_to_tag<ProcessInfo>, const json::value& in) {
    FieldReader reader(in, "process");
    ProcessInfo info;
    info.id = reader.required_string("process_id");
    info.pid = static_cast<int>(reader.integer("pid"));
    info.argv = reader.strings("argv");
    info.background = reader.boolean("background");
    info.running = reader.boolean("running");
    info.started_at = from_unix_ms(reader.integer("started_at_ms"));
    info.dropped_stdout = static_cast<std::uint64_t>(reader.integer("dropped_stdout"));
    info.dropped_stderr = static_cast<std::uint64_t>(reader.integer("dropped_stderr"));
    if (reader.has("exit")) {
        info.exit = json::value_to<ExitStatus>(in.as_object().at("exit"));
    }
    return info;
}

void tag_invoke(json::value_from_tag, json::value& out, const HealthInfo& info) {
    out = json::object{{"agent_version", info.agent_version},
                       {"protocol_version", info.protocol_version},
                       {"boot_id", info.boot_id},
                       {"uptime_ms", info.uptime.count()},
                       {"load", json::array{info.load[0], info.load[1], info.load[2]}},
                       {"running_processes", info.running_processes},
                       {"pid1", info.pid1}};
}

HealthInfo tag_invoke(json::value_to_tag<HealthInfo>, const json::value& in) {
    FieldReader reader(in, "health");
    HealthInfo info;
    info.agent_version = reader.string("agent_version");
    info.protocol_version = static_cast<int>(reader.integer("protocol_version"));
    info.boot_id = reader.string("boot_id");
    info.uptime = milliseconds(reader.integer("uptime_ms"));
    if (const json::array* load = reader.array("load")) {
        for (std::size_t i = 0; i < info.load.size() && i < load->size(); ++i) {
            if (!(*load)[i].is_number()) {
                reader.fail("load", "expected numbers");
            }
            info.load[i] = (*load)[i].to_number<double>();
        }
    }
    info.running_processes = static_cast<int>(reader.integer("running_processes"));
    info.pid1 = reader.boolean("pid1");
    return info;
}

void tag_invoke(json::value_from_tag, json::value& out, const FileStat& stat) {
    json::object object{
        {"path", stat.path}, {"type", to_string(stat.type)},       {"size", stat.size},
        {"mode", stat.mode}, {"mtime_ms", to_unix_ms(stat.mtime)}, {"uid", stat.uid},
        {"gid", stat.gid}};
    if (stat.type == FileType::kSymlink) {
        object["link_target"] = stat.link_target;
    }
    out = std::move(object);
}

namespace {

FileType read_file_type(const FieldReader& reader) {
    std::string name = reader.required_string("type");
    auto type = file_type_from_string(name);
    if (!type) {
        reader.fail("type", "unknown file type '" + name + "'");
    }
    return *type;
}

}  // namespace

FileStat tag_invoke(json::value_to_tag<FileStat>, const json::value& in) {
    FieldReader reader(in, "stat");
    FileStat stat;
    stat.path = reader.string("path");
    stat.type = read_file_type(reader);
    stat.size = static_cast<std::uint64_t>(reader.integer("size"));
    stat.mode = static_cast<std::uint32_t>(reader.integer("mode"));
    stat.mtime = from_unix_ms(reader.integer("mtime_ms"));
    stat.uid = static_cast<std::uint32_t>(reader.integer("uid"));
    stat.gid = static_cast<std::uint32_t>(reader.integer("gid"));
    stat.link_target = reader.string("link_target");
    return stat;
}

void tag_invoke(json::value_from_tag, json::value& out, const DirEntry& entry) {
    out = json::object{
        {"path", entry.path}, {"name", entry.name}, {"type", to_string(entry.type)},
        {"size", entry.size}, {"mode", entry.mode}, {"mtime_ms", to_unix_ms(entry.mtime)}};
}

DirEntry tag_invoke(json::value_to_tag<DirEntry>, const json::value& in) {
    FieldReader reader(in, "directory entry");
    DirEntry entry;
    entry.path = reader.required_string("path");
    entry.name = reader.string("name");
    entry.type = read_file_type(reader);
    entry.size = static_cast<std::uint64_t>(reader.integer("size"));
    entry.mode = static_cast<std::uint32_t>(reader.integer("mode"));
    entry.mtime = from_unix_ms(reader.integer("mtime_ms"));
    return entry;
}

void tag_invoke(json::value_from_tag, json::value& out, const WriteOptions& options) {
    out = json::object{
        {"mode", options.mode}, {"append", options.append}, {"make_parents", options.make_parents}};
}

WriteOptions tag_invoke(json::value_to_tag<WriteOptions>, const json::value& in) {
    FieldReader reader(in, "write options");
    WriteOptions options;
    options.mode = static_cast<std::uint32_t>(reader.integer("mode", 0644) & 07777);
    options.append = reader.boolean("append");
    options.make_parents = reader.boolean("make_parents");
    return options;
}

}  // namespace holt::agent_protocol
