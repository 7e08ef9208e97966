// End to end: the real holt-sandboxd, a real PostgreSQL (a private cluster in a temporary
// directory, or HOLT_DATABASE_URL), real microVMs from the images in HOLT_DATA_DIR.

#include <gtest/gtest.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "holt/common/child_process.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace json = boost::json;
namespace fs = std::filesystem;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

// Small VMs: the base template at 256 MiB has a template snapshot ready in the test data dir.
const json::object kSmall{{"template", "base"}, {"memory_mib", 256}};

std::string shell(const std::string& cmd) {
    auto r = holt::run_command({"/bin/sh", "-c", cmd});
    if (!r.status.success()) {
        throw std::runtime_error(cmd + ": " + r.output);
    }
    return r.output;
}

std::uint16_t free_port() {
    asio::io_context ioc;
    tcp::acceptor a(ioc, {asio::ip::make_address("127.0.0.1"), 0});
    return a.local_endpoint().port();
}

struct Response {
    int status = 0;
    std::string body;
    json::value json() const { return json::parse(body); }
    std::string code() const { return std::string(json().at("error").at("code").as_string()); }
};

// The service and its database, for the whole test program.
class Service : public ::testing::Environment {
  public:
    void SetUp() override {
        char tmpl[] = "/tmp/holt-sbx-e2e-XXXXXX";
        dir_ = ::mkdtemp(tmpl);
        // The private cluster runs as the postgres user, which must reach its directory.
        fs::permissions(dir_, fs::perms::owner_all | fs::perms::others_exec);
        if (const char* url = std::getenv("HOLT_DATABASE_URL"); url && *url) {
            url_ = url;
        } else {
            url_ = holt_postgres("start");
        }
        port_ = free_port();
        start_daemon();
        key_a_ = create_key("tenant-a");
        key_b_ = create_key("tenant-b");
    }

    void TearDown() override {
        stop_daemon(SIGTERM);
        // A graceful stop leaves the sandboxes' VMs running for the next start to adopt: this
        // test's run directory goes, and the VMs in it with it.
        holt::run_command({"pkill", "-KILL", "-f", run_dir()});
        if (std::getenv("HOLT_DATABASE_URL") == nullptr) {
            holt_postgres("stop");
        }
        if (::testing::UnitTest::GetInstance()->Passed()) {
            fs::remove_all(dir_);
        } else {
            std::fprintf(stderr, "service log kept in %s/sandboxd.log\n", dir_.c_str());
        }
    }

