#pragma once

// Access to Holt's control database: a small pool of libpqxx connections and helpers that run a
// function inside one transaction. Every service links this; see docs/store.md.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <pqxx/pqxx>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "holt/common/error.hpp"

namespace holt::store {

// A failure reported by PostgreSQL or libpqxx, translated at the boundary of this library. It
// keeps the SQLSTATE code (empty when there is none, e.g. a lost connection) so callers can react
// to expected conditions such as a unique violation ("23505").
class DatabaseError : public holt::Error {
  public:
    DatabaseError(const std::string& message, std::string sqlstate)
        : holt::Error(message), sqlstate_(std::move(sqlstate)) {}
    const std::string& sqlstate() const noexcept { return sqlstate_; }

  private:
    std::string sqlstate_;
};

struct DatabaseOptions {
    // At most this many connections are open at once; callers beyond it wait for a free one.
    std::size_t max_connections = 8;
    // How long a caller waits for a free connection before giving up with an error.
    std::chrono::milliseconds acquire_timeout{30'000};
};

// A thread-safe pool of connections to one database. Connections are opened lazily, reused, and
// dropped when they are found broken. Construction does not connect.
class Database {
  public:
    // A connection borrowed from the pool; it goes back on destruction (or is dropped if broken).
    class Lease {
      public:
        Lease(Lease&& other) noexcept;
        Lease& operator=(Lease&&) = delete;
        ~Lease();
        pqxx::connection& operator*() const { return *connection_; }
        pqxx::connection* operator->() const { return connection_.get(); }

      private:
        friend class Database;
        Lease(Database* owner, std::unique_ptr<pqxx::connection> connection)
            : owner_(owner), connection_(std::move(connection)) {}
        Database* owner_;
        std::unique_ptr<pqxx::connection> connection_;
    };

    explicit Database(std::string url, DatabaseOptions options = {});
    Database(const Database&) = delete;
    Database& operator=(const Database&) = delete;
    ~Database();

    // The connection string as given, and the same without its password (for logs).
    const std::string& url() const { return url_; }
    const std::string& redacted_url() const { return redacted_url_; }

    // Runs fn(pqxx::connection&) on a pooled connection and returns its result. For work that
    // manages its own transactions; most callers want transaction().
    template <typename Fn>
    decltype(auto) with_connection(Fn&& fn) {
        Lease lease = acquire();
        return translate_errors([&]() -> decltype(auto) { return fn(*lease); });
    }

    // Runs fn(pqxx::work&) in one transaction and commits it when fn returns; an exception from
    // fn rolls it back and propagates. If the pooled connection turns out to be broken when the
    // transaction begins (the server restarted, an idle connection was cut), the transaction is
    // begun once more on a fresh connection. Nothing is retried once fn has run, so a transaction
    // that may have committed is never repeated. libpqxx errors become DatabaseError.
    template <typename Fn>
    decltype(auto) transaction(Fn&& fn) {
        return translate_errors([&]() -> decltype(auto) {
            auto [lease, work] = begin();
            if constexpr (std::is_void_v<std::invoke_result_t<Fn&, pqxx::work&>>) {
                fn(*work);
                work->commit();
            } else {
                decltype(auto) result = fn(*work);
                work->commit();
                return result;
            }
        });
    }

    // Borrows a connection, opening one if the pool has room; waits up to acquire_timeout.
    Lease acquire();

    // A new connection outside the pool, owned by the caller: for long-lived sessions such as a
    // LISTEN loop that must not hold a pooled connection.
    std::unique_ptr<pqxx::connection> open_connection() const;

    // Connections currently open (idle in the pool or lent out).
    std::size_t open_connections() const;

  private:
    struct Begun {
        Lease lease;
        std::unique_ptr<pqxx::work> work;
    };
    Begun begin();
    void give_back(std::unique_ptr<pqxx::connection> connection);

    // Runs step and turns libpqxx's exceptions into DatabaseError naming this database.
    template <typename Step>
    decltype(auto) translate_errors(Step&& step) {
        try {
            return step();
        } catch (const holt::Error&) {
            throw;
        } catch (...) {
            rethrow_translated();
        }
    }
    [[noreturn]] void rethrow_translated() const;

    std::string url_;
    std::string redacted_url_;
    DatabaseOptions options_;

    mutable std::mutex mutex_;
    std::condition_variable freed_;
    std::vector<std::unique_ptr<pqxx::connection>> idle_;
    std::size_t open_ = 0;
};

}  // namespace holt::store
