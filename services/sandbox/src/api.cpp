#include "api.hpp"

#include <signal.h>

#include <boost/json.hpp>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <streambuf>

#include "holt/common/log.hpp"
#include "requests.hpp"

namespace holt::sandbox {

namespace json = boost::json;
using http::Exchange;
using http::HttpError;

namespace {

// Maps an agent's errno name to the API's errors; anything else from the VM is 503.
[[noreturn]] void rethrow_vm_error(const std::string& what) {
    try {
        throw;
    } catch (const HttpError&) {
        throw;
    } catch (const vm::AgentError& e) {
        const auto& code = e.code();
        if (code == "ENOENT") {
            throw HttpError(404, "file_not_found", e.what());
        }
        if (code == "EEXIST" || code == "ENOTEMPTY" || code == "EBUSY") {
            throw HttpError(409, "conflict", e.what());
        }
        if (code == "EACCES" || code == "EPERM") {
            throw HttpError(403, "permission_denied", e.what());
        }
        if (code == "ESRCH") {
            throw HttpError(404, "not_found", e.what());
        }
        if (code == "ENOSPC" || code == "EDQUOT") {
            // The sandbox's own disk is full: not the client's mistake, and nothing else's.
            throw HttpError(507, "disk_full", e.what());
        }
        throw HttpError(400, "bad_request", e.what());
    } catch (const std::exception& e) {
        throw HttpError(503, "unavailable", what + ": the VM did not answer: " + e.what());
    }
}

// A call that failed because the sandbox was killed meanwhile answers 410, not 503.
[[noreturn]] void throw_killed_during(const SandboxManager::Lease& lease, const std::string& what) {
    throw HttpError(410, "sandbox_gone",
                    "sandbox " + lease.sandbox_id() + " was killed during " + what);
}

template <typename Fn>
decltype(auto) vm_call(const SandboxManager::Lease& lease, const std::string& what, Fn&& fn) {
    try {
        return fn();
    } catch (...) {
        if (lease.killed()) {
            throw_killed_during(lease, what);
        }
        rethrow_vm_error(what);
    }
}

// Reads the request body of an upload on demand, for AgentClient::write_file's istream.
class BodyStreamBuf : public std::streambuf {
  public:
    explicit BodyStreamBuf(Exchange& exchange) : exchange_(exchange) {}

  protected:
    int_type underflow() override {
        std::size_t n = exchange_.read_body_some(buffer_, sizeof(buffer_));
        if (n == 0) {
            return traits_type::eof();
        }
        setg(buffer_, buffer_, buffer_ + n);
        return traits_type::to_int_type(buffer_[0]);
    }

  private:
    Exchange& exchange_;
    char buffer_[256 * 1024];
};

// Output of a running command, handed from the agent client's reader thread to the HTTP thread.
// The reader thread serves every call on the VM, so it never waits here: past the cap (a client
// that reads more slowly than the command writes), the queue overflows and the stream ends with
// an error; the command runs on and can be attached to again. Once the client is gone, output is
// dropped.
class EventQueue {
  public:
    // Output of the command on `stream` ("stdout" or "stderr"). A character split between
    // chunks waits for its other bytes, so that text stays text.
    void push_output(const std::string& stream, std::string_view data) {
        std::string& carry = carry_[stream];
        std::string text = carry;
        text.append(data);
        std::size_t cut = utf8_complete_prefix(text);
        carry = text.substr(cut);
        if (cut > 0) {
            json::object event{{"type", stream}};
            add_output(event, "data", std::string_view(text).substr(0, cut));
            push(std::move(event));
        }
    }
    // What push_output() still holds back, once the command has ended.
    void flush_output() {
        for (auto& [stream, carry] : carry_) {
            if (!carry.empty()) {
                json::object event{{"type", stream}};
                add_output(event, "data", carry);
                carry.clear();
                push(std::move(event));
            }
        }
    }

