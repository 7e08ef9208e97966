// End-to-end tests of the guest agent and the host client: the real holt-agent binary runs on
// the host (no VM) and is driven through the real AgentClient.

#include "holt/vm/agent_client.hpp"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <istream>
#include <mutex>
#include <sstream>
#include <thread>

#include "agent_process.hpp"
#include "holt/agent_protocol/frame.hpp"

namespace holt::test {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using vm::AgentClient;
using vm::AgentError;
using vm::ExecRequest;
using Clock = std::chrono::steady_clock;

ExecRequest shell(const std::string& command) {
    ExecRequest request;
    request.shell = command;
    return request;
}

ExecRequest argv(std::vector<std::string> args) {
    ExecRequest request;
    request.argv = std::move(args);
    return request;
}

// A deterministic byte sequence that is generated, never stored: the 64 MiB round trip keeps
// memory flat on the host side too.
class PatternSource : public std::streambuf {
  public:
    explicit PatternSource(std::uint64_t size) : left_(size) {}

    static char byte_at(std::uint64_t position) {
        std::uint64_t x = position * 0x9E3779B97F4A7C15ull;
        x ^= x >> 29;
        return static_cast<char>(x >> 7);
    }

  protected:
    int_type underflow() override {
        if (left_ == 0) {
            return traits_type::eof();
        }
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left_, kChunk));
        for (std::size_t i = 0; i < n; ++i) {
            buffer_[i] = byte_at(position_ + i);
        }
        position_ += n;
        left_ -= n;
        setg(buffer_, buffer_, buffer_ + n);
        return traits_type::to_int_type(buffer_[0]);
    }

  private:
    static constexpr std::size_t kChunk = 64 * 1024;
    char buffer_[kChunk];
    std::uint64_t left_;
    std::uint64_t position_ = 0;
};

class TempDir {
  public:
    TempDir() {
        char dir[] = "/tmp/holt-agent-files-XXXXXX";
        path_ = ::mkdtemp(dir);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    std::string operator/(const std::string& name) const { return (path_ / name).string(); }
    const std::filesystem::path& path() const { return path_; }

  private:
    std::filesystem::path path_;
};

// Expects `call` to throw AgentError with `code` and a message containing `text`.
template <typename Fn>
void expect_agent_error(Fn&& call, const std::string& code, const std::string& text) {
    try {
        call();
        ADD_FAILURE() << "no AgentError (expected " << code << ")";
    } catch (const AgentError& e) {
        EXPECT_EQ(e.code(), code) << e.what();
        EXPECT_THAT(e.what(), HasSubstr(text));
    }
}

// Memory bounds are meaningless under AddressSanitizer (its quarantine keeps freed memory).
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kCheckMemory = false;
#else
constexpr bool kCheckMemory = true;
#endif

bool process_exists(pid_t pid) {
    return ::kill(pid, 0) == 0 || errno != ESRCH;
}

bool wait_until(const std::function<bool()>& condition, Clock::duration timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
        if (condition()) {
            return true;
        }
        std::this_thread::sleep_for(10ms);
    }
    return condition();
}

class AgentTest : public ::testing::Test {
  protected:
    void SetUp() override {
        agent_ = AgentProcess::stdio();
        client_ = agent_->connect();
    }

    std::unique_ptr<AgentProcess> agent_;
    std::unique_ptr<AgentClient> client_;
};

TEST_F(AgentTest, HealthReportsVersionsAndUptime) {
    vm::HealthInfo health = client_->health();
    EXPECT_EQ(health.protocol_version, agent_protocol::kProtocolVersion);
    EXPECT_FALSE(health.agent_version.empty());
    EXPECT_EQ(health.agent_version, client_->agent_version());
    EXPECT_FALSE(health.boot_id.empty());
    EXPECT_GT(health.uptime.count(), 0);
    EXPECT_FALSE(health.pid1);
    EXPECT_EQ(health.running_processes, 0);
}

TEST_F(AgentTest, RunReportsStdoutStderrAndExitCode) {
    vm::ExecResult result = client_->run(shell("echo out; echo err >&2; exit 3"));
    EXPECT_EQ(result.stdout_data, "out\n");
    EXPECT_EQ(result.stderr_data, "err\n");
    EXPECT_EQ(result.status.exit_code, 3);
    EXPECT_FALSE(result.status.signal.has_value());
    EXPECT_FALSE(result.status.timed_out);
    EXPECT_FALSE(result.status.success());
    EXPECT_THAT(result.process_id, ::testing::StartsWith("p-"));

    vm::ExecResult ok = client_->run(argv({"true"}));
    EXPECT_TRUE(ok.status.success());
}

