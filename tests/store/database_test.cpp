// The connection pool and transactions against the real private cluster.

#include "holt/store/database.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "cluster_environment.hpp"

namespace holt::store {
namespace {

class DatabaseTest : public ::testing::Test {
  protected:
    void SetUp() override {
        schema = test::unique_schema();
        Database setup(test::database_url());
        setup.transaction([&](pqxx::work& tx) {
            tx.exec("CREATE SCHEMA " + schema);
            tx.exec("CREATE TABLE " + schema + ".counter (n int NOT NULL)");
            tx.exec("INSERT INTO " + schema + ".counter VALUES (0)");
            tx.exec("CREATE TABLE " + schema + ".names (name text PRIMARY KEY)");
        });
    }

    int counter(Database& database) {
        return database.transaction([&](pqxx::work& tx) {
            return tx.exec1("SELECT n FROM " + schema + ".counter")[0].as<int>();
        });
    }

    std::string schema;
};

TEST_F(DatabaseTest, PoolServesEightThreadsWithinItsLimit) {
    Database database(test::database_url(), DatabaseOptions{.max_connections = 3});
    constexpr int kThreads = 8;
    constexpr int kEach = 25;
    std::atomic<std::size_t> most_open = 0;
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
        threads.emplace_back([&] {
            for (int j = 0; j < kEach; ++j) {
                database.transaction([&](pqxx::work& tx) {
                    tx.exec("UPDATE " + schema + ".counter SET n = n + 1");
                    std::size_t open = database.open_connections();
                    std::size_t seen = most_open.load();
                    while (open > seen && !most_open.compare_exchange_weak(seen, open)) {
                    }
                });
            }
        });
    }
    for (auto& thread : threads) {
        thread.join();
    }
    EXPECT_EQ(counter(database), kThreads * kEach);
    EXPECT_LE(most_open.load(), 3u);
    EXPECT_GE(most_open.load(), 2u) << "eight threads never shared the pool's connections";
}

TEST_F(DatabaseTest, AnExceptionRollsBackAndPropagates) {
    Database database(test::database_url());
    EXPECT_THROW(database.transaction([&](pqxx::work& tx) {
        tx.exec("UPDATE " + schema + ".counter SET n = 42");
        throw std::runtime_error("changed my mind");
    }),
                 std::runtime_error);
    EXPECT_EQ(counter(database), 0);
}

TEST_F(DatabaseTest, SqlErrorsKeepTheirSqlState) {
    Database database(test::database_url());
    database.transaction(
        [&](pqxx::work& tx) { tx.exec("INSERT INTO " + schema + ".names VALUES ('a')"); });
    try {
        database.transaction(
            [&](pqxx::work& tx) { tx.exec("INSERT INTO " + schema + ".names VALUES ('a')"); });
        FAIL() << "no error for a duplicate key";
    } catch (const DatabaseError& e) {
        EXPECT_EQ(e.sqlstate(), "23505");
        EXPECT_THAT(e.what(), ::testing::HasSubstr("duplicate key"));
    }
}

TEST_F(DatabaseTest, ReconnectsWhenThePooledConnectionWasCut) {
    Database database(test::database_url(), DatabaseOptions{.max_connections = 1});
    auto backend = [&] {
        return database.transaction(
            [](pqxx::work& tx) { return tx.exec1("SELECT pg_backend_pid()")[0].as<int>(); });
    };
    int first = backend();

    // Another session ends ours, as a server restart or an idle timeout would.
    Database admin(test::database_url());
    admin.transaction(
        [&](pqxx::work& tx) { tx.exec_params("SELECT pg_terminate_backend($1, 5000)", first); });

    int second = backend();
    EXPECT_NE(second, first);
    EXPECT_EQ(database.open_connections(), 1u);
}

}  // namespace
}  // namespace holt::store