    void start_daemon() {
        std::string log = dir_ + "/sandboxd.log";
        daemon_ = std::make_unique<holt::ChildProcess>(holt::ChildProcess::spawn(
            {"/bin/sh", "-c", "exec \"$0\" \"$@\" >> " + log + " 2>&1", HOLT_SANDBOXD_PATH,
             "--listen", "127.0.0.1:" + std::to_string(port_), "--database-url", url_, "--run-dir",
             run_dir(), "--reaper-period-ms", "200", "--log-level", "info"},
            {}));
        auto deadline = Clock::now() + std::chrono::seconds(120);
        while (Clock::now() < deadline) {
            try {
                if (request("GET", "/healthz").status == 200) {
                    return;
                }
            } catch (const std::exception&) {
            }
            if (!daemon_->running()) {
                FAIL() << "holt-sandboxd exited: " << shell("tail -20 " + log);
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        FAIL() << "holt-sandboxd did not answer /healthz: " << shell("tail -20 " + log);
    }

    void stop_daemon(int signal) {
        if (daemon_) {
            daemon_->send_signal(signal);
            if (!daemon_->wait_for(std::chrono::seconds(30))) {
                daemon_->kill_and_wait();
            }
            daemon_.reset();
        }
    }

    // The VMs the service's run directory holds.
    std::size_t vm_count() const {
        std::error_code ec;
        return static_cast<std::size_t>(std::distance(
            fs::directory_iterator(run_dir() + "/vms", ec), fs::directory_iterator()));
    }

    Response request(const std::string& method, const std::string& target,
                     const std::optional<json::value>& body = std::nullopt,
                     const std::string& key = "") const {
        asio::io_context ioc;
        tcp::socket socket(ioc);
        socket.connect({asio::ip::make_address("127.0.0.1"), port_});
        bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(method), target, 11};
        req.set(bhttp::field::host, "127.0.0.1");
        if (!key.empty()) {
            req.set(bhttp::field::authorization, "Bearer " + key);
        }
        if (body) {
            req.set(bhttp::field::content_type, "application/json");
            req.body() = json::serialize(*body);
        }
        req.prepare_payload();
        bhttp::write(socket, req);
        beast::flat_buffer buffer;
        bhttp::response_parser<bhttp::string_body> parser;
        parser.body_limit(256 * 1024 * 1024);
        bhttp::read(socket, buffer, parser);
        return {static_cast<int>(parser.get().result_int()), parser.get().body()};
    }

    std::uint16_t port() const { return port_; }
    const std::string& key_a() const { return key_a_; }
    const std::string& key_b() const { return key_b_; }
    const std::string& dir() const { return dir_; }

  private:
    std::string run_dir() const { return dir_ + "/run"; }

    // Runs holt-postgres on this test's own private cluster; returns what it printed.
    std::string holt_postgres(const std::string& command) {
        auto r = holt::run_command({HOLT_POSTGRES_PATH, "--data-dir", dir_, command});
        if (!r.status.success()) {
            throw std::runtime_error("holt-postgres " + command + ": " + r.output);
        }
        std::string out = r.output;
        while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) {
            out.pop_back();
        }
        return out.substr(out.rfind('\n') + 1);  // the URL is the last line
    }

    std::string create_key(const std::string& tenant) {
        auto r = holt::run_command(
            {HOLT_SANDBOXD_PATH, "keys", "create", "--tenant", tenant, "--database-url", url_});
        if (!r.status.success()) {
            throw std::runtime_error("keys create: " + r.output);
        }
        // Output is stdout and stderr together: the key is the line of its own.
        std::istringstream lines(r.output);
        for (std::string line; std::getline(lines, line);) {
            if (line.size() == 45 && line.rfind("holt_", 0) == 0) {
                return line;
            }
        }
        throw std::runtime_error("keys create printed no key: " + r.output);
    }

    std::string dir_;
    std::string url_;
    std::uint16_t port_ = 0;
    std::unique_ptr<holt::ChildProcess> daemon_;
    std::string key_a_;
    std::string key_b_;
};

Service* service = nullptr;

Response call(const std::string& method, const std::string& target,
              const std::optional<json::value>& body = std::nullopt) {
    return service->request(method, target, body, service->key_a());
}

std::string create(json::object spec = kSmall) {
    auto r = call("POST", "/v1/sandboxes", spec);
    if (r.status != 201) {
        throw std::runtime_error("create: " + std::to_string(r.status) + " " + r.body);
    }
    return std::string(r.json().at("id").as_string());
}

json::value exec(const std::string& id, const std::string& cmd) {
    auto r = call("POST", "/v1/sandboxes/" + id + "/exec", json::object{{"cmd", cmd}});
    if (r.status != 200) {
        throw std::runtime_error("exec " + cmd + ": " + std::to_string(r.status) + " " + r.body);
    }
    return r.json();
}

std::string stdout_of(const std::string& id, const std::string& cmd) {
    return std::string(exec(id, cmd).at("stdout").as_string());
}

void kill(const std::string& id) {
    call("DELETE", "/v1/sandboxes/" + id);
}

