#pragma once

#include <boost/beast/http/verb.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "holt/common/error.hpp"

namespace holt::http_client {

using Verb = boost::beast::http::verb;

// Query parameters in order; values are sent percent-encoded.
using Query = std::vector<std::pair<std::string, std::string>>;

// An error the API answered: `{"error": {"code", "message"}}` with its HTTP status. Bodies that
// are not such an object (a proxy's HTML page) give the code "http_<status>" and the body's text.
class ApiError : public Error {
  public:
    ApiError(int status, std::string code, std::string message);

    int status() const { return status_; }
    const std::string& code() const { return code_; }
    const std::string& message() const { return message_; }

    // The ApiError for an error answer's status and body.
    static ApiError from_response(int status, std::string_view body);

  private:
    int status_;
    std::string code_;
    std::string message_;
};

struct ClientOptions {
    // Base URL of the API, e.g. "http://127.0.0.1:7070" or "http://host/prefix".
    std::string api_url = "http://127.0.0.1:7070";
    // Sent as "Authorization: Bearer <key>" when not empty.
    std::string api_key;
    // How long one connect, read or write may block.
    std::chrono::milliseconds timeout = std::chrono::seconds(300);
    std::string user_agent = "holt-http-client/0.1";
};

// Fills `buffer` with up to `size` bytes of a request body and answers how many; 0 ends the body.
using BodySource = std::function<std::size_t(char* buffer, std::size_t size)>;
// Takes the next piece of a response body, as it arrives.
using BodySink = std::function<void(std::string_view chunk)>;

struct Request {
    Verb method = Verb::get;
    // Path under the API URL, starting with "/" ("/v1/sandboxes").
    std::string path;
    Query query;
    // Sent as application/json when set.
    std::optional<boost::json::value> json;
};

// A synchronous client of a Holt HTTP API (HTTP/1.1 over TCP, one connection per request).
// Every call throws ApiError for an error status and holt::Error when the service cannot be
// reached or the connection breaks, naming the request ("GET /v1/sandboxes: connect ...").
class ApiClient {
  public:
    explicit ApiClient(ClientOptions options);

    const ClientOptions& options() const { return options_; }

    // Sends a request and answers its JSON body (null for an empty body, e.g. 204).
    boost::json::value call(const Request& request);

    // Sends a request and passes the response body to `sink` piece by piece as it arrives.
    // `read_timeout` bounds each wait for more of the answer (nullopt: wait as long as it takes,
    // for streams that may be quiet for long). Answers the HTTP status.
    int stream(const Request& request, const BodySink& sink,
               std::optional<std::chrono::milliseconds> read_timeout);

    // Sends a request whose body comes from `source`, in pieces: with Content-Length when
    // `content_length` is given (the source must give exactly that many bytes), else with
    // chunked transfer encoding. Answers the response's JSON body.
    boost::json::value send_body(const Request& request, const BodySource& source,
                                 std::optional<std::uint64_t> content_length,
                                 std::string_view content_type = "application/octet-stream");

    // The request target: base path + path + encoded query ("/v1/sandboxes?state=running").
    std::string target(std::string_view path, const Query& query) const;

  private:
    ClientOptions options_;
    std::string host_;
    std::string port_;
    std::string base_path_;
};

}  // namespace holt::http_client
