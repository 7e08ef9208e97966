#include "sandbox_store.hpp"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/random.h>

#include <boost/json.hpp>

namespace holt::sandbox {

namespace json = boost::json;

namespace {

// Schema `sandbox`, version by version. Times are timestamptz; the service reads them as RFC 3339.
const std::vector<store::Migration> kMigrations = {
    {1, "tenants, keys, sandboxes, snapshots", R"sql(
CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants(id),
    name        text NOT NULL DEFAULT '',
    prefix      text NOT NULL,
    secret_hash text NOT NULL,            -- hex SHA-256 of the secret
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_prefix ON api_keys (prefix);
CREATE TABLE sandboxes (
    id               text PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants(id),
    template         text NOT NULL,
    state            text NOT NULL CHECK (state IN ('running', 'hibernated', 'killed')),
    vcpus            int NOT NULL,
    memory_mib       int NOT NULL,
    env              jsonb NOT NULL DEFAULT '{}',
    metadata         jsonb NOT NULL DEFAULT '{}',
    network          jsonb,                -- {"allow_egress": [...]}; NULL: no NIC
    ttl_seconds      bigint,
    expires_at       timestamptz,
    on_expire        text NOT NULL DEFAULT 'kill' CHECK (on_expire IN ('kill', 'hibernate')),
    parent_id        text,
    snapshot_id      text,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at         timestamptz,
    end_reason       text,
    vm_id            text NOT NULL DEFAULT '',
    hibernation_path text NOT NULL DEFAULT ''
);
CREATE INDEX sandboxes_tenant ON sandboxes (tenant_id, created_at DESC);
CREATE INDEX sandboxes_expiry ON sandboxes (expires_at) WHERE state <> 'killed';
CREATE TABLE snapshots (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants(id),
    name        text NOT NULL DEFAULT '',
    sandbox_id  text NOT NULL,
    template    text NOT NULL,
    vcpus       int NOT NULL,
    memory_mib  int NOT NULL,
    env         jsonb NOT NULL DEFAULT '{}',
    network     jsonb,
    path        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX snapshots_tenant ON snapshots (tenant_id, created_at DESC);
)sql"},
};

// An RFC 3339 UTC rendering of a timestamptz column.
std::string ts(const std::string& column) {
    return "to_char(" + column + " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";
}

const std::string kSandboxColumns =
    "id, tenant_id, template, state, vcpus, memory_mib, env::text, metadata::text, "
    "network::text, ttl_seconds, " +
    ts("expires_at") + ", on_expire, parent_id, snapshot_id, " + ts("created_at") + ", " +
    ts("ended_at") + ", end_reason, vm_id, hibernation_path";

std::string to_json_text(const StringMap& map) {
    json::object object;
    for (const auto& [k, v] : map) {
        object[k] = v;
    }
    return json::serialize(object);
}

StringMap string_map(const std::string& text) {
    StringMap map;
    auto value = json::parse(text);
    for (const auto& [k, v] : value.as_object()) {
        if (v.is_string()) {
            map[std::string(k)] = std::string(v.as_string());
        }
    }
    return map;
}

// '' for no network; the JSON of the policy otherwise.
std::string network_text(const std::optional<std::vector<std::string>>& network) {
    if (!network) {
        return "";
    }
    json::array cidrs;
    for (const auto& c : *network) {
        cidrs.emplace_back(c);
    }
    return json::serialize(json::object{{"allow_egress", std::move(cidrs)}});
}

std::optional<std::vector<std::string>> network_of(const pqxx::field& field) {
    if (field.is_null()) {
        return std::nullopt;
    }
    std::vector<std::string> cidrs;
    auto value = json::parse(field.c_str());
    if (auto* list = value.as_object().if_contains("allow_egress"); list && list->is_array()) {
        for (const auto& c : list->as_array()) {
            cidrs.emplace_back(c.as_string());
        }
    }
    return cidrs;
}

std::optional<std::string> opt(const pqxx::field& field) {
    if (field.is_null()) {
        return std::nullopt;
    }
    return field.as<std::string>();
}

SandboxRecord sandbox_of(const pqxx::row& row) {
    SandboxRecord r;
    r.id = row[0].as<std::string>();
    r.tenant_id = row[1].as<std::string>();
    r.template_name = row[2].as<std::string>();
    r.state = row[3].as<std::string>();
    r.vcpus = row[4].as<int>();
    r.memory_mib = row[5].as<int>();
    r.env = string_map(row[6].as<std::string>());
    r.metadata = string_map(row[7].as<std::string>());
    r.network = network_of(row[8]);
    if (!row[9].is_null()) {
        r.ttl_seconds = row[9].as<std::int64_t>();
    }
    r.expires_at = opt(row[10]);
    r.on_expire = row[11].as<std::string>();
    r.parent_id = opt(row[12]);
    r.snapshot_id = opt(row[13]);
    r.created_at = row[14].as<std::string>();
    r.ended_at = opt(row[15]);
    r.end_reason = opt(row[16]);
    r.vm_id = row[17].as<std::string>();
    r.hibernation_path = row[18].as<std::string>();
    return r;
}

const std::string kSnapshotColumns =
    "id, tenant_id, name, sandbox_id, template, vcpus, memory_mib, env::text, network::text, "
    "path, " +
    ts("created_at");

SnapshotRecord snapshot_of(const pqxx::row& row) {
    SnapshotRecord r;
    r.id = row[0].as<std::string>();
    r.tenant_id = row[1].as<std::string>();
    r.name = row[2].as<std::string>();
    r.sandbox_id = row[3].as<std::string>();
    r.template_name = row[4].as<std::string>();
    r.vcpus = row[5].as<int>();
    r.memory_mib = row[6].as<int>();
    r.env = string_map(row[7].as<std::string>());
    r.network = network_of(row[8]);
    r.path = row[9].as<std::string>();
    r.created_at = row[10].as<std::string>();
    return r;
}

KeyRecord key_of(const pqxx::row& row) {
    return KeyRecord{
        .id = row[0].as<std::string>(),
        .tenant_id = row[1].as<std::string>(),
        .name = row[2].as<std::string>(),
        .prefix = row[3].as<std::string>(),
        .created_at = row[4].as<std::string>(),
        .revoked_at = opt(row[5]),
    };
}

const std::string kKeyColumns =
    "id, tenant_id, name, prefix, " + ts("created_at") + ", " + ts("revoked_at");

void random_bytes(unsigned char* out, std::size_t size) {
    std::size_t done = 0;
    while (done < size) {
        ssize_t n = ::getrandom(out + done, size - done, 0);
        if (n < 0) {
            throw_errno("getrandom");
        }
        done += static_cast<std::size_t>(n);
    }
}

constexpr std::size_t kKeyPrefixLength = 12;  // "holt_" and 7 characters

}  // namespace

std::string new_id(const std::string& prefix) {
    unsigned char bytes[8];
    random_bytes(bytes, sizeof(bytes));
    static const char* hex = "0123456789abcdef";
    std::string id = prefix + "-";
    for (unsigned char b : bytes) {
        id += hex[b >> 4];
        id += hex[b & 15];
    }
    return id;
}

std::string new_key_secret() {
    static const char* alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    std::string secret = "holt_";
    while (secret.size() < 45) {
        unsigned char bytes[64];
        random_bytes(bytes, sizeof(bytes));
        for (unsigned char b : bytes) {
            if (b < 248 && secret.size() < 45) {  // 248 = 4 * 62: no modulo bias
                secret += alphabet[b % 62];
            }
        }
    }
    return secret;
}

std::string hash_secret(const std::string& secret) {
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(secret.data()), secret.size(), digest);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned char b : digest) {
        out += hex[b >> 4];
        out += hex[b & 15];
    }
    return out;
}

