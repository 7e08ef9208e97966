#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "holt/vm/driver.hpp"

namespace holt::vm {

class QmpClient;

struct QemuDriverOptions {
    std::string qemu_binary = "qemu-system-x86_64";
    // Guest TSC frequency given to the kernel (tsc_early_khz). Without it, microvm guests under
    // TCG hang at boot about half the time: there is no timer to calibrate the TSC against.
    // 0: the host's, read from /proc/cpuinfo.
    long tsc_khz = 0;
};

// Starts QEMU's `microvm` machine and drives it over QMP.
//
// Files in the VM's runtime directory: qmp.sock (QMP), agent.sock (the agent's virtio-serial
// port "agent.0"), console.log (the guest's serial console), qemu.log (QEMU's own output).
class QemuDriver : public Driver {
  public:
    explicit QemuDriver(QemuDriverOptions options = {});

    std::string name() const override { return "qemu-microvm"; }
    std::unique_ptr<Machine> start(const MachineSpec& spec) override;
    std::unique_ptr<Machine> attach(const MachineSpec& spec, int pid) override;

    // The full QEMU command line for `spec` (exposed for tests and for `holt-vm --dry-run`).
    std::vector<std::string> command_line(const MachineSpec& spec) const;

    // The kernel arguments every guest gets, before MachineSpec::kernel_args.
    std::string base_kernel_args(Accelerator accel) const;

    // What a saved VM state depends on besides its spec (machine type, CPU model, kernel
    // arguments): a snapshot restores only into a driver with the same signature.
    std::string machine_signature(Accelerator accel) const;

  private:
    QemuDriverOptions options_;
};

// The host's TSC frequency in kHz, or a safe default when /proc/cpuinfo does not say.
long host_tsc_khz();

// The last `max_lines` lines of a text file (a console log); empty if it cannot be read.
std::string tail_of_file(const std::filesystem::path& path, std::size_t max_lines);

}  // namespace holt::vm