    void push(json::object event) {
        std::lock_guard lock(mutex_);
        auto size = event.size() * 16;
        if (auto* d = event.if_contains("data")) {
            size += d->as_string().size();
        }
        if (closed_) {
            return;
        }
        if (bytes_ >= kCap) {
            overflowed_ = true;
            ready_.notify_one();
            return;
        }
        bytes_ += size;
        events_.emplace_back(size, std::move(event));
        ready_.notify_one();
    }
    // The next event, or nullopt when `timeout` passes first.
    std::optional<json::object> pop(std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        if (!ready_.wait_for(lock, timeout, [&] { return !events_.empty(); })) {
            return std::nullopt;
        }
        auto [size, event] = std::move(events_.front());
        events_.pop_front();
        bytes_ -= size;
        return std::move(event);
    }
    void close() {
        std::lock_guard lock(mutex_);
        closed_ = true;
        events_.clear();
    }
    // Output was dropped because the queue was full.
    bool overflowed() {
        std::lock_guard lock(mutex_);
        return overflowed_;
    }

  private:
    static constexpr std::size_t kCap = 8 * 1024 * 1024;
    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<std::pair<std::size_t, json::object>> events_;
    std::size_t bytes_ = 0;
    bool closed_ = false;
    bool overflowed_ = false;
    // Used by the agent client's reader thread only, and by flush_output() after the exit.
    std::map<std::string, std::string> carry_;
};

std::string line(const json::object& event) {
    return json::serialize(event) + "\n";
}

vm::ExecCallbacks queue_callbacks(const std::shared_ptr<EventQueue>& queue) {
    vm::ExecCallbacks callbacks;
    callbacks.on_stdout = [queue](std::string_view data) { queue->push_output("stdout", data); };
    callbacks.on_stderr = [queue](std::string_view data) { queue->push_output("stderr", data); };
    return callbacks;
}

// Streams a session's events as NDJSON until it exits or the client goes away. The command
// runs on either way.
void stream_session(Exchange& x, const SandboxManager::Lease& lease, vm::ExecSession& session,
                    EventQueue& queue) {
    // Output was lost: say so instead of pretending the stream is whole.
    auto end_too_slow = [&] {
        queue.close();
        x.write_chunk(line(
            json::object{{"type", "error"},
                         {"code", "client_too_slow"},
                         {"message",
                          "the client read the output more slowly than the command wrote it, and "
                          "some was dropped; the command goes on as process " +
                              std::to_string(session.pid()) + " (attach to it to read on)"}}));
        x.end_stream();
    };
    x.begin_stream(200, "application/x-ndjson");
    x.write_chunk(line(json::object{{"type", "start"}, {"pid", session.pid()}}));
    for (;;) {
        while (auto event = queue.pop(std::chrono::milliseconds(0))) {
            if (!x.write_chunk(line(*event))) {
                queue.close();
                return;
            }
        }
        std::optional<vm::ExitStatus> status;
        try {
            status = session.wait_for(std::chrono::milliseconds(0));
        } catch (const std::exception& e) {
            json::object error{{"type", "error"}, {"code", "unavailable"}, {"message", e.what()}};
            if (lease.killed()) {
                error["code"] = "sandbox_gone";
                error["message"] = "sandbox " + lease.sandbox_id() +
                                   " was killed while its command (process " +
                                   std::to_string(session.pid()) + ") ran";
            }
            x.write_chunk(line(error));
            x.end_stream();
            return;
        }
        if (status) {
            queue.flush_output();
            while (auto event = queue.pop(std::chrono::milliseconds(0))) {
                x.write_chunk(line(*event));
            }
            if (queue.overflowed()) {
                end_too_slow();
                return;
            }
            auto exit = to_json(*status).as_object();
            exit["type"] = "exit";
            x.write_chunk(line(exit));
            x.end_stream();
            return;
        }
        if (auto event = queue.pop(std::chrono::milliseconds(50))) {
            if (!x.write_chunk(line(*event))) {
                queue.close();
                return;
            }
        } else if (queue.overflowed()) {
            end_too_slow();
            return;
        }
    }
}

std::string process_id_of(vm::AgentClient& agent, const std::string& pid_text) {
    int pid = 0;
    try {
        std::size_t used = 0;
        pid = std::stoi(pid_text, &used);
        if (used != pid_text.size()) {
            throw std::invalid_argument("");
        }
    } catch (const std::exception&) {
        throw http::bad_request("pid \"" + pid_text + "\" is not a number");
    }
    for (const auto& p : agent.processes()) {
        if (p.pid == pid) {
            return p.id;
        }
    }
    throw http::not_found("no process " + pid_text + " in this sandbox");
}

}  // namespace

void add_routes(http::Router& router, SandboxManager& manager, SandboxStore& store,
                ApiOptions options) {
    auto authenticate = [&store](Exchange& x) {
        auto header = x.header("Authorization");
        if (!header || header->rfind("Bearer ", 0) != 0) {
            throw http::unauthorized("send an API key: Authorization: Bearer holt_...");
        }
        auto tenant = store.authenticate(header->substr(7));
        if (!tenant) {
            throw http::unauthorized("unknown or revoked API key");
        }
        return *tenant;
    };
    auto limit = options.json_limit;

    router.add("GET", "/healthz", [](Exchange& x) {
        x.respond_json(200, json::object{{"status", "ok"}});
    });

    router.add("GET", "/v1/templates", [&, authenticate](Exchange& x) {
        authenticate(x);
        json::array list;
        for (const auto& name : manager.engine().images().templates()) {
            bool built = true;
            try {
                manager.engine().images().get(name);
            } catch (const std::exception&) {
                built = false;
            }
            list.push_back(json::object{{"name", name}, {"built", built}});
        }
        x.respond_json(200, json::object{{"templates", std::move(list)}});
    });

    // --- sandboxes ---
    router.add("POST", "/v1/sandboxes", [&, authenticate, limit](Exchange& x) {
        auto tenant = authenticate(x);
        auto spec = parse_create(x.read_json(limit));
        x.respond_json(201, to_json(manager.create(tenant, spec)));
    });

    router.add("GET", "/v1/sandboxes", [&, authenticate](Exchange& x) {
        auto tenant = authenticate(x);
        ListFilter filter;
        for (const auto& [key, value] : x.query_params()) {
            if (key == "state") {
                if (value != "running" && value != "hibernated" && value != "killed") {
                    throw http::bad_request("state must be running, hibernated or killed");
                }
                filter.states.push_back(value);
            } else if (key == "limit") {
                try {
                    std::size_t used = 0;
                    filter.limit = std::stoi(value, &used);
                    if (used != value.size()) {
                        filter.limit = -1;  // "5x"
                    }
                } catch (const std::exception&) {
                    filter.limit = -1;
                }
                if (filter.limit < 1 || filter.limit > 1000) {
                    throw http::bad_request("limit must be between 1 and 1000");
                }
            } else if (key.rfind("metadata[", 0) == 0 && key.back() == ']') {
                filter.metadata[key.substr(9, key.size() - 10)] = value;
            }
        }
        json::array list;
        for (const auto& r : store.list_sandboxes(tenant, filter)) {
            list.push_back(to_json(r));
        }
        x.respond_json(200, json::object{{"sandboxes", std::move(list)}});
    });

    router.add("GET", "/v1/sandboxes/{id}", [&, authenticate](Exchange& x) {
        x.respond_json(200, to_json(manager.get(authenticate(x), x.param("id"))));
    });

    router.add("PATCH", "/v1/sandboxes/{id}", [&, authenticate, limit](Exchange& x) {
        auto tenant = authenticate(x);
        UpdateSpec update = parse_update(x.read_json(limit));
        auto record = manager.get(tenant, x.param("id"));
        if (record.state == "killed") {
            throw HttpError(410, "sandbox_gone", "sandbox " + record.id + " is gone");
        }
        if (update.set_ttl) {
            store.set_expiry(record.id, update.ttl_seconds);
        }
        if (update.on_expire) {
            store.set_on_expire(record.id, *update.on_expire);
        }
        if (update.metadata) {
            store.set_metadata(record.id, *update.metadata);
        }
        x.respond_json(200, to_json(manager.get(tenant, record.id)));
    });

    router.add("DELETE", "/v1/sandboxes/{id}", [&, authenticate](Exchange& x) {
        x.respond_json(200, to_json(manager.kill(authenticate(x), x.param("id"))));
    });

    router.add("POST", "/v1/sandboxes/{id}/hibernate", [&, authenticate](Exchange& x) {
        x.respond_json(200, to_json(manager.hibernate(authenticate(x), x.param("id"))));
    });
    router.add("POST", "/v1/sandboxes/{id}/wake", [&, authenticate](Exchange& x) {
        x.respond_json(200, to_json(manager.wake(authenticate(x), x.param("id"))));
    });

    router.add("POST", "/v1/sandboxes/{id}/fork", [&, authenticate, limit](Exchange& x) {
        auto tenant = authenticate(x);
        auto body = x.read_json(limit);
        int count = 1;
        if (body.is_object()) {
            if (auto* c = body.as_object().if_contains("count"); c && !c->is_null()) {
                if (!c->is_int64() || c->as_int64() < 1 ||
                    c->as_int64() > manager.limits().max_fork_count) {
                    throw http::bad_request("count must be an integer from 1 to " +
                                            std::to_string(manager.limits().max_fork_count));
                }
                count = static_cast<int>(c->as_int64());
            }
        } else {
            throw http::bad_request("the request body must be a JSON object");
        }
        json::array list;
        for (const auto& r : manager.fork(tenant, x.param("id"), count)) {
            list.push_back(to_json(r));
        }
        x.respond_json(201, json::object{{"sandboxes", std::move(list)}});
    });

    router.add("POST", "/v1/sandboxes/{id}/snapshots", [&, authenticate, limit](Exchange& x) {
        auto tenant = authenticate(x);
        auto body = x.read_json(limit);
        if (!body.is_object()) {
            throw http::bad_request("the request body must be a JSON object");
        }
        auto name = string_field(body.as_object(), "name");
        x.respond_json(201, to_json(manager.snapshot(tenant, x.param("id"), name)));
    });

    // --- exec and processes ---
    router.add("POST", "/v1/sandboxes/{id}/exec", [&, authenticate, limit](Exchange& x) {
        auto tenant = authenticate(x);
        auto params = parse_exec(x.read_json(limit));
        auto lease = manager.use(tenant, x.param("id"));
        auto& agent = lease.agent();
        const std::string what = "exec in " + lease.sandbox_id();
        if (!params.stream && !params.background) {
            auto result = vm_call(lease, what, [&] { return agent.run(params.request); });
            auto body = to_json(result.status).as_object();
            add_output(body, "stdout", result.stdout_data);
            add_output(body, "stderr", result.stderr_data);
            // The agent keeps at most ExecRequest::max_output bytes of each stream.
            body["output_truncated"] = result.output_truncated;
            x.respond_json(200, body);
            return;
        }
        // Streamed and background commands run as the agent's background processes, so a
        // client that goes away does not kill them and /processes finds them.
        params.request.background = true;
        auto stdin_data = std::move(params.request.stdin_data);
        params.request.stdin_data.reset();
        auto queue = std::make_shared<EventQueue>();
        vm::ExecCallbacks discard{[](std::string_view) {}, [](std::string_view) {}};
        auto session = vm_call(lease, what, [&] {
            return agent.start(params.request, params.stream ? queue_callbacks(queue) : discard);
        });
        if (stdin_data) {
            vm_call(lease, what + ": stdin", [&] {
                session->write_stdin(*stdin_data);
                session->close_stdin();
            });
        }
        if (params.background) {
            x.respond_json(201, json::object{{"pid", session->pid()}});
            return;
        }
        stream_session(x, lease, *session, *queue);
        queue->close();
    });

    router.add("GET", "/v1/sandboxes/{id}/processes", [&, authenticate](Exchange& x) {
        auto lease = manager.use(authenticate(x), x.param("id"));
        auto processes =
            vm_call(lease, "list processes", [&] { return lease.agent().processes(); });
        json::array list;
        for (const auto& p : processes) {
            if (!p.background) {
                continue;
            }
            json::array argv;
            for (const auto& a : p.argv) {
                argv.emplace_back(a);
            }
            list.push_back(json::object{
                {"pid", p.pid},
                {"argv", std::move(argv)},
                {"running", p.running},
                {"exit_code", p.exit && p.exit->exit_code ? json::value(*p.exit->exit_code)
                                                          : json::value(nullptr)},
                {"signal",
                 p.exit && p.exit->signal ? json::value(*p.exit->signal) : json::value(nullptr)},
            });
        }
        x.respond_json(200, json::object{{"processes", std::move(list)}});
    });

    router.add("GET", "/v1/sandboxes/{id}/processes/{pid}/output", [&, authenticate](Exchange& x) {
        auto lease = manager.use(authenticate(x), x.param("id"));
        auto& agent = lease.agent();
        auto process_id =
            vm_call(lease, "find process", [&] { return process_id_of(agent, x.param("pid")); });
        auto queue = std::make_shared<EventQueue>();
        auto session = vm_call(lease, "attach to process " + x.param("pid"),
                               [&] { return agent.attach(process_id, queue_callbacks(queue)); });
        stream_session(x, lease, *session, *queue);
        queue->close();
    });

    router.add("POST", "/v1/sandboxes/{id}/processes/{pid}/signal",
               [&, authenticate, limit](Exchange& x) {
                   auto tenant = authenticate(x);
                   auto body = x.read_json(limit);
                   int sig = SIGTERM;
                   if (body.is_object()) {
                       if (auto* s = body.as_object().if_contains("signal")) {
                           sig = parse_signal(*s);
                       }
                   }
                   auto lease = manager.use(tenant, x.param("id"));
                   auto& agent = lease.agent();
                   vm_call(lease, "signal process " + x.param("pid"),
                           [&] { agent.signal(process_id_of(agent, x.param("pid")), sig); });
                   x.respond_empty(204);
               });

    // --- files ---
    router.add("GET", "/v1/sandboxes/{id}/files", [&, authenticate](Exchange& x) {
        auto tenant = authenticate(x);
        auto path = guest_path(x.query("path"));
        auto lease = manager.use(tenant, x.param("id"));
        auto& agent = lease.agent();
        auto stat = vm_call(lease, "read " + path, [&] { return agent.stat(path); });
        if (stat.type == vm::FileType::kDirectory) {
            throw http::bad_request(path + " is a directory; list it with /files/list");
        }
        if (stat.type != vm::FileType::kRegular) {
            // A device or a FIFO has no end (or no size): only regular files are downloaded.
            throw http::bad_request(path + " is not a regular file (it is a " +
                                    agent_protocol::to_string(stat.type) + ")");
        }
        x.set_header("X-Holt-File-Size", std::to_string(stat.size));
        x.begin_stream(200, "application/octet-stream");
        try {
            agent.read_file(path, [&](std::string_view data) {
                if (!x.write_chunk(data)) {
                    throw Error("the client went away");
                }
            });
        } catch (const std::exception& e) {
            // The answer has begun: the only way to say so is to cut it off.
            holt::log::get("sandbox")->info("sbx={} download {} ended early: {}",
                                            lease.sandbox_id(), path, e.what());
            throw;
        }
        x.end_stream();
    });

    router.add("PUT", "/v1/sandboxes/{id}/files", [&, authenticate](Exchange& x) {
        auto tenant = authenticate(x);
        auto path = guest_path(x.query("path"));
        vm::WriteOptions write;
        write.make_parents = true;
        if (auto mode = x.query("mode")) {
            try {
                std::size_t used = 0;
                write.mode = static_cast<std::uint32_t>(std::stoul(*mode, &used, 8));
                if (used != mode->size() || write.mode > 07777) {
                    throw std::invalid_argument("");
                }
            } catch (const std::exception&) {
                throw http::bad_request("mode must be octal permission bits such as 0644");
            }
        }
        auto lease = manager.use(tenant, x.param("id"));
        auto& agent = lease.agent();
        BodyStreamBuf buf(x);
        std::istream body(&buf);
        vm_call(lease, "write " + path, [&] { agent.write_file(path, body, write); });
        auto stat = vm_call(lease, "stat " + path, [&] { return agent.stat(path); });
        x.respond_json(201, to_json(stat));
    });

    router.add("DELETE", "/v1/sandboxes/{id}/files", [&, authenticate](Exchange& x) {
        auto tenant = authenticate(x);
        auto path = guest_path(x.query("path"));
        bool recursive = x.query("recursive").value_or("false") == "true";
        auto lease = manager.use(tenant, x.param("id"));
        vm_call(lease, "remove " + path, [&] { lease.agent().remove(path, recursive); });
        x.respond_empty(204);
    });

    router.add("GET", "/v1/sandboxes/{id}/files/list", [&, authenticate](Exchange& x) {
        auto tenant = authenticate(x);
        auto path = guest_path(x.query("path"));
        auto lease = manager.use(tenant, x.param("id"));
        auto entries = vm_call(lease, "list " + path, [&] { return lease.agent().list(path); });
        json::array list;
        for (const auto& e : entries) {
            list.push_back(to_json(e, path));
        }
        x.respond_json(200, json::object{{"entries", std::move(list)}});
    });

    router.add("GET", "/v1/sandboxes/{id}/files/stat", [&, authenticate](Exchange& x) {
        auto tenant = authenticate(x);
        auto path = guest_path(x.query("path"));
        auto lease = manager.use(tenant, x.param("id"));
        x.respond_json(
            200, to_json(vm_call(lease, "stat " + path, [&] { return lease.agent().stat(path); })));
    });

    router.add("POST", "/v1/sandboxes/{id}/files/mkdir", [&, authenticate, limit](Exchange& x) {
        auto tenant = authenticate(x);
        auto body = x.read_json(limit);
        if (!body.is_object()) {
            throw http::bad_request("the request body must be a JSON object");
        }
        auto path = guest_path(string_field(body.as_object(), "path"));
        bool parents = true;
        if (auto* p = body.as_object().if_contains("parents"); p && p->is_bool()) {
            parents = p->as_bool();
        }
        auto lease = manager.use(tenant, x.param("id"));
        vm_call(lease, "mkdir " + path, [&] { lease.agent().mkdir(path, parents, 0755); });
        x.respond_json(
            201, to_json(vm_call(lease, "stat " + path, [&] { return lease.agent().stat(path); })));
    });

    router.add("POST", "/v1/sandboxes/{id}/files/rename", [&, authenticate, limit](Exchange& x) {
        auto tenant = authenticate(x);
        auto body = x.read_json(limit);
        if (!body.is_object()) {
            throw http::bad_request("the request body must be a JSON object");
        }
        auto from = guest_path(string_field(body.as_object(), "from"), "from");
        auto to = guest_path(string_field(body.as_object(), "to"), "to");
        auto lease = manager.use(tenant, x.param("id"));
        vm_call(lease, "rename " + from, [&] { lease.agent().rename(from, to); });
        x.respond_json(
            200, to_json(vm_call(lease, "stat " + to, [&] { return lease.agent().stat(to); })));
    });

    // --- snapshots ---
    router.add("GET", "/v1/snapshots", [&, authenticate](Exchange& x) {
        json::array list;
        for (const auto& s : store.list_snapshots(authenticate(x))) {
            list.push_back(to_json(s));
        }
        x.respond_json(200, json::object{{"snapshots", std::move(list)}});
    });
    router.add("GET", "/v1/snapshots/{id}", [&, authenticate](Exchange& x) {
        auto snap = store.snapshot(authenticate(x), x.param("id"));
        if (!snap) {
            throw http::not_found("no snapshot " + x.param("id"));
        }
        x.respond_json(200, to_json(*snap));
    });
    router.add("DELETE", "/v1/snapshots/{id}", [&, authenticate](Exchange& x) {
        manager.delete_snapshot(authenticate(x), x.param("id"));
        x.respond_empty(204);
    });

    // --- keys ---
    router.add("POST", "/v1/keys", [&, authenticate, limit](Exchange& x) {
        auto tenant = authenticate(x);
        auto body = x.read_json(limit);
        if (!body.is_object()) {
            throw http::bad_request("the request body must be a JSON object");
        }
        std::string secret;
        auto key = store.create_key(tenant, string_field(body.as_object(), "name"), secret);
        auto out = to_json(key).as_object();
        out["key"] = secret;
        x.respond_json(201, out);
    });
    router.add("GET", "/v1/keys", [&, authenticate](Exchange& x) {
        json::array list;
        for (const auto& k : store.list_keys(authenticate(x))) {
            list.push_back(to_json(k));
        }
        x.respond_json(200, json::object{{"keys", std::move(list)}});
    });
    router.add("DELETE", "/v1/keys/{id}", [&, authenticate](Exchange& x) {
        if (!store.revoke_key(authenticate(x), x.param("id"))) {
            throw http::not_found("no key " + x.param("id"));
        }
        x.respond_empty(204);
    });
}

}  // namespace holt::sandbox
