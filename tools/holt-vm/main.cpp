// holt-vm: the operator's tool for Holt's VM engine. It builds guest images, boots throwaway VMs
// to run a command or an interactive shell in (removed when it exits), and drives VMs that live
// between its invocations (start, exec, snapshot, restore, fork, hibernate, wake, kill, ls): those
// are detached VMs, adopted for the length of one command.

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <optional>

#include "holt/common/data_dir.hpp"
#include "holt/common/error.hpp"
#include "holt/common/log.hpp"
#include "holt/vm/agent_client.hpp"
#include "holt/vm/engine.hpp"

namespace {

namespace fs = std::filesystem;
using holt::vm::Engine;
using holt::vm::EngineOptions;
using holt::vm::VmOptions;

// Exit code when holt-vm itself fails (as opposed to the command it ran), as docker and podman do.
constexpr int kToolFailure = 125;

struct GlobalOptions {
    std::string data_dir;
    std::string accel = "auto";
    std::string log_level;
};

struct VmCommandOptions {
    std::string template_name;
    int vcpus = 1;
    int memory_mib = 512;
    double boot_timeout_s = 60;
};

fs::path own_directory() {
    return fs::read_symlink("/proc/self/exe").parent_path();
}

Engine make_engine(const GlobalOptions& global) {
    EngineOptions options;
    options.owner = "holt-vm";
    options.data_dir =
        global.data_dir.empty() ? holt::default_data_dir() : fs::path(global.data_dir);
    options.recipes_dir = HOLT_IMAGES_DIR;
    options.accel = holt::vm::parse_accelerator_mode(global.accel);
    return Engine(options);
}

VmOptions vm_options(const VmCommandOptions& o) {
    return VmOptions{
        .template_name = o.template_name,
        .vcpus = o.vcpus,
        .memory_mib = o.memory_mib,
        .boot_timeout = std::chrono::milliseconds(static_cast<long>(o.boot_timeout_s * 1000)),
    };
}

void add_vm_options(CLI::App& cmd, VmCommandOptions& o) {
    cmd.add_option("-t,--template", o.template_name, "template to boot (see `holt-vm images ls`)")
        ->required();
    cmd.add_option("--vcpus", o.vcpus, "virtual CPUs")->check(CLI::Range(1, 64));
    cmd.add_option("--memory", o.memory_mib, "memory in MiB")->check(CLI::Range(64, 65536));
    cmd.add_option("--boot-timeout", o.boot_timeout_s, "seconds a boot may take");
}

int exit_code_of(const holt::agent_protocol::ExitStatus& status) {
    if (status.exit_code) {
        return *status.exit_code;
    }
    return 128 + status.signal.value_or(0);
}

int images_build(const GlobalOptions& global, const std::vector<std::string>& names) {
    Engine engine = make_engine(global);
    engine.images().build(names, own_directory() / "holt-agent");
    return 0;
}

int images_ls(const GlobalOptions& global) {
    Engine engine = make_engine(global);
    for (const auto& name : engine.images().templates()) {
        try {
            auto image = engine.images().get(name);
            std::printf("%-20s built    kernel %s  recipe %.12s\n", name.c_str(),
                        image.kernel_version.c_str(), image.recipe_hash.c_str());
        } catch (const holt::Error& e) {
            std::printf("%-20s not built\n", name.c_str());
        }
    }
    return 0;
}

// Set by SIGINT, SIGTERM and SIGHUP: `run` then removes its VM and exits instead of dying with
// the VM's files left for the next sweep.
volatile std::sig_atomic_t stop_signal = 0;

int run(const GlobalOptions& global, const VmCommandOptions& vm_opts,
        const std::vector<std::string>& command, const std::vector<std::string>& env,
        const std::string& cwd, const std::string& user, double timeout_s) {
    Engine engine = make_engine(global);
    engine.sweep_stale_vms();
    auto vm = engine.create(vm_options(vm_opts));

    holt::vm::ExecRequest spec;
    spec.argv = command;
    spec.cwd = cwd;
    spec.user = user;
    for (const auto& kv : env) {
        auto eq = kv.find('=');
        if (eq == std::string::npos) {
            throw holt::Error("--env takes KEY=VALUE, not \"" + kv + "\"");
        }
        spec.env[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    if (timeout_s > 0) {
        spec.timeout = std::chrono::milliseconds(static_cast<long>(timeout_s * 1000));
    }
    holt::vm::ExecCallbacks callbacks;
    callbacks.on_stdout = [](std::string_view data) {
        std::fwrite(data.data(), 1, data.size(), stdout);
        std::fflush(stdout);
    };
    callbacks.on_stderr = [](std::string_view data) {
        std::fwrite(data.data(), 1, data.size(), stderr);
        std::fflush(stderr);
    };
    auto session = vm->agent().start(spec, callbacks);
    std::optional<holt::vm::ExitStatus> status;
    while (!(status = session->wait_for(std::chrono::milliseconds(100)))) {
        if (stop_signal != 0) {
            // The VM and everything it made go with `vm` on the way out.
            std::fprintf(stderr, "holt-vm: stopped by signal %d; removing %s\n",
                         static_cast<int>(stop_signal), vm->id().c_str());
            return 128 + stop_signal;
        }
    }
    if (status->timed_out) {
        std::fprintf(stderr, "holt-vm: command killed after its %gs timeout\n", timeout_s);
    }
    vm->stop();
    return exit_code_of(*status);
}

// Puts the local terminal in raw mode for the life of the object.
class RawTerminal {
  public:
    RawTerminal() {
        if (::isatty(STDIN_FILENO) && ::tcgetattr(STDIN_FILENO, &saved_) == 0) {
            termios raw = saved_;
            ::cfmakeraw(&raw);
            active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
        }
    }
    ~RawTerminal() {
        if (active_) {
            ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
        }
    }

  private:
    termios saved_{};
    bool active_ = false;
};

holt::agent_protocol::TerminalSize terminal_size() {
    winsize ws{};
    if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0) {
        return {ws.ws_row, ws.ws_col};
    }
    return {};
}

volatile std::sig_atomic_t window_changed = 0;

int shell(const GlobalOptions& global, const VmCommandOptions& vm_opts) {
    Engine engine = make_engine(global);
    engine.sweep_stale_vms();
    std::fprintf(stderr, "holt-vm: booting a %s VM...\n", vm_opts.template_name.c_str());
    auto vm = engine.create(vm_options(vm_opts));
    std::fprintf(stderr, "holt-vm: %s is ready; exit the shell to remove it\n", vm->id().c_str());

    holt::vm::ExecRequest spec;
    spec.argv = {"/bin/bash", "-l"};
    if (!::isatty(STDIN_FILENO)) {
        spec.argv = {"/bin/sh"};
    }
    spec.env["TERM"] = std::getenv("TERM") ? std::getenv("TERM") : "xterm";
    spec.pipe_stdin = true;
    spec.pty = terminal_size();

    holt::vm::ExecCallbacks callbacks;
    callbacks.on_stdout = [](std::string_view data) {
        ::write(STDOUT_FILENO, data.data(), data.size());
    };
    callbacks.on_stderr = callbacks.on_stdout;

    std::signal(SIGWINCH, [](int) { window_changed = 1; });
    int code = 0;
    {
        RawTerminal raw;
        auto session = vm->agent().start(spec, callbacks);
        char buf[4096];
        bool stdin_open = true;
        for (;;) {
            if (auto status = session->wait_for(std::chrono::milliseconds(0))) {
                code = exit_code_of(*status);
                break;
            }
            if (window_changed) {
                window_changed = 0;
                session->resize(terminal_size());
            }
            pollfd pfd{STDIN_FILENO, POLLIN, 0};
            if (stdin_open && ::poll(&pfd, 1, 50) > 0) {
                ssize_t n = ::read(STDIN_FILENO, buf, sizeof(buf));
                if (n <= 0) {
                    session->close_stdin();
                    stdin_open = false;
                } else {
                    session->write_stdin(std::string_view(buf, static_cast<std::size_t>(n)));
                }
            } else if (!stdin_open) {
                ::poll(nullptr, 0, 50);
            }
        }
    }
    vm->stop();
    return code;
}

// ---- VMs that live between invocations ------------------------------------------------------

// Adopts detached VM `id`, runs `fn` on it and detaches it again, whatever `fn` does.
template <typename Fn>
auto with_detached_vm(Engine& engine, const std::string& id, Fn&& fn) {
    auto vm = engine.adopt(id);
    struct DetachOnExit {
        std::unique_ptr<holt::vm::Vm>& vm;
        ~DetachOnExit() {
            if (vm) {
                vm->detach();
            }
        }
    } detach_on_exit{vm};
    return fn(vm);
}

int start(const GlobalOptions& global, const VmCommandOptions& vm_opts,
          const std::vector<std::string>& allow_egress) {
    Engine engine = make_engine(global);
    VmOptions options = vm_options(vm_opts);
    if (!allow_egress.empty()) {
        options.network = holt::vm::NetworkPolicy{allow_egress};
    }
    auto vm = engine.create(options);
    std::printf("%s\n", vm->id().c_str());
    vm->detach();
    return 0;
}

int exec(const GlobalOptions& global, const std::string& id,
         const std::vector<std::string>& command) {
    Engine engine = make_engine(global);
    return with_detached_vm(engine, id, [&](auto& vm) {
        holt::vm::ExecRequest spec;
        spec.argv = command;
        spec.timeout = std::chrono::milliseconds(0);
        holt::vm::ExecCallbacks callbacks;
        callbacks.on_stdout = [](std::string_view data) {
            std::fwrite(data.data(), 1, data.size(), stdout);
            std::fflush(stdout);
        };
        callbacks.on_stderr = [](std::string_view data) {
            std::fwrite(data.data(), 1, data.size(), stderr);
        };
        auto session = vm->agent().start(spec, callbacks);
        std::optional<holt::vm::ExitStatus> status;
        while (!(status = session->wait_for(std::chrono::milliseconds(100)))) {
            if (stop_signal != 0) {
                return 128 + static_cast<int>(stop_signal);  // the command runs on in the VM
            }
        }
        return exit_code_of(*status);
    });
}

int snapshot(const GlobalOptions& global, const std::string& id) {
    Engine engine = make_engine(global);
    return with_detached_vm(engine, id, [&](auto& vm) {
        std::printf("%s\n", engine.snapshot(*vm)->id().c_str());
        return 0;
    });
}

int restore(const GlobalOptions& global, const std::string& snapshot_id, bool wake) {
    Engine engine = make_engine(global);
    auto snapshot = engine.open_snapshot(snapshot_id);
    auto vm = wake ? engine.wake(snapshot) : engine.restore(snapshot);
    std::printf("%s\n", vm->id().c_str());
    vm->detach();
    return 0;
}

int fork(const GlobalOptions& global, const std::string& id, int count) {
    Engine engine = make_engine(global);
    return with_detached_vm(engine, id, [&](auto& vm) {
        for (auto& child : engine.fork(*vm, count)) {
            std::printf("%s\n", child->id().c_str());
            child->detach();
        }
        return 0;
    });
}

int hibernate(const GlobalOptions& global, const std::string& id) {
    Engine engine = make_engine(global);
    auto vm = engine.adopt(id);
    try {
        std::printf("%s\n", engine.hibernate(vm)->id().c_str());
    } catch (...) {
        vm->detach();  // it runs on
        throw;
    }
    return 0;
}

int kill(const GlobalOptions& global, const std::vector<std::string>& ids) {
    Engine engine = make_engine(global);
    for (const auto& id : ids) {
        engine.adopt(id)->kill();
    }
    return 0;
}

int delete_snapshots(const GlobalOptions& global, const std::vector<std::string>& ids) {
    Engine engine = make_engine(global);
    for (const auto& id : ids) {
        engine.delete_snapshot(id);
    }
    return 0;
}

int ls(const GlobalOptions& global) {
    Engine engine = make_engine(global);
    engine.sweep_stale_vms();
    std::printf("%-14s %-18s %-10s %5s %7s  %s\n", "VM", "TEMPLATE", "STATE", "VCPUS", "MEMORY",
                "CREATED");
    for (const auto& vm : engine.list_vms()) {
        const auto& r = vm.record;
        std::string state = !vm.hypervisor_running ? "ended"
                            : vm.owned             ? "in use"
                            : r && r->detached     ? "detached"
                                                   : "orphaned";
        std::printf("%-14s %-18s %-10s %5d %6dM  %s\n", vm.id.c_str(),
                    r ? r->template_name.c_str() : "?", state.c_str(), r ? r->vcpus : 0,
                    r ? r->memory_mib : 0, r ? r->created_at.c_str() : "");
    }
    std::printf("\n%-14s %-14s %-18s %s\n", "SNAPSHOT", "OF VM", "TEMPLATE", "CREATED");
    for (const auto& id : engine.list_snapshots()) {
        try {
            auto m = holt::vm::Snapshot::read_manifest(engine.vms_dir().parent_path() /
                                                       "snapshots" / id);
            std::printf("%-14s %-14s %-18s %s\n", id.c_str(), m.source.c_str(),
                        m.template_name.c_str(), m.created_at.c_str());
        } catch (const holt::Error& e) {
            std::printf("%-14s unusable: %s\n", id.c_str(), e.what());
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"holt-vm: build guest images and run commands in throwaway Holt microVMs"};
    app.require_subcommand(1);
    GlobalOptions global;
    app.add_option("--data-dir", global.data_dir,
                   "data directory (default: $HOLT_DATA_DIR, /var/lib/holt as root)");
    app.add_option("--accel", global.accel, "accelerator: auto, kvm or tcg")
        ->check(CLI::IsMember({"auto", "kvm", "tcg"}));
    app.add_option("--log-level", global.log_level, "trace, debug, info, warn or error");

    auto* images = app.add_subcommand("images", "build and list guest templates");
    images->require_subcommand(1);
    std::vector<std::string> build_names;
    auto* images_build_cmd =
        images->add_subcommand("build", "build templates (all when none is named); cached");
    images_build_cmd->add_option("templates", build_names, "templates to build");
    auto* images_ls_cmd = images->add_subcommand("ls", "list templates and whether they are built");

    VmCommandOptions run_vm;
    std::vector<std::string> command, env;
    std::string cwd, user;
    double timeout_s = 0;
    auto* run_cmd = app.add_subcommand(
        "run", "boot a fresh VM, run a command in it, print its output, exit with its code");
    add_vm_options(*run_cmd, run_vm);
    run_cmd->add_option("-e,--env", env, "KEY=VALUE for the command's environment");
    run_cmd->add_option("--cwd", cwd, "working directory in the guest");
    run_cmd->add_option("--user", user, "guest user to run as (default root)");
    run_cmd->add_option("--timeout", timeout_s, "kill the command after this many seconds");
    run_cmd->add_option("command", command, "the command and its arguments (after --)")->required();

    VmCommandOptions shell_vm;
    auto* shell_cmd =
        app.add_subcommand("shell", "an interactive shell in a fresh VM, removed when you exit");
    add_vm_options(*shell_cmd, shell_vm);

    VmCommandOptions start_vm;
    std::vector<std::string> allow_egress;
    auto* start_cmd = app.add_subcommand(
        "start", "start a VM that runs on after holt-vm exits (detached); prints its id");
    add_vm_options(*start_cmd, start_vm);
    start_cmd->add_option("--allow-egress", allow_egress,
                          "give it a network, with egress to this IPv4 CIDR (repeatable)");

    std::string vm_id, snapshot_id;
    std::vector<std::string> ids;
    std::vector<std::string> exec_command;
    auto* exec_cmd = app.add_subcommand(
        "exec", "run a command in a detached VM, streaming its output; exits with its code");
    exec_cmd->add_option("vm", vm_id, "VM id (see holt-vm ls)")->required();
    exec_cmd->add_option("command", exec_command, "the command and its arguments (after --)")
        ->required();
    auto* snapshot_cmd = app.add_subcommand(
        "snapshot", "snapshot a detached VM (it runs on); prints the snapshot's id");
    snapshot_cmd->add_option("vm", vm_id, "VM id")->required();
    auto* restore_cmd = app.add_subcommand(
        "restore", "start a detached VM from a snapshot (any number of times); prints its id");
    restore_cmd->add_option("snapshot", snapshot_id, "snapshot id (see holt-vm ls)")->required();
    int fork_count = 1;
    auto* fork_cmd = app.add_subcommand(
        "fork", "copy a running detached VM into new detached VMs; prints their ids");
    fork_cmd->add_option("vm", vm_id, "VM id")->required();
    fork_cmd->add_option("-n,--count", fork_count, "how many children")->check(CLI::Range(1, 64));
    auto* hibernate_cmd = app.add_subcommand(
        "hibernate", "save a detached VM to disk and stop it; prints the snapshot to wake");
    hibernate_cmd->add_option("vm", vm_id, "VM id")->required();
    auto* wake_cmd = app.add_subcommand(
        "wake", "bring a hibernated VM back (its snapshot is used up); prints its new id");
    wake_cmd->add_option("snapshot", snapshot_id, "the snapshot hibernate printed")->required();
    auto* kill_cmd = app.add_subcommand("kill", "kill detached VMs and remove their files");
    kill_cmd->add_option("vms", ids, "VM ids")->required();
    auto* rm_snapshot_cmd = app.add_subcommand("rm-snapshot", "delete kept snapshots");
    rm_snapshot_cmd->add_option("snapshots", ids, "snapshot ids")->required();
    auto* ls_cmd = app.add_subcommand("ls", "list VMs and kept snapshots");

    CLI11_PARSE(app, argc, argv);
    holt::log::init(global.log_level.empty() ? "warn" : global.log_level);

    try {
        if (images_build_cmd->parsed()) {
            return images_build(global, build_names);
        }
        if (images_ls_cmd->parsed()) {
            return images_ls(global);
        }
        if (run_cmd->parsed()) {
            for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
                std::signal(sig, [](int received) { stop_signal = received; });
            }
            return run(global, run_vm, command, env, cwd, user, timeout_s);
        }
        if (shell_cmd->parsed()) {
            return shell(global, shell_vm);
        }
        if (start_cmd->parsed()) {
            return start(global, start_vm, allow_egress);
        }
        if (exec_cmd->parsed()) {
            for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
                std::signal(sig, [](int received) { stop_signal = received; });
            }
            return exec(global, vm_id, exec_command);
        }
        if (snapshot_cmd->parsed()) {
            return snapshot(global, vm_id);
        }
        if (restore_cmd->parsed() || wake_cmd->parsed()) {
            return restore(global, snapshot_id, /*wake=*/wake_cmd->parsed());
        }
        if (fork_cmd->parsed()) {
            return fork(global, vm_id, fork_count);
        }
        if (hibernate_cmd->parsed()) {
            return hibernate(global, vm_id);
        }
        if (kill_cmd->parsed()) {
            return kill(global, ids);
        }
        if (rm_snapshot_cmd->parsed()) {
            return delete_snapshots(global, ids);
        }
        if (ls_cmd->parsed()) {
            return ls(global);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "holt-vm: %s\n", e.what());
        return kToolFailure;
    }
    return 0;
}