void SandboxStore::migrate() {
    store::apply_migrations(db_, "sandbox", kMigrations);
}

std::string SandboxStore::ensure_tenant(const std::string& name) {
    return db_.transaction([&](pqxx::work& tx) {
        tx.exec_params(
            "INSERT INTO sandbox.tenants (id, name) VALUES ($1, $2) "
            "ON CONFLICT (name) DO NOTHING",
            new_id("ten"), name);
        return tx.exec_params1("SELECT id FROM sandbox.tenants WHERE name = $1", name)[0]
            .as<std::string>();
    });
}

KeyRecord SandboxStore::create_key(const std::string& tenant_id, const std::string& name,
                                   std::string& secret) {
    secret = new_key_secret();
    std::string id = new_id("key");
    return db_.transaction([&](pqxx::work& tx) {
        return key_of(tx.exec_params1(
            "INSERT INTO sandbox.api_keys (id, tenant_id, name, prefix, secret_hash) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING " +
                kKeyColumns,
            id, tenant_id, name, secret.substr(0, kKeyPrefixLength), hash_secret(secret)));
    });
}

std::optional<std::string> SandboxStore::authenticate(const std::string& secret) {
    if (secret.size() < kKeyPrefixLength || secret.rfind("holt_", 0) != 0) {
        return std::nullopt;
    }
    std::string hash = hash_secret(secret);
    auto rows = db_.transaction([&](pqxx::work& tx) {
        return tx.exec_params(
            "SELECT tenant_id, secret_hash FROM sandbox.api_keys "
            "WHERE prefix = $1 AND revoked_at IS NULL",
            secret.substr(0, kKeyPrefixLength));
    });
    for (const auto& row : rows) {
        auto stored = row[1].as<std::string>();
        if (stored.size() == hash.size() &&
            CRYPTO_memcmp(stored.data(), hash.data(), hash.size()) == 0) {
            return row[0].as<std::string>();
        }
    }
    return std::nullopt;
}

