#pragma once

// Errors a request handler answers with. A handler throws HttpError; the server turns it into
//   HTTP/1.1 <status>  {"error": {"code": "<code>", "message": "<message>"}}
// Codes are stable strings that clients switch on; messages say what failed and why.

#include <stdexcept>
#include <string>

namespace holt::http {

class HttpError : public std::runtime_error {
  public:
    HttpError(int status, std::string code, const std::string& message)
        : std::runtime_error(message), status_(status), code_(std::move(code)) {}

    int status() const { return status_; }
    const std::string& code() const { return code_; }

  private:
    int status_;
    std::string code_;
};

// The common ones.
inline HttpError bad_request(const std::string& message) {
    return HttpError(400, "bad_request", message);
}
inline HttpError unauthorized(const std::string& message) {
    return HttpError(401, "unauthorized", message);
}
inline HttpError not_found(const std::string& message) {
    return HttpError(404, "not_found", message);
}
inline HttpError method_not_allowed(const std::string& message) {
    return HttpError(405, "method_not_allowed", message);
}
inline HttpError conflict(const std::string& message) {
    return HttpError(409, "conflict", message);
}
inline HttpError payload_too_large(const std::string& message) {
    return HttpError(413, "payload_too_large", message);
}
inline HttpError internal_error(const std::string& message) {
    return HttpError(500, "internal", message);
}
inline HttpError unavailable(const std::string& message) {
    return HttpError(503, "unavailable", message);
}

// The JSON body of an error answer.
std::string error_body(const std::string& code, const std::string& message);

}  // namespace holt::http
