// libs/store without a server: URLs, migration list checks, an unreachable server.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "holt/store/database.hpp"
#include "holt/store/local_cluster.hpp"
#include "holt/store/migrations.hpp"
#include "holt/store/url.hpp"

namespace holt::store {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

// Nothing listens on port 1 of the loopback address: connecting fails at once.
constexpr const char* kUnreachable = "postgresql://holt:s3cret@127.0.0.1:1/holt";

std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "(no error)";
}

TEST(RedactUrl, HidesThePasswordOfAUri) {
    EXPECT_EQ(redact_url("postgresql://holt:s3cret@db.example:5432/holt?sslmode=require"),
              "postgresql://holt:***@db.example:5432/holt?sslmode=require");
    EXPECT_EQ(redact_url("postgres://holt@db/holt"), "postgres://holt@db/holt");
    EXPECT_EQ(redact_url("postgresql:///holt?host=/run/pg&user=holt&password=s3cret"),
              "postgresql:///holt?host=/run/pg&user=holt&password=***");
}

TEST(RedactUrl, HidesThePasswordOfKeywordPairs) {
    std::string redacted = redact_url("host=db port=5433 password='s3cret' dbname=holt");
    EXPECT_THAT(redacted,
                AllOf(HasSubstr("host=db"), HasSubstr("port=5433"), HasSubstr("dbname=holt"),
                      HasSubstr("password=***"), Not(HasSubstr("s3cret"))));
}

TEST(SocketUrl, NamesSocketDirectoryPortAndUser) {
    EXPECT_EQ(socket_url("holt", "/var/lib/holt/postgres/run", 5432, "holt"),
              "postgresql:///holt?host=/var/lib/holt/postgres/run&port=5432&user=holt");
}

TEST(Database, UnreachableServerGivesAClearErrorWithoutThePassword) {
    Database database(kUnreachable, DatabaseOptions{.max_connections = 1});
    std::string error = error_of([&] { database.transaction([](pqxx::work&) {}); });
    EXPECT_THAT(error, AllOf(HasSubstr("connect to postgresql://holt:***@127.0.0.1:1/holt"),
                             HasSubstr("refused"), Not(HasSubstr("s3cret"))));
    // The failed attempt gave its slot back: the next caller gets the same error, not a timeout.
    EXPECT_EQ(database.open_connections(), 0u);
    EXPECT_THROW(database.with_connection([](pqxx::connection&) {}), DatabaseError);
}

TEST(Database, RefusesAnEmptyPool) {
    EXPECT_THROW(Database("postgresql:///holt", DatabaseOptions{.max_connections = 0}), Error);
}

TEST(Migrations, VersionsMustIncrease) {
    Database database(kUnreachable);
    std::vector<Migration> migrations = {{2, "two", "SELECT 1"}, {2, "again", "SELECT 1"}};
    // Checked before connecting: the error is about the list, not the server.
    EXPECT_THAT(error_of([&] { apply_migrations(database, "svc", migrations); }),
                AllOf(HasSubstr("svc"), HasSubstr("again"), HasSubstr("greater than 2")));
    EXPECT_THAT(error_of([&] {
                    apply_migrations(database, "svc", {{0, "zero", "SELECT 1"}});
                }),
                HasSubstr("greater than 0"));
}

TEST(Migrations, ServicesNeedASchemaOfTheirOwn) {
    Database database(kUnreachable);
    for (const char* schema : {"", "public", "pg_catalog", "information_schema"}) {
        EXPECT_THAT(error_of([&] { apply_migrations(database, schema, {}); }),
                    HasSubstr("reserved or empty"))
            << schema;
    }
}

TEST(DatabaseUrl, TheEnvironmentWins) {
    ::setenv("HOLT_DATABASE_URL", "postgresql://elsewhere/holt", 1);
    // A data directory that cannot be created proves no cluster was started.
    EXPECT_EQ(database_url(LocalClusterOptions{.data_dir = "/proc/holt-nowhere"}),
              "postgresql://elsewhere/holt");
    ::unsetenv("HOLT_DATABASE_URL");
    EXPECT_THROW(database_url(LocalClusterOptions{.data_dir = "/proc/holt-nowhere"}), Error);
}

}  // namespace
}  // namespace holt::store
