#include "table.hpp"

#include <algorithm>
#include <boost/json.hpp>

namespace holt::cli {

namespace json = boost::json;

namespace {

std::size_t display_width(std::string_view s) {
    // Counts UTF-8 lead bytes: every byte that is not a continuation byte (10xxxxxx).
    return static_cast<std::size_t>(std::count_if(
        s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

std::string state_text(const json::value& sandbox) {
    std::string state = field_text(sandbox, "state");
    std::string reason = field_text(sandbox, "end_reason");
    if (reason != "-" && reason != state) {
        state += " (" + reason + ")";
    }
    return state;
}

}  // namespace

Table::Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}

void Table::add_row(std::vector<std::string> cells) {
    cells.resize(headers_.size());
    rows_.push_back(std::move(cells));
}

std::string Table::render() const {
    std::vector<std::size_t> widths(headers_.size());
    auto measure = [&](const std::vector<std::string>& row) {
        for (std::size_t i = 0; i < row.size(); ++i) {
            widths[i] = std::max(widths[i], display_width(row[i]));
        }
    };
    measure(headers_);
    for (const auto& row : rows_) {
        measure(row);
    }
    std::string out;
    auto print = [&](const std::vector<std::string>& row) {
        std::string line;
        for (std::size_t i = 0; i < row.size(); ++i) {
            line += row[i];
            if (i + 1 < row.size()) {
                line.append(widths[i] - display_width(row[i]) + 2, ' ');
            }
        }
        while (!line.empty() && line.back() == ' ') {
            line.pop_back();
        }
        out += line + "\n";
    };
    print(headers_);
    for (const auto& row : rows_) {
        print(row);
    }
    return out;
}

std::string render_details(const std::vector<std::pair<std::string, std::string>>& fields) {
    std::size_t width = 0;
    for (const auto& [key, value] : fields) {
        width = std::max(width, display_width(key));
    }
    std::string out;
    for (const auto& [key, value] : fields) {
        out += key + ":" + std::string(width - display_width(key) + 2, ' ') + value + "\n";
    }
    return out;
}

std::string field_text(const json::value& object, std::string_view key) {
    const json::value* v = object.is_object() ? object.as_object().if_contains(key) : nullptr;
    if (v == nullptr || v->is_null()) {
        return "-";
    }
    if (v->is_string()) {
        return std::string(v->as_string());
    }
    if (v->is_bool()) {
        return v->as_bool() ? "yes" : "no";
    }
    if (v->is_object()) {
        std::string out;
        for (const auto& [k, item] : v->as_object()) {
            if (!out.empty()) {
                out += ",";
            }
            out += std::string(k) + "=" +
                   (item.is_string() ? std::string(item.as_string()) : json::serialize(item));
        }
        return out.empty() ? "-" : out;
    }
    if (v->is_array()) {
        std::string out;
        for (const auto& item : v->as_array()) {
            if (!out.empty()) {
                out += " ";
            }
            out += item.is_string() ? std::string(item.as_string()) : json::serialize(item);
        }
        return out.empty() ? "-" : out;
    }
    return json::serialize(*v);
}

std::string render_sandboxes(const json::array& sandboxes) {
    Table table({"ID", "TEMPLATE", "STATE", "VCPUS", "MEMORY", "CREATED", "EXPIRES", "METADATA"});
    for (const auto& s : sandboxes) {
        std::string memory = field_text(s, "memory_mib");
        table.add_row({field_text(s, "id"), field_text(s, "template"), state_text(s),
                       field_text(s, "vcpus"), memory == "-" ? memory : memory + " MiB",
                       field_text(s, "created_at"), field_text(s, "expires_at"),
                       field_text(s, "metadata")});
    }
    return table.render();
}

std::string render_sandbox_details(const json::value& s) {
    std::vector<std::pair<std::string, std::string>> fields = {
        {"id", field_text(s, "id")},
        {"template", field_text(s, "template")},
        {"state", state_text(s)},
        {"vcpus", field_text(s, "vcpus")},
        {"memory", field_text(s, "memory_mib") + " MiB"},
        {"created", field_text(s, "created_at")},
        {"ttl", field_text(s, "ttl_seconds") == "-" ? "none" : field_text(s, "ttl_seconds") + "s"},
        {"expires", field_text(s, "expires_at")},
        {"on expire", field_text(s, "on_expire")},
        {"metadata", field_text(s, "metadata")},
    };
    const json::value* network = s.is_object() ? s.as_object().if_contains("network") : nullptr;
    fields.emplace_back("network",
                        network == nullptr || network->is_null()
                            ? "none"
                            : "egress to " + (field_text(*network, "allow_egress") == "-"
                                                  ? std::string("nothing")
                                                  : field_text(*network, "allow_egress")));
    for (const auto& [key, label] : {std::pair{"parent_id", "parent"},
                                     {"snapshot_id", "snapshot"},
                                     {"ended_at", "ended"},
                                     {"end_reason", "end reason"}}) {
        if (field_text(s, key) != "-") {
            fields.emplace_back(label, field_text(s, key));
        }
    }
    return render_details(fields);
}

std::string render_snapshots(const json::array& snapshots) {
    Table table({"ID", "NAME", "SANDBOX", "TEMPLATE", "VCPUS", "MEMORY", "CREATED"});
    for (const auto& s : snapshots) {
        std::string memory = field_text(s, "memory_mib");
        table.add_row({field_text(s, "id"), field_text(s, "name"), field_text(s, "sandbox_id"),
                       field_text(s, "template"), field_text(s, "vcpus"),
                       memory == "-" ? memory : memory + " MiB", field_text(s, "created_at")});
    }
    return table.render();
}

std::string render_keys(const json::array& keys) {
    Table table({"ID", "NAME", "PREFIX", "CREATED", "REVOKED"});
    for (const auto& k : keys) {
        table.add_row({field_text(k, "id"), field_text(k, "name"), field_text(k, "prefix"),
                       field_text(k, "created_at"), field_text(k, "revoked_at")});
    }
    return table.render();
}

std::string render_processes(const json::array& processes) {
    Table table({"PID", "STATE", "EXIT", "COMMAND"});
    for (const auto& p : processes) {
        bool running = p.is_object() && p.as_object().if_contains("running") &&
                       p.at("running").is_bool() && p.at("running").as_bool();
        std::string exit = field_text(p, "exit_code");
        if (exit == "-" && field_text(p, "signal") != "-") {
            exit = "signal " + field_text(p, "signal");
        }
        table.add_row({field_text(p, "pid"), running ? "running" : "exited", running ? "-" : exit,
                       field_text(p, "argv")});
    }
    return table.render();
}

std::string render_templates(const json::array& templates) {
    Table table({"NAME", "BUILT"});
    for (const auto& t : templates) {
        table.add_row({field_text(t, "name"), field_text(t, "built")});
    }
    return table.render();
}

}  // namespace holt::cli