std::vector<KeyRecord> SandboxStore::list_keys(const std::string& tenant_id) {
    return db_.transaction([&](pqxx::work& tx) {
        std::vector<KeyRecord> keys;
        for (const auto& row : tx.exec_params("SELECT " + kKeyColumns +
                                                  " FROM sandbox.api_keys WHERE tenant_id = $1 "
                                                  "ORDER BY created_at DESC",
                                              tenant_id)) {
            keys.push_back(key_of(row));
        }
        return keys;
    });
}

bool SandboxStore::revoke_key(const std::string& tenant_id, const std::string& key_id) {
    return db_.transaction([&](pqxx::work& tx) {
        auto found = tx.exec_params(
            "UPDATE sandbox.api_keys SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE tenant_id = $1 AND id = $2 RETURNING id",
            tenant_id, key_id);
        return !found.empty();
    });
}

void SandboxStore::insert_sandbox(const SandboxRecord& r) {
    db_.transaction([&](pqxx::work& tx) {
        tx.exec_params(
            "INSERT INTO sandbox.sandboxes (id, tenant_id, template, state, vcpus, memory_mib, "
            "env, "
            "metadata, network, ttl_seconds, expires_at, on_expire, parent_id, snapshot_id, vm_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, NULLIF($9, '')::jsonb, "
            "NULLIF($10, 0), CASE WHEN $10 > 0 THEN now() + make_interval(secs => $10) END, $11, "
            "NULLIF($12, ''), NULLIF($13, ''), $14)",
            r.id, r.tenant_id, r.template_name, r.state, r.vcpus, r.memory_mib, to_json_text(r.env),
            to_json_text(r.metadata), network_text(r.network), r.ttl_seconds.value_or(0),
            r.on_expire, r.parent_id.value_or(""), r.snapshot_id.value_or(""), r.vm_id);
    });
}

