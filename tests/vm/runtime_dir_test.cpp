#include "holt/vm/runtime_dir.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

namespace holt::vm {
namespace {

namespace fs = std::filesystem;

class RuntimeDirTest : public ::testing::Test {
  protected:
    void SetUp() override {
        root_ = fs::temp_directory_path() / ("holt-runtime-" + std::to_string(::getpid()));
        fs::remove_all(root_);
    }
    void TearDown() override { fs::remove_all(root_); }
    fs::path root_;
};

TEST_F(RuntimeDirTest, CreatesAPrivateDirectoryAndRemovesItWithEverythingInside) {
    fs::path path;
    {
        RuntimeDir dir = RuntimeDir::create(root_, "vm");
        path = dir.path();
        EXPECT_EQ(path.parent_path(), root_);
        EXPECT_EQ(dir.id().rfind("vm-", 0), 0u);
        EXPECT_EQ(fs::status(path).permissions() & fs::perms::all, fs::perms::owner_all);
        std::ofstream(path / "overlay.qcow2") << "data";
    }
    EXPECT_FALSE(fs::exists(path));
}

TEST_F(RuntimeDirTest, SweepLeavesDirectoriesWhoseOwnerIsAlive) {
    RuntimeDir dir = RuntimeDir::create(root_, "vm");
    fs::last_write_time(dir.path(), fs::file_time_type::clock::now() - std::chrono::minutes(1));
    EXPECT_TRUE(RuntimeDir::sweep_stale(root_).empty());
    EXPECT_TRUE(fs::exists(dir.path()));
}

TEST_F(RuntimeDirTest, SweepRemovesDirectoriesOfDeadOwners) {
    // A child process creates a directory and dies holding it, as a crashed engine would.
    pid_t child = ::fork();
    if (child == 0) {
        RuntimeDir dir = RuntimeDir::create(root_, "vm");
        std::ofstream(dir.path() / "qemu.log") << "x";
        ::_exit(0);  // skips the destructor, like a crash
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_EQ(std::distance(fs::directory_iterator(root_), fs::directory_iterator()), 1);
    fs::path left = fs::directory_iterator(root_)->path();
    // Too young to tell from a directory whose creator has not locked it yet: left alone.
    EXPECT_TRUE(RuntimeDir::sweep_stale(root_).empty());
    fs::last_write_time(left, fs::file_time_type::clock::now() - std::chrono::minutes(1));

    auto removed = RuntimeDir::sweep_stale(root_);
    EXPECT_EQ(removed.size(), 1u);
    EXPECT_EQ(std::distance(fs::directory_iterator(root_), fs::directory_iterator()), 0);
}

TEST_F(RuntimeDirTest, IdsAreDistinct) {
    EXPECT_NE(random_id("vm"), random_id("vm"));
}

}  // namespace
}  // namespace holt::vm
