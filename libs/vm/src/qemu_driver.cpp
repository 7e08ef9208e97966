#include "holt/vm/qemu_driver.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <boost/json/array.hpp>
#include <csignal>
#include <deque>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include "holt/common/child_process.hpp"
#include "holt/common/error.hpp"
#include "holt/common/log.hpp"
#include "holt/common/unique_fd.hpp"
#include "holt/vm/network.hpp"
#include "holt/vm/qmp_client.hpp"

namespace holt::vm {
namespace {

using Clock = std::chrono::steady_clock;

// QEMU's own start-up (before QMP answers) is well under a second; this bounds a wedged one.
constexpr auto kQmpConnectTimeout = std::chrono::seconds(10);

std::string blockdev_arg(const DiskSpec& disk) {
    std::string arg = "driver=" + disk.format + ",node-name=" + disk.id +
                      ",file.driver=file,file.filename=" + disk.path.string();
    if (disk.read_only) {
        arg += ",read-only=on";
    }
    return arg;
}

// Migration streams are local files: lift QEMU's default 128 MiB/s network throttle.
constexpr std::int64_t kUnthrottledBytesPerSecond = std::int64_t{1} << 40;
constexpr auto kMigrationTimeout = std::chrono::seconds(120);
constexpr const char* kStateFdName = "holt-state";

constexpr const char* kMachineType = "microvm,acpi=on,memory-backend=ram";

const char* cpu_model(Accelerator accel) {
    return accel == Accelerator::kvm ? "host" : "max";
}

std::string memory_backend_arg(const MachineSpec& spec) {
    std::string size = "size=" + std::to_string(spec.memory_mib) + "M";
    if (spec.memory.file.empty()) {
        return "memory-backend-ram,id=ram," + size;
    }
    return "memory-backend-file,id=ram," + size + ",mem-path=" + spec.memory.file.string() +
           ",share=" + (spec.memory.shared ? "on" : "off");
}

class QemuMachine : public Machine {
  public:
    QemuMachine(MachineSpec spec, ChildProcess process)
        : spec_(std::move(spec)), process_(std::move(process)) {}

    ~QemuMachine() override { process_.kill_and_wait(); }

    void connect_qmp() {
        auto deadline = Clock::now() + kQmpConnectTimeout;
        for (;;) {
            try {
                qmp_.emplace(QmpClient::connect(
                    qmp_socket(),
                    std::min(deadline, Clock::now() + std::chrono::milliseconds(200))));
                return;
            } catch (const Error& e) {
                if (!process_.running()) {
                    throw Error("QEMU exited during start-up (" + exit_reason().value_or("") + ")");
                }
                if (Clock::now() >= deadline) {
                    throw;
                }
            }
        }
    }

    const MachineSpec& spec() const override { return spec_; }
    std::filesystem::path agent_socket() const override { return spec_.runtime_dir / "agent.sock"; }
    std::filesystem::path console_log() const override { return spec_.runtime_dir / "console.log"; }
    std::filesystem::path qmp_socket() const { return spec_.runtime_dir / "qmp.sock"; }
    std::filesystem::path qemu_log() const { return spec_.runtime_dir / "qemu.log"; }

    int pid() const override { return process_.pid(); }
    bool running() override { return process_.running(); }

    std::optional<std::string> exit_reason() override {
        if (process_.running()) {
            return std::nullopt;
        }
        std::string reason = process_.exit_status() ? process_.exit_status()->describe() : "ended";
        std::string output = tail_of_file(qemu_log(), 5);
        if (!output.empty()) {
            reason += ": " + output;
        }
        return reason;
    }

    void pause() override { qmp().execute("stop"); }
    void resume() override { qmp().execute("cont"); }

    void stop(std::chrono::milliseconds grace) override {
        if (!process_.running()) {
            return;
        }
        try {
            qmp().execute("quit", {}, grace);
        } catch (const Error&) {
            // QEMU may close the socket before it answers; the wait below decides.
        }
        if (!process_.wait_for(grace)) {
            holt::log::get("vm")->warn("vm={} QEMU did not quit within {} ms; killing it", spec_.id,
                                       grace.count());
        }
        process_.kill_and_wait();
    }

    void kill() override { process_.kill_and_wait(); }

    void detach() override {
        qmp_.reset();
        process_.release();
    }

    // After an attach: learns which node is the top of each disk's chain now (snapshots switch
    // it), so later switches name the right one.
    void learn_disk_nodes() {
        boost::json::value blocks = qmp().execute("query-block");
        for (const auto& entry : blocks.as_array()) {
            const auto* inserted = entry.as_object().if_contains("inserted");
            if (!inserted) {
                continue;
            }
            std::string node(inserted->as_object().at("node-name").as_string());
            std::string disk_id = node.substr(0, node.find('.'));
            if (node.size() > disk_id.size()) {
                overlay_generation_[disk_id] = std::stoi(node.substr(disk_id.size() + 1));
            }
        }
    }