std::optional<SandboxRecord> SandboxStore::sandbox(const std::string& tenant_id,
                                                   const std::string& id) {
    return db_.transaction([&](pqxx::work& tx) -> std::optional<SandboxRecord> {
        auto rows = tx.exec_params("SELECT " + kSandboxColumns +
                                       " FROM sandbox.sandboxes WHERE tenant_id = $1 AND id = $2",
                                   tenant_id, id);
        if (rows.empty()) {
            return std::nullopt;
        }
        return sandbox_of(rows[0]);
    });
}

std::optional<SandboxRecord> SandboxStore::sandbox_by_id(const std::string& id) {
    return db_.transaction([&](pqxx::work& tx) -> std::optional<SandboxRecord> {
        auto rows = tx.exec_params(
            "SELECT " + kSandboxColumns + " FROM sandbox.sandboxes WHERE id = $1", id);
        if (rows.empty()) {
            return std::nullopt;
        }
        return sandbox_of(rows[0]);
    });
}

std::vector<SandboxRecord> SandboxStore::list_sandboxes(const std::string& tenant_id,
                                                        const ListFilter& filter) {
    std::vector<std::string> states = filter.states;
    if (states.empty()) {
        states = {"running", "hibernated"};
    }
    return db_.transaction([&](pqxx::work& tx) {
        std::string state_list;
        for (const auto& s : states) {
            state_list += (state_list.empty() ? "" : ", ") + tx.quote(s);
        }
        std::vector<SandboxRecord> out;
        for (const auto& row : tx.exec_params(
                 "SELECT " + kSandboxColumns +
                     " FROM sandbox.sandboxes WHERE tenant_id = $1 AND state IN (" + state_list +
                     ") AND metadata @> $2::jsonb ORDER BY created_at DESC, id "
                     "LIMIT $3",
                 tenant_id, to_json_text(filter.metadata), filter.limit)) {
            out.push_back(sandbox_of(row));
        }
        return out;
    });
}

std::vector<SandboxRecord> SandboxStore::live_sandboxes() {
    return db_.transaction([&](pqxx::work& tx) {
        std::vector<SandboxRecord> out;
        for (const auto& row : tx.exec("SELECT " + kSandboxColumns +
                                       " FROM sandbox.sandboxes WHERE state <> 'killed'")) {
            out.push_back(sandbox_of(row));
        }
        return out;
    });
}

TenantUsage SandboxStore::usage(const std::string& tenant_id) {
    return db_.transaction([&](pqxx::work& tx) {
        auto row = tx.exec_params1(
            "SELECT count(*), coalesce(sum(vcpus) FILTER (WHERE state = 'running'), 0), "
            "coalesce(sum(memory_mib) FILTER (WHERE state = 'running'), 0) "
            "FROM sandbox.sandboxes WHERE tenant_id = $1 AND state <> 'killed'",
            tenant_id);
        return TenantUsage{row[0].as<int>(), row[1].as<int>(), row[2].as<int>()};
    });
}

void SandboxStore::set_running(const std::string& id, const std::string& vm_id) {
    db_.transaction([&](pqxx::work& tx) {
        tx.exec_params(
            "UPDATE sandbox.sandboxes SET state = 'running', vm_id = $2, "
            "hibernation_path = '' WHERE id = $1 AND state <> 'killed'",
            id, vm_id);
    });
}

void SandboxStore::set_hibernated(const std::string& id, const std::string& path) {
    db_.transaction([&](pqxx::work& tx) {
        tx.exec_params(
            "UPDATE sandbox.sandboxes SET state = 'hibernated', vm_id = '', "
            "hibernation_path = $2 WHERE id = $1 AND state <> 'killed'",
            id, path);
    });
}

void SandboxStore::set_ended(const std::string& id, const std::string& reason) {
    db_.transaction([&](pqxx::work& tx) {
        tx.exec_params(
            "UPDATE sandbox.sandboxes SET state = 'killed', ended_at = now(), "
            "end_reason = $2, vm_id = '', hibernation_path = '' "
            "WHERE id = $1 AND state <> 'killed'",
            id, reason);
    });
}

