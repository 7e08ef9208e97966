#pragma once

#include <filesystem>
#include <string>

namespace holt {

// "<size>@<mtime>" of a file, "missing" if it cannot be read: a cheap fingerprint for cache keys
// that must change when a file is replaced (a QEMU upgrade, a rebuilt initramfs).
std::string file_stamp(const std::filesystem::path& path);

// The whole content of a file; empty if it cannot be read.
std::string read_text_file(const std::filesystem::path& path);

// Replaces `path` with `content` atomically (a temporary file renamed over it), so a reader sees
// the old content or the new, never a part. Throws holt::Error.
void write_file_atomically(const std::filesystem::path& path, const std::string& content);

}  // namespace holt
