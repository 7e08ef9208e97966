#pragma once

// The guest RAM of a VM restored from a template maps the template's memory file copy-on-write:
// pages the guest never wrote are still the file's, shared by every clone through the host's
// page cache. A snapshot of such a VM therefore needs only the pages the VM has written (its
// private copies) besides its device state; restoring it maps the same file again and writes
// those pages back before the guest runs. A few MiB for an idle VM, against the whole RAM of a
// QEMU migration stream, and its restores share the template's pages like any clone.
//
// Private pages file (".pages"), format kPagesFormat, host byte order:
//   0   8 bytes  magic "HOLTPAGE"
//   8   u32      format version (kPagesFormat)
//   12  u32      page size in bytes
//   16  u64      number of runs R
//   24  R x {u64 first page, u64 page count}   runs of consecutive pages, ascending, disjoint
//   ..  the pages of every run in that order, page size bytes each
// The page numbers count from the start of the RAM mapping (guest RAM offset / page size).

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace holt::vm {

inline constexpr std::uint32_t kPagesFormat = 1;

// Where a process (QEMU) maps guest RAM from a memory file.
struct RamMapping {
    pid_t pid = -1;
    std::uintptr_t address = 0;  // in that process
    std::size_t size = 0;
};

// The mapping of `memory_file` of exactly `size` bytes in process `pid`. Throws holt::Error if it
// has none.
RamMapping find_ram_mapping(pid_t pid, const std::filesystem::path& memory_file, std::size_t size);

// Writes to `path` the pages of `ram` that its process holds as private copies (written since the
// file was mapped, or swapped out), read while the process must not change them (a paused VM).
// Returns how many pages it wrote.
std::size_t save_private_pages(const RamMapping& ram, const std::filesystem::path& path);

// Writes the pages saved in `path` into `ram`, which must map the same memory file and size.
// Throws holt::Error naming what is wrong with the file or the write.
void load_private_pages(const std::filesystem::path& path, const RamMapping& ram);

}  // namespace holt::vm