    void save_state(const std::filesystem::path& file, SavedRam ram) override {
        with_context("save state of " + spec_.id + " to " + file.string(), [&] {
            qmp().execute("stop");
            if (ram == SavedRam::none) {
                // Devices and CPUs only, without the throwaway parts of a migration (its
                // configuration section and self-description) that the loader is told to skip.
                qmp().execute("xen-save-devices-state",
                              {{"filename", file.string()}, {"live", false}});
                return;
            }
            set_ignore_shared(ram == SavedRam::shared_file);
            qmp().execute("migrate-set-parameters",
                          {{"max-bandwidth", kUnthrottledBytesPerSecond}});
            UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
            if (fd.get() < 0) {
                throw_errno("open");
            }
            qmp().send_fd(kStateFdName, fd.get());
            qmp().execute("migrate", {{"uri", std::string("fd:") + kStateFdName}});
            wait_for_migration();
        });
    }

    void load_state(const std::filesystem::path& file) override {
        with_context("load state of " + spec_.id + " from " + file.string(), [&] {
            if (!spec_.incoming) {
                throw Error("the machine was not started to load a state");
            }
            set_ignore_shared(*spec_.incoming == SavedRam::shared_file);
            UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
            if (fd.get() < 0) {
                throw_errno("open");
            }
            qmp().send_fd(kStateFdName, fd.get());
            qmp().execute("migrate-incoming", {{"uri", std::string("fd:") + kStateFdName}});
            wait_for_migration();
            auto status = qmp().execute("query-status");
            if (!status.as_object().at("running").as_bool()) {
                qmp().execute("cont");
            }
        });
    }

    void switch_disk_overlay(const std::string& disk_id,
                             const std::filesystem::path& overlay) override {
        with_context("switch disk " + disk_id + " of " + spec_.id + " to " + overlay.string(), [&] {
            // The new node's name is taken only once QEMU has made it.
            int generation = overlay_generation_[disk_id] + 1;
            qmp().execute("blockdev-snapshot-sync",
                          {{"node-name", current_node(disk_id)},
                           {"snapshot-file", overlay.string()},
                           {"snapshot-node-name", node_name(disk_id, generation)},
                           {"format", "qcow2"}});
            overlay_generation_[disk_id] = generation;
        });
    }

  private:
    void set_ignore_shared(bool on) {
        qmp().execute("migrate-set-capabilities",
                      {{"capabilities",
                        boost::json::array{{{"capability", "x-ignore-shared"}, {"state", on}}}}});
    }

    // Polls the migration until it completes; a failed one becomes an error with QEMU's reason.
    void wait_for_migration() {
        auto deadline = Clock::now() + kMigrationTimeout;
        for (;;) {
            boost::json::object info;
            try {
                info = qmp().execute("query-migrate").as_object();
            } catch (const Error&) {
                if (!process_.wait_for(std::chrono::milliseconds(500))) {
                    throw;
                }
                throw Error("QEMU exited during migration (" + exit_reason().value_or("") + ")");
            }
            std::string status =
                info.contains("status") ? std::string(info.at("status").as_string()) : "";
            if (status == "completed") {
                return;
            }
            if (status == "failed" || status == "cancelled") {
                std::string reason = info.contains("error-desc")
                                         ? std::string(info.at("error-desc").as_string())
                                         : status;
                throw Error("migration " + status + ": " + reason);
            }
            if (!process_.running()) {
                throw Error("QEMU exited during migration (" + exit_reason().value_or("") + ")");
            }
            if (Clock::now() >= deadline) {
                throw Error("migration did not complete within " +
                            std::to_string(kMigrationTimeout.count()) + "s");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }

    // Disks keep their QEMU device; each overlay switch gives the top of the chain a new node
    // name: "root", then "root.1", "root.2", ...
    static std::string node_name(const std::string& disk_id, int generation) {
        return generation == 0 ? disk_id : disk_id + "." + std::to_string(generation);
    }
    std::string current_node(const std::string& disk_id) const {
        auto it = overlay_generation_.find(disk_id);
        return node_name(disk_id, it == overlay_generation_.end() ? 0 : it->second);
    }

    std::map<std::string, int> overlay_generation_;

    QmpClient& qmp() {
        if (!qmp_) {
            throw Error("QMP is not connected");
        }
        return *qmp_;
    }

    MachineSpec spec_;
    ChildProcess process_;
    std::optional<QmpClient> qmp_;
};

}  // namespace

const char* to_string(Accelerator accel) {
    return accel == Accelerator::kvm ? "kvm" : "tcg";
}

long host_tsc_khz() {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
        if (line.rfind("cpu MHz", 0) == 0) {
            auto colon = line.find(':');
            if (colon != std::string::npos) {
                double mhz = std::stod(line.substr(colon + 1));
                if (mhz > 100) {
                    return static_cast<long>(mhz * 1000);
                }
            }
        }
    }
    return 2000000;
}

std::string tail_of_file(const std::filesystem::path& path, std::size_t max_lines) {
    std::ifstream in(path);
    std::deque<std::string> lines;
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') {
            line.pop_back();
        }
        lines.push_back(std::move(line));
        if (lines.size() > max_lines) {
            lines.pop_front();
        }
    }
    std::string out;
    for (const auto& l : lines) {
        if (!out.empty()) {
            out += '\n';
        }
        out += l;
    }
    return out;
}

