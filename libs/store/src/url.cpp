#include "holt/store/url.hpp"

#include <libpq-fe.h>

#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>
#include <memory>

namespace holt::store {
namespace {

constexpr const char* kHidden = "***";

bool is_uri(const std::string& url) {
    return url.starts_with("postgresql://") || url.starts_with("postgres://");
}

std::string redact_uri(const std::string& text) {
    auto parsed = boost::urls::parse_uri_reference(text);
    if (!parsed) {
        return "<unparsable connection URI>";
    }
    boost::urls::url url = *parsed;
    if (url.has_password()) {
        url.set_password(kHidden);
    }
    for (auto param : url.params()) {
        if (param.key == "password") {
            url.params().set("password", kHidden);
            break;
        }
    }
    return std::string(url.buffer());
}

// "key=value ..." connection strings: libpq parses them; everything but the password is kept.
std::string redact_keywords(const std::string& text) {
    char* error = nullptr;
    std::unique_ptr<PQconninfoOption, decltype(&PQconninfoFree)> options(
        PQconninfoParse(text.c_str(), &error), &PQconninfoFree);
    if (!options) {
        PQfreemem(error);
        return "<unparsable connection string>";
    }
    std::string out;
    for (auto* option = options.get(); option->keyword; ++option) {
        if (!option->val) {
            continue;
        }
        std::string value = std::string(option->keyword) == "password" ? kHidden : option->val;
        if (!out.empty()) {
            out += ' ';
        }
        out += std::string(option->keyword) + "=" + value;
    }
    return out;
}

}  // namespace

std::string redact_url(const std::string& url) {
    return is_uri(url) ? redact_uri(url) : redact_keywords(url);
}

}  // namespace holt::store

namespace holt::store {

std::string socket_url(const std::string& dbname, const std::string& socket_dir, int port,
                       const std::string& user) {
    boost::urls::url url;
    url.set_scheme("postgresql");
    url.set_encoded_host("");
    url.set_path("/" + dbname);
    url.params().append({"host", socket_dir});
    url.params().append({"port", std::to_string(port)});
    url.params().append({"user", user});
    return std::string(url.buffer());
}

}  // namespace holt::store
