#include "holt/store/local_cluster.hpp"

#include <fcntl.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <pqxx/pqxx>
#include <sstream>
#include <thread>

#include "holt/common/child_process.hpp"
#include "holt/common/data_dir.hpp"
#include "holt/common/error.hpp"
#include "holt/common/files.hpp"
#include "holt/common/log.hpp"
#include "holt/store/url.hpp"

namespace holt::store {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kSuperuser = "holt";
constexpr const char* kDatabase = "holt";
constexpr int kDefaultPort = 5432;
constexpr std::size_t kLogTailLines = 20;
// sun_path is 108 bytes including the terminating NUL.
constexpr std::size_t kMaxSocketPath = 107;

// Who runs the server: the `postgres` system user when we are root (PostgreSQL refuses to run
// as root), else ourselves.
struct ServerUser {
    bool switch_user = false;
    uid_t uid = 0;
    gid_t gid = 0;
};

ServerUser server_user() {
    if (::geteuid() != 0) {
        return ServerUser{.uid = ::geteuid(), .gid = ::getegid()};
    }
    const passwd* pw = ::getpwnam("postgres");
    if (!pw) {
        throw Error(
            "running as root, the server must run as the `postgres` system user, which does not "
            "exist: install the Debian package postgresql (infra/install-deps.sh)");
    }
    return ServerUser{.switch_user = true, .uid = pw->pw_uid, .gid = pw->pw_gid};
}

// argv run in `cwd` as the server user (runuser when root). The working directory matters: the
// server user may not be allowed into ours.
std::vector<std::string> as_server_user(const ServerUser& user, const fs::path& cwd,
                                        std::vector<std::string> argv) {
    std::vector<std::string> command;
    if (user.switch_user) {
        command = {"runuser", "-u", "postgres", "--"};
    }
    command.insert(command.end(), {"env", "-C", cwd.string()});
    command.insert(command.end(), argv.begin(), argv.end());
    return command;
}

void give_to(const ServerUser& user, const fs::path& path) {
    if (::lchown(path.c_str(), user.uid, user.gid) != 0) {
        throw_errno("chown " + path.string());
    }
}

void make_private_dir(const ServerUser& user, const fs::path& path) {
    fs::create_directories(path);
    give_to(user, path);
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::replace);
}

void write_file(const ServerUser& user, const fs::path& path, const std::string& content) {
    fs::path temporary = path.string() + ".tmp";
    {
        std::ofstream out(temporary, std::ios::trunc);
        out << content;
        if (!out.flush()) {
            throw Error("write " + temporary.string() + ": " + errno_text(errno));
        }
    }
    give_to(user, temporary);
    fs::rename(temporary, path);
}

std::string last_lines(const std::string& text, std::size_t count) {
    std::deque<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        lines.push_back(line);
        if (lines.size() > count) {
            lines.pop_front();
        }
    }
    std::string out;
    for (const auto& line : lines) {
        out += "\n  " + line;
    }
    return out;
}

// A string literal for postgresql.conf.
std::string conf_string(const std::string& value) {
    std::string out = "'";
    for (char c : value) {
        out += c == '\'' ? std::string("''") : std::string(1, c);
    }
    return out + "'";
}

int version_number(const fs::path& dir) {
    try {
        return std::stoi(dir.filename().string());
    } catch (const std::exception&) {
        return -1;
    }
}

// Takes an exclusive flock on `path` for the life of the object, waiting up to `timeout`.
class FileLock {
  public:
    FileLock(const fs::path& path, std::chrono::milliseconds timeout) {
        fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd_ < 0) {
            throw_errno("open lock file " + path.string());
        }
        auto deadline = Clock::now() + timeout;
        while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
            if (errno != EWOULDBLOCK && errno != EINTR) {
                int err = errno;
                ::close(fd_);
                throw Error("lock " + path.string() + ": " + errno_text(err));
            }
            if (Clock::now() >= deadline) {
                ::close(fd_);
                throw Error("lock " + path.string() + ": another process has held it for " +
                            std::to_string(timeout.count() / 1000) + "s");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }
    FileLock(const FileLock&) = delete;
    FileLock& operator=(const FileLock&) = delete;
    ~FileLock() { ::close(fd_); }

