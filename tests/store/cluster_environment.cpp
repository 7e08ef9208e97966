#include "cluster_environment.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "holt/common/error.hpp"
#include "holt/store/local_cluster.hpp"

namespace holt::store::test {
namespace {

namespace fs = std::filesystem;

std::string g_url;
fs::path g_data_dir;

// Starts the cluster once for this process. With HOLT_TEST_DATA_DIR (set by CTest, whose fixture
// started the cluster there) it only finds it running and leaves it be; otherwise it makes a
// temporary data directory and removes it, server and all, at the end.
class ClusterEnvironment : public ::testing::Environment {
  public:
    void SetUp() override {
        if (const char* dir = std::getenv("HOLT_TEST_DATA_DIR"); dir && *dir) {
            g_data_dir = dir;
        } else {
            g_data_dir = make_temporary_data_dir();
            owned_ = true;
        }
        g_url = LocalCluster(LocalClusterOptions{.data_dir = g_data_dir}).ensure_started();
    }

    void TearDown() override {
        if (owned_) {
            LocalCluster(LocalClusterOptions{.data_dir = g_data_dir}).stop();
            fs::remove_all(g_data_dir);
        }
    }

  private:
    bool owned_ = false;
};

[[maybe_unused]] ::testing::Environment* const g_environment =
    ::testing::AddGlobalTestEnvironment(new ClusterEnvironment);

}  // namespace

const std::string& database_url() {
    return g_url;
}

const fs::path& data_dir() {
    return g_data_dir;
}

std::string unique_schema() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    // Identifiers are cut at 63 bytes, so what makes it unique comes first.
    std::string name =
        "t" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name();
    name.resize(std::min<std::size_t>(name.size(), 63));
    for (char& c : name) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return name;
}

fs::path make_temporary_data_dir() {
    std::string pattern = "/tmp/holt-store-XXXXXX";
    if (!::mkdtemp(pattern.data())) {
        throw_errno("mkdtemp");
    }
    ::chmod(pattern.c_str(), 0711);
    return pattern;
}

}  // namespace holt::store::test
