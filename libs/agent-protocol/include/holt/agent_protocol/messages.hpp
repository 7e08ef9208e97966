#pragma once

// JSON payloads of the agent protocol's control frames: conversions of the types in types.hpp
// (through Boost.JSON's value_from / value_to), the hello handshake and the reply envelope.
// docs/agent-protocol.md lists every field of every message.
//
// Boost.JSON's implementation is not linked by this library: a host program links Boost::json,
// the static agent compiles boost/json/src.hpp into one of its files.

#include <boost/json/value.hpp>
#include <boost/json/value_from.hpp>
#include <boost/json/value_to.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "holt/agent_protocol/frame.hpp"
#include "holt/agent_protocol/types.hpp"

namespace holt::agent_protocol {

namespace json = boost::json;

// A control payload that is not valid JSON, or lacks a field, or has a field of the wrong type.
// The message names the field: "exec request: field 'argv': expected an array of strings".
class MessageError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// Parses a control payload into a JSON object (depth limited). Throws MessageError.
json::object parse_object(std::string_view payload);
std::string serialize(const json::object& object);

// Reads the fields of one JSON object with defaults, throwing MessageError that names `what` and
// the field when a value has the wrong type.
class FieldReader {
  public:
    FieldReader(const json::value& value, std::string what);
    FieldReader(const json::object& object, std::string what);

    bool has(std::string_view key) const;
    std::string string(std::string_view key, std::string fallback = {}) const;
    std::string required_string(std::string_view key) const;
    std::int64_t integer(std::string_view key, std::int64_t fallback = 0) const;
    std::optional<std::int64_t> optional_integer(std::string_view key) const;
    bool boolean(std::string_view key, bool fallback = false) const;
    double number(std::string_view key, double fallback = 0) const;
    std::vector<std::string> strings(std::string_view key) const;
    // The object under `key`, or nullptr when absent or null.
    const json::object* object(std::string_view key) const;
    const json::array* array(std::string_view key) const;

    [[noreturn]] void fail(std::string_view key, std::string_view problem) const;

  private:
    const json::value* find(std::string_view key) const;

    const json::object* object_;
    std::string what_;
};

// Opens a session (host -> agent, stream 0).
struct Hello {
    std::string nonce;
    int protocol_version = kProtocolVersion;
    std::string client;
    // Sent by a host that has just restored the VM from a snapshot: before it answers, the agent
    // sets the wall clock to this time and mixes these bytes into the kernel's RNG, so nothing
    // runs with the snapshot's clock and RNG state. 0 and empty: leave both alone.
    std::int64_t set_time_unix_ns = 0;
    std::string add_entropy_hex;
};

// Answers a hello (agent -> host, stream 0).
struct HelloAck {
    std::string nonce;
    int protocol_version = 0;
    std::string agent_version;
    std::string boot_id;
    std::chrono::milliseconds uptime{0};
    int pid = 0;
    // The hello's clock and entropy were applied; restore_error says why not, when they were not.
    bool restored = false;
    std::string restore_error;
};

// The failure a reply reports. `code` is an errno name ("ENOENT") or "EPROTO" for requests the
// agent could not understand; `message` names the operation and the object ("read /nope: No such
// file or directory").
struct ErrorInfo {
    std::string code;
    std::string message;
};

// Reply envelopes: {"ok": true, ...fields} and {"ok": false, "error": {"code", "message"}}.
json::object ok_reply(json::object fields = {});
json::object error_reply(const ErrorInfo& error);
// The error of a reply, or nullopt for a successful one.
std::optional<ErrorInfo> reply_error(const json::object& reply);

// The symbolic name of an errno value ("ENOENT"); "E<number>" for unknown ones.
std::string errno_name(int err);

// Conversions for json::value_from / json::value_to.
void tag_invoke(json::value_from_tag, json::value& out, const Hello& hello);
Hello tag_invoke(json::value_to_tag<Hello>, const json::value& in);
void tag_invoke(json::value_from_tag, json::value& out, const HelloAck& ack);
HelloAck tag_invoke(json::value_to_tag<HelloAck>, const json::value& in);
void tag_invoke(json::value_from_tag, json::value& out, const TerminalSize& size);
TerminalSize tag_invoke(json::value_to_tag<TerminalSize>, const json::value& in);
void tag_invoke(json::value_from_tag, json::value& out, const ExecSpec& spec);
ExecSpec tag_invoke(json::value_to_tag<ExecSpec>, const json::value& in);
void tag_invoke(json::value_from_tag, json::value& out, const ExitStatus& status);
ExitStatus tag_invoke(json::value_to_tag<ExitStatus>, const json::value& in);
void tag_invoke(json::value_from_tag, json::value& out, const ProcessInfo& info);
ProcessInfo tag_invoke(json::value_to_tag<ProcessInfo>, const json::value& in);
void tag_invoke(json::value_from_tag, json::value& out, const HealthInfo& info);
HealthInfo tag_invoke(json::value_to_tag<HealthInfo>, const json::value& in);
void tag_invoke(json::value_from_tag, json::value& out, const FileStat& stat);
FileStat tag_invoke(json::value_to_tag<FileStat>, const json::value& in);
void tag_invoke(json::value_from_tag, json::value& out, const DirEntry& entry);
DirEntry tag_invoke(json::value_to_tag<DirEntry>, const json::value& in);
void tag_invoke(json::value_from_tag, json::value& out, const WriteOptions& options);
WriteOptions tag_invoke(json::value_to_tag<WriteOptions>, const json::value& in);

}  // namespace holt::agent_protocol