  private:
    int fd_ = -1;
};

// What data/postmaster.pid says about a server that is really running.
struct RunningServer {
    pid_t pid = 0;
    int port = kDefaultPort;
    std::string socket_dir;
};

// The server described by the data directory's postmaster.pid, if its process is alive and is a
// postgres (a pid file left behind by a crash or a reboot names a dead or unrelated process).
std::optional<RunningServer> running_server(const fs::path& data) {
    std::ifstream in(data / "postmaster.pid");
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) {
        lines.push_back(line);
    }
    if (lines.size() < 5) {
        return std::nullopt;
    }
    RunningServer server;
    try {
        server.pid = std::stoi(lines[0]);
        server.port = std::stoi(lines[3]);
    } catch (const std::exception&) {
        return std::nullopt;
    }
    server.socket_dir = lines[4];
    if (server.pid <= 0 || (::kill(server.pid, 0) != 0 && errno != EPERM)) {
        return std::nullopt;
    }
    std::string comm = read_text_file("/proc/" + std::to_string(server.pid) + "/comm");
    if (comm != "postgres\n") {
        return std::nullopt;
    }
    return server;
}

bool answers(const std::string& url) {
    return PQping(url.c_str()) == PQPING_OK;
}

}  // namespace

LocalCluster::LocalCluster(LocalClusterOptions options)
    : options_(std::move(options)),
      directory_((options_.data_dir.empty() ? default_data_dir() : options_.data_dir) /
                 "postgres") {
    directory_ = fs::absolute(directory_);
}

fs::path LocalCluster::log_file() const {
    return directory_ / "log" / "postgres.log";
}

namespace {

// Everything one start or stop needs, resolved once.
struct Layout {
    fs::path dir, data, run, log_dir, log;
};

Layout layout_of(const fs::path& dir) {
    return Layout{dir, dir / "data", dir / "run", dir / "log", dir / "log" / "postgres.log"};
}

std::string log_tail(const Layout& l) {
    std::string text = read_text_file(l.log);
    if (text.empty()) {
        return "";
    }
    return "; last lines of " + l.log.string() + ":" + last_lines(text, kLogTailLines);
}

fs::path find_bin_dir(const LocalClusterOptions& options, const Layout& l) {
    if (!options.bin_dir.empty()) {
        return options.bin_dir;
    }
    // An existing cluster can only be run by its own major version.
    std::string version = read_text_file(l.data / "PG_VERSION");
    version.erase(std::remove(version.begin(), version.end(), '\n'), version.end());
    if (!version.empty()) {
        fs::path bin = fs::path("/usr/lib/postgresql") / version / "bin";
        if (!fs::exists(bin / "postgres")) {
            throw Error("the cluster in " + l.data.string() + " was made by PostgreSQL " + version +
                        ", which is not installed (" + bin.string() + "); install postgresql-" +
                        version + " or upgrade the cluster");
        }
        return bin;
    }
    fs::path newest;
    std::error_code ignored;
    for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ignored)) {
        if (fs::exists(entry.path() / "bin" / "initdb") &&
            (newest.empty() || version_number(entry.path()) > version_number(newest))) {
            newest = entry.path();
        }
    }
    if (newest.empty()) {
        throw Error(
            "no PostgreSQL server found under /usr/lib/postgresql/*/bin: install the Debian "
            "package postgresql (infra/install-deps.sh)");
    }
    return newest / "bin";
}