QemuDriver::QemuDriver(QemuDriverOptions options) : options_(std::move(options)) {
    // A full path, so that what the binary is (its size and time) can key snapshots.
    options_.qemu_binary = find_executable(options_.qemu_binary);
    if (options_.tsc_khz <= 0) {
        options_.tsc_khz = host_tsc_khz();
    }
}

std::string QemuDriver::machine_signature(Accelerator accel) const {
    return std::string(kMachineType) + " -cpu " + cpu_model(accel) + " " + base_kernel_args(accel);
}

std::string QemuDriver::base_kernel_args(Accelerator accel) const {
    // panic=-1 with -no-reboot turns a guest panic into a QEMU exit, which start-up notices.
    std::string args = "console=ttyS0 quiet reboot=t panic=-1 root=/dev/vda";
    if (accel == Accelerator::tcg) {
        args += " tsc_early_khz=" + std::to_string(options_.tsc_khz);
    }
    return args;
}

std::vector<std::string> QemuDriver::command_line(const MachineSpec& spec) const {
    const auto& run = spec.runtime_dir;
    std::string machine = kMachineType;
    if (spec.incoming == SavedRam::none) {
        // A state of devices alone (xen-save-devices-state) has no self-description and no
        // configuration section (below) at its end.
        machine += ",suppress-vmdesc=on";
    }
    // One flag and its value per line.
    // clang-format off
    std::vector<std::string> argv = {
        options_.qemu_binary,
        "-name", spec.id,
        "-M", machine,
        "-object", memory_backend_arg(spec),
        "-accel", to_string(spec.accel),
        "-cpu", cpu_model(spec.accel),
        "-m", std::to_string(spec.memory_mib) + "M",
        "-smp", std::to_string(spec.vcpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", spec.kernel.string(),
        "-initrd", spec.initrd.string(),
        "-append", base_kernel_args(spec.accel) +
                       (spec.netns_fd >= 0 ? " " + VmNetwork::kernel_arg() : "") +
                       (spec.kernel_args.empty() ? "" : " " + spec.kernel_args),
        "-chardev", "file,id=console,path=" + (run / "console.log").string(),
        "-serial", "chardev:console",
        "-device", "virtio-serial-device",
        "-chardev", "socket,id=agent,path=" + (run / "agent.sock").string() + ",server=on,wait=off",
        "-device", "virtserialport,chardev=agent,name=agent.0",
        "-device", "virtio-rng-device",
        "-qmp", "unix:" + (run / "qmp.sock").string() + ",server=on,wait=off",
    };
    // clang-format on
    if (spec.netns_fd >= 0) {
        auto nic = VmNetwork::qemu_args();
        argv.insert(argv.end(), nic.begin(), nic.end());
    }
    if (spec.incoming) {
        argv.insert(argv.end(), {"-incoming", "defer"});
    }
    if (spec.incoming == SavedRam::none) {
        argv.insert(argv.end(), {"-global", "migration.send-configuration=off"});
    }
    for (const auto& disk : spec.disks) {
        argv.insert(argv.end(), {"-blockdev", blockdev_arg(disk), "-device",
                                 "virtio-blk-device,drive=" + disk.id + ",id=" + disk.id + "-dev"});
    }
    return argv;
}

std::unique_ptr<Machine> QemuDriver::start(const MachineSpec& spec) {
    return with_context("start QEMU for " + spec.id, [&] {
        // A VM lives as long as its Machine object, not as long as the thread that started it;
        // VMs of a process that died are found and removed by RuntimeDir::sweep_stale().
        SpawnOptions spawn_options{.output_file = spec.runtime_dir / "qemu.log",
                                   .network_namespace_fd = spec.netns_fd};
        auto machine = std::make_unique<QemuMachine>(
            spec, ChildProcess::spawn(command_line(spec), spawn_options));
        machine->connect_qmp();
        return std::unique_ptr<Machine>(std::move(machine));
    });
}

std::unique_ptr<Machine> QemuDriver::attach(const MachineSpec& spec, int pid) {
    return with_context("attach to QEMU " + std::to_string(pid) + " of " + spec.id, [&] {
        auto machine = std::make_unique<QemuMachine>(spec, ChildProcess::adopt(pid));
        machine->connect_qmp();
        machine->learn_disk_nodes();
        return std::unique_ptr<Machine>(std::move(machine));
    });
}

}  // namespace holt::vm
