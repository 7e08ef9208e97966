#include "agent_process.hpp"

#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <stdexcept>
#include <thread>
#include <vector>

extern char** environ;

namespace holt::test {
namespace {

using namespace std::chrono_literals;

pid_t spawn_agent(const std::vector<std::string>& args, int stdio_fd) {
    std::vector<char*> argv;
    std::string binary = HOLT_AGENT_PATH;
    argv.push_back(binary.data());
    std::vector<std::string> copy = args;
    for (std::string& arg : copy) {
        argv.push_back(arg.data());
    }
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (stdio_fd >= 0) {
        posix_spawn_file_actions_adddup2(&actions, stdio_fd, 0);
        posix_spawn_file_actions_adddup2(&actions, stdio_fd, 1);
    }
    pid_t pid = -1;
    int rc = posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
        throw std::runtime_error("spawn " + binary + ": " + std::strerror(rc));
    }
    return pid;
}

}  // namespace

long peak_rss_kib(const std::string& pid) {
    std::ifstream status("/proc/" + pid + "/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("VmHWM:", 0) == 0) {
            return std::stol(line.substr(6));
        }
    }
    return -1;
}

std::unique_ptr<AgentProcess> AgentProcess::stdio() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
        throw std::runtime_error("socketpair failed");
    }
    std::unique_ptr<AgentProcess> agent(new AgentProcess());
    agent->pid_ = spawn_agent({"--stdio", "--log-level", "warn"}, fds[1]);
    ::close(fds[1]);
    agent->host_fd_ = fds[0];
    return agent;
}

std::unique_ptr<AgentProcess> AgentProcess::listening() {
    std::unique_ptr<AgentProcess> agent(new AgentProcess());
    char dir[] = "/tmp/holt-agent-test-XXXXXX";
    if (::mkdtemp(dir) == nullptr) {
        throw std::runtime_error("mkdtemp failed");
    }
    agent->dir_ = dir;
    agent->socket_ = agent->dir_ / "agent.sock";
    agent->pid_ =
        spawn_agent({"--listen", "unix:" + agent->socket_.string(), "--log-level", "warn"}, -1);
    return agent;
}

AgentProcess::~AgentProcess() {
    if (host_fd_ >= 0) {
        ::close(host_fd_);
    }
    if (pid_ > 0) {
        ::kill(pid_, SIGTERM);
        int status = 0;
        // The agent exits at once on SIGTERM; SIGKILL if it does not.
        for (int i = 0; i < 200 && ::waitpid(pid_, &status, WNOHANG) == 0; ++i) {
            std::this_thread::sleep_for(10ms);
        }
        if (::waitpid(pid_, &status, WNOHANG) == 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, &status, 0);
        }
    }
    if (!dir_.empty()) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
}

std::unique_ptr<vm::AgentClient> AgentProcess::connect(vm::AgentClientOptions options) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    if (!socket_.empty()) {
        return vm::AgentClient::connect_unix(socket_, deadline, std::move(options));
    }
    int fd = std::exchange(host_fd_, -1);
    return vm::AgentClient::adopt(fd, deadline, std::move(options));
}

long AgentProcess::peak_rss_kib() const {
    return test::peak_rss_kib(std::to_string(pid_));
}

}  // namespace holt::test
