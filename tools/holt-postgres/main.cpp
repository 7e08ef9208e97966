// holt-postgres: the operator's tool for Holt's private PostgreSQL cluster (the control
// database, docs/store.md). `make up` and the tests start the cluster with it.

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "holt/common/child_process.hpp"
#include "holt/common/error.hpp"
#include "holt/common/log.hpp"
#include "holt/store/local_cluster.hpp"

namespace {

using holt::store::LocalCluster;
using holt::store::LocalClusterOptions;

// Exit codes: 0 done (status: running), 1 failed, 3 status/url: not running (as pg_ctl status).
constexpr int kFailure = 1;
constexpr int kNotRunning = 3;

struct GlobalOptions {
    std::string data_dir;
    std::string log_level;
    int tcp_port = 0;
    int timeout_s = 60;
};

LocalCluster make_cluster(const GlobalOptions& global) {
    LocalClusterOptions options;
    options.data_dir = global.data_dir;
    if (global.tcp_port > 0) {
        options.tcp_port = global.tcp_port;
    }
    options.start_timeout = std::chrono::seconds(global.timeout_s);
    return LocalCluster(options);
}

int print_status(const LocalCluster& cluster) {
    auto status = cluster.status();
    std::cout << "directory: " << cluster.directory().string() << "\n"
              << "initialized: "
              << (status.initialized ? "yes (PostgreSQL " + status.version + ")"
                                     : std::string("no"))
              << "\n"
              << "running: "
              << (status.running ? "yes, pid " + std::to_string(status.pid) : std::string("no"))
              << "\n";
    if (status.running) {
        std::cout << "url: " << status.url << "\n";
    }
    std::cout << "log: " << cluster.log_file().string() << "\n";
    return status.running ? 0 : kNotRunning;
}

// Replaces this process with psql connected to the cluster; returns only on failure.
int exec_psql(const std::string& url, const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"psql", url};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& arg : args) {
        argv.push_back(arg.data());
    }
    argv.push_back(nullptr);
    std::string psql = holt::find_executable("psql");
    ::execv(psql.c_str(), argv.data());
    holt::throw_errno("exec " + psql);
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"holt-postgres: Holt's private PostgreSQL cluster (the control database)"};
    app.require_subcommand(1);
    GlobalOptions global;
    app.add_option("--data-dir", global.data_dir,
                   "Holt's data directory (default: $HOLT_DATA_DIR, /var/lib/holt as root); the "
                   "cluster lives in its postgres/ subdirectory");
    app.add_option("--log-level", global.log_level, "trace, debug, info, warn, error");
    app.add_option("--timeout", global.timeout_s, "seconds initdb and start-up may take")
        ->check(CLI::PositiveNumber);

    auto* start = app.add_subcommand(
        "start", "create the cluster if needed, start its server if needed, print its URL");
    start
        ->add_option("--tcp-port", global.tcp_port,
                     "also listen on 127.0.0.1:PORT (password authentication only)")
        ->check(CLI::Range(1, 65535));
    auto* stop = app.add_subcommand("stop", "stop the server (fast shutdown)");
    auto* status = app.add_subcommand(
        "status", "say whether the cluster exists and runs (exit 3: not running)");
    auto* url =
        app.add_subcommand("url", "print the URL of the running server (exit 3: not running)");
    std::vector<std::string> psql_args;
    auto* psql =
        app.add_subcommand("psql", "run psql on database holt, starting the server if needed");
    psql->add_option("args", psql_args, "arguments for psql (after --)");

    CLI11_PARSE(app, argc, argv);
    holt::log::init(global.log_level);

    try {
        LocalCluster cluster = make_cluster(global);
        if (*start) {
            std::cout << cluster.ensure_started() << "\n";
        } else if (*stop) {
            cluster.stop();
        } else if (*status) {
            return print_status(cluster);
        } else if (*url) {
            auto current = cluster.status();
            if (!current.running) {
                std::cerr << "holt-postgres: the cluster in " << cluster.directory().string()
                          << " is not running\n";
                return kNotRunning;
            }
            std::cout << current.url << "\n";
        } else if (*psql) {
            return exec_psql(cluster.ensure_started(), psql_args);
        }
    } catch (const std::exception& e) {
        std::cerr << "holt-postgres: " << e.what() << "\n";
        return kFailure;
    }
    return 0;
}
