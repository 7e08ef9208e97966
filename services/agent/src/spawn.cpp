#include "spawn.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "op_error.hpp"

extern char** environ;

namespace holt::agent {
namespace {

constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct PasswdEntry {
    std::string name;
    uid_t uid;
    gid_t gid;
    std::string home;
};

// Looks through /etc/passwd for a name or, when `by_uid` is set, a uid.
std::optional<PasswdEntry> find_passwd(const std::string& name, std::optional<uid_t> by_uid) {
    std::FILE* file = std::fopen("/etc/passwd", "re");
    if (file == nullptr) {
        return std::nullopt;
    }
    std::optional<PasswdEntry> found;
    while (passwd* entry = ::fgetpwent(file)) {
        if ((by_uid && entry->pw_uid == *by_uid) || (!by_uid && name == entry->pw_name)) {
            found = PasswdEntry{entry->pw_name, entry->pw_uid, entry->pw_gid,
                                entry->pw_dir ? entry->pw_dir : ""};
            break;
        }
    }
    std::fclose(file);
    return found;
}

std::vector<gid_t> supplementary_groups(const std::string& name, gid_t primary) {
    std::vector<gid_t> groups{primary};
    std::FILE* file = std::fopen("/etc/group", "re");
    if (file == nullptr) {
        return groups;
    }
    while (group* entry = ::fgetgrent(file)) {
        for (char** member = entry->gr_mem; member && *member; ++member) {
            if (name == *member && entry->gr_gid != primary) {
                groups.push_back(entry->gr_gid);
            }
        }
    }
    std::fclose(file);
    return groups;
}

std::optional<uid_t> parse_uid(const std::string& text) {
    if (text.empty() || text.size() > 10 ||
        text.find_first_not_of("0123456789") != std::string::npos) {
        return std::nullopt;
    }
    unsigned long value = std::stoul(text);
    if (value > 0xFFFFFFFEul) {
        return std::nullopt;
    }
    return static_cast<uid_t>(value);
}

// pipe2 with both ends close-on-exec and the parent's end non-blocking.
void make_pipe(UniqueFd& read_end, UniqueFd& write_end, bool parent_reads) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        throw errno_error("create a pipe");
    }
    read_end.reset(fds[0]);
    write_end.reset(fds[1]);
    int parent = parent_reads ? fds[0] : fds[1];
    ::fcntl(parent, F_SETFL, ::fcntl(parent, F_GETFL) | O_NONBLOCK);
}

[[noreturn]] void child_fail(int status_fd, ChildFailure::Step step) {
    ChildFailure failure{step, errno};
    [[maybe_unused]] ssize_t n = ::write(status_fd, &failure, sizeof failure);
    ::_exit(127);
}

// Makes `fd` the child's descriptor `target`, without close-on-exec.
bool install_fd(int fd, int target) {
    if (fd == target) {
        return ::fcntl(fd, F_SETFD, 0) == 0;
    }
    return ::dup2(fd, target) == target;
}

}  // namespace

UserIdentity resolve_user(const std::string& user) {
    UserIdentity identity;
    const uid_t self = ::geteuid();
    std::optional<uid_t> uid = user.empty() ? std::optional<uid_t>(self) : parse_uid(user);
    std::optional<PasswdEntry> entry = find_passwd(user, uid);
    if (entry) {
        identity.uid = entry->uid;
        identity.gid = entry->gid;
        identity.name = entry->name;
        identity.home = entry->home;
    } else if (uid) {
        // A uid without a passwd entry is allowed, as container runtimes do.
        identity.uid = *uid;
        identity.gid = *uid == self ? ::getegid() : static_cast<gid_t>(*uid);
        identity.name = *uid == 0 ? "root" : std::to_string(*uid);
        identity.home = *uid == 0 ? "/root" : "/";
    } else {
        throw OpError("EINVAL", "unknown user '" + user + "' (not in /etc/passwd)");
    }
    if (identity.home.empty()) {
        identity.home = "/";
    }
    identity.switch_user = identity.uid != self;
    if (identity.switch_user) {
        identity.groups = supplementary_groups(identity.name, identity.gid);
    }
    return identity;
}

std::vector<std::string> build_environment(const UserIdentity& user, bool terminal,
                                           const std::map<std::string, std::string>& defaults,
                                           const std::map<std::string, std::string>& overrides) {
    std::map<std::string, std::string> env{
        {"PATH", kDefaultPath}, {"HOME", user.home},    {"LANG", "C.UTF-8"},
        {"USER", user.name},    {"LOGNAME", user.name},
    };
    if (terminal) {
        env["TERM"] = "xterm-256color";
    }
    for (const auto& [key, value] : defaults) {
        env[key] = value;
    }
    for (const auto& [key, value] : overrides) {
        env[key] = value;
    }
    std::vector<std::string> out;
    out.reserve(env.size());
    for (const auto& [key, value] : env) {
        out.push_back(key + "=" + value);
    }
    return out;
}