std::string holt_conf(const Layout& l, const std::optional<int>& tcp_port) {
    std::string conf =
        "# Managed by Holt (libs/store/src/local_cluster.cpp); rewritten at every start.\n";
    conf += "listen_addresses = " + conf_string(tcp_port ? "127.0.0.1" : "") + "\n";
    conf += "port = " + std::to_string(tcp_port.value_or(kDefaultPort)) + "\n";
    conf += "unix_socket_directories = " + conf_string(l.run.string()) + "\n";
    conf += "unix_socket_permissions = 0700\n";
    return conf;
}

// Only the unix socket trusts who connects (its directory is private to the server user and
// root); TCP, when enabled, asks for a password.
constexpr const char* kHba =
    "# Managed by Holt. TYPE DATABASE USER ADDRESS METHOD\n"
    "local all all trust\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host all all ::1/128 scram-sha-256\n";

void check_reachable(const ServerUser& user, const Layout& l) {
    if (!user.switch_user) {
        return;
    }
    auto result = run_command({"runuser", "-u", "postgres", "--", "test", "-x", l.dir.string()});
    if (!result.status.success()) {
        throw Error("the postgres user cannot reach " + l.dir.string() +
                    ": every directory above it must be searchable by others (chmod o+x)");
    }
}

void run_initdb(const ServerUser& user, const fs::path& bin, const Layout& l) {
    auto log = holt::log::get("store");
    fs::path staging = l.dir / "data.initdb";
    fs::remove_all(staging);
    make_private_dir(user, staging);
    log->info("postgres: creating cluster in {} with {}", l.data.string(), bin.string());
    auto result =
        run_command(as_server_user(user, l.dir,
                                   {(bin / "initdb").string(), "--pgdata=" + staging.string(),
                                    "--username=" + std::string(kSuperuser), "--auth=trust",
                                    "--encoding=UTF8", "--locale=C.UTF-8"}));
    if (!result.status.success()) {
        fs::remove_all(staging);
        throw Error("initdb " + staging.string() + ": " + result.status.describe() + ":" +
                    last_lines(result.output, kLogTailLines));
    }
    write_file(user, staging / "pg_hba.conf", kHba);
    {
        std::ofstream conf(staging / "postgresql.conf", std::ios::app);
        conf << "\n# Holt's settings (socket, port, listen addresses)\n"
             << "include_if_exists = 'holt.conf'\n";
    }
    // Only a complete cluster ever appears under data/.
    fs::rename(staging, l.data);
}

void start_server(const ServerUser& user, const fs::path& bin, const Layout& l,
                  const LocalClusterOptions& options) {
    auto log = holt::log::get("store");
    write_file(user, l.data / "holt.conf", holt_conf(l, options.tcp_port));
    // A pid file of a server that is gone (crash, reboot) would make the new one refuse to start
    // if its pid now belongs to another process.
    if (!running_server(l.data)) {
        fs::remove(l.data / "postmaster.pid");
    }
    log->info("postgres: starting the server of {}", l.data.string());
    auto result =
        run_command(as_server_user(user, l.dir,
                                   {(bin / "pg_ctl").string(), "start", "--silent", "--wait",
                                    "--timeout=" + std::to_string(options.start_timeout.count()),
                                    "--pgdata=" + l.data.string(), "--log=" + l.log.string()}));
    if (!result.status.success()) {
        throw Error("pg_ctl start: " + result.status.describe() + ":" +
                    last_lines(result.output, 5) + log_tail(l));
    }
}

void create_database(const std::string& maintenance_url) {
    pqxx::connection connection(maintenance_url);
    pqxx::nontransaction tx(connection);
    auto exists = tx.exec_params("SELECT 1 FROM pg_database WHERE datname = $1", kDatabase);
    if (exists.empty()) {
        tx.exec("CREATE DATABASE " + tx.quote_name(kDatabase));
        holt::log::get("store")->info("postgres: created database {}", kDatabase);
    }
}

}  // namespace