TEST_F(AgentTest, RunReportsTheTerminatingSignal) {
    vm::ExecResult result = client_->run(shell("kill -KILL $$"));
    EXPECT_FALSE(result.status.exit_code.has_value());
    EXPECT_EQ(result.status.signal, SIGKILL);
}

TEST_F(AgentTest, TimeoutKillsTheWholeProcessGroup) {
    TempDir dir;
    ExecRequest request = shell("sleep 30 & echo $! > " + dir / "pid" + "; wait");
    request.timeout = 300ms;
    request.kill_grace = 300ms;
    const auto start = Clock::now();
    vm::ExecResult result = client_->run(request);
    EXPECT_TRUE(result.status.timed_out);
    EXPECT_EQ(result.status.signal, SIGTERM);
    EXPECT_LT(Clock::now() - start, 5s);
    EXPECT_GE(result.status.duration, 300ms);

    // The sleep in the background of the shell was in its group: gone too (and reaped by the
    // agent, which adopts orphans).
    std::ifstream pid_file(dir / "pid");
    pid_t sleeper = 0;
    ASSERT_TRUE(pid_file >> sleeper);
    EXPECT_TRUE(wait_until([&] { return !process_exists(sleeper); }, 3s));
}

TEST_F(AgentTest, AMissingCommandIsAClearError) {
    expect_agent_error(
        [&] {
            client_->run(argv({"no-such-command-xyz", "arg"}));
        },
        "ENOENT", "exec no-such-command-xyz: No such file or directory");
}

TEST_F(AgentTest, StartFailuresNameTheCommandAndTheReason) {
    ExecRequest bad_cwd = argv({"ls"});
    bad_cwd.cwd = "/nonexistent-dir";
    expect_agent_error([&] { client_->run(bad_cwd); }, "ENOENT",
                       "exec ls: chdir /nonexistent-dir: No such file or directory");

    ExecRequest bad_user = argv({"id"});
    bad_user.user = "no-such-user-xyz";
    expect_agent_error([&] { client_->run(bad_user); }, "EINVAL",
                       "exec id: unknown user 'no-such-user-xyz'");

    TempDir dir;
    const std::string script = dir / "not-executable.sh";
    std::ofstream(script) << "#!/bin/sh\necho hi\n";
    expect_agent_error([&] { client_->run(argv({script})); }, "EACCES",
                       "exec " + script + ": Permission denied");
}

TEST_F(AgentTest, RunsAsAnotherUserFromEtcPasswd) {
    if (::geteuid() != 0) {
        GTEST_SKIP() << "needs root to switch users";
    }
    ExecRequest request = shell("id -u; id -g; echo $USER $HOME; pwd");
    request.user = "nobody";
    vm::ExecResult result = client_->run(request);
    ASSERT_TRUE(result.status.success()) << result.stderr_data;
    // nobody's home (/nonexistent) does not exist, so the command starts in /.
    EXPECT_EQ(result.stdout_data, "65534\n65534\nnobody /nonexistent\n/\n");

    request.user = "65534";  // a uid works too
    EXPECT_EQ(client_->run(request).stdout_data, result.stdout_data);
}

TEST_F(AgentTest, EnvironmentCwdAndDefaults) {
    client_->set_env({{"HOLT_DEFAULT", "from-set-env"}, {"HOLT_OVERRIDDEN", "default"}}, {});
    ExecRequest request = shell("echo $HOLT_DEFAULT $HOLT_OVERRIDDEN $LANG; pwd; echo $PATH");
    request.env = {{"HOLT_OVERRIDDEN", "from-request"}};
    request.cwd = "/tmp";
    vm::ExecResult result = client_->run(request);
    EXPECT_THAT(result.stdout_data,
                ::testing::StartsWith("from-set-env from-request C.UTF-8\n/tmp\n"));
    EXPECT_THAT(result.stdout_data, HasSubstr("/usr/bin"));

    client_->set_env({}, {"HOLT_DEFAULT"});
    EXPECT_EQ(client_->run(shell("echo \"[$HOLT_DEFAULT]\"")).stdout_data, "[]\n");
}

