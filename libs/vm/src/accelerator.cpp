#include "holt/vm/accelerator.hpp"

#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <fstream>
#include <iterator>
#include <thread>

#include "holt/common/child_process.hpp"
#include "holt/common/error.hpp"
#include "holt/common/files.hpp"
#include "holt/common/log.hpp"
#include "holt/vm/qemu_driver.hpp"
#include "holt/vm/runtime_dir.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

// A KVM that works boots the probe in well under a second; one that cannot run the guest fails
// at once or hangs. This bounds the hang.
constexpr auto kProbeTimeout = std::chrono::seconds(15);
constexpr const char* kProbeOkLine = "holt-init: probe ok";

std::string probe_cache_key(const QemuDriver& driver, const TemplateImage& image) {
    std::string qemu = driver.command_line(MachineSpec{}).front();
    utsname host{};
    ::uname(&host);
    return qemu + ":" + file_stamp(qemu) + "|" + image.kernel.string() + ":" +
           file_stamp(image.kernel) + "|" + image.initrd.string() + ":" + file_stamp(image.initrd) +
           "|" + host.release;
}

std::optional<AcceleratorChoice> read_cache(const fs::path& file, const std::string& key) {
    std::ifstream in(file);
    if (!in) {
        return std::nullopt;
    }
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    boost::system::error_code ec;
    json::value v = json::parse(text, ec);
    if (ec || !v.is_object()) {
        return std::nullopt;
    }
    const auto& o = v.as_object();
    if (!o.contains("key") || o.at("key") != json::value(key) || !o.contains("accel")) {
        return std::nullopt;
    }
    AcceleratorChoice choice;
    choice.accel = o.at("accel") == json::value("kvm") ? Accelerator::kvm : Accelerator::tcg;
    if (const auto* reason = o.if_contains("reason"); reason && reason->is_string()) {
        choice.reason = std::string(reason->as_string());
    }
    choice.cached = true;
    return choice;
}

void write_cache(const fs::path& file, const std::string& key, const AcceleratorChoice& choice) {
    json::object o{{"key", key}, {"accel", to_string(choice.accel)}, {"reason", choice.reason}};
    fs::path tmp = file;
    tmp += ".tmp." + std::to_string(::getpid());
    {
        std::ofstream out(tmp);
        out << json::serialize(o) << "\n";
    }
    std::error_code ec;
    fs::rename(tmp, file, ec);
}

// Boots the template's kernel and initramfs under KVM with holt.probe=1, which makes the init
// print kProbeOkLine and power off. Returns an empty string on success, else why it failed.
std::string probe_kvm(const QemuDriver& driver, const TemplateImage& image,
                      const fs::path& runtime_root) {
    RuntimeDir dir = RuntimeDir::create(runtime_root, "kvm-probe");
    MachineSpec spec{.id = dir.id(),
                     .vcpus = 1,
                     .memory_mib = 256,
                     .accel = Accelerator::kvm,
                     .kernel = image.kernel,
                     .initrd = image.initrd,
                     .kernel_args = "holt.probe=1",
                     .runtime_dir = dir.path()};
    auto argv = driver.command_line(spec);
    ChildProcess qemu = ChildProcess::spawn(
        argv, {.output_file = dir.path() / "qemu.log", .die_with_parent = true});
    auto deadline = std::chrono::steady_clock::now() + kProbeTimeout;
    fs::path console = dir.path() / "console.log";
    while (std::chrono::steady_clock::now() < deadline) {
        std::ifstream in(console);
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (text.find(kProbeOkLine) != std::string::npos) {
            return "";
        }
        if (!qemu.running()) {
            // QEMU's first line says why ("failed to set MSR ..."); the rest is its assertion.
            std::ifstream log(dir.path() / "qemu.log");
            std::string output;
            std::getline(log, output);
            return "QEMU " + qemu.exit_status()->describe() + (output.empty() ? "" : ": " + output);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return "the probe guest did not boot within " + std::to_string(kProbeTimeout.count()) + "s";
}

}  // namespace

AcceleratorMode parse_accelerator_mode(const std::string& text) {
    if (text == "auto") {
        return AcceleratorMode::automatic;
    }
    if (text == "kvm") {
        return AcceleratorMode::kvm;
    }
    if (text == "tcg") {
        return AcceleratorMode::tcg;
    }
    throw Error("accelerator must be auto, kvm or tcg, not \"" + text + "\"");
}

AcceleratorChoice choose_accelerator(AcceleratorMode mode, const QemuDriver& driver,
                                     const TemplateImage& probe_image, const fs::path& runtime_root,
                                     const fs::path& cache_file) {
    if (mode == AcceleratorMode::tcg) {
        return {Accelerator::tcg, "TCG requested by configuration"};
    }
    if (mode == AcceleratorMode::kvm) {
        return {Accelerator::kvm, "KVM requested by configuration"};
    }
    int kvm_fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_fd < 0) {
        return {Accelerator::tcg, "/dev/kvm cannot be opened (" + errno_text(errno) + ")"};
    }
    ::close(kvm_fd);

    std::string key = probe_cache_key(driver, probe_image);
    if (auto cached = read_cache(cache_file, key)) {
        return *cached;
    }
    std::string failure = probe_kvm(driver, probe_image, runtime_root);
    AcceleratorChoice choice =
        failure.empty() ? AcceleratorChoice{Accelerator::kvm, "KVM boots the guest kernel"}
                        : AcceleratorChoice{Accelerator::tcg,
                                            "/dev/kvm exists but cannot run the guest: " + failure};
    write_cache(cache_file, key, choice);
    return choice;
}

}  // namespace holt::vm
