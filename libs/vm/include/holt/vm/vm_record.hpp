#pragma once

// vm.json: what a running VM is, kept in its runtime directory so that another process can adopt
// the VM (Engine::adopt) and a sweep can tell whose it is.
//
// Fields (format kVmRecordFormat): format, id, owner (EngineOptions::owner of the engine that made
// it), template, created_at, detached (its owner let it run on for a later adopt), vcpus,
// memory_mib, accel, kernel, initrd, kernel_args, memory_file and memory_shared (the RAM backing
// file, if any), network (whether it has a NIC), allow_egress (its network policy), disk_chain
// (the root disk's qcow2 layers, the one it writes to first, down to the template's).

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "holt/vm/machine_spec.hpp"
#include "holt/vm/network.hpp"

namespace holt::vm {

inline constexpr int kVmRecordFormat = 1;

struct VmRecord {
    std::string id;
    std::string owner;
    std::string template_name;
    std::string created_at;
    bool detached = false;
    int vcpus = 1;
    int memory_mib = 512;
    Accelerator accel = Accelerator::tcg;
    std::filesystem::path kernel;
    std::filesystem::path initrd;
    std::string kernel_args;
    std::filesystem::path memory_file;
    bool memory_shared = false;
    bool network = false;
    NetworkPolicy policy;
    std::vector<std::filesystem::path> disk_chain;

    // Writes DIR/vm.json atomically.
    void write(const std::filesystem::path& runtime_dir) const;
    // Reads DIR/vm.json; nullopt if there is none. Throws holt::Error if it is unreadable.
    static std::optional<VmRecord> read(const std::filesystem::path& runtime_dir);
};

}  // namespace holt::vm
