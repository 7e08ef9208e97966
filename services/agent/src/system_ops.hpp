#pragma once

// Guest-wide operations: health, wall clock and entropy (both set by the host after every
// snapshot restore, since clones resume with the snapshot's clock and RNG state).

#include <boost/json/object.hpp>
#include <chrono>
#include <string>

namespace holt::agent {

// The guest's boot id (/proc/sys/kernel/random/boot_id), read once.
const std::string& boot_id();
// Time since the guest booted.
std::chrono::milliseconds uptime();

// The fields of a health reply.
boost::json::object health(int running_processes, bool pid1);

// set_time {"unix_ns"}: sets CLOCK_REALTIME. Throws OpError.
boost::json::object set_time(const boost::json::object& request);
// add_entropy {"data_hex"}: RNDADDENTROPY with the bytes, then RNDRESEEDCRNG where the kernel
// has it. Throws OpError.
boost::json::object add_entropy(const boost::json::object& request);

}  // namespace holt::agent
