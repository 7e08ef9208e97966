#include "holt/common/child_process.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>

#include "holt/common/error.hpp"
#include "holt/common/files.hpp"

namespace holt {
namespace {

namespace fs = std::filesystem;

TEST(ChildProcessTest, AChildInheritsOnlyItsStandardDescriptors) {
    // A descriptor opened without O_CLOEXEC, as Asio opens its sockets: a long-lived child (a
    // QEMU) must not keep it open, or a listening port would outlive this process.
    int leaky = ::open("/dev/null", O_RDONLY);
    ASSERT_GE(leaky, 3);
    fs::path out = fs::temp_directory_path() / ("holt-fd-test-" + std::to_string(::getpid()));
    auto child = ChildProcess::spawn({"/bin/sh", "-c", "ls /proc/$$/fd"}, {.output_file = out});
    ASSERT_TRUE(child.wait_for(std::chrono::seconds(10)));
    std::string fds = read_text_file(out);
    fs::remove(out);
    ::close(leaky);
    EXPECT_EQ(fds.find(std::to_string(leaky) + "\n"), std::string::npos) << fds;
    EXPECT_NE(fds.find("0\n"), std::string::npos) << fds;
}

TEST(ChildProcessTest, AnAdoptedProcessIsWatchedAndKilledThroughItsPidfd) {
    auto started = ChildProcess::spawn({"/bin/sleep", "1000"}, {});
    pid_t pid = started.pid();
    auto adopted = ChildProcess::adopt(pid);
    EXPECT_TRUE(adopted.running());
    started.release();  // the adopter is in charge now
    adopted.kill_and_wait();
    EXPECT_FALSE(adopted.running());
    EXPECT_THROW(ChildProcess::adopt(999999), Error);
}

}  // namespace
}  // namespace holt
