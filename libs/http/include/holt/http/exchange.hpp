#pragma once

// One HTTP request and its response, as a handler sees them. The request's head has been read;
// the body is still on the socket and is read on demand, in bounded pieces, so a handler can
// stream an upload of any size to wherever it goes. The response is either sent whole
// (respond*) or streamed with chunked transfer encoding (begin_stream, write_chunk, end_stream).
//
// An Exchange lives on the connection's thread and is not thread-safe; write_chunk must be called
// from the handler's thread too.

#include <boost/json/value.hpp>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "holt/http/error.hpp"

namespace holt::http {

namespace detail {
class Connection;
}

class Exchange {
  public:
    explicit Exchange(detail::Connection& connection);
    Exchange(const Exchange&) = delete;
    Exchange& operator=(const Exchange&) = delete;

    // --- the request -----------------------------------------------------------------------
    // False when the request target is not a valid origin-form path; path() is then the raw target.
    bool valid_target() const { return valid_target_; }
    const std::string& method() const { return method_; }  // "GET"
    const std::string& target() const { return target_; }  // "/v1/x?a=b", as sent
    const std::string& path() const { return path_; }      // "/v1/x", percent-decoded
    // The first value of query parameter `name` (decoded), if present.
    std::optional<std::string> query(std::string_view name) const;
    const std::vector<std::pair<std::string, std::string>>& query_params() const { return query_; }
    // A path parameter the router matched ("{id}" in the route's pattern).
    const std::string& param(const std::string& name) const;
    std::map<std::string, std::string>& params() { return params_; }
    std::optional<std::string> header(std::string_view name) const;
    const std::string& remote() const { return remote_; }  // "127.0.0.1:53412"
    std::optional<std::uint64_t> content_length() const;

    // Reads up to `size` bytes of the body into `data`; 0 once the body has been read whole.
    // Throws HttpError(400) when the client sends a malformed body or goes away.
    std::size_t read_body_some(char* data, std::size_t size);
    // The whole body; HttpError(413 payload_too_large) if it is longer than `limit`.
    std::string read_body(std::size_t limit);
    // The body parsed as JSON (an empty body is an empty object); 413 beyond `limit`, 400 when it
    // is not JSON.
    boost::json::value read_json(std::size_t limit);
    bool body_complete() const;

    // --- the response ----------------------------------------------------------------------
    void set_header(std::string name, std::string value);
    void respond(int status, std::string_view content_type, std::string body);
    void respond_json(int status, const boost::json::value& body);
    void respond_empty(int status);
    void respond_error(const HttpError& error);

    // A streamed answer with chunked transfer encoding.
    void begin_stream(int status, std::string_view content_type);
    // Sends one chunk. False once the client has gone (later calls do nothing and return false).
    bool write_chunk(std::string_view data);
    void end_stream();

    bool responded() const { return responded_; }
    bool streaming() const { return streaming_; }
    bool client_gone() const { return client_gone_; }

  private:
    detail::Connection& connection_;
    std::string method_;
    std::string target_;
    std::string path_;
    std::vector<std::pair<std::string, std::string>> query_;
    std::map<std::string, std::string> params_;
    std::vector<std::pair<std::string, std::string>> response_headers_;
    std::string remote_;
    bool valid_target_ = true;
    bool responded_ = false;
    bool streaming_ = false;
    bool client_gone_ = false;
};

}  // namespace holt::http
