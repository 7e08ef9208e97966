#include "store_shim.hpp"

namespace holt::store {

std::unique_ptr<pqxx::connection> Database::acquire() {
    std::unique_lock lock(mutex_);
    freed_.wait(lock, [&] { return !idle_.empty() || open_ < max_connections_; });
    if (!idle_.empty()) {
        auto connection = std::move(idle_.back());
        idle_.pop_back();
        if (connection->is_open()) {
            return connection;
        }
        --open_;
    }
    ++open_;
    lock.unlock();
    try {
        return std::make_unique<pqxx::connection>(url_);
    } catch (const std::exception& e) {
        drop();
        throw Error(std::string("connect to the control database: ") + e.what());
    }
}

void Database::give_back(std::unique_ptr<pqxx::connection> connection) {
    std::lock_guard lock(mutex_);
    idle_.push_back(std::move(connection));
    freed_.notify_one();
}

void Database::drop() {
    std::lock_guard lock(mutex_);
    --open_;
    freed_.notify_one();
}

void apply_migrations(Database& database, std::string_view schema,
                      const std::vector<Migration>& migrations) {
    std::string name(schema);
    database.transaction([&](pqxx::work& tx) {
        tx.exec(
            "CREATE TABLE IF NOT EXISTS public.holt_schema_migrations (schema text NOT NULL, "
            "version int NOT NULL, name text NOT NULL, applied_at timestamptz NOT NULL "
            "DEFAULT now(), PRIMARY KEY (schema, version))");
    });
    for (const auto& migration : migrations) {
        database.transaction([&](pqxx::work& tx) {
            tx.exec("SELECT pg_advisory_xact_lock(hashtext(" + tx.quote("holt:" + name) + "))");
            auto done = tx.exec_params(
                "SELECT 1 FROM public.holt_schema_migrations WHERE schema = $1 AND version = $2",
                name, migration.version);
            if (!done.empty()) {
                return;
            }
            tx.exec("CREATE SCHEMA IF NOT EXISTS " + tx.quote_name(name));
            tx.exec("SET LOCAL search_path TO " + tx.quote_name(name) + ", public");
            with_context("migration " + name + "/" + std::to_string(migration.version) + " (" +
                             migration.name + ")",
                         [&] { tx.exec(migration.sql); });
            tx.exec_params(
                "INSERT INTO public.holt_schema_migrations (schema, version, name) "
                "VALUES ($1, $2, $3)",
                name, migration.version, migration.name);
        });
    }
}

}  // namespace holt::store
