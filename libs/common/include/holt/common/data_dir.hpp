#pragma once

#include <filesystem>

namespace holt {

// The directory that holds everything Holt keeps on a host: built images, snapshots, volumes and
// the runtime directories of running VMs. Chosen, in order, from the HOLT_DATA_DIR environment
// variable, /var/lib/holt when running as root, or $XDG_DATA_HOME/holt (~/.local/share/holt).
std::filesystem::path default_data_dir();

}  // namespace holt
