#include "holt/vm/vm_record.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include "holt/common/error.hpp"
#include "holt/common/files.hpp"
#include "json_fields.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

constexpr const char* kFileName = "vm.json";

}  // namespace

void VmRecord::write(const fs::path& runtime_dir) const {
    json::array chain;
    for (const auto& layer : disk_chain) {
        chain.emplace_back(layer.string());
    }
    json::array egress;
    for (const auto& cidr : policy.allow_egress_cidrs) {
        egress.emplace_back(cidr);
    }
    json::object o{
        {"format", kVmRecordFormat},
        {"id", id},
        {"owner", owner},
        {"template", template_name},
        {"created_at", created_at},
        {"detached", detached},
        {"vcpus", vcpus},
        {"memory_mib", memory_mib},
        {"accel", to_string(accel)},
        {"kernel", kernel.string()},
        {"initrd", initrd.string()},
        {"kernel_args", kernel_args},
        {"memory_file", memory_file.string()},
        {"memory_shared", memory_shared},
        {"network", network},
        {"allow_egress", std::move(egress)},
        {"disk_chain", std::move(chain)},
    };
    write_file_atomically(runtime_dir / kFileName, json::serialize(o) + "\n");
}

std::optional<VmRecord> VmRecord::read(const fs::path& runtime_dir) {
    fs::path path = runtime_dir / kFileName;
    if (!fs::exists(path)) {
        return std::nullopt;
    }
    return with_context("read " + path.string(), [&] {
        JsonFields f(read_text_file(path));
        if (f.integer("format") != kVmRecordFormat) {
            throw Error("format " + std::to_string(f.integer("format")) + ", this Holt reads " +
                        std::to_string(kVmRecordFormat));
        }
        VmRecord r;
        r.id = f.string("id");
        r.owner = f.string("owner");
        r.template_name = f.string("template");
        r.created_at = f.string("created_at");
        r.detached = f.boolean("detached");
        r.vcpus = f.integer("vcpus");
        r.memory_mib = f.integer("memory_mib");
        r.accel = f.string("accel") == "kvm" ? Accelerator::kvm : Accelerator::tcg;
        r.kernel = f.string("kernel");
        r.initrd = f.string("initrd");
        r.kernel_args = f.string("kernel_args");
        r.memory_file = f.string("memory_file");
        r.memory_shared = f.boolean("memory_shared");
        r.network = f.boolean("network");
        r.policy.allow_egress_cidrs = f.strings("allow_egress");
        for (const auto& layer : f.strings("disk_chain")) {
            r.disk_chain.emplace_back(layer);
        }
        if (r.disk_chain.empty()) {
            throw Error("disk_chain is empty");
        }
        return r;
    });
}

}  // namespace holt::vm
