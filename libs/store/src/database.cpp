#include "holt/store/database.hpp"

#include <pqxx/except>

#include "holt/common/log.hpp"
#include "holt/store/url.hpp"

namespace holt::store {
namespace {

// libpq's messages end in a newline and sometimes spaces.
std::string trimmed(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
        text.pop_back();
    }
    return text;
}

}  // namespace

Database::Lease::Lease(Lease&& other) noexcept
    : owner_(std::exchange(other.owner_, nullptr)), connection_(std::move(other.connection_)) {}

Database::Lease::~Lease() {
    if (owner_) {
        owner_->give_back(std::move(connection_));
    }
}

Database::Database(std::string url, DatabaseOptions options)
    : url_(std::move(url)), redacted_url_(redact_url(url_)), options_(options) {
    if (options_.max_connections == 0) {
        throw Error("database " + redacted_url_ + ": max_connections must be at least 1");
    }
}

Database::~Database() = default;

std::unique_ptr<pqxx::connection> Database::open_connection() const {
    try {
        return std::make_unique<pqxx::connection>(url_);
    } catch (const std::exception& e) {
        throw DatabaseError("connect to " + redacted_url_ + ": " + trimmed(e.what()), "");
    }
}

Database::Lease Database::acquire() {
    std::unique_lock lock(mutex_);
    bool free = freed_.wait_for(lock, options_.acquire_timeout,
                                [&] { return !idle_.empty() || open_ < options_.max_connections; });
    if (!free) {
        throw Error("database " + redacted_url_ + ": no free connection after " +
                    std::to_string(options_.acquire_timeout.count()) + " ms (all " +
                    std::to_string(options_.max_connections) + " in use)");
    }
    if (!idle_.empty()) {
        auto connection = std::move(idle_.back());
        idle_.pop_back();
        return Lease(this, std::move(connection));
    }

    // Open a new one without holding the lock: connecting takes a round trip or a timeout.
    ++open_;
    lock.unlock();
    try {
        return Lease(this, open_connection());
    } catch (...) {
        lock.lock();
        --open_;
        freed_.notify_one();
        throw;
    }
}

void Database::give_back(std::unique_ptr<pqxx::connection> connection) {
    std::lock_guard lock(mutex_);
    if (connection && connection->is_open()) {
        idle_.push_back(std::move(connection));
    } else {
        --open_;
    }
    freed_.notify_one();
}

std::size_t Database::open_connections() const {
    std::lock_guard lock(mutex_);
    return open_;
}

Database::Begun Database::begin() {
    Lease lease = acquire();
    try {
        auto work = std::make_unique<pqxx::work>(*lease);
        return Begun{std::move(lease), std::move(work)};
    } catch (const pqxx::broken_connection& e) {
        holt::log::get("store")->info("database {}: pooled connection broken ({}); reconnecting",
                                      redacted_url_, e.what());
    }

    // The server likely restarted, so every idle connection is as stale as this one: drop them
    // all, and begin once more on a connection opened just now. Nothing was sent but BEGIN.
    lease.connection_.reset();
    {
        std::lock_guard lock(mutex_);
        open_ -= idle_.size();
        idle_.clear();
    }
    lease.connection_ = open_connection();
    auto work = std::make_unique<pqxx::work>(*lease);
    return Begun{std::move(lease), std::move(work)};
}

void Database::rethrow_translated() const {
    try {
        throw;
    } catch (const pqxx::sql_error& e) {
        std::string state = e.sqlstate().empty() ? "" : " (SQLSTATE " + e.sqlstate() + ")";
        throw DatabaseError(trimmed(e.what()) + state, e.sqlstate());
    } catch (const pqxx::in_doubt_error& e) {
        throw DatabaseError("database " + redacted_url_ +
                                ": connection lost during commit; the transaction may or may "
                                "not have committed: " +
                                e.what(),
                            "");
    } catch (const pqxx::broken_connection& e) {
        throw DatabaseError("database " + redacted_url_ + ": connection lost: " + e.what(), "");
    } catch (const pqxx::failure& e) {
        throw DatabaseError("database " + redacted_url_ + ": " + e.what(), "");
    }
}

}  // namespace holt::store
