// holt-proxy: the edge proxy. One front door for the platform API (api.DOMAIN), apps and
// previews (APP.DOMAIN, BRANCH--APP.DOMAIN) and sandbox ports (PORT-SANDBOX.DOMAIN), over HTTP
// and HTTPS; see docs/proxy.md.

#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "config.hpp"
#include "holt/common/data_dir.hpp"
#include "holt/common/error.hpp"
#include "holt/common/log.hpp"
#include "holt/store/database.hpp"
#include "holt/store/local_cluster.hpp"
#include "metrics.hpp"
#include "route_table.hpp"
#include "sandbox_directory.hpp"
#include "server.hpp"
#include "tls.hpp"

namespace {

namespace fs = std::filesystem;

struct Overrides {
    std::string config_file;
    std::string listen, https_listen, admin_listen, domain, data_dir, database_url, sandbox_api;
    std::string log_level;
    int workers = 0;
    bool check = false;
};

std::string database_url(const holt::proxy::Config& c) {
    if (!c.database_url.empty()) {
        return c.database_url;
    }
    if (const char* env = std::getenv("HOLT_DATABASE_URL"); env && *env) {
        return env;
    }
    holt::store::LocalClusterOptions cluster;
    if (!c.data_dir.empty()) {
        cluster.data_dir = c.data_dir;
    }
    return holt::store::database_url(cluster);
}

holt::proxy::Config configure(const Overrides& o) {
    holt::proxy::Config c;
    if (!o.config_file.empty()) {
        c = holt::proxy::load_config(o.config_file);
    }
    auto at = [](const std::string& flag, const std::string& text) {
        return holt::with_context(flag, [&] { return holt::proxy::parse_listen_address(text); });
    };
    if (!o.listen.empty()) {
        c.listen = at("--listen", o.listen);
    }
    if (!o.https_listen.empty()) {
        c.tls.enabled = true;
        c.tls.listen = at("--https-listen", o.https_listen);
    }
    if (o.admin_listen == "off") {
        c.admin_listen.reset();
    } else if (!o.admin_listen.empty()) {
        c.admin_listen = at("--admin-listen", o.admin_listen);
    }
    // The command-line values go through the same checks as the file's.
    std::string yaml;
    if (!o.domain.empty()) {
        yaml += "domain: \"" + o.domain + "\"\n";
    }
    if (!o.sandbox_api.empty()) {
        yaml += "sandbox_api: \"" + o.sandbox_api + "\"\n";
    }
    if (!yaml.empty()) {
        auto flags = holt::proxy::parse_config(yaml, "(command line)");
        if (!o.domain.empty()) {
            c.domain = flags.domain;
        }
        if (!o.sandbox_api.empty()) {
            c.sandbox_api = flags.sandbox_api;
        }
    }
    if (!o.data_dir.empty()) {
        c.data_dir = o.data_dir;
    }
    if (!o.database_url.empty()) {
        c.database_url = o.database_url;
    }
    if (!o.log_level.empty()) {
        c.log_level = o.log_level;
    }
    if (o.workers > 0) {
        c.workers = o.workers;
    }
    return c;
}

int serve(const holt::proxy::Config& config) {
    auto log = holt::log::get("proxy");

    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    ::signal(SIGPIPE, SIG_IGN);

    fs::path data_dir =
        config.data_dir.empty() ? holt::default_data_dir() : fs::path(config.data_dir);
    holt::store::Database database(database_url(config), {.max_connections = 8});
    holt::with_context("migrate schema proxy",
                       [&] { holt::proxy::migrate_route_schema(database); });

    holt::proxy::Metrics metrics;
    holt::proxy::RouteTable routes;
    holt::proxy::RouteListener listener(database, routes, metrics);
    listener.start();
    holt::proxy::SandboxDirectory sandboxes(database, config.sandbox_api);

    std::unique_ptr<holt::proxy::TlsContexts> tls;
    if (config.tls.enabled) {
        tls = std::make_unique<holt::proxy::TlsContexts>(config.tls, config.domain,
                                                         data_dir / "proxy" / "tls");
    }
    holt::proxy::ProxyServer server({.config = &config,
                                     .routes = &routes,
                                     .sandboxes = &sandboxes,
                                     .metrics = &metrics,
                                     .tls = tls.get()});
    log->info(
        "holt-proxy serving *.{} on http://{}:{}{}{} ({} workers, {} routes)", config.domain,
        config.listen.host, server.http_port(),
        tls ? ", https port " + std::to_string(server.https_port()) : std::string(),
        config.admin_listen ? ", admin port " + std::to_string(server.admin_port()) : std::string(),
        config.workers, routes.size());

    std::thread waiter([&] {
        int sig = 0;
        sigwait(&signals, &sig);
        log->info("signal {}: finishing requests in flight, then exiting", sig);
        server.stop();
    });
    auto still_open = server.run();
    if (still_open > 0) {
        log->warn("{} connections still open after the grace period; closing them", still_open);
    }
    listener.stop();
    waiter.join();
    log->info("holt-proxy stopped");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "holt-proxy: Holt's edge proxy. Routes api.DOMAIN to the platform's services, "
        "APP.DOMAIN and BRANCH--APP.DOMAIN to apps and previews (routes from the control "
        "database, applied live), and PORT-SANDBOX.DOMAIN to a sandbox's port (waking it if "
        "it hibernates). See docs/proxy.md."};
    Overrides o;
    app.add_option("-c,--config", o.config_file, "YAML configuration file (docs/proxy.md)")
        ->check(CLI::ExistingFile);
    app.add_option("--listen", o.listen, "HOST:PORT for HTTP (default 127.0.0.1:8080)");
    app.add_option("--https-listen", o.https_listen, "HOST:PORT for HTTPS (turns TLS on)");
    app.add_option("--admin-listen", o.admin_listen,
                   "HOST:PORT for /metrics and /healthz, or off (default 127.0.0.1:9090)");
    app.add_option("--domain", o.domain, "the domain served (default holt.localhost)");
    app.add_option("--data-dir", o.data_dir,
                   "data directory (default: $HOLT_DATA_DIR, /var/lib/holt as root)");
    app.add_option("--database-url", o.database_url,
                   "PostgreSQL URL of the control database (default: $HOLT_DATABASE_URL, else "
                   "the private cluster)");
    app.add_option("--sandbox-api", o.sandbox_api,
                   "the sandbox service's URL (default http://127.0.0.1:7070)");
    app.add_option("--workers", o.workers, "worker threads (default 2)");
    app.add_option("--log-level", o.log_level, "trace, debug, info, warn or error");
    app.add_flag("--check-config", o.check, "check the configuration, print it briefly, exit");
    CLI11_PARSE(app, argc, argv);
    try {
        auto config = configure(o);
        holt::log::init(config.log_level);
        if (o.check) {
            std::printf("config ok: domain %s, http %s, %s, %d workers\n", config.domain.c_str(),
                        config.listen.to_string().c_str(),
                        config.tls.enabled ? ("https " + config.tls.listen.to_string()).c_str()
                                           : "no https",
                        config.workers);
            return 0;
        }
        return serve(config);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "holt-proxy: %s\n", e.what());
        return 1;
    }
}