TEST(SandboxE2E, CreateExecKill) {
    auto id = create();
    auto r = exec(id, "echo hello; echo oops >&2; exit 3");
    EXPECT_EQ(r.at("stdout").as_string(), "hello\n");
    EXPECT_EQ(r.at("stderr").as_string(), "oops\n");
    EXPECT_EQ(r.at("exit_code").as_int64(), 3);

    auto got = call("GET", "/v1/sandboxes/" + id);
    EXPECT_EQ(got.json().at("state").as_string(), "running");

    auto killed = call("DELETE", "/v1/sandboxes/" + id);
    ASSERT_EQ(killed.status, 200);
    EXPECT_EQ(killed.json().at("state").as_string(), "killed");
    EXPECT_EQ(killed.json().at("end_reason").as_string(), "killed");
    EXPECT_EQ(call("DELETE", "/v1/sandboxes/" + id).status, 200);  // twice is fine

    auto after = call("POST", "/v1/sandboxes/" + id + "/exec", json::object{{"cmd", "true"}});
    EXPECT_EQ(after.status, 410);
    EXPECT_EQ(after.code(), "sandbox_gone");
    EXPECT_EQ(call("GET", "/v1/sandboxes/" + id).json().at("state").as_string(), "killed");
}

TEST(SandboxE2E, BadRequestsGetStableErrors) {
    auto r = call("POST", "/v1/sandboxes", json::object{{"template", "pyhton"}});
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(r.code(), "unknown_template");

    r = call("POST", "/v1/sandboxes", json::object{{"template", 5}});
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(r.code(), "bad_request");

    r = service->request("GET", "/v1/sandboxes");
    EXPECT_EQ(r.status, 401);
    r = service->request("GET", "/v1/sandboxes", std::nullopt, "holt_notakey");
    EXPECT_EQ(r.status, 401);

    r = call("GET", "/v1/sandboxes/sbx-doesnotexist");
    EXPECT_EQ(r.status, 404);
    EXPECT_EQ(r.code(), "not_found");
    r = call("GET", "/v1/nothing/here");
    EXPECT_EQ(r.status, 404);
    r = call("POST", "/v1/sandboxes", json::object{{"template", "base"}, {"vcpus", 64}});
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(call("GET", "/healthz").status, 200);
}

TEST(SandboxE2E, AnotherTenantGets404) {
    auto id = create();
    auto r = service->request("GET", "/v1/sandboxes/" + id, std::nullopt, service->key_b());
    EXPECT_EQ(r.status, 404);
    r = service->request("POST", "/v1/sandboxes/" + id + "/exec", json::object{{"cmd", "true"}},
                         service->key_b());
    EXPECT_EQ(r.status, 404);
    r = service->request("DELETE", "/v1/sandboxes/" + id, std::nullopt, service->key_b());
    EXPECT_EQ(r.status, 404);
    auto list = service->request("GET", "/v1/sandboxes", std::nullopt, service->key_b());
    EXPECT_EQ(list.body.find(id), std::string::npos);
    EXPECT_EQ(call("GET", "/v1/sandboxes/" + id).json().at("state").as_string(), "running");
    kill(id);
}

// Connects `socket` to the service and sends a streamed exec of `cmd` in sandbox `id`, for tests
// that read the answer themselves, or keep it unread.
void send_streamed_exec(tcp::socket& socket, const std::string& id, const std::string& cmd) {
    socket.connect({asio::ip::make_address("127.0.0.1"), service->port()});
    bhttp::request<bhttp::string_body> req{bhttp::verb::post, "/v1/sandboxes/" + id + "/exec", 11};
    req.set(bhttp::field::host, "x");
    req.set(bhttp::field::authorization, "Bearer " + service->key_a());
    req.body() = json::serialize(json::object{{"cmd", cmd}, {"stream", true}});
    req.prepare_payload();
    bhttp::write(socket, req);
}