std::string LocalCluster::ensure_started() {
    return with_context("start the private PostgreSQL in " + directory_.string(), [&] {
        Layout l = layout_of(directory_);
        ServerUser user = server_user();
        if (l.run.string().size() + std::string("/.s.PGSQL.65535").size() > kMaxSocketPath) {
            throw Error("the socket path under " + l.run.string() +
                        " is too long for a unix socket; choose a shorter data directory");
        }
        auto timeout =
            std::chrono::duration_cast<std::chrono::milliseconds>(options_.start_timeout * 2);

        if (!fs::exists(l.dir)) {
            fs::create_directories(l.dir.parent_path());
            make_private_dir(user, l.dir);
        }
        FileLock lock(l.dir / "lock", timeout);

        auto server = running_server(l.data);
        if (!server ||
            !answers(socket_url("postgres", server->socket_dir, server->port, kSuperuser))) {
            check_reachable(user, l);
            make_private_dir(user, l.run);
            make_private_dir(user, l.log_dir);
            fs::path bin = find_bin_dir(options_, l);
            if (!fs::exists(l.data / "PG_VERSION")) {
                run_initdb(user, bin, l);
            }
            start_server(user, bin, l, options_);
            server = running_server(l.data);
            if (!server) {
                throw Error("the server started but its postmaster.pid is missing" + log_tail(l));
            }
        } else if (server->port != options_.tcp_port.value_or(kDefaultPort)) {
            holt::log::get("store")->warn(
                "postgres: the running server listens on port {}, not the configured {}; "
                "restart it (holt-postgres stop) to apply",
                server->port, options_.tcp_port.value_or(kDefaultPort));
        }

        // The server may still be finishing recovery; wait until it takes connections.
        std::string maintenance =
            socket_url("postgres", server->socket_dir, server->port, kSuperuser);
        auto deadline = Clock::now() + options_.start_timeout;
        while (!answers(maintenance)) {
            if (Clock::now() >= deadline) {
                throw Error("the server does not accept connections after " +
                            std::to_string(options_.start_timeout.count()) + "s" + log_tail(l));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        with_context("create database holt", [&] { create_database(maintenance); });
        return socket_url(kDatabase, server->socket_dir, server->port, kSuperuser);
    });
}

void LocalCluster::stop() {
    with_context("stop the private PostgreSQL in " + directory_.string(), [&] {
        Layout l = layout_of(directory_);
        if (!fs::exists(l.data / "PG_VERSION")) {
            return;
        }
        ServerUser user = server_user();
        FileLock lock(l.dir / "lock", std::chrono::duration_cast<std::chrono::milliseconds>(
                                          options_.start_timeout * 2));
        if (!running_server(l.data)) {
            return;
        }
        fs::path bin = find_bin_dir(options_, l);
        auto result = run_command(
            as_server_user(user, l.dir,
                           {(bin / "pg_ctl").string(), "stop", "--silent", "--wait", "--mode=fast",
                            "--timeout=" + std::to_string(options_.start_timeout.count()),
                            "--pgdata=" + l.data.string()}));
        if (!result.status.success()) {
            throw Error("pg_ctl stop: " + result.status.describe() + ":" +
                        last_lines(result.output, 5) + log_tail(l));
        }
        holt::log::get("store")->info("postgres: stopped the server of {}", l.data.string());
    });
}

LocalClusterStatus LocalCluster::status() const {
    Layout l = layout_of(directory_);
    LocalClusterStatus status;
    status.version = read_text_file(l.data / "PG_VERSION");
    status.version.erase(std::remove(status.version.begin(), status.version.end(), '\n'),
                         status.version.end());
    status.initialized = !status.version.empty();
    if (auto server = running_server(l.data)) {
        std::string url = socket_url(kDatabase, server->socket_dir, server->port, kSuperuser);
        if (answers(url)) {
            status.running = true;
            status.pid = server->pid;
            status.url = url;
        }
    }
    return status;
}

std::string database_url(const LocalClusterOptions& options) {
    if (const char* env = std::getenv("HOLT_DATABASE_URL"); env && *env) {
        return env;
    }
    return LocalCluster(options).ensure_started();
}

}  // namespace holt::store
