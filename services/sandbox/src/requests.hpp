#pragma once

// Validation of request bodies and their conversion to what the manager and the agent take, and
// of records to the API's JSON. Every function throws http::HttpError (400 bad_request naming the
// field) on input that does not fit docs/api/sandbox.yaml.

#include <boost/json/value.hpp>
#include <string>

#include "holt/http/error.hpp"
#include "holt/vm/agent_client.hpp"
#include "sandbox_manager.hpp"

namespace holt::sandbox {

CreateSpec parse_create(const boost::json::value& body);

// What PATCH /v1/sandboxes/{id} changes; the whole body is checked before anything is.
struct UpdateSpec {
    bool set_ttl = false;
    std::optional<std::int64_t> ttl_seconds;  // with set_ttl: nullopt clears the TTL
    std::optional<std::string> on_expire;
    std::optional<StringMap> metadata;
};
UpdateSpec parse_update(const boost::json::value& body);

struct ExecParams {
    vm::ExecRequest request;
    bool stream = false;
    bool background = false;
};
ExecParams parse_exec(const boost::json::value& body);

// "TERM", "SIGTERM", "15" or 15 -> 15.
int parse_signal(const boost::json::value& value);

// A string field of `body` or `fallback`; 400 when present with another type.
std::string string_field(const boost::json::object& body, const char* name,
                         const std::string& fallback = "");

// A path in the guest: absolute, no NUL.
std::string guest_path(const std::optional<std::string>& path, const char* what = "path");

boost::json::value to_json(const SandboxRecord& record);
boost::json::value to_json(const SnapshotRecord& record);
boost::json::value to_json(const KeyRecord& record);
boost::json::value to_json(const vm::FileStat& stat);
boost::json::value to_json(const vm::DirEntry& entry, const std::string& dir);
boost::json::value to_json(const vm::ExitStatus& status);
// Adds `data` to `event` as "data" when it is UTF-8, as "data_b64" otherwise.
void add_output(boost::json::object& event, const char* key, std::string_view data);
bool is_utf8(std::string_view data);
// How many bytes at the start of `data` are well-formed UTF-8.
std::size_t utf8_valid_prefix(std::string_view data);
// `data` without the bytes of a last character that is cut short (its lead byte promises more
// continuation bytes than follow): output arrives in chunks that may split a character.
std::size_t utf8_complete_prefix(std::string_view data);

}  // namespace holt::sandbox
