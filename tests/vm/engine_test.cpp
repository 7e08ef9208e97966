// Boots real QEMU microVMs from the built templates and checks what users of the engine rely on:
// commands, streams, files, background processes, isolation between VMs, clear errors for bad
// input, and that nothing of a VM is left on the host afterwards.

#include "holt/vm/engine.hpp"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "holt/common/data_dir.hpp"
#include "holt/common/error.hpp"
#include "holt/vm/agent_client.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;
using ExecSpec = ExecRequest;
using ::testing::HasSubstr;

// Each test process keeps its VMs' runtime files apart from any other's.
fs::path test_run_dir() {
    static fs::path root = "/tmp/holt-vmtest-" + std::to_string(::getpid());
    return root;
}

EngineOptions engine_options() {
    EngineOptions options;
    options.data_dir = default_data_dir();
    options.recipes_dir = HOLT_IMAGES_DIR;
    options.run_dir = test_run_dir();
    return options;
}

Engine& engine() {
    static Engine instance(engine_options());
    return instance;
}

// Runtime directories, disk layers and snapshot files of VMs that should be gone.
std::vector<std::string> leftover_runtime_files() {
    std::vector<std::string> names;
    std::error_code ec;
    for (const char* sub : {"vms", "layers", "snapshots"}) {
        for (const auto& entry : fs::directory_iterator(test_run_dir() / sub, ec)) {
            names.push_back(std::string(sub) + "/" + entry.path().filename().string());
        }
    }
    return names;
}

// QEMU processes whose command line names this test's runtime root.
int qemu_processes_of_this_test() {
    int count = 0;
    for (const auto& entry : fs::directory_iterator("/proc")) {
        std::string name = entry.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) {
            continue;
        }
        std::ifstream in(entry.path() / "cmdline");
        std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (cmdline.find("qemu-system") != std::string::npos &&
            cmdline.find(test_run_dir().string()) != std::string::npos) {
            ++count;
        }
    }
    return count;
}

ExecSpec shell(const std::string& command) {
    ExecSpec spec;
    spec.shell = command;
    return spec;
}

std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "(no error)";
}

// One VM shared by the tests that only run commands in it; the isolation and cleanup tests boot
// their own.
class VmTest : public ::testing::Test {
  protected:
    static void SetUpTestSuite() { vm_ = engine().create({.template_name = "base"}).release(); }
    static void TearDownTestSuite() {
        delete vm_;
        vm_ = nullptr;
        EXPECT_THAT(leftover_runtime_files(), ::testing::IsEmpty());
        EXPECT_EQ(qemu_processes_of_this_test(), 0);
    }
    static Vm* vm_;
};
Vm* VmTest::vm_ = nullptr;

TEST_F(VmTest, RunsACommandAndReportsItsOutputAndExitCode) {
    auto result = vm_->agent().run(shell("echo hello; echo oops >&2; exit 3"));
    EXPECT_EQ(result.stdout_data, "hello\n");
    EXPECT_EQ(result.stderr_data, "oops\n");
    EXPECT_EQ(result.status.exit_code, 3);

    ExecSpec uname;
    uname.argv = {"uname", "-r"};
    auto kernel = vm_->agent().run(uname);
    EXPECT_EQ(kernel.status.exit_code, 0);
    EXPECT_THAT(kernel.stdout_data, HasSubstr("cloud-amd64"));
}

TEST_F(VmTest, ACommandPastItsTimeoutIsKilled) {
    ExecSpec spec = shell("echo started; sleep 60; echo never");
    spec.timeout = std::chrono::milliseconds(1000);
    auto start = std::chrono::steady_clock::now();
    auto result = vm_->agent().run(spec);
    EXPECT_TRUE(result.status.timed_out);
    EXPECT_TRUE(result.status.signal.has_value());
    EXPECT_EQ(result.stdout_data, "started\n");
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
}

TEST_F(VmTest, ACommandThatDoesNotExistIsAClearError) {
    ExecSpec spec;
    spec.argv = {"no-such-command-xyz", "--flag"};
    std::string error = error_of([&] { vm_->agent().run(spec); });
    EXPECT_THAT(error, HasSubstr("no-such-command-xyz"));
    EXPECT_THAT(error, HasSubstr("No such file or directory"));
}

