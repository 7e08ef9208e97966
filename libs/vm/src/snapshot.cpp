#include "holt/vm/snapshot.hpp"

#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include "holt/common/error.hpp"
#include "holt/common/files.hpp"
#include "json_fields.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

void remove_snapshot_files(const fs::path& dir) {
    // The disk layer is shared with the VMs restored from the snapshot and goes with them.
    std::error_code ec;
    fs::remove(dir / "snapshot.json", ec);
    fs::remove(dir / "state", ec);
    fs::remove(dir / "memory", ec);
    fs::remove(dir / "memory.pages", ec);
    fs::remove(dir / "overlay.qcow2", ec);
    fs::remove(dir, ec);  // only once a layer inside is gone too
}

const char* ram_name(SavedRam ram) {
    switch (ram) {
        case SavedRam::all:
            return "stream";
        case SavedRam::shared_file:
            return "file";
        case SavedRam::none:
            return "pages";
    }
    return "stream";
}

SavedRam ram_from_name(const std::string& name) {
    for (SavedRam ram : {SavedRam::all, SavedRam::shared_file, SavedRam::none}) {
        if (name == ram_name(ram)) {
            return ram;
        }
    }
    throw Error("unknown ram \"" + name + "\"");
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

std::vector<fs::path> DiskLayer::chain() const {
    std::vector<fs::path> paths{path_};
    for (auto layer = backing_; layer; layer = layer->backing()) {
        paths.push_back(layer->path());
    }
    return paths;
}

Snapshot::Snapshot(fs::path dir, SnapshotManifest manifest, std::shared_ptr<DiskLayer> disk,
                   bool persistent)
    : dir_(std::move(dir)),
      manifest_(std::move(manifest)),
      disk_(std::move(disk)),
      persistent_(persistent) {}

Snapshot::~Snapshot() {
    if (!persistent_) {
        remove_snapshot_files(dir_);
    }
}

fs::path Snapshot::memory_file() const {
    switch (manifest_.ram) {
        case SavedRam::shared_file:
            return dir_ / "memory";
        case SavedRam::none:
            return manifest_.memory_base;
        case SavedRam::all:
            break;
    }
    return {};
}

void Snapshot::remove() {
    persistent_ = false;
    disk_->set_persistent(false);
    remove_snapshot_files(dir_);
}

SnapshotManifest Snapshot::read_manifest(const fs::path& dir) {
    return with_context("snapshot " + dir.string(), [&] {
        fs::path manifest_path = dir / "snapshot.json";
        if (!fs::exists(dir)) {
            throw Error("does not exist");
        }
        if (!fs::exists(manifest_path)) {
            throw Error("partial: snapshot.json is missing");
        }
        JsonFields f = with_context("snapshot.json",
                                    [&] { return JsonFields(read_text_file(manifest_path)); });
        SnapshotManifest m;
        m.format = f.integer("format");
        if (m.format != kSnapshotFormat) {
            throw Error("format " + std::to_string(m.format) + ", this Holt reads format " +
                        std::to_string(kSnapshotFormat));
        }
        m.kind = f.string("kind");
        m.source = f.string("source");
        m.template_name = f.string("template");
        m.key = f.string("key");
        m.vcpus = f.integer("vcpus");
        m.memory_mib = f.integer("memory_mib");
        m.accel = f.string("accel") == "kvm" ? Accelerator::kvm : Accelerator::tcg;
        m.kernel = f.string("kernel");
        m.initrd = f.string("initrd");
        m.kernel_args = f.string("kernel_args");
        m.ram = ram_from_name(f.string("ram"));
        m.memory_base = f.string("memory_base");
        auto absolute = [&](const fs::path& p) { return p.is_absolute() ? p : dir / p; };
        m.disk = absolute(f.string("disk"));
        for (const auto& layer : f.strings("disk_chain")) {
            m.disk_chain.push_back(absolute(layer));
        }
        if (m.disk_chain.empty()) {
            m.disk_chain.push_back(m.disk);
        }
        m.network = f.boolean("network");
        m.allow_egress = f.strings("allow_egress");
        m.created_at = f.string("created_at");

        std::vector<fs::path> needed = {dir / "state", m.kernel, m.initrd};
        needed.insert(needed.end(), m.disk_chain.begin(), m.disk_chain.end());
        if (m.ram == SavedRam::shared_file) {
            needed.push_back(dir / "memory");
        }
        if (m.ram == SavedRam::none) {
            needed.insert(needed.end(), {dir / "memory.pages", m.memory_base});
        }
        for (const auto& file : needed) {
            if (!fs::exists(file)) {
                throw Error(file.string() + " is missing");
            }
        }
        return m;
    });
}

std::shared_ptr<Snapshot> Snapshot::open(const fs::path& dir, bool persistent) {
    SnapshotManifest m = read_manifest(dir);
    auto disk = std::make_shared<DiskLayer>(m.disk, nullptr, persistent);
    return std::make_shared<Snapshot>(dir, std::move(m), std::move(disk), persistent);
}

void Snapshot::write_manifest(const fs::path& dir, const SnapshotManifest& m) {
    json::array chain;
    for (const auto& layer : m.disk_chain) {
        chain.emplace_back(layer.string());
    }
    json::array egress;
    for (const auto& cidr : m.allow_egress) {
        egress.emplace_back(cidr);
    }
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
        {"ram", ram_name(m.ram)},
        {"memory_base", m.memory_base.string()},
        {"disk", m.disk.string()},
        {"disk_chain", std::move(chain)},
        {"network", m.network},
        {"allow_egress", std::move(egress)},
        {"created_at", m.created_at},
    };
    write_file_atomically(dir / "snapshot.json", json::serialize(o) + "\n");
}

}  // namespace holt::vm
