#include "sandbox_directory.hpp"

#include "holt/common/error.hpp"
#include "holt/http_client/api_client.hpp"
#include "holt/vm/network.hpp"
#include "sandbox_store.hpp"

namespace holt::proxy {

struct SandboxDirectory::Impl {
    Impl(store::Database& database, std::string api)
        : store(database), sandbox_api(std::move(api)) {}
    sandbox::SandboxStore store;
    std::string sandbox_api;
};

SandboxDirectory::SandboxDirectory(store::Database& database, std::string sandbox_api)
    : impl_(std::make_unique<Impl>(database, std::move(sandbox_api))) {}

SandboxDirectory::~SandboxDirectory() = default;

SandboxLookup SandboxDirectory::lookup(const std::string& sandbox_id,
                                       const std::optional<std::string>& api_key) {
    using Status = SandboxLookup::Status;
    SandboxLookup result;
    std::optional<std::string> tenant;
    if (api_key) {
        tenant = api_key->empty() ? std::nullopt : impl_->store.authenticate(*api_key);
        if (!tenant) {
            result.status = Status::unauthorized;
            result.message = api_key->empty()
                                 ? "sandbox ports are private: send the owner's API key "
                                   "(Authorization: Bearer holt_...)"
                                 : "the API key is unknown or revoked";
            return result;
        }
    }
    auto record = impl_->store.sandbox_by_id(sandbox_id);
    if (!record) {
        result.status = Status::not_found;
        result.message = "there is no sandbox " + sandbox_id;
        return result;
    }
    result.tenant_id = record->tenant_id;
    if (tenant && *tenant != record->tenant_id) {
        result.status = Status::forbidden;
        result.message = "sandbox " + sandbox_id + " belongs to another tenant";
        return result;
    }
    if (record->state == "killed") {
        result.status = Status::gone;
        result.message =
            "sandbox " + sandbox_id + " has ended (" + record->end_reason.value_or("killed") + ")";
        return result;
    }
    if (!record->network) {
        result.status = Status::no_network;
        result.message = "sandbox " + sandbox_id +
                         " has no network device (create it with a network policy to reach its "
                         "ports)";
        return result;
    }
    if (record->state == "hibernated") {
        result.status = Status::hibernated;
        return result;
    }
    result.status = Status::running;
    result.vm_id = record->vm_id;
    return result;
}

void SandboxDirectory::wake(const std::string& sandbox_id, const std::string& api_key) {
    with_context("wake sandbox " + sandbox_id + " through " + impl_->sandbox_api, [&] {
        http_client::ApiClient client({.api_url = impl_->sandbox_api,
                                       .api_key = api_key,
                                       .timeout = std::chrono::seconds(120),
                                       .user_agent = "holt-proxy"});
        client.call(
            {.method = http_client::Verb::post, .path = "/v1/sandboxes/" + sandbox_id + "/wake"});
    });
}

int SandboxDirectory::open_socket(const std::string& vm_id) {
    return vm::VmNetwork::open_tcp_socket_in(vm_id);
}

}  // namespace holt::proxy
