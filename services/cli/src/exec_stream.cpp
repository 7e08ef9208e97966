#include "exec_stream.hpp"

#include <boost/beast/core/detail/base64.hpp>
#include <boost/json.hpp>

#include "holt/common/error.hpp"
#include "holt/http_client/api_client.hpp"

namespace holt::cli {

namespace json = boost::json;

namespace {

std::string decode_base64(std::string_view text) {
    namespace base64 = boost::beast::detail::base64;
    std::string out(base64::decoded_size(text.size()), '\0');
    auto [written, read] = base64::decode(out.data(), text.data(), text.size());
    // The decoder stops at the first character that is not base64; only padding may follow.
    if (text.find_first_not_of('=', read) != std::string_view::npos) {
        throw Error("data_b64 is not base64");
    }
    out.resize(written);
    return out;
}

template <typename T>
std::optional<T> optional_number(const json::object& o, std::string_view key) {
    const json::value* v = o.if_contains(key);
    if (v == nullptr || v->is_null()) {
        return std::nullopt;
    }
    if (!v->is_number()) {
        throw Error(std::string(key) + " is not a number");
    }
    return v->to_number<T>();
}

std::string string_field(const json::object& o, std::string_view key) {
    const json::value* v = o.if_contains(key);
    return v != nullptr && v->is_string() ? std::string(v->as_string()) : std::string();
}

}  // namespace

ExecEvent parse_exec_event(std::string_view line) {
    return with_context("exec event " + std::string(line.substr(0, 200)), [&] {
        boost::system::error_code ec;
        json::value v = json::parse(line, ec);
        if (ec) {
            throw Error("not JSON: " + ec.message());
        }
        if (!v.is_object() || !v.as_object().if_contains("type") || !v.at("type").is_string()) {
            throw Error("not an object with a string \"type\"");
        }
        const json::object& o = v.as_object();
        ExecEvent event;
        event.type = o.at("type").as_string();
        if (const auto* data = o.if_contains("data"); data && data->is_string()) {
            event.data = data->as_string();
        } else if (const auto* b64 = o.if_contains("data_b64"); b64 && b64->is_string()) {
            event.data = decode_base64(b64->as_string());
        }
        event.pid = optional_number<long long>(o, "pid");
        event.exit_code = optional_number<int>(o, "exit_code");
        event.signal = optional_number<int>(o, "signal");
        if (const auto* t = o.if_contains("timed_out"); t && t->is_bool()) {
            event.timed_out = t->as_bool();
        }
        event.duration_ms = optional_number<double>(o, "duration_ms").value_or(0);
        event.code = string_field(o, "code");
        event.message = string_field(o, "message");
        return event;
    });
}

int exit_status_of(const ExecEvent& exit) {
    if (exit.timed_out) {
        return kTimedOutExit;
    }
    if (exit.exit_code) {
        return *exit.exit_code;
    }
    return 128 + exit.signal.value_or(0);
}

ExecStream::ExecStream(Sink on_stdout, Sink on_stderr)
    : on_stdout_(std::move(on_stdout)), on_stderr_(std::move(on_stderr)) {}

void ExecStream::on_line(std::string_view line) {
    ExecEvent event = parse_exec_event(line);
    if (event.type == "stdout") {
        on_stdout_(event.data);
    } else if (event.type == "stderr") {
        on_stderr_(event.data);
    } else if (event.type == "start") {
        pid_ = event.pid;
    } else if (event.type == "exit") {
        exit_ = std::move(event);
    } else if (event.type == "error") {
        throw http_client::ApiError(0, event.code.empty() ? "internal" : event.code, event.message);
    }
    // Other event types are skipped: a newer service may send more.
}

const ExecEvent& ExecStream::exit() const {
    if (!exit_) {
        throw Error("the exec stream ended before the command's exit event");
    }
    return *exit_;
}

}  // namespace holt::cli
