#include "system_ops.hpp"

#include <fcntl.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include <boost/algorithm/hex.hpp>
#include <boost/json/value_from.hpp>
#include <fstream>
#include <vector>

#include "holt/agent_protocol/frame.hpp"
#include "holt/agent_protocol/messages.hpp"
#include "holt/common/unique_fd.hpp"
#include "op_error.hpp"
#include "version.hpp"

// Added in Linux 4.17; the agent must also run on kernels whose headers lack it.
#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

namespace holt::agent {

namespace json = boost::json;

namespace {

// Entropy accepted per request; more would not make the pool any better.
constexpr std::size_t kMaxEntropyBytes = 4096;

}  // namespace

const std::string& boot_id() {
    static const std::string id = [] {
        std::ifstream file("/proc/sys/kernel/random/boot_id");
        std::string line;
        std::getline(file, line);
        return line;
    }();
    return id;
}

std::chrono::milliseconds uptime() {
    timespec now{};
    clock_gettime(CLOCK_BOOTTIME, &now);
    return std::chrono::seconds(now.tv_sec) + std::chrono::duration_cast<std::chrono::milliseconds>(
                                                  std::chrono::nanoseconds(now.tv_nsec));
}

json::object health(int running_processes, bool pid1) {
    agent_protocol::HealthInfo info;
    info.agent_version = kAgentVersion;
    info.protocol_version = agent_protocol::kProtocolVersion;
    info.boot_id = boot_id();
    info.uptime = uptime();
    struct sysinfo si {};
    if (::sysinfo(&si) == 0) {
        for (int i = 0; i < 3; ++i) {
            info.load[i] = static_cast<double>(si.loads[i]) / (1 << SI_LOAD_SHIFT);
        }
    }
    info.running_processes = running_processes;
    info.pid1 = pid1;
    return json::value_from(info).as_object();
}

json::object set_time(const json::object& request) {
    agent_protocol::FieldReader reader(request, "set_time request");
    auto unix_ns = reader.optional_integer("unix_ns");
    if (!unix_ns || *unix_ns <= 0) {
        throw OpError("EINVAL", "set_time: 'unix_ns' must be a positive number of nanoseconds");
    }
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(*unix_ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(*unix_ns % 1'000'000'000);
    if (::clock_settime(CLOCK_REALTIME, &ts) != 0) {
        throw errno_error("set_time");
    }
    return {};
}

json::object add_entropy(const json::object& request) {
    agent_protocol::FieldReader reader(request, "add_entropy request");
    const std::string hex = reader.required_string("data_hex");
    std::string bytes;
    try {
        boost::algorithm::unhex(hex, std::back_inserter(bytes));
    } catch (const std::exception&) {
        throw OpError("EINVAL", "add_entropy: 'data_hex' is not an even-length hex string");
    }
    if (bytes.empty() || bytes.size() > kMaxEntropyBytes) {
        throw OpError("EINVAL", "add_entropy: between 1 and " + std::to_string(kMaxEntropyBytes) +
                                    " bytes are accepted");
    }

    UniqueFd fd(::open("/dev/random", O_WRONLY | O_CLOEXEC));
    if (!fd) {
        throw errno_error("add_entropy: open /dev/random");
    }
    // struct rand_pool_info ends in a flexible array: build it in a byte buffer.
    std::vector<char> buffer(sizeof(rand_pool_info) + bytes.size());
    auto* info = reinterpret_cast<rand_pool_info*>(buffer.data());
    info->entropy_count = static_cast<int>(bytes.size() * 8);
    info->buf_size = static_cast<int>(bytes.size());
    std::copy(bytes.begin(), bytes.end(), buffer.data() + sizeof(rand_pool_info));
    if (::ioctl(fd.get(), RNDADDENTROPY, info) != 0) {
        throw errno_error("add_entropy: RNDADDENTROPY");
    }
    bool reseeded = ::ioctl(fd.get(), RNDRESEEDCRNG) == 0;
    if (!reseeded && errno != ENOTTY && errno != EINVAL) {
        throw errno_error("add_entropy: RNDRESEEDCRNG");
    }
    return {{"bytes", bytes.size()}, {"reseeded", reseeded}};
}

}  // namespace holt::agent