TEST_F(AgentTest, OutputIsStreamedAsItIsProduced) {
    std::mutex mutex;
    std::string seen;
    Clock::time_point first_output;
    vm::ExecCallbacks callbacks;
    callbacks.on_stdout = [&](std::string_view data) {
        std::lock_guard lock(mutex);
        if (seen.empty()) {
            first_output = Clock::now();
        }
        seen.append(data);
    };
    auto session = client_->start(shell("echo first; sleep 0.5; echo second"), callbacks);
    vm::ExitStatus status = session->wait();
    const auto ended = Clock::now();
    EXPECT_TRUE(status.success());
    std::lock_guard lock(mutex);
    EXPECT_EQ(seen, "first\nsecond\n");
    // "first" arrived while the command was still sleeping, not with the exit.
    EXPECT_GT(ended - first_output, 300ms);
}

TEST_F(AgentTest, ParallelCommandsKeepTheirOutputsApart) {
    constexpr int kCommands = 4;
    constexpr int kLines = 200;
    std::vector<vm::ExecResult> results(kCommands);
    std::vector<std::thread> threads;
    const auto start = Clock::now();
    for (int i = 0; i < kCommands; ++i) {
        threads.emplace_back([&, i] {
            const std::string tag = "tag" + std::to_string(i);
            results[i] =
                client_->run(shell("for n in $(seq " + std::to_string(kLines) + "); do echo " +
                                   tag + "-$n; echo " + tag + "-err-$n >&2; sleep 0.001; done"));
        });
    }
    for (auto& thread : threads) {
        thread.join();
    }
    for (int i = 0; i < kCommands; ++i) {
        const std::string tag = "tag" + std::to_string(i);
        std::string expected_out, expected_err;
        for (int n = 1; n <= kLines; ++n) {
            expected_out += tag + "-" + std::to_string(n) + "\n";
            expected_err += tag + "-err-" + std::to_string(n) + "\n";
        }
        EXPECT_EQ(results[i].stdout_data, expected_out) << tag;
        EXPECT_EQ(results[i].stderr_data, expected_err) << tag;
        EXPECT_TRUE(results[i].status.success());
    }
    // They ran side by side, not one after another (each takes at least 200 sleeps).
    std::cerr << "4 parallel commands took "
              << std::chrono::duration<double>(Clock::now() - start).count() << " s\n";
}

TEST_F(AgentTest, StdinRoundTrip) {
    std::string input;
    for (int i = 0; i < 300000; ++i) {
        input += static_cast<char>('a' + (i * 7) % 26);
    }
    ExecRequest request = argv({"cat"});
    request.stdin_data = input;
    vm::ExecResult result = client_->run(request);
    EXPECT_TRUE(result.status.success());
    EXPECT_EQ(result.stdout_data.size(), input.size());
    EXPECT_TRUE(result.stdout_data == input);

    // Streamed stdin: a line at a time, answered a line at a time.
    std::mutex mutex;
    std::string out;
    ExecRequest interactive = shell("while read line; do echo \"got $line\"; done");
    interactive.pipe_stdin = true;
    auto session = client_->start(interactive, {.on_stdout = [&](std::string_view data) {
                                      std::lock_guard lock(mutex);
                                      out.append(data);
                                  }});
    EXPECT_TRUE(session->write_stdin("one\n"));
    EXPECT_TRUE(wait_until(
        [&] {
            std::lock_guard lock(mutex);
            return out == "got one\n";
        },
        5s));
    EXPECT_TRUE(session->write_stdin("two\n"));
    session->close_stdin();
    EXPECT_TRUE(session->wait().success());
    std::lock_guard lock(mutex);
    EXPECT_EQ(out, "got one\ngot two\n");
}

TEST_F(AgentTest, StdinOfAnExitedCommandIsRefusedNotHung) {
    ExecRequest request = argv({"true"});
    request.pipe_stdin = true;
    auto session = client_->start(request, {});
    EXPECT_TRUE(session->wait().success());
    EXPECT_FALSE(session->write_stdin(std::string(1 << 20, 'x')));
}