void set_window_size(int fd, const agent_protocol::TerminalSize& size) {
    winsize ws{};
    ws.ws_row = size.rows;
    ws.ws_col = size.cols;
    if (::ioctl(fd, TIOCSWINSZ, &ws) != 0) {
        throw errno_error("set the terminal size");
    }
}

SpawnedProcess spawn(const SpawnOptions& options) {
    SpawnedProcess process;
    UniqueFd child_stdin, child_stdout, child_stderr, status_write;

    if (options.pty) {
        UniqueFd master(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
        if (!master || ::grantpt(master.get()) != 0 || ::unlockpt(master.get()) != 0) {
            throw errno_error("open a pseudo-terminal");
        }
        char name[128];
        if (::ptsname_r(master.get(), name, sizeof name) != 0) {
            throw errno_error("open a pseudo-terminal");
        }
        child_stdout.reset(::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
        if (!child_stdout) {
            throw errno_error(std::string("open ") + name);
        }
        set_window_size(master.get(), *options.pty);
        ::fcntl(master.get(), F_SETFL, ::fcntl(master.get(), F_GETFL) | O_NONBLOCK);
        // Separate descriptors for reading and writing, so each has its own epoll watch.
        process.stdin_fd.reset(::fcntl(master.get(), F_DUPFD_CLOEXEC, 3));
        if (!process.stdin_fd) {
            throw errno_error("duplicate the terminal descriptor");
        }
        process.stdout_fd = std::move(master);
    } else {
        if (options.pipe_stdin) {
            make_pipe(child_stdin, process.stdin_fd, /*parent_reads=*/false);
        } else {
            child_stdin.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
            if (!child_stdin) {
                throw errno_error("open /dev/null");
            }
        }
        make_pipe(process.stdout_fd, child_stdout, /*parent_reads=*/true);
        make_pipe(process.stderr_fd, child_stderr, /*parent_reads=*/true);
    }
    make_pipe(process.status_fd, status_write, /*parent_reads=*/true);

    // Everything the child needs is prepared before fork.
    std::vector<char*> argv;
    for (const std::string& arg : options.argv) {
        argv.push_back(const_cast<char*>(arg.c_str()));
    }
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (const std::string& var : options.env) {
        envp.push_back(const_cast<char*>(var.c_str()));
    }
    envp.push_back(nullptr);
    const char* cwd = options.cwd.c_str();
    const UserIdentity& user = options.user;

    pid_t pid = ::fork();
    if (pid < 0) {
        throw errno_error("fork");
    }
    if (pid == 0) {
        // The child: async-signal-safe calls only, then exec.
        const int status = status_write.get();
        sigset_t all;
        ::sigemptyset(&all);
        ::sigprocmask(SIG_SETMASK, &all, nullptr);
        for (int sig = 1; sig < NSIG; ++sig) {
            ::signal(sig, SIG_DFL);  // ignored signals (SIGPIPE) would survive exec
        }
        if (::setsid() < 0) {
            child_fail(status, ChildFailure::kTerminal);
        }
        if (options.pty) {
            const int tty = child_stdout.get();
            if (::ioctl(tty, TIOCSCTTY, 0) != 0) {
                child_fail(status, ChildFailure::kTerminal);
            }
            if (!install_fd(tty, 0) || !install_fd(tty, 1) || !install_fd(tty, 2)) {
                child_fail(status, ChildFailure::kStdio);
            }
        } else if (!install_fd(child_stdin.get(), 0) || !install_fd(child_stdout.get(), 1) ||
                   !install_fd(child_stderr.get(), 2)) {
            child_fail(status, ChildFailure::kStdio);
        }
        if (user.switch_user) {
            if (::setgroups(user.groups.size(), user.groups.data()) != 0) {
                child_fail(status, ChildFailure::kSetgroups);
            }
            if (::setgid(user.gid) != 0) {
                child_fail(status, ChildFailure::kSetgid);
            }
            if (::setuid(user.uid) != 0) {
                child_fail(status, ChildFailure::kSetuid);
            }
        }
        if (::chdir(cwd) != 0) {
            child_fail(status, ChildFailure::kChdir);
        }
        // execvp searches the PATH of `environ`, so the command's own PATH applies.
        environ = envp.data();
        ::execvp(argv[0], argv.data());
        child_fail(status, ChildFailure::kExec);
    }
    process.pid = pid;
    return process;
}

std::string describe_failure(const ChildFailure& failure, const SpawnOptions& options) {
    const std::string reason = std::strerror(failure.err);
    switch (failure.step) {
        case ChildFailure::kExec:
            return reason;
        case ChildFailure::kChdir:
            return "chdir " + options.cwd + ": " + reason;
        case ChildFailure::kSetgroups:
            return "setgroups for user " + options.user.name + ": " + reason;
        case ChildFailure::kSetgid:
            return "setgid " + std::to_string(options.user.gid) + ": " + reason;
        case ChildFailure::kSetuid:
            return "setuid " + std::to_string(options.user.uid) + ": " + reason;
        case ChildFailure::kTerminal:
            return "set up the session and terminal: " + reason;
        case ChildFailure::kStdio:
            return "set up stdin/stdout/stderr: " + reason;
    }
    return reason;
}

}  // namespace holt::agent
