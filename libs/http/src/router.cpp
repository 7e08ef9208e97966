#include "holt/http/router.hpp"

#include <boost/url/decode_view.hpp>
#include <boost/url/pct_string_view.hpp>

namespace holt::http {

namespace {

// "/a/b/" -> {"a", "b", ""}: the segments of a path, still percent-encoded.
std::vector<std::string_view> split_path(std::string_view path) {
    std::vector<std::string_view> segments;
    if (path.empty() || path.front() != '/') {
        return segments;
    }
    path.remove_prefix(1);
    for (;;) {
        auto slash = path.find('/');
        segments.push_back(path.substr(0, slash));
        if (slash == std::string_view::npos) {
            break;
        }
        path.remove_prefix(slash + 1);
    }
    return segments;
}

bool is_parameter(const std::string& segment) {
    return segment.size() > 2 && segment.front() == '{' && segment.back() == '}';
}

}  // namespace

void Router::add(std::string method, const std::string& pattern, Handler handler) {
    Route route{std::move(method), {}, std::move(handler)};
    for (auto segment : split_path(pattern)) {
        route.segments.emplace_back(segment);
    }
    routes_.push_back(std::move(route));
}

void Router::dispatch(Exchange& exchange) const {
    // Exchange::path() is decoded; match on the raw path so an encoded "/" stays in its segment.
    std::string_view raw = exchange.target();
    raw = raw.substr(0, raw.find('?'));
    auto segments = split_path(raw);
    bool path_matched = false;
    for (const auto& route : routes_) {
        if (route.segments.size() != segments.size()) {
            continue;
        }
        std::map<std::string, std::string> params;
        bool match = true;
        for (std::size_t i = 0; i < segments.size() && match; ++i) {
            const auto& expected = route.segments[i];
            if (is_parameter(expected)) {
                auto encoded = boost::urls::make_pct_string_view(
                    boost::core::string_view(segments[i].data(), segments[i].size()));
                if (!encoded || segments[i].empty()) {
                    match = false;
                    break;
                }
                std::string value;
                encoded->decode({}, boost::urls::string_token::assign_to(value));
                params[expected.substr(1, expected.size() - 2)] = std::move(value);
            } else {
                match = expected == segments[i];
            }
        }
        if (!match) {
            continue;
        }
        path_matched = true;
        if (route.method != exchange.method()) {
            continue;
        }
        exchange.params() = std::move(params);
        route.handler(exchange);
        return;
    }
    if (path_matched) {
        throw method_not_allowed("method " + exchange.method() + " is not allowed on " +
                                 exchange.path());
    }
    throw not_found("no such path: " + exchange.path());
}

}  // namespace holt::http