TEST_F(AgentTest, SignalAndProcessList) {
    ExecRequest request = argv({"sleep", "30"});
    auto session = client_->start(request, {});
    std::vector<vm::ProcessInfo> list = client_->processes();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_EQ(list[0].id, session->process_id());
    EXPECT_EQ(list[0].pid, session->pid());
    EXPECT_EQ(list[0].argv, (std::vector<std::string>{"sleep", "30"}));
    EXPECT_TRUE(list[0].running);
    EXPECT_FALSE(list[0].background);

    session->signal(SIGTERM);
    vm::ExitStatus status = session->wait();
    EXPECT_EQ(status.signal, SIGTERM);
    // A finished foreground command leaves the table.
    EXPECT_TRUE(client_->processes().empty());

    expect_agent_error([&] { client_->signal("p-999", SIGTERM); }, "ENOENT",
                       "signal p-999: no such process");
}

TEST_F(AgentTest, TerminalGetsItsSizeAndResizes) {
    ExecRequest request = shell("tty; stty size; read line; stty size");
    request.pty = vm::TerminalSize{30, 100};
    request.pipe_stdin = true;
    std::mutex mutex;
    std::string out;
    auto session = client_->start(request, {.on_stdout = [&](std::string_view data) {
                                      std::lock_guard lock(mutex);
                                      out.append(data);
                                  }});
    ASSERT_TRUE(wait_until(
        [&] {
            std::lock_guard lock(mutex);
            return out.find("30 100") != std::string::npos;
        },
        5s));
    session->resize({40, 120});
    session->write_stdin("\n");
    EXPECT_TRUE(session->wait().success());
    std::lock_guard lock(mutex);
    EXPECT_THAT(out, HasSubstr("/dev/pts/"));
    EXPECT_THAT(out, HasSubstr("40 120"));
}

TEST_F(AgentTest, LargeFileRoundTripStreamsWithBoundedMemory) {
    constexpr std::uint64_t kSize = 64ull << 20;
    TempDir dir;
    const std::string path = dir / "big.bin";
    const long host_peak_before = peak_rss_kib("self");

    const auto start = Clock::now();
    PatternSource source(kSize);
    std::istream data(&source);
    EXPECT_EQ(client_->write_file(path, data), kSize);
    const auto written = Clock::now();

    std::uint64_t position = 0;
    std::uint64_t mismatches = 0;
    std::uint64_t read = client_->read_file(path, [&](std::string_view chunk) {
        for (char c : chunk) {
            mismatches += c != PatternSource::byte_at(position++);
        }
    });
    const auto done = Clock::now();
    EXPECT_EQ(read, kSize);
    EXPECT_EQ(position, kSize);
    EXPECT_EQ(mismatches, 0u);
    EXPECT_EQ(std::filesystem::file_size(path), kSize);

    const long agent_peak = agent_->peak_rss_kib();
    const long host_growth = peak_rss_kib("self") - host_peak_before;
    std::cerr << "64 MiB write " << std::chrono::duration<double>(written - start).count()
              << " s, read " << std::chrono::duration<double>(done - written).count()
              << " s; agent peak RSS " << agent_peak / 1024 << " MiB, host peak growth "
              << host_growth / 1024 << " MiB\n";
    // Neither side ever held the file: the agent stays within a few MiB of buffers.
    if (kCheckMemory) {
        EXPECT_LT(agent_peak, 24 * 1024);
        EXPECT_LT(host_growth, 32 * 1024);
    }
}

TEST_F(AgentTest, WriteFileOptions) {
    TempDir dir;
    const std::string nested = dir / "a/b/c.txt";
    std::istringstream hello("hello");
    expect_agent_error([&] { client_->write_file(nested, hello); }, "ENOENT",
                       "write " + nested + ": No such file or directory");

    std::istringstream again("hello");
    EXPECT_EQ(client_->write_file(nested, again, {.mode = 0600, .make_parents = true}), 5u);
    std::istringstream more(" world");
    client_->write_file(nested, more, {.mode = 0600, .append = true});
    std::ostringstream back;
    client_->read_file(nested, back);
    EXPECT_EQ(back.str(), "hello world");
    vm::FileStat stat = client_->stat(nested);
    EXPECT_EQ(stat.mode, 0600u);
    EXPECT_EQ(stat.size, 11u);

    // No temporary files are left behind.
    EXPECT_EQ(client_->list(dir / "a/b").size(), 1u);
}

