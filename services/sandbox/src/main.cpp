// holt-sandboxd: the sandbox service. Serves the API of docs/api/sandbox.yaml on a loopback
// address, keeps its state in the control database and runs every sandbox in its own microVM.
// `holt-sandboxd keys create --tenant NAME` prints a new API key.

#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "api.hpp"
#include "holt/common/data_dir.hpp"
#include "holt/common/error.hpp"
#include "holt/common/log.hpp"
#include "holt/http/server.hpp"
#include "holt/store/database.hpp"
#include "holt/store/local_cluster.hpp"
#include "sandbox_manager.hpp"

namespace {

namespace fs = std::filesystem;

struct Options {
    std::string listen = "127.0.0.1:7070";
    std::string data_dir;
    std::string run_dir;
    std::string database_url;
    std::string accel = "auto";
    std::string log_level;
    int max_connections = 256;
    int reaper_period_ms = 1000;
    holt::sandbox::Limits limits;
};

std::string database_url(const Options& o) {
    if (!o.database_url.empty()) {
        return o.database_url;
    }
    if (const char* env = std::getenv("HOLT_DATABASE_URL"); env && *env) {
        return env;
    }
    // The private cluster in DATA_DIR/postgres, made and started if need be.
    holt::store::LocalClusterOptions cluster;
    if (!o.data_dir.empty()) {
        cluster.data_dir = std::filesystem::path(o.data_dir);
    }
    return holt::store::database_url(cluster);
}

std::pair<std::string, std::uint16_t> parse_listen(const std::string& listen) {
    auto colon = listen.rfind(':');
    if (colon == std::string::npos) {
        throw holt::Error("--listen takes HOST:PORT, not \"" + listen + "\"");
    }
    int port = 0;
    try {
        port = std::stoi(listen.substr(colon + 1));
    } catch (const std::exception&) {
        port = -1;
    }
    if (port < 0 || port > 65535) {
        throw holt::Error("--listen: bad port in \"" + listen + "\"");
    }
    return {listen.substr(0, colon), static_cast<std::uint16_t>(port)};
}

int serve(const Options& o) {
    auto log = holt::log::get("sandbox");

    // SIGINT and SIGTERM are taken by a thread of their own (sigwait), so block them everywhere.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    ::signal(SIGPIPE, SIG_IGN);

    holt::store::Database database(database_url(o), {.max_connections = 16});
    holt::sandbox::SandboxStore store(database);
    holt::with_context("migrate schema sandbox", [&] { store.migrate(); });

    holt::vm::EngineOptions engine_options;
    engine_options.data_dir = o.data_dir.empty() ? holt::default_data_dir() : fs::path(o.data_dir);
    engine_options.recipes_dir = HOLT_IMAGES_DIR;
    engine_options.run_dir = o.run_dir;
    engine_options.accel = holt::vm::parse_accelerator_mode(o.accel);
    // Its VMs outlive a restart: the next holt-sandboxd adopts them, and other tools' sweeps
    // leave them alone.
    engine_options.owner = "holt-sandboxd";
    holt::vm::Engine engine(engine_options);

    holt::sandbox::SandboxManager manager(engine, store, o.limits);
    manager.reconcile();
    manager.start_reaper(std::chrono::milliseconds(o.reaper_period_ms));

    holt::http::Router router;
    holt::sandbox::add_routes(router, manager, store);
    auto [address, port] = parse_listen(o.listen);
    holt::http::ServerOptions server_options;
    server_options.address = address;
    server_options.port = port;
    server_options.max_connections = static_cast<std::size_t>(o.max_connections);
    server_options.server_name = "holt-sandboxd";
    server_options.logger = "sandbox-http";
    holt::http::Server server(server_options, [&](holt::http::Exchange& x) { router.dispatch(x); });
    log->info("holt-sandboxd listening on http://{}:{} (data dir {})", address, server.port(),
              engine_options.data_dir.string());

    std::thread waiter([&] {
        int sig = 0;
        sigwait(&signals, &sig);
        log->info("signal {}: shutting down", sig);
        server.stop();
    });
    auto still_open = server.run();
    if (still_open > 0) {
        // Requests still running hold VMs; the next start sweeps what they leave.
        log->warn("{} connections still busy after the grace period; exiting anyway", still_open);
        std::_Exit(0);
    }
    manager.shutdown();
    waiter.join();
    return 0;
}

int create_key(const Options& o, const std::string& tenant, const std::string& name) {
    holt::store::Database database(database_url(o), {.max_connections = 1});
    holt::sandbox::SandboxStore store(database);
    store.migrate();
    std::string secret;
    auto key = store.create_key(store.ensure_tenant(tenant), name, secret);
    std::printf("%s\n", secret.c_str());
    std::fprintf(stderr, "holt-sandboxd: key %s (%s) of tenant %s\n", key.id.c_str(),
                 key.prefix.c_str(), tenant.c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "holt-sandboxd: the Holt sandbox service. Serves the sandbox API "
        "(docs/api/sandbox.yaml, docs/sandbox.md) over HTTP on a loopback address; every "
        "sandbox is a microVM. State lives in the control database."};
    Options o;
    app.add_option("--listen", o.listen, "HOST:PORT to serve on")->capture_default_str();
    app.add_option("--data-dir", o.data_dir,
                   "data directory with images and snapshots (default: $HOLT_DATA_DIR, "
                   "/var/lib/holt as root)");
    app.add_option("--run-dir", o.run_dir,
                   "files of running VMs (default: DATA_DIR/run; keep one per host)");
    app.add_option("--database-url", o.database_url,
                   "PostgreSQL URL of the control database (default: $HOLT_DATABASE_URL)");
    app.add_option("--accel", o.accel, "accelerator: auto, kvm or tcg")
        ->check(CLI::IsMember({"auto", "kvm", "tcg"}));
    app.add_option("--log-level", o.log_level, "trace, debug, info, warn or error");
    app.add_option("--max-connections", o.max_connections, "open HTTP connections at most")
        ->capture_default_str();
    app.add_option("--max-sandboxes", o.limits.max_sandboxes_per_tenant,
                   "running and hibernated sandboxes per tenant")
        ->capture_default_str();
    app.add_option("--max-tenant-vcpus", o.limits.max_vcpus_per_tenant,
                   "vCPUs of a tenant's running sandboxes")
        ->capture_default_str();
    app.add_option("--max-tenant-memory", o.limits.max_memory_mib_per_tenant,
                   "MiB of memory of a tenant's running sandboxes")
        ->capture_default_str();
    app.add_option("--max-vcpus", o.limits.max_vcpus_per_sandbox, "vCPUs per sandbox")
        ->capture_default_str();
    app.add_option("--max-memory", o.limits.max_memory_mib_per_sandbox, "MiB per sandbox")
        ->capture_default_str();
    app.add_option("--reaper-period-ms", o.reaper_period_ms, "how often TTLs are checked")
        ->capture_default_str();

    auto* keys = app.add_subcommand("keys", "manage API keys (admin)");
    keys->require_subcommand(1);
    keys->fallthrough();
    auto* keys_create =
        keys->add_subcommand("create", "print a new API key of a tenant (created if needed)");
    std::string tenant;
    std::string key_name;
    keys_create->add_option("--tenant", tenant, "tenant name")->required();
    keys_create->add_option("--name", key_name, "a name for the key");
    keys_create->fallthrough();

    CLI11_PARSE(app, argc, argv);
    holt::log::init(o.log_level);
    try {
        if (keys_create->parsed()) {
            return create_key(o, tenant, key_name);
        }
        return serve(o);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "holt-sandboxd: %s\n", e.what());
        return 1;
    }
}
