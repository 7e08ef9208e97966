#pragma once

// TODO(sandbox): a stand-in for libs/store (branch `store`) with the same names and the subset
// of its API this service uses: a pooled Database with transaction(), and apply_migrations().
// Delete this file and link holt_store once that branch is merged.

#include <condition_variable>
#include <memory>
#include <mutex>
#include <pqxx/pqxx>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "holt/common/error.hpp"

namespace holt::store {

class Database {
  public:
    explicit Database(std::string url, std::size_t max_connections = 8)
        : url_(std::move(url)), max_connections_(max_connections) {}

    const std::string& url() const { return url_; }

    template <typename Fn>
    decltype(auto) transaction(Fn&& fn) {
        auto connection = acquire();
        try {
            pqxx::work work(*connection);
            if constexpr (std::is_void_v<std::invoke_result_t<Fn&, pqxx::work&>>) {
                fn(work);
                work.commit();
                give_back(std::move(connection));
            } else {
                decltype(auto) result = fn(work);
                work.commit();
                give_back(std::move(connection));
                return result;
            }
        } catch (const pqxx::broken_connection& e) {
            drop();
            throw Error(std::string("control database: connection lost: ") + e.what());
        } catch (const holt::Error&) {
            give_back(std::move(connection));
            throw;
        } catch (const pqxx::failure& e) {
            give_back(std::move(connection));
            throw Error(std::string("control database: ") + e.what());
        } catch (...) {
            give_back(std::move(connection));
            throw;
        }
    }

  private:
    std::unique_ptr<pqxx::connection> acquire();
    void give_back(std::unique_ptr<pqxx::connection> connection);
    void drop();

    std::string url_;
    std::size_t max_connections_;
    std::mutex mutex_;
    std::condition_variable freed_;
    std::vector<std::unique_ptr<pqxx::connection>> idle_;
    std::size_t open_ = 0;
};

struct Migration {
    int version;
    std::string name;
    std::string sql;
};

// Creates `schema` and applies the migrations it has not seen yet, in order, each in its own
// transaction, under an advisory lock.
void apply_migrations(Database& database, std::string_view schema,
                      const std::vector<Migration>& migrations);

}  // namespace holt::store
