#include "holt/vm/runtime_dir.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "holt/common/error.hpp"

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
    auto removed = RuntimeDir::sweep_stale(root_);
    EXPECT_EQ(removed.size(), 1u);
    EXPECT_EQ(std::distance(fs::directory_iterator(root_), fs::directory_iterator()), 0);
}

TEST_F(RuntimeDirTest, SweepLeavesDirectoriesBeingMadeUntilTheyAreOld) {
    // create() makes a directory under a hidden name and renames it once it holds the lock.
    fs::path hidden = root_ / ".vm-12345678";
    fs::create_directories(hidden);
    EXPECT_TRUE(RuntimeDir::sweep_stale(root_).empty());
    EXPECT_TRUE(fs::exists(hidden));
    fs::last_write_time(hidden, fs::file_time_type::clock::now() - std::chrono::minutes(1));
    RuntimeDir::sweep_stale(root_);
    EXPECT_FALSE(fs::exists(hidden));
}

TEST_F(RuntimeDirTest, ADirectoryWhoseOwnerDetachedIsAdoptedOnce) {
    std::string id;
    {
        RuntimeDir dir = RuntimeDir::create(root_, "vm");
        id = dir.id();
        dir.detach();
    }
    ASSERT_TRUE(fs::exists(root_ / id));
    RuntimeDir adopted = RuntimeDir::adopt(root_, id);
    EXPECT_TRUE(RuntimeDir::is_owned(root_ / id));
    EXPECT_THROW(RuntimeDir::adopt(root_, id), Error);
    EXPECT_THROW(RuntimeDir::adopt(root_, "vm-missing"), Error);
    EXPECT_THROW(RuntimeDir::adopt(root_, "../etc"), Error);
}

TEST_F(RuntimeDirTest, TheHostRegistryListsDirectoriesWhileTheyExist) {
    std::string id;
    {
        RuntimeDir dir = RuntimeDir::create(root_, "vm");
        id = dir.id();
        EXPECT_TRUE(RuntimeDir::exists_anywhere(id));
        dir.detach();
    }
    EXPECT_TRUE(RuntimeDir::exists_anywhere(id));  // detached: still there
    fs::remove_all(root_ / id);                    // as a crash and a careless cleanup leave it
    EXPECT_FALSE(RuntimeDir::exists_anywhere(id));
    RuntimeDir::sweep_host_registry();
    EXPECT_FALSE(fs::is_symlink(fs::path(RuntimeDir::kHostRegistry) / id));
}

TEST_F(RuntimeDirTest, IdsAreDistinct) {
    EXPECT_NE(random_id("vm"), random_id("vm"));
}

}  // namespace
}  // namespace holt::vm
