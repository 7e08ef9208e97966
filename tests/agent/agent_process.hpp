#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include "holt/vm/agent_client.hpp"

namespace holt::test {

// A holt-agent process on the host, for tests. Stopped (SIGTERM, which also kills the commands
// it still runs) when destroyed.
class AgentProcess {
  public:
    // Serves on a socketpair: the host end is handed to the client by connect().
    static std::unique_ptr<AgentProcess> stdio();
    // Serves on a unix socket in a fresh temporary directory; connect() may be called repeatedly.
    static std::unique_ptr<AgentProcess> listening();

    ~AgentProcess();

    std::unique_ptr<vm::AgentClient> connect(vm::AgentClientOptions options = {});

    pid_t pid() const { return pid_; }
    int host_fd() const { return host_fd_; }
    const std::filesystem::path& socket_path() const { return socket_; }
    // The agent's peak resident memory (VmHWM) in KiB.
    long peak_rss_kib() const;

  private:
    AgentProcess() = default;

    pid_t pid_ = -1;
    int host_fd_ = -1;  // stdio: the host end, until connect() hands it over
    std::filesystem::path dir_;
    std::filesystem::path socket_;
};

// VmHWM of a process (or of this one with "self"), in KiB.
long peak_rss_kib(const std::string& pid);

}  // namespace holt::test
