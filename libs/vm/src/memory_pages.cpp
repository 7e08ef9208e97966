#include "holt/vm/memory_pages.hpp"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "holt/common/error.hpp"
#include "holt/common/unique_fd.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;

constexpr char kMagic[8] = {'H', 'O', 'L', 'T', 'P', 'A', 'G', 'E'};
// Pages move between processes and the file through a buffer of this size.
constexpr std::size_t kChunkBytes = 8 << 20;

// /proc/PID/pagemap: one 64-bit entry per virtual page (Documentation/admin-guide/mm/pagemap.rst).
constexpr std::uint64_t kPagePresent = 1ull << 63;
constexpr std::uint64_t kPageSwapped = 1ull << 62;
constexpr std::uint64_t kPageFileOrShared = 1ull << 61;

struct Header {
    char magic[8];
    std::uint32_t format;
    std::uint32_t page_size;
    std::uint64_t run_count;
};
static_assert(sizeof(Header) == 24);

struct Run {
    std::uint64_t first;
    std::uint64_t count;
};
static_assert(sizeof(Run) == 16);

std::size_t page_size() {
    return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

void read_exactly(int fd, void* data, std::size_t size, off_t offset, const char* what) {
    auto* bytes = static_cast<char*>(data);
    while (size > 0) {
        ssize_t n = ::pread(fd, bytes, size, offset);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            throw_errno(std::string("read ") + what);
        }
        if (n == 0) {
            throw Error(std::string("read ") + what + ": the file ends early");
        }
        bytes += n;
        size -= static_cast<std::size_t>(n);
        offset += n;
    }
}

void write_all(int fd, const void* data, std::size_t size) {
    const auto* bytes = static_cast<const char*>(data);
    while (size > 0) {
        ssize_t n = ::write(fd, bytes, size);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            throw_errno("write");
        }
        bytes += n;
        size -= static_cast<std::size_t>(n);
    }
}

// Copies `size` bytes between this process's `local` and `remote` in `pid`, in either direction.
void transfer(pid_t pid, void* local, std::uintptr_t remote, std::size_t size, bool into_remote) {
    iovec local_iov{.iov_base = local, .iov_len = size};
    iovec remote_iov{.iov_base = reinterpret_cast<void*>(remote), .iov_len = size};
    ssize_t n = into_remote ? ::process_vm_writev(pid, &local_iov, 1, &remote_iov, 1, 0)
                            : ::process_vm_readv(pid, &local_iov, 1, &remote_iov, 1, 0);
    if (n < 0) {
        throw_errno(std::string(into_remote ? "write to" : "read from") +
                    " the memory of process " + std::to_string(pid));
    }
    if (static_cast<std::size_t>(n) != size) {
        throw Error("process " + std::to_string(pid) + " moved " + std::to_string(n) + " of " +
                    std::to_string(size) + " bytes");
    }
}

// The runs of pages of `ram` that its process holds as private copies.
std::vector<Run> private_runs(const RamMapping& ram) {
    const std::size_t page = page_size();
    const std::size_t pages = ram.size / page;
    fs::path pagemap = "/proc/" + std::to_string(ram.pid) + "/pagemap";
    UniqueFd fd(::open(pagemap.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
        throw_errno("open " + pagemap.string());
    }
    std::vector<std::uint64_t> entries(pages);
    read_exactly(fd.get(), entries.data(), pages * sizeof(std::uint64_t),
                 static_cast<off_t>(ram.address / page * sizeof(std::uint64_t)), "pagemap");

    std::vector<Run> runs;
    for (std::uint64_t i = 0; i < pages; ++i) {
        std::uint64_t e = entries[i];
        bool is_private = ((e & kPagePresent) && !(e & kPageFileOrShared)) || (e & kPageSwapped);
        if (!is_private) {
            continue;
        }
        if (!runs.empty() && runs.back().first + runs.back().count == i) {
            ++runs.back().count;
        } else {
            runs.push_back({i, 1});
        }
    }
    return runs;
}

}  // namespace