TEST(SandboxE2E, StreamedExecDeliversFirstLineBeforeTheEnd) {
    auto id = create();
    asio::io_context ioc;
    tcp::socket socket(ioc);
    send_streamed_exec(socket, id, "echo first; sleep 4; echo second");

    beast::flat_buffer buffer;
    bhttp::response_parser<bhttp::buffer_body> parser;
    bhttp::read_header(socket, buffer, parser);
    ASSERT_EQ(parser.get().result_int(), 200);
    std::string text;
    std::optional<Clock::time_point> first_at, exit_at;
    char chunk[4096];
    while (!parser.is_done()) {
        parser.get().body().data = chunk;
        parser.get().body().size = sizeof(chunk);
        beast::error_code ec;
        bhttp::read_some(socket, buffer, parser, ec);  // whatever has arrived
        if (ec && ec != bhttp::error::need_buffer) {
            FAIL() << ec.message();
        }
        text.append(chunk, sizeof(chunk) - parser.get().body().size);
        if (!first_at && text.find("first") != std::string::npos) {
            first_at = Clock::now();
        }
        if (!exit_at && text.find("\"exit\"") != std::string::npos) {
            exit_at = Clock::now();
        }
    }
    ASSERT_TRUE(first_at && exit_at) << text;
    EXPECT_GT(*exit_at - *first_at, std::chrono::seconds(2)) << text;
    EXPECT_NE(text.find("\"type\":\"start\""), std::string::npos);
    EXPECT_NE(text.find("second"), std::string::npos);
    EXPECT_NE(text.find("\"exit_code\":0"), std::string::npos);
    kill(id);
}