TEST_F(AgentTest, FileErrorsCarryCodePathAndReason) {
    TempDir dir;
    std::ostringstream sink;
    expect_agent_error([&] { client_->read_file("/nonexistent-file", sink); }, "ENOENT",
                       "read /nonexistent-file: No such file or directory");
    expect_agent_error([&] { client_->read_file(dir.path().string(), sink); }, "EISDIR",
                       "read " + dir.path().string() + ": Is a directory");
    std::istringstream data("x");
    expect_agent_error([&] { client_->write_file(dir.path().string(), data); }, "EISDIR",
                       "write " + dir.path().string() + ": Is a directory");
    expect_agent_error([&] { client_->stat("/nonexistent-file"); }, "ENOENT",
                       "stat /nonexistent-file: No such file or directory");
    expect_agent_error([&] { client_->list("/etc/hostname"); }, "ENOTDIR",
                       "list /etc/hostname: Not a directory");
    expect_agent_error([&] { client_->stat("relative/path"); }, "EINVAL", "must be absolute");
    // The connection is still fine after errors.
    EXPECT_TRUE(client_->run(argv({"true"})).status.success());
}

TEST_F(AgentTest, DirectoryOperations) {
    TempDir dir;
    client_->mkdir(dir / "x/y/z", /*parents=*/true, 0750);
    expect_agent_error([&] { client_->mkdir(dir / "x", false, 0755); }, "EEXIST",
                       "mkdir " + dir / "x" + ": File exists");
    std::istringstream data("12345");
    client_->write_file(dir / "x/y/file.txt", data);

    std::vector<vm::DirEntry> top = client_->list(dir.path().string(), 1);
    ASSERT_EQ(top.size(), 1u);
    EXPECT_EQ(top[0].name, "x");
    EXPECT_EQ(top[0].type, vm::FileType::kDirectory);

    std::vector<vm::DirEntry> all = client_->list(dir.path().string(), 3);
    std::vector<std::string> paths;
    for (const auto& entry : all) {
        paths.push_back(entry.path);
    }
    EXPECT_EQ(paths, (std::vector<std::string>{"x", "x/y", "x/y/file.txt", "x/y/z"}));
    EXPECT_EQ(all[2].size, 5u);
    EXPECT_EQ(all[2].type, vm::FileType::kRegular);
    EXPECT_EQ(all[3].mode, 0750u);

    client_->rename(dir / "x/y/file.txt", dir / "x/moved.txt");
    EXPECT_EQ(client_->stat(dir / "x/moved.txt").size, 5u);
    expect_agent_error([&] { client_->stat(dir / "x/y/file.txt"); }, "ENOENT", "stat");

    expect_agent_error([&] { client_->remove(dir / "x", false); }, "ENOTEMPTY",
                       "remove " + dir / "x");
    client_->remove(dir / "x", true);
    EXPECT_TRUE(client_->list(dir.path().string()).empty());
    expect_agent_error([&] { client_->remove("/", true); }, "EINVAL", "root directory");
}

TEST_F(AgentTest, SystemOperations) {
    // An invalid time is refused (a valid one would change this machine's clock).
    expect_agent_error([&] { client_->set_time(std::chrono::system_clock::time_point{}); },
                       "EINVAL", "set_time");
    std::vector<std::byte> entropy(64, std::byte{0x5a});
    if (::geteuid() == 0) {
        EXPECT_NO_THROW(client_->add_entropy(entropy));
    } else {
        expect_agent_error([&] { client_->add_entropy(entropy); }, "EPERM", "add_entropy");
    }
}

TEST_F(AgentTest, ASlowConsumerPausesTheCommandNotTheAgentMemory) {
    // 64 MiB of output, consumed slowly: the agent must stop reading the pipe instead of
    // queueing the output.
    std::atomic<std::uint64_t> received{0};
    vm::ExecCallbacks callbacks;
    callbacks.on_stdout = [&](std::string_view data) {
        received += data.size();
        if (received < (8u << 20)) {
            std::this_thread::sleep_for(1ms);
        }
    };
    auto session = client_->start(shell("head -c 67108864 /dev/zero"), callbacks);
    EXPECT_TRUE(session->wait().success());
    EXPECT_EQ(received.load(), 64u << 20);
    if (kCheckMemory) {
        EXPECT_LT(agent_->peak_rss_kib(), 24 * 1024);
    }
}

