#pragma once

// Where a sandbox's port is, and who may reach it. Reads the sandbox service's rows in the
// control database (through its SandboxStore, so API keys are checked exactly as the API checks
// them) and asks the service to wake a hibernated sandbox. Every call blocks: the proxy runs
// them on its blocking pool, never on a worker thread.

#include <memory>
#include <optional>
#include <string>

namespace holt::store {
class Database;
}

namespace holt::proxy {

struct SandboxLookup {
    enum class Status {
        running,       // vm_id is set: connect in its namespace
        hibernated,    // wake it, then look again
        unauthorized,  // no key or an unknown key (401)
        forbidden,     // a key of another tenant (403)
        not_found,     // no such sandbox (404)
        gone,          // killed or expired (410)
        no_network,    // made without a network policy: it has no NIC to reach (502)
        failed,        // the lookup itself failed (the database): message says why (502)
    };
    Status status = Status::not_found;
    std::string vm_id;
    std::string tenant_id;
    std::string message;  // for the error page
};

class SandboxDirectory {
  public:
    // `sandbox_api`: the sandbox service's base URL, for wakes.
    SandboxDirectory(store::Database& database, std::string sandbox_api);
    ~SandboxDirectory();

    // Looks up `sandbox_id`. With `api_key` set, the key must belong to the sandbox's tenant;
    // with nullopt (a route the platform made), no key is checked.
    SandboxLookup lookup(const std::string& sandbox_id, const std::optional<std::string>& api_key);

    // Asks the sandbox service to wake the sandbox, with the owner's key; returns when it is
    // running. Throws holt::Error naming what failed.
    void wake(const std::string& sandbox_id, const std::string& api_key);

    // A new unconnected non-blocking socket in the namespace of VM `vm_id`.
    static int open_socket(const std::string& vm_id);

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace holt::proxy
