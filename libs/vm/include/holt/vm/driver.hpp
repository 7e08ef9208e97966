#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "holt/vm/machine_spec.hpp"

namespace holt::vm {

// A started VM as its driver sees it: a hypervisor process with a console and an agent channel.
// Destroying a Machine kills its hypervisor process if it is still running.
class Machine {
  public:
    virtual ~Machine() = default;

    virtual const MachineSpec& spec() const = 0;
    // The host end of the guest agent's byte stream (a unix socket).
    virtual std::filesystem::path agent_socket() const = 0;
    // The guest's serial console, as written so far.
    virtual std::filesystem::path console_log() const = 0;

    // The hypervisor's process id.
    virtual int pid() const = 0;
    // True while the hypervisor process runs.
    virtual bool running() = 0;
    // Why the hypervisor process ended ("exit code 1: <its last output>"), if it has.
    virtual std::optional<std::string> exit_reason() = 0;

    virtual void pause() = 0;
    virtual void resume() = 0;
    // Saves the paused or running VM's device and CPU state, and `ram` of its RAM, to `file`.
    // SavedRam::shared_file needs RAM in a shared memory file. The VM is left paused.
    virtual void save_state(const std::filesystem::path& file, SavedRam ram) = 0;
    // Loads what save_state() wrote into a machine started with `incoming` set to the same
    // SavedRam, then runs it.
    virtual void load_state(const std::filesystem::path& file) = 0;
    // Sends the writes to disk `disk_id` to a new qcow2 `overlay` from now on; the image the disk
    // used until now becomes its read-only backing file and no longer changes.
    virtual void switch_disk_overlay(const std::string& disk_id,
                                     const std::filesystem::path& overlay) = 0;

    // Asks the hypervisor to exit and waits up to `grace`; then kills it.
    virtual void stop(std::chrono::milliseconds grace) = 0;
    // Kills the hypervisor process at once.
    virtual void kill() = 0;
    // Lets the VM run on without this object, for a later Driver::attach().
    virtual void detach() = 0;
};

// Starts VMs on one kind of hypervisor. The QEMU driver is the first; others (Firecracker) can
// sit behind the same interface.
class Driver {
  public:
    virtual ~Driver() = default;
    virtual std::string name() const = 0;
    // Starts the hypervisor for `spec` and returns once it runs the guest. Booting the guest to a
    // ready agent is the caller's business (see Engine), because it needs the agent client.
    virtual std::unique_ptr<Machine> start(const MachineSpec& spec) = 0;
    // Takes charge of the running hypervisor `pid` that serves `spec` (started by a process
    // that has since died or detached it; RuntimeDir::running_hypervisor() finds it). Throws
    // holt::Error if it cannot be driven.
    virtual std::unique_ptr<Machine> attach(const MachineSpec& spec, int pid) = 0;
};

}  // namespace holt::vm