RamMapping find_ram_mapping(pid_t pid, const fs::path& memory_file, std::size_t size) {
    fs::path maps = "/proc/" + std::to_string(pid) + "/maps";
    std::ifstream in(maps);
    if (!in) {
        throw Error("find the RAM of process " + std::to_string(pid) + ": cannot read " +
                    maps.string());
    }
    // "7f0a2c000000-7f0a4c000000 rw-p 00000000 fe:01 1234   /var/lib/holt/.../memory"
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string range, perms, offset, device, inode, path;
        fields >> range >> perms >> offset >> device >> inode;
        std::getline(fields >> std::ws, path);
        if (path != memory_file.string()) {
            continue;
        }
        auto dash = range.find('-');
        std::uintptr_t start = std::stoull(range.substr(0, dash), nullptr, 16);
        std::uintptr_t end = std::stoull(range.substr(dash + 1), nullptr, 16);
        if (end - start == size) {
            return RamMapping{.pid = pid, .address = start, .size = size};
        }
    }
    throw Error("process " + std::to_string(pid) + " maps no " + std::to_string(size >> 20) +
                " MiB of " + memory_file.string());
}

std::size_t save_private_pages(const RamMapping& ram, const fs::path& path) {
    return with_context(
        "save private pages of process " + std::to_string(ram.pid) + " to " + path.string(), [&] {
            const std::size_t page = page_size();
            std::vector<Run> runs = private_runs(ram);
            UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
            if (fd.get() < 0) {
                throw_errno("open");
            }
            Header header{};
            std::memcpy(header.magic, kMagic, sizeof(kMagic));
            header.format = kPagesFormat;
            header.page_size = static_cast<std::uint32_t>(page);
            header.run_count = runs.size();
            write_all(fd.get(), &header, sizeof(header));
            write_all(fd.get(), runs.data(), runs.size() * sizeof(Run));

            std::vector<char> buffer(kChunkBytes);
            std::size_t total = 0;
            for (const Run& run : runs) {
                std::size_t offset = run.first * page;
                std::size_t left = run.count * page;
                while (left > 0) {
                    std::size_t n = std::min(left, buffer.size());
                    transfer(ram.pid, buffer.data(), ram.address + offset, n,
                             /*into_remote=*/false);
                    write_all(fd.get(), buffer.data(), n);
                    offset += n;
                    left -= n;
                }
                total += run.count;
            }
            return total;
        });
}

void load_private_pages(const fs::path& path, const RamMapping& ram) {
    with_context(
        "load private pages from " + path.string() + " into process " + std::to_string(ram.pid),
        [&] {
            const std::size_t page = page_size();
            UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
            if (fd.get() < 0) {
                throw_errno("open");
            }
            Header header{};
            read_exactly(fd.get(), &header, sizeof(header), 0, "header");
            if (std::memcmp(header.magic, kMagic, sizeof(kMagic)) != 0) {
                throw Error("not a private pages file");
            }
            if (header.format != kPagesFormat) {
                throw Error("format " + std::to_string(header.format) +
                            ", this Holt reads format " + std::to_string(kPagesFormat));
            }
            if (header.page_size != page) {
                throw Error("saved with " + std::to_string(header.page_size) +
                            "-byte pages, this host " + "has " + std::to_string(page));
            }
            const std::uint64_t ram_pages = ram.size / page;
            if (header.run_count > ram_pages) {
                throw Error("it lists more runs than the RAM has pages");
            }
            std::vector<Run> runs(header.run_count);
            off_t offset = sizeof(header);
            read_exactly(fd.get(), runs.data(), runs.size() * sizeof(Run), offset, "runs");
            offset += static_cast<off_t>(runs.size() * sizeof(Run));

            for (const Run& run : runs) {
                if (run.count == 0 || run.first >= ram_pages || run.count > ram_pages - run.first) {
                    throw Error("run of " + std::to_string(run.count) + " pages at page " +
                                std::to_string(run.first) + " lies outside the " +
                                std::to_string(ram.size >> 20) + " MiB of RAM");
                }
            }

            std::vector<char> buffer(kChunkBytes);
            for (const Run& run : runs) {
                std::size_t at = run.first * page;
                std::size_t left = run.count * page;
                while (left > 0) {
                    std::size_t n = std::min(left, buffer.size());
                    read_exactly(fd.get(), buffer.data(), n, offset, "pages");
                    transfer(ram.pid, buffer.data(), ram.address + at, n, /*into_remote=*/true);
                    offset += static_cast<off_t>(n);
                    at += n;
                    left -= n;
                }
            }
        });
}

}  // namespace holt::vm
