// Migrations against the real private cluster.

#include "holt/store/migrations.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "cluster_environment.hpp"

namespace holt::store {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "(no error)";
}

int count(Database& database, const std::string& sql) {
    return database.transaction([&](pqxx::work& tx) { return tx.exec1(sql)[0].as<int>(); });
}

bool table_exists(Database& database, const std::string& qualified) {
    return database.transaction([&](pqxx::work& tx) {
        return tx.exec_params1("SELECT to_regclass($1) IS NOT NULL", qualified)[0].as<bool>();
    });
}

class MigrationsTest : public ::testing::Test {
  protected:
    Database database{test::database_url()};
    std::string schema = test::unique_schema();
    std::vector<Migration> two = {
        {1, "create items", "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)"},
        {2, "seed items",
         "INSERT INTO items VALUES (1, 'first'); INSERT INTO items VALUES (2, 'b')"},
    };
};

TEST_F(MigrationsTest, AppliesEachInOrderAndRecordsIt) {
    auto result = apply_migrations(database, schema, two);
    EXPECT_EQ(result.previous_version, 0);
    EXPECT_EQ(result.current_version, 2);
    EXPECT_THAT(result.applied, ElementsAre(1, 2));

    // The tables landed in the service's own schema, and the bookkeeping names each migration.
    EXPECT_EQ(count(database, "SELECT count(*) FROM " + schema + ".items"), 2);
    auto rows = database.transaction([&](pqxx::work& tx) {
        std::vector<std::string> out;
        for (const auto& row :
             tx.exec_params("SELECT version, name, applied_at <= now() FROM holt_schema_migrations "
                            "WHERE schema = $1 ORDER BY version",
                            schema)) {
            out.push_back(row[0].as<std::string>() + " " + row[1].as<std::string>() + " " +
                          row[2].as<std::string>());
        }
        return out;
    });
    EXPECT_THAT(rows, ElementsAre("1 create items t", "2 seed items t"));
    EXPECT_EQ(schema_version(database, schema), 2);
}

TEST_F(MigrationsTest, SecondRunAppliesNothing) {
    apply_migrations(database, schema, two);
    auto again = apply_migrations(database, schema, two);
    EXPECT_TRUE(again.applied.empty());
    EXPECT_EQ(again.previous_version, 2);
    EXPECT_EQ(again.current_version, 2);
    EXPECT_EQ(count(database, "SELECT count(*) FROM " + schema + ".items"), 2);

    // A later build adds a third: only it runs.
    two.push_back({3, "add column", "ALTER TABLE items ADD COLUMN price int"});
    EXPECT_THAT(apply_migrations(database, schema, two).applied, ElementsAre(3));
}

TEST_F(MigrationsTest, AFailingMigrationRollsBackEntirelyAndSaysWhich) {
    std::vector<Migration> broken = {
        two[0],
        {2, "half done", "CREATE TABLE other (id int); INSERT INTO missing VALUES (1)"},
    };
    std::string error = error_of([&] { apply_migrations(database, schema, broken); });
    EXPECT_THAT(error,
                AllOf(HasSubstr("schema " + schema), HasSubstr("version 2"), HasSubstr("half done"),
                      HasSubstr("relation \"missing\" does not exist")));
    EXPECT_EQ(schema_version(database, schema), 1);
    EXPECT_TRUE(table_exists(database, schema + ".items"));
    EXPECT_FALSE(table_exists(database, schema + ".other"));

    // Fixed in the next build, it applies.
    EXPECT_THAT(apply_migrations(database, schema, two).applied, ElementsAre(2));
}

TEST_F(MigrationsTest, ANewerDatabaseIsRefused) {
    two.push_back({3, "add column", "ALTER TABLE items ADD COLUMN price int"});
    apply_migrations(database, schema, two);
    two.pop_back();
    EXPECT_THAT(
        error_of([&] { apply_migrations(database, schema, two); }),
        AllOf(HasSubstr(schema), HasSubstr("version 3"), HasSubstr("newer"), HasSubstr("(2)")));
}

// A migration slow enough that concurrent runs overlap, that counts how often it ran.
std::vector<Migration> slow_counting() {
    return {{1, "create runs", "CREATE TABLE runs (n int); SELECT pg_sleep(0.3)"},
            {2, "count a run", "INSERT INTO runs VALUES (1); SELECT pg_sleep(0.1)"}};
}

TEST_F(MigrationsTest, ConcurrentThreadsApplyEachOnce) {
    std::atomic<int> applied = 0;
    std::atomic<int> failures = 0;
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) {
        threads.emplace_back([&] {
            try {
                applied += static_cast<int>(
                    apply_migrations(database, schema, slow_counting()).applied.size());
            } catch (const std::exception& e) {
                ADD_FAILURE() << e.what();
                ++failures;
            }
        });
    }
    for (auto& thread : threads) {
        thread.join();
    }
    EXPECT_EQ(failures, 0);
    EXPECT_EQ(applied, 2);
    EXPECT_EQ(count(database, "SELECT count(*) FROM " + schema + ".runs"), 1);
}

TEST_F(MigrationsTest, ConcurrentProcessesApplyEachOnce) {
    std::vector<pid_t> children;
    for (int i = 0; i < 3; ++i) {
        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            int code = 100;
            try {
                Database own(test::database_url());
                code =
                    static_cast<int>(apply_migrations(own, schema, slow_counting()).applied.size());
            } catch (const std::exception& e) {
                std::fprintf(stderr, "child: %s\n", e.what());
            }
            ::_exit(code);
        }
        children.push_back(pid);
    }
    int applied = 0;
    for (pid_t pid : children) {
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFEXITED(status));
        ASSERT_NE(WEXITSTATUS(status), 100) << "a child failed (see its stderr)";
        applied += WEXITSTATUS(status);
    }
    EXPECT_EQ(applied, 2);
    EXPECT_EQ(count(database, "SELECT count(*) FROM " + schema + ".runs"), 1);
}

}  // namespace
}  // namespace holt::store