TEST_F(VmTest, ParallelCommandsKeepTheirStreamedOutputApart) {
    constexpr int kCommands = 4;
    constexpr int kLines = 20;
    std::vector<std::string> outputs(kCommands);
    std::vector<int> chunks(kCommands, 0);
    std::vector<std::unique_ptr<ExecSession>> sessions;
    for (int i = 0; i < kCommands; ++i) {
        ExecCallbacks callbacks;
        callbacks.on_stdout = [&, i](std::string_view data) {
            outputs[i] += data;
            ++chunks[i];
        };
        sessions.push_back(vm_->agent().start(
            shell("for n in $(seq 1 " + std::to_string(kLines) + "); do echo cmd" +
                  std::to_string(i) + "-$n; sleep 0.01; done"),
            callbacks));
    }
    for (auto& session : sessions) {
        EXPECT_EQ(session->wait().exit_code, 0);
    }
    for (int i = 0; i < kCommands; ++i) {
        std::istringstream lines(outputs[i]);
        std::string line;
        int n = 0;
        while (std::getline(lines, line)) {
            ++n;
            EXPECT_EQ(line, "cmd" + std::to_string(i) + "-" + std::to_string(n));
        }
        EXPECT_EQ(n, kLines);
        // Streamed as produced, not delivered in one piece at the end.
        EXPECT_GT(chunks[i], kLines / 4);
    }
}

TEST_F(VmTest, A64MiBFileRoundTripsByteForByte) {
    std::string data(64 << 20, '\0');
    std::mt19937_64 rng(42);
    for (std::size_t i = 0; i + 8 <= data.size(); i += 8) {
        std::uint64_t v = rng();
        std::memcpy(&data[i], &v, 8);
    }
    std::istringstream in(data);
    vm_->agent().write_file("/root/big.bin", in, {});
    EXPECT_EQ(vm_->agent().stat("/root/big.bin").size, data.size());

    std::ostringstream out;
    vm_->agent().read_file("/root/big.bin", out);
    EXPECT_TRUE(out.str() == data) << "read back " << out.str().size() << " bytes that differ";
}

