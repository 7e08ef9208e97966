#pragma once

// Snapshots of VMs and the disk layers they stand on.
//
// A snapshot directory (format kSnapshotFormat) holds:
//   snapshot.json  what the snapshot is; written last and atomically, so a directory without it
//                  is a partial snapshot and is never used
//   state          device and CPU state: a QEMU migration stream, with guest RAM in it when
//                  `ram` is "stream"
//   memory         ("ram": "file", template snapshots) the guest RAM image; every restore maps it
//                  copy-on-write, so clones share its pages and the file never changes
//   memory.pages   ("ram": "pages", VMs restored from a template) the pages the VM had written,
//                  over the template's memory file named by `memory_base` (memory_pages.hpp);
//                  restores map that file copy-on-write and write these pages back
//   disk.qcow2     (template snapshots) the frozen layer of the root disk, read-only from then on;
//                  a VM snapshot's frozen layer stays where it was made, in RUN/layers, and
//                  snapshot.json names it
//   overlay.qcow2  an empty overlay over the disk layer, copied to start each restore's own
//
// snapshot.json fields: format, kind ("template" or "vm"), source (template name or VM id),
// template, key (what the snapshot was made from; a template snapshot whose key differs is
// stale), vcpus, memory_mib, accel, kernel, initrd, kernel_args, ram ("stream", "file" or
// "pages"), memory_base (for "pages"), disk (the frozen layer, relative to the directory or
// absolute), disk_chain (every layer under it, the frozen one first, down to the template's),
// network (whether the VM had a NIC), allow_egress (the VM's network policy, which its restores
// get unless told otherwise), created_at.
//
// Kept snapshots (Engine::snapshot, Engine::hibernate) live in RUN/snapshots/<id> until deleted;
// the snapshot a fork restores its children from lives in the parent's runtime directory and goes
// with the last child's start.

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "holt/vm/machine_spec.hpp"

namespace holt::vm {

inline constexpr int kSnapshotFormat = 2;

// One qcow2 file in a VM's chain of disk layers. A layer stays on disk while anything uses it:
// the VM writing to it, or a snapshot or VM whose layers stack on it. Ephemeral layers are
// deleted when the last user lets go; persistent ones (template snapshots) are not.
class DiskLayer {
  public:
    DiskLayer(std::filesystem::path path, std::shared_ptr<DiskLayer> backing, bool persistent);
    ~DiskLayer();
    DiskLayer(const DiskLayer&) = delete;
    DiskLayer& operator=(const DiskLayer&) = delete;

    const std::filesystem::path& path() const { return path_; }
    const std::shared_ptr<DiskLayer>& backing() const { return backing_; }
    // Whether the file stays when the last user lets go (a kept snapshot's layer); a layer whose
    // snapshot is deleted becomes ephemeral and goes with the VMs that still stand on it.
    void set_persistent(bool persistent) { persistent_ = persistent; }

    // The paths of this layer and every layer under it, this one first.
    std::vector<std::filesystem::path> chain() const;

  private:
    std::filesystem::path path_;
    std::shared_ptr<DiskLayer> backing_;
    std::atomic<bool> persistent_;
};

struct SnapshotManifest {
    int format = kSnapshotFormat;
    std::string kind;           // "template" or "vm"
    std::string source;         // template name or VM id
    std::string template_name;  // the template the VM was first made from
    std::string key;
    int vcpus = 1;
    int memory_mib = 512;
    Accelerator accel = Accelerator::tcg;
    std::filesystem::path kernel;
    std::filesystem::path initrd;
    std::string kernel_args;
    // How the snapshot keeps guest RAM: in `state` (all), in `memory` (shared_file), or as
    // memory.pages over `memory_base` (none: the state has devices only).
    SavedRam ram = SavedRam::all;
    std::filesystem::path memory_base;
    std::filesystem::path disk = "disk.qcow2";
    std::vector<std::filesystem::path> disk_chain;  // empty: `disk` alone
    bool network = false;                           // the VM had a NIC; restores need one too
    std::vector<std::string> allow_egress;
    std::string created_at;
};

// A restorable image of a VM at one moment. Restores need its state file only while they load
// it, and its disk layer for as long as they run (they hold the layer, not the snapshot).
class Snapshot {
  public:
    Snapshot(std::filesystem::path dir, SnapshotManifest manifest, std::shared_ptr<DiskLayer> disk,
             bool persistent);
    ~Snapshot();
    Snapshot(const Snapshot&) = delete;
    Snapshot& operator=(const Snapshot&) = delete;

    // Opens a complete template snapshot directory. Throws holt::Error saying what is wrong with
    // it (missing, partial, another format, a file gone).
    static std::shared_ptr<Snapshot> open(const std::filesystem::path& dir, bool persistent);
    // Reads and checks snapshot.json of `dir`, and that the files it names exist; disk and
    // disk_chain come back absolute.
    static SnapshotManifest read_manifest(const std::filesystem::path& dir);

    // The directory's name: "snap-3f2a9c1d" for kept snapshots.
    std::string id() const { return dir_.filename().string(); }
    const std::filesystem::path& dir() const { return dir_; }
    const SnapshotManifest& manifest() const { return manifest_; }
    const std::shared_ptr<DiskLayer>& disk() const { return disk_; }
    std::filesystem::path state_file() const { return dir_ / "state"; }
    // The file a restore maps guest RAM from, copy-on-write; empty when RAM is in the state.
    std::filesystem::path memory_file() const;
    // The VM's own pages to write over memory_file() (SavedRam::none).
    std::filesystem::path pages_file() const { return dir_ / "memory.pages"; }

    // Writes snapshot.json into `dir` atomically; call last, once every other file is complete.
    static void write_manifest(const std::filesystem::path& dir, const SnapshotManifest& manifest);

    // Removes the snapshot's files now, and lets its disk layer go with the last VM on it.
    void remove();

  private:
    std::filesystem::path dir_;
    SnapshotManifest manifest_;
    std::shared_ptr<DiskLayer> disk_;
    std::atomic<bool> persistent_;
};

}  // namespace holt::vm
