#pragma once

// Maps a method and a path to a handler. Patterns are literal segments and parameters:
//   router.add("GET", "/v1/sandboxes/{id}/files", handler);
// A parameter matches one non-empty path segment; its percent-decoded value is
// exchange.param("id"). A path no route matches answers 404 not_found; a path that matches with
// another method answers 405 method_not_allowed.

#include <functional>
#include <string>
#include <vector>

#include "holt/http/exchange.hpp"

namespace holt::http {

using Handler = std::function<void(Exchange&)>;

class Router {
  public:
    void add(std::string method, const std::string& pattern, Handler handler);
    // Finds the route of `exchange` and runs it; throws HttpError when there is none.
    void dispatch(Exchange& exchange) const;

  private:
    struct Route {
        std::string method;
        std::vector<std::string> segments;  // "{name}" for a parameter
        Handler handler;
    };
    std::vector<Route> routes_;
};

}  // namespace holt::http
