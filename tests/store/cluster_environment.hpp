#pragma once

#include <filesystem>
#include <string>

namespace holt::store::test {

// The private cluster every test of this binary shares (see cluster_environment.cpp).
const std::string& database_url();
const std::filesystem::path& data_dir();

// A schema name unique to this test and process, so tests never see each other's tables.
std::string unique_schema();

// A fresh directory under /tmp that the postgres user can traverse; removed by the caller.
std::filesystem::path make_temporary_data_dir();

}  // namespace holt::store::test
