#pragma once

// The sandbox service's rows in the control database (schema `sandbox`): tenants, API keys,
// sandboxes and snapshots. Every query that reads or changes a tenant's objects takes the
// tenant id, so one tenant's key can never reach another's rows.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "holt/store/database.hpp"
#include "holt/store/migrations.hpp"

namespace holt::sandbox {

using StringMap = std::map<std::string, std::string>;

struct SandboxRecord {
    std::string id;
    std::string tenant_id;
    std::string template_name;
    std::string state = "running";  // running, hibernated, killed
    int vcpus = 1;
    int memory_mib = 512;
    StringMap env;
    StringMap metadata;
    std::optional<std::vector<std::string>> network;  // allow_egress; nullopt: no NIC
    std::optional<std::int64_t> ttl_seconds;
    std::optional<std::string> expires_at;  // RFC 3339 UTC
    std::string on_expire = "kill";
    std::optional<std::string> parent_id;
    std::optional<std::string> snapshot_id;
    std::string created_at;
    std::optional<std::string> ended_at;
    std::optional<std::string> end_reason;  // killed, ttl_expired, vm_failed
    std::string vm_id;
    std::string hibernation_path;
};

struct SnapshotRecord {
    std::string id;
    std::string tenant_id;
    std::string name;
    std::string sandbox_id;
    std::string template_name;
    int vcpus = 1;
    int memory_mib = 512;
    StringMap env;
    std::optional<std::vector<std::string>> network;
    std::string path;
    std::string created_at;
};

struct KeyRecord {
    std::string id;
    std::string tenant_id;
    std::string name;
    std::string prefix;
    std::string created_at;
    std::optional<std::string> revoked_at;
};

// What a tenant holds now, for its limits.
struct TenantUsage {
    int sandboxes = 0;   // running and hibernated
    int vcpus = 0;       // of running ones
    int memory_mib = 0;  // of running ones
};

struct ListFilter {
    std::vector<std::string> states;  // empty: running and hibernated
    StringMap metadata;               // all must match
    int limit = 100;
};

// A random id "<prefix>-<16 hex digits>".
std::string new_id(const std::string& prefix);
// A new API key secret: "holt_" and 40 characters of [0-9A-Za-z].
std::string new_key_secret();
// The hex SHA-256 of a key secret, as stored.
std::string hash_secret(const std::string& secret);

class SandboxStore {
  public:
    explicit SandboxStore(store::Database& database) : db_(database) {}

    // Creates or updates the schema.
    void migrate();

    // --- tenants and keys ---
    // The id of tenant `name`, created if it does not exist.
    std::string ensure_tenant(const std::string& name);
    // A new key of the tenant; the secret goes in `secret` and is never stored.
    KeyRecord create_key(const std::string& tenant_id, const std::string& name,
                         std::string& secret);
    // The tenant of a valid, unrevoked key, compared in constant time.
    std::optional<std::string> authenticate(const std::string& secret);
    std::vector<KeyRecord> list_keys(const std::string& tenant_id);
    // False when the tenant has no such key.
    bool revoke_key(const std::string& tenant_id, const std::string& key_id);

    // --- sandboxes ---
    void insert_sandbox(const SandboxRecord& record);
    std::optional<SandboxRecord> sandbox(const std::string& tenant_id, const std::string& id);
    std::optional<SandboxRecord> sandbox_by_id(const std::string& id);
    std::vector<SandboxRecord> list_sandboxes(const std::string& tenant_id,
                                              const ListFilter& filter);
    // Every sandbox that is running or hibernated, of every tenant (for start-up).
    std::vector<SandboxRecord> live_sandboxes();
    TenantUsage usage(const std::string& tenant_id);
    void set_running(const std::string& id, const std::string& vm_id);
    void set_hibernated(const std::string& id, const std::string& hibernation_path);
    void set_ended(const std::string& id, const std::string& reason);
    void set_expiry(const std::string& id, std::optional<std::int64_t> ttl_seconds);
    void set_on_expire(const std::string& id, const std::string& on_expire);
    void set_metadata(const std::string& id, const StringMap& metadata);
    // Ids of running or hibernated sandboxes whose expires_at has passed.
    std::vector<std::string> expired_sandboxes();

    // --- snapshots ---
    void insert_snapshot(const SnapshotRecord& record);
    std::optional<SnapshotRecord> snapshot(const std::string& tenant_id, const std::string& id);
    std::vector<SnapshotRecord> list_snapshots(const std::string& tenant_id);
    std::vector<SnapshotRecord> all_snapshots();
    void delete_snapshot(const std::string& id);

  private:
    store::Database& db_;
};

}  // namespace holt::sandbox
