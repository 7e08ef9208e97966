#pragma once

// Typed reads of the fields of a small JSON record file (snapshot.json, vm.json), with errors that
// name the field.

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <string>
#include <vector>

#include "holt/common/error.hpp"

namespace holt::vm {

class JsonFields {
  public:
    explicit JsonFields(const std::string& text) {
        boost::system::error_code ec;
        boost::json::value parsed = boost::json::parse(text, ec);
        if (ec || !parsed.is_object()) {
            throw Error("not a JSON object");
        }
        object_ = std::move(parsed.as_object());
    }

    std::string string(const char* key) const {
        const auto& v = field(key);
        if (!v.is_string()) {
            throw wrong(key, "a string");
        }
        return std::string(v.as_string());
    }
    int integer(const char* key) const {
        const auto& v = field(key);
        if (!v.is_int64()) {
            throw wrong(key, "a number");
        }
        return static_cast<int>(v.as_int64());
    }
    // An absent boolean is false (fields added to a format later).
    bool boolean(const char* key) const {
        const auto* v = object_.if_contains(key);
        return v && v->is_bool() && v->as_bool();
    }
    // An absent list is empty.
    std::vector<std::string> strings(const char* key) const {
        std::vector<std::string> out;
        const auto* v = object_.if_contains(key);
        if (!v) {
            return out;
        }
        if (!v->is_array()) {
            throw wrong(key, "a list");
        }
        for (const auto& item : v->as_array()) {
            if (!item.is_string()) {
                throw wrong(key, "a list of strings");
            }
            out.emplace_back(item.as_string());
        }
        return out;
    }

  private:
    const boost::json::value& field(const char* key) const {
        const auto* v = object_.if_contains(key);
        if (!v) {
            throw Error(std::string("field \"") + key + "\" is missing");
        }
        return *v;
    }
    static Error wrong(const char* key, const char* what) {
        return Error(std::string("field \"") + key + "\" is not " + what);
    }

    boost::json::object object_;
};

}  // namespace holt::vm
