#include "runner.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <ostream>

#include "exec_stream.hpp"
#include "holt/common/unique_fd.hpp"
#include "holt/http_client/ndjson.hpp"
#include "table.hpp"

namespace holt::cli {

namespace fs = std::filesystem;
namespace json = boost::json;
using http_client::ApiClient;
using http_client::ApiError;
using http_client::Request;
using http_client::Verb;

namespace {

// The objects in an answer: the items of its list ("sandboxes", "snapshots", ...), or itself.
void collect(const json::value& answer, json::array& items) {
    if (!answer.is_object()) {
        return;
    }
    for (const char* list : {"sandboxes", "snapshots", "keys", "processes", "templates"}) {
        if (const auto* v = answer.as_object().if_contains(list); v && v->is_array()) {
            for (const auto& item : v->as_array()) {
                items.push_back(item);
            }
            return;
        }
    }
    items.push_back(answer);
}

std::string last_segment(const std::string& path) {
    return path.substr(path.rfind('/') + 1);
}

int run_calls(ApiClient& client, const Invocation& inv, std::ostream& out, std::ostream& err) {
    const Plan& plan = inv.plan;
    json::array items;
    for (const auto& request : plan.requests) {
        json::value answer = client.call(request);
        if (inv.global.json) {
            if (!answer.is_null()) {
                out << json::serialize(answer) << "\n";
            }
            continue;
        }
        if (plan.view == View::Id) {
            out << last_segment(request.path) << "\n";
        } else if (plan.view == View::Pid) {
            out << field_text(answer, "pid") << "\n";
        } else {
            collect(answer, items);
        }
    }
    if (inv.global.json) {
        return 0;
    }
    if (plan.quiet) {
        for (const auto& item : items) {
            bool secret = plan.view == View::Keys && field_text(item, "key") != "-";
            out << field_text(item, secret ? "key" : "id") << "\n";
        }
        return 0;
    }
    switch (plan.view) {
        case View::Sandboxes:
            out << render_sandboxes(items);
            break;
        case View::SandboxDetails:
            for (const auto& item : items) {
                out << render_sandbox_details(item);
            }
            break;
        case View::Snapshots:
            out << render_snapshots(items);
            break;
        case View::Keys:
            out << render_keys(items);
            for (const auto& item : items) {
                if (field_text(item, "key") != "-") {
                    out << "\nkey: " << field_text(item, "key") << "\n";
                    err << "holt: store this key now; it is not shown again\n";
                }
            }
            break;
        case View::Processes:
            out << render_processes(items);
            break;
        case View::Templates:
            out << render_templates(items);
            break;
        case View::None:
        case View::Pid:
        case View::Id:
            break;
    }
    return 0;
}

int run_exec(ApiClient& client, const Invocation& inv, std::ostream& out, std::ostream& err) {
    Request request = inv.plan.requests.at(0);
    if (inv.plan.read_stdin) {
        // The API takes stdin as one JSON string, so it is read whole here.
        std::string input{std::istreambuf_iterator<char>(std::cin),
                          std::istreambuf_iterator<char>()};
        request.json->as_object()["stdin"] = std::move(input);
    }
    auto write_to = [](std::ostream& stream) {
        return [&stream](std::string_view bytes) {
            stream.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
            stream.flush();
        };
    };
    // With --json, output goes out as the event lines themselves, not as bytes.
    auto discard = [](std::string_view) {};
    ExecStream events(inv.global.json ? ExecStream::Sink(discard) : write_to(out),
                      inv.global.json ? ExecStream::Sink(discard) : write_to(err));
    http_client::NdjsonSplitter lines([&](std::string_view line) {
        if (inv.global.json) {
            out << line << "\n";
            out.flush();
        }
        events.on_line(line);
    });
    // The command's own timeout bounds how long it runs; quiet stretches are no reason to stop.
    client.stream(
        request, [&](std::string_view chunk) { lines.feed(chunk); }, std::nullopt);
    lines.finish();
    const ExecEvent& exit = events.exit();
    if (exit.timed_out && !inv.global.json) {
        err << "holt: the command was killed when its timeout ran out\n";
    }
    return exit_status_of(exit);
}

std::size_t read_some(int fd, char* buffer, std::size_t size, const std::string& what) {
    for (;;) {
        ssize_t n = ::read(fd, buffer, size);
        if (n >= 0) {
            return static_cast<std::size_t>(n);
        }
        if (errno != EINTR) {
            throw_errno("read " + what);
        }
    }
}

int run_upload(ApiClient& client, const Invocation& inv, std::ostream& out) {
    const Plan& plan = inv.plan;
    bool from_stdin = plan.local == "-";
    std::string remote = plan.remote;
    std::string files = "/v1/sandboxes/" + plan.sandbox_id + "/files";

    // Into a directory, the file keeps its own name (as cp does).
    bool into_directory = remote.back() == '/';
    if (!into_directory) {
        try {
            json::value info = client.call({Verb::get, files + "/stat", {{"path", remote}}, {}});
            into_directory = field_text(info, "type") == "dir";
        } catch (const ApiError& e) {
            if (e.status() != 404 || e.code() != "file_not_found") {
                throw;
            }
        }
    }
    if (into_directory) {
        if (from_stdin) {
            throw UsageError("copying stdin needs a file name in the sandbox, not a directory");
        }
        remote = (fs::path(remote) / fs::path(plan.local).filename()).string();
    }

    int fd = from_stdin ? STDIN_FILENO : ::open(plan.local.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        throw_errno("open " + plan.local);
    }
    UniqueFd owned(from_stdin ? -1 : fd);
    std::optional<std::uint64_t> size;
    std::string mode = plan.mode.value_or("");
    if (!from_stdin) {
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            throw_errno("stat " + plan.local);
        }
        if (S_ISDIR(st.st_mode)) {
            throw UsageError(plan.local + " is a directory; sandbox cp copies one file");
        }
        if (S_ISREG(st.st_mode)) {
            size = static_cast<std::uint64_t>(st.st_size);
        }
        if (mode.empty()) {
            char octal[8];
            std::snprintf(octal, sizeof(octal), "%04o", st.st_mode & 07777);
            mode = octal;
        }
    }
    Request request{Verb::put, files, {{"path", remote}}, std::nullopt};
    if (!mode.empty()) {
        request.query.emplace_back("mode", mode);
    }
    std::string what = from_stdin ? "stdin" : plan.local;
    json::value info = client.send_body(
        request, [&](char* buffer, std::size_t n) { return read_some(fd, buffer, n, what); }, size);
    if (inv.global.json) {
        out << json::serialize(info) << "\n";
    }
    return 0;
}

int run_download(ApiClient& client, const Invocation& inv, std::ostream& out) {
    const Plan& plan = inv.plan;
    Request request{Verb::get,
                    "/v1/sandboxes/" + plan.sandbox_id + "/files",
                    {{"path", plan.remote}},
                    std::nullopt};
    if (plan.local == "-") {
        client.stream(
            request,
            [&](std::string_view chunk) {
                out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
            },
            client.options().timeout);
        out.flush();
        return 0;
    }

    fs::path local = plan.local;
    std::error_code ec;
    if (fs::is_directory(local, ec)) {
        local /= fs::path(plan.remote).filename();
    }
    // The file appears complete or not at all: it is written beside its name, then renamed.
    fs::path partial = local;
    partial += ".holt-part-" + std::to_string(::getpid());
    int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        throw_errno("create " + partial.string());
    }
    try {
        UniqueFd owned(fd);
        client.stream(
            request,
            [&](std::string_view chunk) {
                while (!chunk.empty()) {
                    ssize_t n = ::write(fd, chunk.data(), chunk.size());
                    if (n < 0 && errno == EINTR) {
                        continue;
                    }
                    if (n < 0) {
                        throw_errno("write " + local.string());
                    }
                    chunk.remove_prefix(static_cast<std::size_t>(n));
                }
            },
            client.options().timeout);
        if (::fsync(fd) != 0) {
            throw_errno("sync " + local.string());
        }
        fs::rename(partial, local);
    } catch (...) {
        fs::remove(partial, ec);
        throw;
    }
    return 0;
}

}  // namespace

int run(const Invocation& inv, std::ostream& out, std::ostream& err) {
    try {
        ApiClient client({.api_url = inv.global.api_url,
                          .api_key = inv.global.api_key,
                          .user_agent = "holt-cli/0.1"});
        switch (inv.plan.action) {
            case Action::Call:
                return run_calls(client, inv, out, err);
            case Action::Exec:
                return run_exec(client, inv, out, err);
            case Action::Upload:
                return run_upload(client, inv, out);
            case Action::Download:
                return run_download(client, inv, out);
        }
    } catch (const UsageError& e) {
        err << "holt: " << e.what() << "\n";
        return kUsageExit;
    } catch (const ApiError& e) {
        err << "holt: " << e.code() << ": " << e.message() << "\n";
    } catch (const std::exception& e) {
        err << "holt: " << e.what() << "\n";
    }
    return kFailureExit;
}

}  // namespace holt::cli
