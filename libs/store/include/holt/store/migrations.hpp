#pragma once

// Schema migrations. Each service owns one PostgreSQL schema and declares, in code, the ordered
// migrations that build it. apply_migrations() runs at start-up and brings the database up to
// the newest one.
//
// Bookkeeping (format version 1): the table public.holt_schema_migrations has one row per
// applied migration: (schema text, version int, name text, applied_at timestamptz), primary key
// (schema, version). Rows are only ever added.

#include <string>
#include <string_view>
#include <vector>

#include "holt/store/database.hpp"

namespace holt::store {

struct Migration {
    int version;       // > 0, strictly increasing within one schema's list
    std::string name;  // short description: "create sandboxes"
    std::string sql;   // one or more statements; runs with search_path = <schema>, public
};

struct MigrationResult {
    int previous_version = 0;  // the schema's version before (0: new)
    int current_version = 0;   // after
    std::vector<int> applied;  // what this call applied, in order; empty when up to date
};

// Creates `schema` if needed and applies, in order, each migration not yet recorded for it, each
// in its own transaction together with its bookkeeping row. Safe to run from several processes
// at once: a transaction-level advisory lock per schema makes each migration apply exactly once.
// Throws holt::Error when the list is malformed, when a migration fails (it is rolled back
// entirely; the message names schema, version, name and PostgreSQL's error), or when the
// database already has a version newer than the newest in `migrations` (code older than data).
MigrationResult apply_migrations(Database& database, std::string_view schema,
                                 const std::vector<Migration>& migrations);

// The newest version recorded for `schema`, 0 if none.
int schema_version(Database& database, std::string_view schema);

}  // namespace holt::store
