// holt-agent: the guest agent of Holt. See docs/agent-protocol.md.
//
//   holt-agent                      serve on the virtio-serial port agent.0 (in a guest)
//   holt-agent --listen unix:PATH   serve one host at a time on a unix socket (also tcp:, vsock:)
//   holt-agent --stdio              serve on stdin/stdout; exit when stdin closes

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <exception>

#include "agent.hpp"
#include "link.hpp"
#include "log.hpp"
#include "version.hpp"

namespace {

// Descriptors 0-2 must be open, or the first pipes would take their numbers and a child's stdio
// would be mixed up with the agent's.
void ensure_standard_fds() {
    for (int fd = 0; fd <= 2; ++fd) {
        if (::fcntl(fd, F_GETFD) < 0) {
            int null_fd = ::open("/dev/null", O_RDWR);
            if (null_fd >= 0 && null_fd != fd) {
                ::dup2(null_fd, fd);
                ::close(null_fd);
            }
        }
    }
}

void prepare_process(bool pid1) {
    ensure_standard_fds();
    ::signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    ::sigemptyset(&set);
    for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGHUP}) {
        ::sigaddset(&set, sig);
    }
    ::sigprocmask(SIG_BLOCK, &set, nullptr);
    if (!pid1) {
        // Orphans of the agent's commands come back to it, as they would to PID 1.
        ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    }
    // Each command holds a few descriptors; allow as many as the hard limit.
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &limit);
    }
    if (pid1 && ::chdir("/") != 0) {
        holt::agent::log::warn("chdir /: ", std::strerror(errno));
    }
}

}  // namespace

int main(int argc, char** argv) {
    using namespace holt::agent;

    CLI::App app{"holt-agent: the Holt guest agent"};
    std::string listen;
    bool stdio = false;
    std::string port = "agent.0";
    std::string level = "info";
    bool version = false;
    app.add_option("--listen", listen, "serve on unix:PATH, tcp:[HOST:]PORT or vsock:PORT");
    app.add_flag("--stdio", stdio, "serve on stdin/stdout and exit when stdin closes");
    app.add_option("--port", port, "name of the virtio-serial port to serve on")
        ->capture_default_str();
    app.add_option("--log-level", level, "trace, debug, info, warn or error")
        ->capture_default_str();
    app.add_flag("--version", version, "print the agent and protocol versions");
    CLI11_PARSE(app, argc, argv);

    if (version) {
        std::printf("holt-agent %s (protocol %d)\n", kAgentVersion,
                    holt::agent_protocol::kProtocolVersion);
        return 0;
    }
    log::Level parsed = log::Level::kInfo;
    if (const char* env = std::getenv("HOLT_AGENT_LOG"); env != nullptr && level == "info") {
        level = env;
    }
    if (!log::parse_level(level, parsed)) {
        std::fprintf(stderr, "holt-agent: unknown log level '%s'\n", level.c_str());
        return 2;
    }
    log::set_level(parsed);

    const bool pid1 = ::getpid() == 1;
    // As PID 1 the agent must never exit: a failure to set up is retried forever.
    for (;;) {
        try {
            prepare_process(pid1);
            std::unique_ptr<Link> link = stdio             ? make_stdio_link()
                                         : !listen.empty() ? make_listen_link(listen)
                                                           : make_virtio_link(port);
            log::info("holt-agent ", kAgentVersion, " (protocol ",
                      holt::agent_protocol::kProtocolVersion, ") on ", link->describe(),
                      pid1 ? ", as PID 1" : "");
            Agent agent(std::move(link), pid1);
            agent.run();
            if (!pid1) {
                return 0;
            }
        } catch (const std::exception& e) {
            log::error(e.what());
            if (!pid1) {
                return 1;
            }
        }
        ::sleep(1);
    }
}
