#include "holt/store/migrations.hpp"

#include <set>

#include "holt/common/log.hpp"

namespace holt::store {
namespace {

// Serialises creation of the bookkeeping table across processes (CREATE TABLE IF NOT EXISTS is
// not safe against itself). Per-schema locks use hashtext('holt_schema_migrations:' || schema).
constexpr long kBookkeepingLock = 0x686f6c74'00000001;  // "holt", 1

void check_list(std::string_view schema, const std::vector<Migration>& migrations) {
    if (schema.empty() || schema.starts_with("pg_") || schema == "public" ||
        schema == "information_schema") {
        throw Error("migrations: schema name \"" + std::string(schema) +
                    "\" is reserved or empty; a service needs a schema of its own");
    }
    int previous = 0;
    for (const auto& m : migrations) {
        if (m.version <= previous) {
            throw Error("migrations of schema " + std::string(schema) + ": version " +
                        std::to_string(m.version) + " (" + m.name + ") must be greater than " +
                        std::to_string(previous));
        }
        if (m.name.empty() || m.sql.empty()) {
            throw Error("migrations of schema " + std::string(schema) + ": version " +
                        std::to_string(m.version) + " has no name or no SQL");
        }
        previous = m.version;
    }
}

void lock_schema(pqxx::work& tx, std::string_view schema) {
    tx.exec_params("SELECT pg_advisory_xact_lock(hashtext('holt_schema_migrations:' || $1))",
                   std::string(schema));
}

std::set<int> recorded_versions(pqxx::work& tx, std::string_view schema) {
    std::set<int> versions;
    for (const auto& row :
         tx.exec_params("SELECT version FROM public.holt_schema_migrations WHERE schema = $1",
                        std::string(schema))) {
        versions.insert(row[0].as<int>());
    }
    return versions;
}

void refuse_newer(std::string_view schema, const std::set<int>& recorded, int known) {
    if (!recorded.empty() && *recorded.rbegin() > known) {
        throw Error("schema " + std::string(schema) + " is at version " +
                    std::to_string(*recorded.rbegin()) + ", newer than this build of Holt knows (" +
                    std::to_string(known) +
                    "): refusing to run older code against newer data; upgrade Holt");
    }
}

}  // namespace

int schema_version(Database& database, std::string_view schema) {
    return database.transaction([&](pqxx::work& tx) {
        auto exists = tx.exec1("SELECT to_regclass('public.holt_schema_migrations') IS NOT NULL");
        if (!exists[0].as<bool>()) {
            return 0;
        }
        auto row = tx.exec_params1(
            "SELECT coalesce(max(version), 0) FROM public.holt_schema_migrations WHERE schema = $1",
            std::string(schema));
        return row[0].as<int>();
    });
}

MigrationResult apply_migrations(Database& database, std::string_view schema,
                                 const std::vector<Migration>& migrations) {
    check_list(schema, migrations);
    auto log = holt::log::get("store");
    const int known = migrations.empty() ? 0 : migrations.back().version;
    MigrationResult result;

    // The bookkeeping table and the schema, and a first look at where the schema stands.
    with_context("migrate schema " + std::string(schema), [&] {
        database.transaction([&](pqxx::work& tx) {
            tx.exec_params("SELECT pg_advisory_xact_lock($1)", kBookkeepingLock);
            tx.exec(
                "CREATE TABLE IF NOT EXISTS public.holt_schema_migrations ("
                " schema text NOT NULL,"
                " version integer NOT NULL,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (schema, version))");
        });
        database.transaction([&](pqxx::work& tx) {
            lock_schema(tx, schema);
            tx.exec("CREATE SCHEMA IF NOT EXISTS " + tx.quote_name(std::string(schema)));
            auto recorded = recorded_versions(tx, schema);
            refuse_newer(schema, recorded, known);
            result.previous_version = recorded.empty() ? 0 : *recorded.rbegin();
        });
    });
    result.current_version = result.previous_version;

    // Each migration in a transaction of its own, holding the schema's lock: another process
    // applying the same list waits, then finds the row and skips it.
    for (const auto& m : migrations) {
        std::string what = "migrate schema " + std::string(schema) + " to version " +
                           std::to_string(m.version) + " (" + m.name + ")";
        bool applied = with_context(what, [&] {
            return database.transaction([&](pqxx::work& tx) {
                lock_schema(tx, schema);
                auto recorded = recorded_versions(tx, schema);
                refuse_newer(schema, recorded, known);
                if (recorded.contains(m.version)) {
                    return false;
                }
                tx.exec("SET LOCAL search_path TO " + tx.quote_name(std::string(schema)) +
                        ", public");
                tx.exec(m.sql);
                tx.exec_params(
                    "INSERT INTO public.holt_schema_migrations (schema, version, name) "
                    "VALUES ($1, $2, $3)",
                    std::string(schema), m.version, m.name);
                return true;
            });
        });
        if (applied) {
            log->info("schema {}: applied migration {} ({})", schema, m.version, m.name);
            result.applied.push_back(m.version);
        }
        result.current_version = std::max(result.current_version, m.version);
    }
    return result;
}

}  // namespace holt::store
