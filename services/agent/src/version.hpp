#pragma once

namespace holt::agent {

// Set by the build from the project version.
#ifndef HOLT_AGENT_VERSION
#define HOLT_AGENT_VERSION "0.0.0-dev"
#endif

inline constexpr const char* kAgentVersion = HOLT_AGENT_VERSION;

}  // namespace holt::agent
