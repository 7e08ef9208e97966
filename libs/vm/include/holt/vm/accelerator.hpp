#pragma once

#include <filesystem>
#include <string>

#include "holt/vm/image_store.hpp"
#include "holt/vm/machine_spec.hpp"

namespace holt::vm {

class QemuDriver;

// What the operator asked for: "auto" picks KVM when it really runs the guest, TCG otherwise.
enum class AcceleratorMode { automatic, kvm, tcg };
AcceleratorMode parse_accelerator_mode(const std::string& text);  // "auto", "kvm", "tcg"

struct AcceleratorChoice {
    Accelerator accel = Accelerator::tcg;
    std::string reason;   // why, for the log: "KVM boots the guest", "/dev/kvm is absent", ...
    bool cached = false;  // decided by an earlier probe on this host
};

// Decides which accelerator VMs use. In automatic mode a /dev/kvm that exists is not trusted:
// some hosts expose a KVM that cannot run a stock guest kernel, so a short probe boot of the
// template's kernel decides. The verdict is cached in `cache_file`, keyed on the QEMU binary,
// the kernel and the host kernel, so the probe runs once per host and image.
AcceleratorChoice choose_accelerator(AcceleratorMode mode, const QemuDriver& driver,
                                     const TemplateImage& probe_image,
                                     const std::filesystem::path& runtime_root,
                                     const std::filesystem::path& cache_file);

}  // namespace holt::vm