TEST(SandboxE2E, AClientThatDisconnectsDoesNotKillItsCommand) {
    auto id = create();
    {
        asio::io_context ioc;
        tcp::socket socket(ioc);
        send_streamed_exec(socket, id, "echo started; sleep 2; echo finished > /root/finished");
        beast::flat_buffer buffer;
        bhttp::response_parser<bhttp::empty_body> parser;
        bhttp::read_header(socket, buffer, parser);
        ASSERT_EQ(parser.get().result_int(), 200);
    }  // the client goes away while the command runs
    std::string finished;
    for (int i = 0; i < 60 && finished.empty(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
        finished = stdout_of(id, "cat /root/finished 2>/dev/null || true");
    }
    EXPECT_EQ(finished, "finished\n");
    auto processes = call("GET", "/v1/sandboxes/" + id + "/processes");
    EXPECT_EQ(processes.status, 200) << processes.body;
    kill(id);
}

TEST(SandboxE2E, AKillGoesAheadOfAHibernateWaitingForCallsInFlight) {
    auto id = create();
    // A streamed exec holds the sandbox while its client stays connected.
    asio::io_context ioc;
    tcp::socket socket(ioc);
    send_streamed_exec(socket, id, "sleep 60");
    beast::flat_buffer buffer;
    bhttp::response_parser<bhttp::empty_body> parser;
    bhttp::read_header(socket, buffer, parser);
    ASSERT_EQ(parser.get().result_int(), 200);

    // The hibernate waits for that call to end; the kill does not wait for the hibernate.
    auto hibernate = std::async(std::launch::async,
                                [&] { return call("POST", "/v1/sandboxes/" + id + "/hibernate"); });
    std::this_thread::sleep_for(std::chrono::seconds(1));  // let the hibernate start waiting
    auto killed = call("DELETE", "/v1/sandboxes/" + id);
    ASSERT_EQ(killed.status, 200) << killed.body;
    EXPECT_EQ(killed.json().at("state").as_string(), "killed");
    auto hibernated = hibernate.get();
    EXPECT_EQ(hibernated.status, 410)
        << "the hibernate ended because of the kill: " << hibernated.body;

    // The streamed exec says why it ended.
    beast::error_code ec;
    bhttp::response_parser<bhttp::string_body> rest(std::move(parser));
    bhttp::read(socket, buffer, rest, ec);
    EXPECT_NE(rest.get().body().find("\"code\":\"sandbox_gone\""), std::string::npos)
        << rest.get().body();
}

TEST(SandboxE2E, BackgroundProcessesAreListedReattachedAndSignalled) {
    auto id = create();
    auto started =
        call("POST", "/v1/sandboxes/" + id + "/exec",
             json::object{{"cmd", "echo hello-from-background; touch /tmp/ready; sleep 100000"},
                          {"background", true}});
    ASSERT_EQ(started.status, 201) << started.body;
    auto pid = started.json().at("pid").as_int64();
    auto listed = call("GET", "/v1/sandboxes/" + id + "/processes");
    ASSERT_EQ(listed.status, 200);
    EXPECT_NE(listed.body.find("\"pid\":" + std::to_string(pid)), std::string::npos) << listed.body;
    // Once it has printed (a shell starts slowly in a fresh VM under TCG), stop it.
    for (int i = 0; i < 100 && stdout_of(id, "test -e /tmp/ready && echo yes") != "yes\n"; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }

    auto signalled =
        call("POST", "/v1/sandboxes/" + id + "/processes/" + std::to_string(pid) + "/signal",
             json::object{{"signal", "TERM"}});
    EXPECT_EQ(signalled.status, 204) << signalled.body;
    // Re-attaching gives the output kept so far, then the end.
    auto output =
        call("GET", "/v1/sandboxes/" + id + "/processes/" + std::to_string(pid) + "/output");
    EXPECT_EQ(output.status, 200);
    EXPECT_NE(output.body.find("hello-from-background"), std::string::npos) << output.body;
    EXPECT_NE(output.body.find("\"type\":\"exit\""), std::string::npos) << output.body;
    EXPECT_EQ(call("GET", "/v1/sandboxes/" + id + "/processes/999999/output").status, 404);
    kill(id);
}

// 100 MiB of bytes that are not all the same, generated on the fly.
char pattern_byte(std::uint64_t i) {
    return static_cast<char>((i * 2654435761u) >> 13);
}

TEST(SandboxE2E, HundredMiBUploadAndDownloadRoundTrip) {
    constexpr std::uint64_t kSize = 100ull * 1024 * 1024;
    auto id = create();
    asio::io_context ioc;
    tcp::socket socket(ioc);
    socket.connect({asio::ip::make_address("127.0.0.1"), service->port()});

    // Upload with a Content-Length, written in 1 MiB pieces: nothing holds the whole file.
    std::string head = "PUT /v1/sandboxes/" + id +
                       "/files?path=/root/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                       service->key_a() + "\r\nContent-Length: " + std::to_string(kSize) +
                       "\r\nContent-Type: application/octet-stream\r\n\r\n";
    asio::write(socket, asio::buffer(head));
    unsigned char sent_digest[SHA256_DIGEST_LENGTH];
    SHA256_CTX sent;
    SHA256_Init(&sent);
    std::string piece(1024 * 1024, '\0');
    for (std::uint64_t offset = 0; offset < kSize; offset += piece.size()) {
        for (std::size_t i = 0; i < piece.size(); ++i) {
            piece[i] = pattern_byte(offset + i);
        }
        SHA256_Update(&sent, piece.data(), piece.size());
        asio::write(socket, asio::buffer(piece));
    }
    SHA256_Final(sent_digest, &sent);
    beast::flat_buffer buffer;
    bhttp::response<bhttp::string_body> put;
    bhttp::read(socket, buffer, put);
    ASSERT_EQ(put.result_int(), 201) << put.body();
    EXPECT_EQ(json::parse(put.body()).at("size").to_number<std::uint64_t>(), kSize);

    // Download, streamed through a digest.
    bhttp::request<bhttp::empty_body> get{bhttp::verb::get,
                                          "/v1/sandboxes/" + id + "/files?path=/root/big.bin", 11};
    get.set(bhttp::field::host, "x");
    get.set(bhttp::field::authorization, "Bearer " + service->key_a());
    bhttp::write(socket, get);
    bhttp::response_parser<bhttp::buffer_body> parser;
    parser.body_limit(boost::none);
    bhttp::read_header(socket, buffer, parser);
    ASSERT_EQ(parser.get().result_int(), 200);
    SHA256_CTX got;
    SHA256_Init(&got);
    std::uint64_t received = 0;
    std::vector<char> chunk(256 * 1024);
    while (!parser.is_done()) {
        parser.get().body().data = chunk.data();
        parser.get().body().size = chunk.size();
        beast::error_code ec;
        bhttp::read(socket, buffer, parser, ec);
        ASSERT_TRUE(!ec || ec == bhttp::error::need_buffer) << ec.message();
        std::size_t n = chunk.size() - parser.get().body().size;
        SHA256_Update(&got, chunk.data(), n);
        received += n;
    }
    unsigned char got_digest[SHA256_DIGEST_LENGTH];
    SHA256_Final(got_digest, &got);
    EXPECT_EQ(received, kSize);
    EXPECT_EQ(std::memcmp(sent_digest, got_digest, sizeof(got_digest)), 0);

    // The guest agrees on the size.
    EXPECT_EQ(stdout_of(id, "stat -c %s /root/big.bin"), std::to_string(kSize) + "\n");
    auto missing = call("GET", "/v1/sandboxes/" + id + "/files?path=/nope");
    EXPECT_EQ(missing.status, 404);
    EXPECT_EQ(missing.code(), "file_not_found");
    // A name that is not UTF-8 (guest code can make one) is listed as name_b64.
    EXPECT_EQ(stdout_of(id, "touch \"$(printf '/root/\\377bad')\" && echo ok"), "ok\n");
    auto listed = call("GET", "/v1/sandboxes/" + id + "/files/list?path=/root");
    ASSERT_EQ(listed.status, 200) << listed.body;
    EXPECT_NE(listed.body.find("\"name_b64\":\"/2JhZA==\""), std::string::npos) << listed.body;
    // A device never ends: it is refused, not streamed forever.
    auto device = call("GET", "/v1/sandboxes/" + id + "/files?path=/dev/zero");
    EXPECT_EQ(device.status, 400);
    EXPECT_EQ(device.code(), "bad_request");
    kill(id);
}

TEST(SandboxE2E, TtlExpiryKillsAndRecordsWhy) {
    auto spec = kSmall;
    spec["ttl_seconds"] = 2;
    auto id = create(spec);
    auto deadline = Clock::now() + std::chrono::seconds(60);
    json::value got;
    while (Clock::now() < deadline) {
        got = call("GET", "/v1/sandboxes/" + id).json();
        if (got.at("state").as_string() == "killed") {
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    ASSERT_EQ(got.at("state").as_string(), "killed");
    EXPECT_EQ(got.at("end_reason").as_string(), "ttl_expired");
    auto r = call("POST", "/v1/sandboxes/" + id + "/exec", json::object{{"cmd", "true"}});
    EXPECT_EQ(r.status, 410);
}

TEST(SandboxE2E, ForkChildrenDiverge) {
    auto id = create();
    exec(id, "echo parent > /root/who");
    auto r = call("POST", "/v1/sandboxes/" + id + "/fork", json::object{{"count", 2}});
    ASSERT_EQ(r.status, 201) << r.body;
    auto kids = r.json().at("sandboxes").as_array();
    ASSERT_EQ(kids.size(), 2u);
    std::vector<std::string> ids;
    for (const auto& k : kids) {
        ids.emplace_back(k.at("id").as_string());
        EXPECT_EQ(k.at("parent_id").as_string(), id);
    }
    // Each starts from the parent's file, then goes its own way.
    for (std::size_t i = 0; i < ids.size(); ++i) {
        EXPECT_EQ(stdout_of(ids[i], "cat /root/who"), "parent\n");
        exec(ids[i], "echo child" + std::to_string(i) + " > /root/who");
    }
    EXPECT_EQ(stdout_of(ids[0], "cat /root/who"), "child0\n");
    EXPECT_EQ(stdout_of(ids[1], "cat /root/who"), "child1\n");
    EXPECT_EQ(stdout_of(id, "cat /root/who"), "parent\n");
    for (const auto& k : ids) {
        kill(k);
    }
    kill(id);
}

TEST(SandboxE2E, HibernateAndWakeKeepFilesAndProcesses) {
    auto id = create();
    exec(id, "echo kept > /root/note");
    auto bg = call("POST", "/v1/sandboxes/" + id + "/exec",
                   json::object{{"cmd", "sleep 1000"}, {"background", true}});
    ASSERT_EQ(bg.status, 201) << bg.body;
    auto pid = bg.json().at("pid").as_int64();

    auto h = call("POST", "/v1/sandboxes/" + id + "/hibernate");
    ASSERT_EQ(h.status, 200) << h.body;
    EXPECT_EQ(h.json().at("state").as_string(), "hibernated");

    // An exec on a hibernated sandbox wakes it first.
    EXPECT_EQ(stdout_of(id, "cat /root/note"), "kept\n");
    EXPECT_EQ(call("GET", "/v1/sandboxes/" + id).json().at("state").as_string(), "running");
    EXPECT_EQ(stdout_of(id, "kill -0 " + std::to_string(pid) + " && echo alive"), "alive\n");
    auto procs = call("GET", "/v1/sandboxes/" + id + "/processes");
    ASSERT_EQ(procs.status, 200);
    bool found = false;
    auto listed = procs.json();
    for (const auto& p : listed.at("processes").as_array()) {
        found |= p.at("pid").as_int64() == pid && p.at("running").as_bool();
    }
    EXPECT_TRUE(found) << procs.body;

    // Explicit hibernate and wake too.
    ASSERT_EQ(call("POST", "/v1/sandboxes/" + id + "/hibernate").status, 200);
    auto w = call("POST", "/v1/sandboxes/" + id + "/wake");
    ASSERT_EQ(w.status, 200) << w.body;
    EXPECT_EQ(w.json().at("state").as_string(), "running");
    EXPECT_EQ(stdout_of(id, "cat /root/note"), "kept\n");
    kill(id);
}

TEST(SandboxE2E, TwentyConcurrentCreatesAllWork) {
    constexpr int kCount = 20;
    std::vector<std::future<std::string>> pending;
    for (int i = 0; i < kCount; ++i) {
        pending.push_back(std::async(std::launch::async, [i] {
            auto id = create();
            auto out = stdout_of(id, "echo sandbox-" + std::to_string(i));
            return id + " " + out;
        }));
    }
    std::vector<std::string> ids;
    int ok = 0;
    for (int i = 0; i < kCount; ++i) {
        try {
            auto result = pending[i].get();
            auto space = result.find(' ');
            ids.push_back(result.substr(0, space));
            EXPECT_EQ(result.substr(space + 1), "sandbox-" + std::to_string(i) + "\n");
            ++ok;
        } catch (const std::exception& e) {
            ADD_FAILURE() << "sandbox " << i << ": " << e.what();
        }
    }
    EXPECT_EQ(ok, kCount);
    for (const auto& id : ids) {
        kill(id);
    }
}

}  // namespace

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    service = new Service;
    ::testing::AddGlobalTestEnvironment(service);
    return RUN_ALL_TESTS();
}

TEST(SandboxE2E, KillNineAndRestartKeepsEverySandboxAndLeaksNoVm) {
    auto running = create();
    exec(running, "echo kept > /root/file");
    auto started = call("POST", "/v1/sandboxes/" + running + "/exec",
                        json::object{{"cmd", "sleep 100000"}, {"background", true}});
    ASSERT_EQ(started.status, 201) << started.body;
    auto hibernated = create();
    exec(hibernated, "echo asleep > /root/file");
    ASSERT_EQ(call("POST", "/v1/sandboxes/" + hibernated + "/hibernate", json::object{}).status,
              200);
    auto snap = call("POST", "/v1/sandboxes/" + running + "/snapshots", json::object{});
    ASSERT_EQ(snap.status, 201) << snap.body;
    std::string snapshot_id(snap.json().at("id").as_string());

    service->stop_daemon(SIGKILL);
    service->start_daemon();

    EXPECT_EQ(stdout_of(running, "cat /root/file"), "kept\n");
    auto processes = call("GET", "/v1/sandboxes/" + running + "/processes");
    EXPECT_NE(processes.body.find("sleep 100000"), std::string::npos) << processes.body;
    EXPECT_EQ(call("GET", "/v1/sandboxes/" + hibernated).json().at("state").as_string(),
              "hibernated");
    EXPECT_EQ(stdout_of(hibernated, "cat /root/file"), "asleep\n");  // woken by the exec
    auto from_snapshot = create(json::object{{"snapshot_id", snapshot_id}});
    EXPECT_EQ(stdout_of(from_snapshot, "cat /root/file"), "kept\n");
    // One VM per running sandbox, nothing else.
    EXPECT_EQ(service->vm_count(), 3u);
    for (const auto& id : {running, hibernated, from_snapshot}) {
        kill(id);
    }
    EXPECT_EQ(service->vm_count(), 0u);
    EXPECT_EQ(call("DELETE", "/v1/snapshots/" + snapshot_id).status, 204);
}

TEST(SandboxE2E, FileOperationsTtlChangesAndKeys) {
    auto id = create();
    std::string base = "/v1/sandboxes/" + id + "/files";
    auto made =
        call("POST", base + "/mkdir", json::object{{"path", "/root/a/b"}, {"parents", true}});
    EXPECT_EQ(made.status, 201) << made.body;
    exec(id, "echo data > /root/a/b/f.txt");
    auto listed = call("GET", base + "/list?path=/root/a/b");
    ASSERT_EQ(listed.status, 200) << listed.body;
    EXPECT_NE(listed.body.find("f.txt"), std::string::npos) << listed.body;
    auto stat = call("GET", base + "/stat?path=/root/a/b/f.txt");
    ASSERT_EQ(stat.status, 200) << stat.body;
    EXPECT_EQ(stat.json().at("size").as_int64(), 5);
    auto renamed = call("POST", base + "/rename",
                        json::object{{"from", "/root/a/b/f.txt"}, {"to", "/root/a/g.txt"}});
    EXPECT_EQ(renamed.status, 200) << renamed.body;
    EXPECT_EQ(stdout_of(id, "cat /root/a/g.txt"), "data\n");
    EXPECT_EQ(call("GET", base + "/stat?path=/root/a/b/f.txt").code(), "file_not_found");
    EXPECT_EQ(call("DELETE", base + "?path=/root/a&recursive=true").status, 204);
    EXPECT_EQ(call("GET", base + "?path=/root/a/g.txt").status, 404);

    // A TTL set later is counted from now; null removes it.
    auto patched = call("PATCH", "/v1/sandboxes/" + id, json::object{{"ttl_seconds", 3600}});
    ASSERT_EQ(patched.status, 200) << patched.body;
    EXPECT_TRUE(patched.json().at("expires_at").is_string());
    patched = call("PATCH", "/v1/sandboxes/" + id, json::object{{"ttl_seconds", nullptr}});
    ASSERT_EQ(patched.status, 200) << patched.body;
    EXPECT_TRUE(patched.json().at("expires_at").is_null());
    kill(id);

    // A key made over the API works at once, and not after it is revoked.
    auto key = call("POST", "/v1/keys", json::object{{"name", "ci"}});
    ASSERT_EQ(key.status, 201) << key.body;
    std::string secret(key.json().at("key").as_string());
    std::string key_id(key.json().at("id").as_string());
    EXPECT_EQ(service->request("GET", "/v1/sandboxes", std::nullopt, secret).status, 200);
    auto keys = call("GET", "/v1/keys");
    EXPECT_EQ(keys.body.find(secret), std::string::npos) << "secrets must never be listed";
    EXPECT_EQ(call("DELETE", "/v1/keys/" + key_id).status, 204);
    EXPECT_EQ(service->request("GET", "/v1/sandboxes", std::nullopt, secret).status, 401);
}
