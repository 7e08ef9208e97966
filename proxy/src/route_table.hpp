#pragma once

// The app and preview routes (APP.DOMAIN, BRANCH--APP.DOMAIN): a table in the control database
// (schema `proxy`, table `routes`), kept in memory and reloaded whenever it changes. A trigger on
// the table sends NOTIFY holt_proxy_routes; RouteListener LISTENs on its own connection and
// swaps in a fresh copy, so lookups never touch the database and open connections are not
// disturbed.
//
// Schema `proxy`, version 1:
//   routes (app text, branch text ('' for the app itself), target text, tenant_id text,
//           updated_at timestamptz), primary key (app, branch)
// A target is "http://HOST:PORT" (an address the host reaches) or "sandbox://SANDBOX_ID:PORT"
// (a port of a sandbox's VM).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

namespace holt::store {
class Database;
}

namespace holt::proxy {

class Metrics;

struct RouteTarget {
    enum class Kind { address, sandbox };
    Kind kind = Kind::address;
    std::string host;        // address: a host name or IP literal
    std::string sandbox_id;  // sandbox
    std::uint16_t port = 0;
    std::string text;  // as written in the table
};

// Parses a route target; nullopt when it is neither form.
std::optional<RouteTarget> parse_route_target(const std::string& text);

class RouteTable {
  public:
    using Key = std::pair<std::string, std::string>;  // (app, branch)
    using Map = std::map<Key, RouteTarget>;

    std::optional<RouteTarget> find(const std::string& app, const std::string& branch) const;
    void replace(Map routes);
    std::size_t size() const;

  private:
    mutable std::mutex mutex_;
    std::shared_ptr<const Map> routes_ = std::make_shared<Map>();
};

// Creates or upgrades schema `proxy`.
void migrate_route_schema(store::Database& database);

// Reads every route; rows with a target that does not parse are skipped with a warning.
RouteTable::Map load_routes(store::Database& database);

// Keeps `table` equal to the database: loads it, then LISTENs and reloads on every NOTIFY. A lost
// connection is retried every second (each retry reloads); meanwhile the last table is served.
class RouteListener {
  public:
    RouteListener(store::Database& database, RouteTable& table, Metrics& metrics);
    ~RouteListener();
    // Loads the table once (throws holt::Error when the database cannot be read), then starts
    // listening on a thread of its own.
    void start();
    void stop();

  private:
    void run();
    store::Database& database_;
    RouteTable& table_;
    Metrics& metrics_;
    std::atomic<bool> stopping_{false};
    std::thread thread_;
};

}  // namespace holt::proxy