TEST(AgentClientTimeouts, ACallToAStoppedAgentTimesOut) {
    auto agent = AgentProcess::stdio();
    vm::AgentClientOptions options;
    options.call_timeout = 300ms;
    auto client = agent->connect(options);
    ::kill(agent->pid(), SIGSTOP);
    const auto start = Clock::now();
    try {
        client->health();
        ADD_FAILURE() << "no error";
    } catch (const AgentError&) {
        ADD_FAILURE() << "a transport failure must not look like a guest error";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("health: no answer from the agent after 0.3s"));
    }
    EXPECT_LT(Clock::now() - start, 2s);
    ::kill(agent->pid(), SIGCONT);
    // The late reply is dropped; the connection keeps working.
    EXPECT_EQ(client->health().protocol_version, agent_protocol::kProtocolVersion);
}

TEST(AgentClientTimeouts, AgentDeathFailsPendingAndLaterCalls) {
    auto agent = AgentProcess::stdio();
    auto client = agent->connect();
    std::thread killer([&] {
        std::this_thread::sleep_for(200ms);
        ::kill(agent->pid(), SIGKILL);
    });
    try {
        client->run(argv({"sleep", "30"}));
        ADD_FAILURE() << "no error";
    } catch (const AgentError&) {
        ADD_FAILURE() << "a transport failure must not look like a guest error";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("agent connection closed"));
    }
    killer.join();
    EXPECT_FALSE(client->connected());
    EXPECT_THROW(client->health(), Error);
}

TEST(AgentSessions, BackgroundProcessSurvivesTheHostAndCanBeReattached) {
    auto agent = AgentProcess::listening();
    std::string background_id;
    pid_t foreground_pid = 0;
    {
        auto client = agent->connect();
        ExecRequest request = shell(
            "echo started; echo to-stderr >&2; i=0; while [ $i -lt 100 ]; do echo tick $i; "
            "i=$((i+1)); sleep 0.05; done; exit 7");
        request.background = true;
        auto session = client->start(request, {});
        background_id = session->process_id();
        auto foreground = client->start(argv({"sleep", "30"}), {});
        foreground_pid = foreground->pid();
        std::this_thread::sleep_for(200ms);
        // Both sessions and the client go away here without waiting.
    }

    auto client = agent->connect();
    // The foreground command died with its host.
    EXPECT_TRUE(wait_until([&] { return !process_exists(foreground_pid); }, 3s));
    std::vector<vm::ProcessInfo> list = client->processes();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_EQ(list[0].id, background_id);
    EXPECT_TRUE(list[0].background);
    EXPECT_TRUE(list[0].running);

    std::mutex mutex;
    std::string out, err;
    auto attached = client->attach(background_id, {.on_stdout =
                                                       [&](std::string_view data) {
                                                           std::lock_guard lock(mutex);
                                                           out.append(data);
                                                       },
                                                   .on_stderr =
                                                       [&](std::string_view data) {
                                                           std::lock_guard lock(mutex);
                                                           err.append(data);
                                                       }});
    // The replay holds what was printed while no host was attached.
    ASSERT_TRUE(wait_until(
        [&] {
            std::lock_guard lock(mutex);
            return out.find("tick 3\n") != std::string::npos;
        },
        5s));
    {
        std::lock_guard lock(mutex);
        EXPECT_THAT(out, ::testing::StartsWith("started\ntick 0\ntick 1\n"));
        EXPECT_EQ(err, "to-stderr\n");
    }
    attached->signal(SIGTERM);
    vm::ExitStatus status = attached->wait();
    EXPECT_EQ(status.signal, SIGTERM);

    list = client->processes();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_FALSE(list[0].running);
    ASSERT_TRUE(list[0].exit.has_value());
    EXPECT_EQ(list[0].exit->signal, SIGTERM);

    // An exited process can still be attached: replay, then its exit at once.
    std::string replay;
    auto late = client->attach(background_id,
                               {.on_stdout = [&](std::string_view data) { replay.append(data); }});
    EXPECT_EQ(late->wait().signal, SIGTERM);
    EXPECT_THAT(replay, ::testing::StartsWith("started\ntick 0\n"));

    client->forget(background_id);
    EXPECT_TRUE(client->processes().empty());
    expect_agent_error([&] { client->forget(background_id); }, "ENOENT", "no such process");
}