void SandboxStore::set_expiry(const std::string& id, std::optional<std::int64_t> ttl_seconds) {
    db_.transaction([&](pqxx::work& tx) {
        tx.exec_params(
            "UPDATE sandbox.sandboxes SET ttl_seconds = NULLIF($2, 0), "
            "expires_at = CASE WHEN $2 > 0 THEN now() + make_interval(secs => $2) END "
            "WHERE id = $1",
            id, ttl_seconds.value_or(0));
    });
}

void SandboxStore::set_on_expire(const std::string& id, const std::string& on_expire) {
    db_.transaction([&](pqxx::work& tx) {
        tx.exec_params("UPDATE sandbox.sandboxes SET on_expire = $2 WHERE id = $1", id, on_expire);
    });
}

void SandboxStore::set_metadata(const std::string& id, const StringMap& metadata) {
    db_.transaction([&](pqxx::work& tx) {
        tx.exec_params("UPDATE sandbox.sandboxes SET metadata = $2::jsonb WHERE id = $1", id,
                       to_json_text(metadata));
    });
}

std::vector<std::string> SandboxStore::expired_sandboxes() {
    return db_.transaction([&](pqxx::work& tx) {
        std::vector<std::string> ids;
        for (const auto& row : tx.exec("SELECT id FROM sandbox.sandboxes WHERE state <> 'killed' "
                                       "AND expires_at <= now() ORDER BY expires_at")) {
            ids.push_back(row[0].as<std::string>());
        }
        return ids;
    });
}

void SandboxStore::insert_snapshot(const SnapshotRecord& r) {
    db_.transaction([&](pqxx::work& tx) {
        tx.exec_params(
            "INSERT INTO sandbox.snapshots (id, tenant_id, name, sandbox_id, template, "
            "vcpus, memory_mib, env, network, path) VALUES ($1, $2, $3, $4, $5, $6, "
            "$7, $8::jsonb, NULLIF($9, '')::jsonb, $10)",
            r.id, r.tenant_id, r.name, r.sandbox_id, r.template_name, r.vcpus, r.memory_mib,
            to_json_text(r.env), network_text(r.network), r.path);
    });
}

std::optional<SnapshotRecord> SandboxStore::snapshot(const std::string& tenant_id,
                                                     const std::string& id) {
    return db_.transaction([&](pqxx::work& tx) -> std::optional<SnapshotRecord> {
        auto rows = tx.exec_params("SELECT " + kSnapshotColumns +
                                       " FROM sandbox.snapshots WHERE tenant_id = $1 AND id = $2",
                                   tenant_id, id);
        if (rows.empty()) {
            return std::nullopt;
        }
        return snapshot_of(rows[0]);
    });
}

std::vector<SnapshotRecord> SandboxStore::list_snapshots(const std::string& tenant_id) {
    return db_.transaction([&](pqxx::work& tx) {
        std::vector<SnapshotRecord> out;
        for (const auto& row : tx.exec_params("SELECT " + kSnapshotColumns +
                                                  " FROM sandbox.snapshots WHERE tenant_id = $1 "
                                                  "ORDER BY created_at DESC",
                                              tenant_id)) {
            out.push_back(snapshot_of(row));
        }
        return out;
    });
}

std::vector<SnapshotRecord> SandboxStore::all_snapshots() {
    return db_.transaction([&](pqxx::work& tx) {
        std::vector<SnapshotRecord> out;
        for (const auto& row : tx.exec("SELECT " + kSnapshotColumns + " FROM sandbox.snapshots")) {
            out.push_back(snapshot_of(row));
        }
        return out;
    });
}

void SandboxStore::delete_snapshot(const std::string& id) {
    db_.transaction(
        [&](pqxx::work& tx) { tx.exec_params("DELETE FROM sandbox.snapshots WHERE id = $1", id); });
}

}  // namespace holt::sandbox
