#include "holt/vm/snapshot.hpp"

#include <unistd.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <fstream>
#include <iterator>

#include "holt/common/error.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

std::string get_string(const json::object& o, const char* key) {
    const json::value* v = o.if_contains(key);
    if (!v || !v->is_string()) {
        throw Error(std::string("snapshot.json: field \"") + key + "\" missing or not a string");
    }
    return std::string(v->as_string());
}

int get_int(const json::object& o, const char* key) {
    const json::value* v = o.if_contains(key);
    if (!v || !v->is_int64()) {
        throw Error(std::string("snapshot.json: field \"") + key + "\" missing or not a number");
    }
    return static_cast<int>(v->as_int64());
}

}  // namespace

DiskLayer::DiskLayer(fs::path path, std::shared_ptr<DiskLayer> backing, bool persistent)
    : path_(std::move(path)), backing_(std::move(backing)), persistent_(persistent) {}

DiskLayer::~DiskLayer() {
    if (!persistent_) {
        std::error_code ec;
        fs::remove(path_, ec);
    }
}

Snapshot::Snapshot(fs::path dir, SnapshotManifest manifest, std::shared_ptr<DiskLayer> disk,
                   bool persistent)
    : dir_(std::move(dir)),
      manifest_(std::move(manifest)),
      disk_(std::move(disk)),
      persistent_(persistent) {}

Snapshot::~Snapshot() {
    if (!persistent_) {
        // The disk layer is shared with the VMs restored from this snapshot and goes with them.
        std::error_code ec;
        fs::remove(dir_ / "snapshot.json", ec);
        fs::remove(state_file(), ec);
        fs::remove(memory_file(), ec);
        fs::remove(dir_ / "overlay.qcow2", ec);
        fs::remove(dir_, ec);  // only once the layer inside is gone too
    }
}

std::shared_ptr<Snapshot> Snapshot::open(const fs::path& dir, bool persistent) {
    return with_context("snapshot " + dir.string(), [&] {
        fs::path manifest_path = dir / "snapshot.json";
        if (!fs::exists(dir)) {
            throw Error("does not exist");
        }
        if (!fs::exists(manifest_path)) {
            throw Error("partial: snapshot.json is missing");
        }
        std::ifstream in(manifest_path);
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        boost::system::error_code ec;
        json::value parsed = json::parse(text, ec);
        if (ec || !parsed.is_object()) {
            throw Error("snapshot.json is not a JSON object");
        }
        const json::object& o = parsed.as_object();
        SnapshotManifest m;
        m.format = get_int(o, "format");
        if (m.format != kSnapshotFormat) {
            throw Error("format " + std::to_string(m.format) + ", this Holt reads format " +
                        std::to_string(kSnapshotFormat));
        }
        m.kind = get_string(o, "kind");
        m.source = get_string(o, "source");
        m.template_name = get_string(o, "template");
        m.key = get_string(o, "key");
        m.vcpus = get_int(o, "vcpus");
        m.memory_mib = get_int(o, "memory_mib");
        m.accel = get_string(o, "accel") == "kvm" ? Accelerator::kvm : Accelerator::tcg;
        m.kernel = get_string(o, "kernel");
        m.initrd = get_string(o, "initrd");
        m.kernel_args = get_string(o, "kernel_args");
        m.disk = get_string(o, "disk");
        const json::value* network = o.if_contains("network");
        m.network = network && network->is_bool() && network->as_bool();
        m.created_at = get_string(o, "created_at");
        fs::path disk_path = m.disk.is_absolute() ? m.disk : dir / m.disk;

        std::vector<fs::path> needed = {dir / "state", disk_path, m.kernel, m.initrd};
        if (m.kind == "template") {
            needed.push_back(dir / "memory");
        }
        for (const auto& file : needed) {
            if (!fs::exists(file)) {
                throw Error(file.string() + " is missing");
            }
        }
        auto disk = std::make_shared<DiskLayer>(disk_path, nullptr, persistent);
        return std::make_shared<Snapshot>(dir, std::move(m), std::move(disk), persistent);
    });
}

void Snapshot::write_manifest(const fs::path& dir, const SnapshotManifest& m) {
    json::object o{
        {"format", m.format},
        {"kind", m.kind},
        {"source", m.source},
        {"template", m.template_name},
        {"key", m.key},
        {"vcpus", m.vcpus},
        {"memory_mib", m.memory_mib},
        {"accel", to_string(m.accel)},
        {"kernel", m.kernel.string()},
        {"initrd", m.initrd.string()},
        {"kernel_args", m.kernel_args},
        {"disk", m.disk.string()},
        {"network", m.network},
        {"created_at", m.created_at},
    };
    fs::path tmp = dir / ("snapshot.json.tmp." + std::to_string(::getpid()));
    {
        std::ofstream out(tmp);
        out << json::serialize(o) << "\n";
        out.flush();
        if (!out) {
            throw Error("write " + tmp.string() + " failed");
        }
    }
    fs::rename(tmp, dir / "snapshot.json");
}

}  // namespace holt::vm