TEST_F(AgentTest, BackgroundOutputIsKeptInABoundedRingBuffer) {
    ExecRequest request = shell("head -c 3000000 /dev/zero | tr '\\0' a; echo -n END");
    request.background = true;
    std::string id = client_->start(request, {})->process_id();
    ASSERT_TRUE(wait_until([&] { return !client_->processes().at(0).running; }, 10s));
    vm::ProcessInfo info = client_->processes().at(0);
    ASSERT_TRUE(info.exit.has_value());
    EXPECT_TRUE(info.exit->success());
    // The last MiB is kept; the rest is counted as dropped.
    EXPECT_EQ(info.dropped_stdout, 3000003u - (1u << 20));
    std::string replay;
    auto attached =
        client_->attach(id, {.on_stdout = [&](std::string_view data) { replay.append(data); }});
    EXPECT_TRUE(attached->wait().success());
    EXPECT_EQ(replay.size(), 1u << 20);
    EXPECT_THAT(replay, ::testing::EndsWith("aaaEND"));
}

TEST_F(AgentTest, ListingsStopAtTheirLimit) {
    TempDir dir;
    for (int i = 0; i < 30; ++i) {
        std::ofstream(dir / ("f" + std::to_string(i)));
    }
    EXPECT_EQ(client_->list(dir.path().string(), 1, 10).size(), 10u);
    EXPECT_EQ(client_->list(dir.path().string()).size(), 30u);
}

TEST(AgentSessions, HandshakeResynchronisesAfterJunkAndAHalfFrame) {
    auto agent = AgentProcess::stdio();
    const int fd = agent->host_fd();
    // A host that sends junk, opens a session, then dies in the middle of a frame: the agent is
    // left waiting for the rest of a 1000-byte payload.
    std::string junk = "junk before any sync sequence\n";
    junk += agent_protocol::sync_magic();
    junk += agent_protocol::encode_frame(agent_protocol::FrameType::kHello,
                                         agent_protocol::Channel::kNone, 0,
                                         R"({"nonce":"old","protocol_version":1})");
    std::string half =
        agent_protocol::encode_frame(agent_protocol::FrameType::kData,
                                     agent_protocol::Channel::kStdin, 5, std::string(1000, 'z'));
    junk += half.substr(0, 100);
    ASSERT_EQ(::write(fd, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));

    // A new host on the same byte stream: it must skip the old host's hello_ack and get the
    // agent out of the half frame.
    const auto start = Clock::now();
    auto client = agent->connect();
    std::cerr << "handshake after a half frame took "
              << std::chrono::duration<double>(Clock::now() - start).count() << " s\n";
    EXPECT_TRUE(client->run(argv({"true"})).status.success());
}

TEST(AgentSessions, ConnectUnixWaitsForTheAgent) {
    // The client starts before the agent's socket exists, as it does while a VM boots.
    TempDir dir;
    const auto socket = dir.path() / "late.sock";
    std::unique_ptr<AgentClient> client;
    std::thread connector([&] { client = AgentClient::connect_unix(socket, Clock::now() + 5s); });
    std::this_thread::sleep_for(300ms);
    // Start an agent listening there.
    pid_t pid = 0;
    {
        std::string binary = HOLT_AGENT_PATH;
        std::string listen = "unix:" + socket.string();
        char* args[] = {binary.data(),
                        const_cast<char*>("--listen"),
                        listen.data(),
                        const_cast<char*>("--log-level"),
                        const_cast<char*>("warn"),
                        nullptr};
        pid = ::fork();
        if (pid == 0) {
            ::execv(args[0], args);
            ::_exit(127);
        }
    }
    connector.join();
    ASSERT_NE(client, nullptr);
    EXPECT_TRUE(client->run(argv({"true"})).status.success());
    client.reset();
    ::kill(pid, SIGTERM);
    ::waitpid(pid, nullptr, 0);

    // Nobody there: a clear error once the deadline passes.
    try {
        AgentClient::connect_unix(dir.path() / "nobody.sock", Clock::now() + 200ms);
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(),
                    HasSubstr("connect to agent at " + (dir.path() / "nobody.sock").string()));
    }
}

TEST(AgentSessions, ExecRoundTripLatency) {
    auto agent = AgentProcess::stdio();
    auto client = agent->connect();
    client->run(argv({"true"}));
    constexpr int kRuns = 50;
    const auto start = Clock::now();
    for (int i = 0; i < kRuns; ++i) {
        ASSERT_TRUE(client->run(argv({"true"})).status.success());
    }
    const double each_ms =
        std::chrono::duration<double, std::milli>(Clock::now() - start).count() / kRuns;
    std::cerr << "exec `true` round trip: " << each_ms << " ms\n";
    EXPECT_LT(each_ms, 100.0);
}

}  // namespace
}  // namespace holt::test
