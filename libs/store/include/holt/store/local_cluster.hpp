#pragma once

// Holt's private PostgreSQL cluster: a server of its own, in the data directory, reachable only
// through a unix socket (optionally also on a loopback TCP port), so a fresh host needs no
// database set up. Layout under DATA_DIR/postgres:
//   data/    the cluster (PGDATA); data/holt.conf holds the settings Holt manages
//   run/     the unix socket directory (mode 0700: only its owner and root can connect)
//   log/     postgres.log, the server's output
//   lock     flock'ed while a process starts or stops the cluster
// When Holt runs as root the server runs as the `postgres` system user, which owns all of it
// except the lock file.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

namespace holt::store {

struct LocalClusterOptions {
    // Empty: holt::default_data_dir().
    std::filesystem::path data_dir;
    // Also listen on 127.0.0.1 at this port (password authentication only). Without it the
    // server listens on its unix socket alone. Takes effect when the server (re)starts.
    std::optional<int> tcp_port;
    // Directory with initdb, pg_ctl and postgres. Empty: the newest /usr/lib/postgresql/*/bin,
    // or the one matching an existing cluster's version.
    std::filesystem::path bin_dir;
    // How long initdb plus server start-up may take.
    std::chrono::seconds start_timeout{60};
};

struct LocalClusterStatus {
    bool initialized = false;  // the cluster exists (initdb has run)
    bool running = false;      // its server is up and answering
    pid_t pid = 0;             // the server's pid when running
    std::string url;           // connection URL when running
    std::string version;       // PostgreSQL major version of the cluster, when initialized
};

class LocalCluster {
  public:
    explicit LocalCluster(LocalClusterOptions options = {});

    // Creates the cluster if there is none, starts its server if it is not running, makes sure
    // the database `holt` exists, and returns its connection URL
    // ("postgresql:///holt?host=DIR/run&port=5432&user=holt"). Idempotent and safe to call from
    // several threads and processes at once. The server keeps running after this process ends.
    std::string ensure_started();

    // Stops the server (fast shutdown: sessions are ended) if it runs. Idempotent.
    void stop();

    LocalClusterStatus status() const;

    // DATA_DIR/postgres
    const std::filesystem::path& directory() const { return directory_; }
    std::filesystem::path log_file() const;

  private:
    LocalClusterOptions options_;
    std::filesystem::path directory_;
};

// The control database's URL: $HOLT_DATABASE_URL when set, else the private cluster's URL,
// started if needed.
std::string database_url(const LocalClusterOptions& options = {});

}  // namespace holt::store
