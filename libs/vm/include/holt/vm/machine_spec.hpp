#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace holt::vm {

// Which hypervisor backend executes guest code.
enum class Accelerator { kvm, tcg };
const char* to_string(Accelerator accel);

// A disk attached to a VM, in the order the guest sees them (/dev/vda, /dev/vdb, ...).
struct DiskSpec {
    std::string id;              // device id inside QEMU ("root", "vol-..."), stable across restore
    std::filesystem::path path;  // image file on the host
    std::string format = "qcow2";  // "qcow2" or "raw"
    bool read_only = false;
};

// Where guest RAM lives. Anonymous memory by default. A file lets a snapshot leave RAM out (the
// file is the memory image) and lets many clones map it copy-on-write.
struct MemorySpec {
    std::filesystem::path file;  // empty: anonymous memory
    bool shared = false;  // true: guest writes land in the file; false: private copy-on-write
};

// How much of guest RAM a saved state holds besides the device and CPU state.
enum class SavedRam {
    all,          // every page, in the hypervisor's migration stream
    shared_file,  // none: RAM lives in the VM's shared memory file, which is its image
    none,         // none: whoever restores it puts RAM back (see memory_pages.hpp)
};

// Everything a driver needs to start one VM. All paths are host paths; the runtime directory
// holds the VM's sockets and logs and belongs to the VM alone.
struct MachineSpec {
    std::string id;  // "vm-3f2a9c1d": names the VM in logs and errors
    int vcpus = 1;
    int memory_mib = 512;
    Accelerator accel = Accelerator::tcg;

    std::filesystem::path kernel;
    std::filesystem::path initrd;
    std::string kernel_args;  // appended to the driver's own arguments
    std::vector<DiskSpec> disks;
    MemorySpec memory;
    // Start without running the guest, waiting for Machine::load_state() to bring in a saved
    // state that holds this much of RAM. Empty: boot.
    std::optional<SavedRam> incoming;

    std::filesystem::path runtime_dir;  // must exist; the driver puts its files here

    // The VM's network namespace (VmNetwork::netns_fd()): QEMU runs inside it and gets the guest
    // NIC on its tap0. -1: no NIC. A snapshot restores only into a spec that has it as well.
    int netns_fd = -1;
};

}  // namespace holt::vm
