#pragma once

// The HTTP API of docs/api/sandbox.yaml on top of SandboxManager.

#include <cstddef>

#include "holt/http/router.hpp"
#include "sandbox_manager.hpp"

namespace holt::sandbox {

struct ApiOptions {
    std::size_t json_limit = 1024 * 1024;  // request bodies other than uploads
};

// Adds every route of the API to `router`. `manager` and `store` must outlive it.
void add_routes(http::Router& router, SandboxManager& manager, SandboxStore& store,
                ApiOptions options = {});

}  // namespace holt::sandbox