TEST_F(VmTest, ABackgroundProcessKeepsRunningAcrossAReconnect) {
    ExecSpec spec = shell("i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done");
    spec.background = true;
    std::string id = vm_->agent().start(spec, {})->process_id();
    ASSERT_FALSE(id.empty());

    AgentClient& fresh = vm_->reconnect_agent();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    auto processes = fresh.processes();
    auto it =
        std::find_if(processes.begin(), processes.end(), [&](const auto& p) { return p.id == id; });
    ASSERT_NE(it, processes.end());
    EXPECT_TRUE(it->running);

    std::string seen;
    std::mutex mutex;
    ExecCallbacks callbacks;
    callbacks.on_stdout = [&](std::string_view data) {
        std::lock_guard lock(mutex);
        seen += data;
    };
    auto attached = fresh.attach(id, callbacks);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
        {
            std::lock_guard lock(mutex);
            if (seen.find("tick 5\n") != std::string::npos) {
                break;
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    fresh.signal(id, SIGKILL);
    auto status = attached->wait();
    EXPECT_EQ(status.signal, SIGKILL);
    std::lock_guard lock(mutex);
    EXPECT_THAT(seen, HasSubstr("tick 0\n"));  // buffered while nobody listened
    EXPECT_THAT(seen, HasSubstr("tick 5\n"));
}

TEST(VmIsolationTest, AColdBootedVmRunsCommands) {
    auto vm = engine().boot({.template_name = "base"});
    auto result = vm->agent().run(shell("cat /proc/1/comm"));
    EXPECT_EQ(result.stdout_data, "holt-agent\n");
    vm->stop();
    EXPECT_FALSE(vm->machine().running());
}

TEST(VmIsolationTest, TwoVmsFromOneTemplateDoNotSeeEachOthersFiles) {
    auto a = engine().create({.template_name = "base"});
    auto b = engine().create({.template_name = "base"});
    std::istringstream secret("only in a");
    a->agent().write_file("/root/secret.txt", secret, {});
    EXPECT_EQ(a->agent().stat("/root/secret.txt").size, 9u);
    EXPECT_THAT(error_of([&] { b->agent().stat("/root/secret.txt"); }),
                HasSubstr("No such file or directory"));
    auto run = b->agent().run(shell("ls /root"));
    EXPECT_THAT(run.stdout_data, ::testing::Not(HasSubstr("secret")));
}

TEST(VmIsolationTest, TheCodeInterpreterTemplateHasPythonWithNumpy) {
    auto vm = engine().create({.template_name = "code-interpreter"});
    auto result = vm->agent().run(shell("python3 -c 'import numpy, pandas; print(6*7)'"));
    EXPECT_EQ(result.stdout_data, "42\n") << result.stderr_data;
}

// Reads what a connected socket sends until it closes.
std::string read_all(int fd) {
    std::string data;
    char buffer[4096];
    ssize_t n;
    while ((n = ::read(fd, buffer, sizeof(buffer))) > 0) {
        data.append(buffer, static_cast<std::size_t>(n));
    }
    return data;
}

TEST(VmNetworkTest, AServerInTheGuestAnswersTheHostButTheGuestCannotReachTheHostOrAnotherVm) {
    auto vm = engine().create({.template_name = "code-interpreter", .network = NetworkPolicy{}});
    auto other = engine().create({.template_name = "code-interpreter", .network = NetworkPolicy{}});
    ASSERT_NE(vm->network(), nullptr);
    ExecRequest server =
        shell("cd /tmp && echo hello-from-guest > index.html && exec python3 -m http.server 8080");
    server.background = true;
    vm->agent().start(server, {});

    std::string response;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
    while (response.find("hello-from-guest") == std::string::npos &&
           std::chrono::steady_clock::now() < deadline) {
        try {
            int fd = vm->network()->connect_tcp(8080, std::chrono::seconds(2));
            std::string request = "GET /index.html HTTP/1.0\r\n\r\n";
            ASSERT_EQ(::write(fd, request.data(), request.size()),
                      static_cast<ssize_t>(request.size()));
            response = read_all(fd);
            ::close(fd);
        } catch (const Error&) {
            std::this_thread::sleep_for(std::chrono::milliseconds(250));  // still starting
        }
    }
    EXPECT_THAT(response, HasSubstr("200 OK"));
    EXPECT_THAT(response, HasSubstr("hello-from-guest"));

    // A service on the host that no VM was given access to, and the other VM's links.
    int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::listen(listener, 4), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
    std::string port = std::to_string(ntohs(addr.sin_port));
    std::string targets = vm->network()->host_link_address() + " " +
                          other->network()->host_link_address() + " " +
                          other->network()->namespace_link_address() + " " + kGuestGateway;
    auto probe =
        vm->agent().run(shell("python3 -c 'import socket, sys\n"
                              "for a in sys.argv[2:]:\n"
                              "    try:\n"
                              "        socket.create_connection((a, int(sys.argv[1])), timeout=3); "
                              "print(\"reached\", a)\n"
                              "    except OSError:\n"
                              "        print(\"blocked\", a)' " +
                              port + " " + targets));
    ::close(listener);
    EXPECT_THAT(probe.stdout_data, HasSubstr("blocked " + vm->network()->host_link_address()));
    EXPECT_THAT(probe.stdout_data, ::testing::Not(HasSubstr("reached"))) << probe.stderr_data;
}

TEST(VmBadInputTest, AnUnknownTemplateIsNamedAndNothingIsCreated) {
    std::string error = error_of([&] { engine().boot({.template_name = "no-such-template"}); });
    EXPECT_THAT(error, HasSubstr("unknown template \"no-such-template\""));
    EXPECT_THAT(error, HasSubstr("base"));
    EXPECT_THAT(leftover_runtime_files(), ::testing::IsEmpty());
}

TEST(VmBadInputTest, AGuestThatDoesNotBootInTimeFailsWithItsConsoleAndLeavesNothing) {
    std::string error = error_of([&] {
        engine().boot({.template_name = "base", .boot_timeout = std::chrono::milliseconds(300)});
    });
    EXPECT_THAT(error, HasSubstr("no answer before the deadline"));
    EXPECT_THAT(error, HasSubstr("last console lines"));
    EXPECT_THAT(leftover_runtime_files(), ::testing::IsEmpty());
    EXPECT_EQ(qemu_processes_of_this_test(), 0);
}

TEST(VmBadInputTest, AGuestThatCrashesAtBootReportsWhy) {
    // 40 MiB is too little for the kernel and its initramfs: the guest panics and QEMU exits.
    std::string error =
        error_of([&] { engine().boot({.template_name = "base", .memory_mib = 40}); });
    EXPECT_THAT(error, HasSubstr("the guest stopped before its agent answered"));
    EXPECT_THAT(leftover_runtime_files(), ::testing::IsEmpty());
    EXPECT_EQ(qemu_processes_of_this_test(), 0);
}

TEST(VmBadInputTest, AMissingKernelIsNamed) {
    // A copy of the base template whose manifest points at a kernel that is not there.
    fs::path data = "/tmp/holt-vmtest-data-" + std::to_string(::getpid());
    fs::create_directories(data / "images/broken");
    TemplateImage base = engine().images().get("base");
    std::ofstream(data / "images/broken/manifest.json")
        << R"({"format":1,"template":"broken","kernel":"/nonexistent/vmlinuz","initrd":")"
        << base.initrd.string() << R"(","rootfs":")" << base.rootfs.string()
        << R"(","rootfs_format":"raw","kernel_version":"x","recipe_hash":"x"})";
    EngineOptions options = engine_options();
    options.data_dir = data;
    options.accel = AcceleratorMode::tcg;
    Engine broken(options);
    std::string error = error_of([&] { broken.boot({.template_name = "broken"}); });
    fs::remove_all(data);
    EXPECT_THAT(error, HasSubstr("kernel /nonexistent/vmlinuz is missing"));
}

}  // namespace
}  // namespace holt::vm
