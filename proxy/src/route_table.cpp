#include "route_table.hpp"

#include <boost/url/parse.hpp>
#include <charconv>
#include <pqxx/pqxx>

#include "holt/common/error.hpp"
#include "holt/common/log.hpp"
#include "holt/store/database.hpp"
#include "holt/store/migrations.hpp"
#include "metrics.hpp"

namespace holt::proxy {

namespace {

constexpr const char* kChannel = "holt_proxy_routes";

const std::vector<store::Migration> kMigrations = {
    {1, "routes with change notification", R"sql(
CREATE TABLE routes (
    app        text NOT NULL CHECK (app ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$' AND app NOT LIKE '%--%'),
    branch     text NOT NULL DEFAULT ''
               CHECK (branch = '' OR (branch ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'
                                      AND branch NOT LIKE '%--%')),
    target     text NOT NULL,
    tenant_id  text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, branch)
);
CREATE FUNCTION routes_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('holt_proxy_routes', TG_OP);
    RETURN NULL;
END $$;
CREATE TRIGGER routes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON routes
    FOR EACH STATEMENT EXECUTE FUNCTION routes_changed();
)sql"},
};

class Receiver : public pqxx::notification_receiver {
  public:
    Receiver(pqxx::connection_base& connection, std::atomic<bool>& changed)
        : pqxx::notification_receiver(connection, kChannel), changed_(changed) {}
    void operator()(const std::string&, int) override { changed_ = true; }

  private:
    std::atomic<bool>& changed_;
};

}  // namespace

std::optional<RouteTarget> parse_route_target(const std::string& text) {
    auto url = boost::urls::parse_absolute_uri(text);
    if (!url || !url->has_port() || url->host().empty() ||
        (url->path() != "" && url->path() != "/") || url->has_query() || url->has_userinfo()) {
        return std::nullopt;
    }
    unsigned port = 0;
    auto p = url->port();
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
    if (ec != std::errc() || end != p.data() + p.size() || port == 0 || port > 65535) {
        return std::nullopt;
    }
    RouteTarget target;
    target.port = static_cast<std::uint16_t>(port);
    target.text = text;
    if (url->scheme() == "http") {
        target.kind = RouteTarget::Kind::address;
        target.host = std::string(url->host_address());
    } else if (url->scheme() == "sandbox") {
        target.kind = RouteTarget::Kind::sandbox;
        target.sandbox_id = std::string(url->host());
    } else {
        return std::nullopt;
    }
    return target;
}

std::optional<RouteTarget> RouteTable::find(const std::string& app,
                                            const std::string& branch) const {
    std::shared_ptr<const Map> routes;
    {
        std::lock_guard lock(mutex_);
        routes = routes_;
    }
    auto it = routes->find({app, branch});
    if (it == routes->end()) {
        return std::nullopt;
    }
    return it->second;
}

void RouteTable::replace(Map routes) {
    auto fresh = std::make_shared<const Map>(std::move(routes));
    std::lock_guard lock(mutex_);
    routes_ = std::move(fresh);
}

std::size_t RouteTable::size() const {
    std::lock_guard lock(mutex_);
    return routes_->size();
}

void migrate_route_schema(store::Database& database) {
    store::apply_migrations(database, "proxy", kMigrations);
}

RouteTable::Map load_routes(store::Database& database) {
    auto rows = database.transaction(
        [](pqxx::work& tx) { return tx.exec("SELECT app, branch, target FROM proxy.routes"); });
    RouteTable::Map map;
    for (const auto& row : rows) {
        auto app = row[0].as<std::string>();
        auto branch = row[1].as<std::string>();
        auto text = row[2].as<std::string>();
        auto target = parse_route_target(text);
        if (!target) {
            log::get("proxy")->warn(
                "route {}{}{}: target \"{}\" is neither http://HOST:PORT nor "
                "sandbox://SANDBOX:PORT; skipped",
                branch, branch.empty() ? "" : "--", app, text);
            continue;
        }
        map.emplace(RouteTable::Key{app, branch}, *target);
    }
    return map;
}

RouteListener::RouteListener(store::Database& database, RouteTable& table, Metrics& metrics)
    : database_(database), table_(table), metrics_(metrics) {}

RouteListener::~RouteListener() {
    stop();
}

void RouteListener::start() {
    auto routes = with_context("load routes", [&] { return load_routes(database_); });
    metrics_.routes = static_cast<std::int64_t>(routes.size());
    metrics_.route_reloads++;
    table_.replace(std::move(routes));
    thread_ = std::thread([this] { run(); });
}

void RouteListener::stop() {
    stopping_ = true;
    if (thread_.joinable()) {
        thread_.join();
    }
}

void RouteListener::run() {
    auto log = log::get("proxy");
    while (!stopping_) {
        try {
            auto connection = database_.open_connection();
            std::atomic<bool> changed{false};
            Receiver receiver(*connection, changed);
            // A change between the last load and this LISTEN sent no notification to us:
            // load once more now that we listen.
            changed = true;
            while (!stopping_) {
                if (changed.exchange(false)) {
                    auto routes = load_routes(database_);
                    log->info("routes reloaded: {} app and preview routes", routes.size());
                    metrics_.routes = static_cast<std::int64_t>(routes.size());
                    metrics_.route_reloads++;
                    table_.replace(std::move(routes));
                }
                connection->await_notification(0, 200'000);
            }
        } catch (const std::exception& e) {
            metrics_.route_listener_errors++;
            log->warn("route listener: {}; retrying in 1s (serving the last routes loaded)",
                      e.what());
            for (int i = 0; i < 10 && !stopping_; ++i) {
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            }
        }
    }
}

}  // namespace holt::proxy
