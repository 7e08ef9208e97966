#include "holt/vm/qemu_driver.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

namespace holt::vm {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

MachineSpec spec_for(Accelerator accel) {
    return MachineSpec{
        .id = "vm-test",
        .vcpus = 2,
        .memory_mib = 384,
        .accel = accel,
        .kernel = "/k/vmlinuz",
        .initrd = "/k/initrd.img",
        .kernel_args = "holt.extra=1",
        .disks = {DiskSpec{.id = "root", .path = "/r/root.qcow2", .format = "qcow2"}},
        .runtime_dir = "/run/x",
    };
}

std::string value_after(const std::vector<std::string>& argv, const std::string& flag) {
    for (std::size_t i = 0; i + 1 < argv.size(); ++i) {
        if (argv[i] == flag) {
            return argv[i + 1];
        }
    }
    return "";
}

TEST(QemuDriverTest, TcgGuestsGetAFixedTscFrequency) {
    QemuDriver driver({.tsc_khz = 2345678});
    auto argv = driver.command_line(spec_for(Accelerator::tcg));
    EXPECT_THAT(value_after(argv, "-append"), HasSubstr("tsc_early_khz=2345678"));
    EXPECT_THAT(value_after(argv, "-append"), HasSubstr("holt.extra=1"));
    EXPECT_EQ(value_after(argv, "-accel"), "tcg");
}

TEST(QemuDriverTest, KvmGuestsUseTheHostCpu) {
    QemuDriver driver({.tsc_khz = 2345678});
    auto argv = driver.command_line(spec_for(Accelerator::kvm));
    EXPECT_EQ(value_after(argv, "-accel"), "kvm");
    EXPECT_EQ(value_after(argv, "-cpu"), "host");
    EXPECT_THAT(value_after(argv, "-append"), ::testing::Not(HasSubstr("tsc_early_khz")));
}

TEST(QemuDriverTest, MachineIsAMicrovmThatExitsInsteadOfRebooting) {
    auto argv = QemuDriver({.tsc_khz = 1}).command_line(spec_for(Accelerator::tcg));
    EXPECT_THAT(value_after(argv, "-M"), HasSubstr("microvm"));
    EXPECT_THAT(argv, Contains("-no-reboot"));
    EXPECT_THAT(argv, Contains("-nodefaults"));
    EXPECT_EQ(value_after(argv, "-m"), "384M");
    EXPECT_EQ(value_after(argv, "-smp"), "2");
    EXPECT_EQ(value_after(argv, "-display"), "none");
}

TEST(QemuDriverTest, AVmWithANetworkNamespaceGetsTheGuestNicAndItsKernelParameter) {
    auto without = QemuDriver({.tsc_khz = 1}).command_line(spec_for(Accelerator::tcg));
    EXPECT_THAT(without, ::testing::Not(Contains("-netdev")));
    EXPECT_THAT(value_after(without, "-append"), ::testing::Not(HasSubstr("holt.net=")));

    MachineSpec spec = spec_for(Accelerator::tcg);
    spec.netns_fd = 7;
    auto argv = QemuDriver({.tsc_khz = 1}).command_line(spec);
    EXPECT_EQ(value_after(argv, "-netdev"), "tap,id=net0,ifname=tap0,script=no,downscript=no");
    EXPECT_THAT(argv, Contains("virtio-net-device,netdev=net0,mac=02:68:6f:6c:74:02"));
    EXPECT_THAT(value_after(argv, "-append"), HasSubstr("holt.net=10.200.0.2/30,10.200.0.1"));
}

TEST(QemuDriverTest, SocketsAndLogsLiveInTheRuntimeDirectory) {
    auto argv = QemuDriver({.tsc_khz = 1}).command_line(spec_for(Accelerator::tcg));
    EXPECT_EQ(value_after(argv, "-qmp"), "unix:/run/x/qmp.sock,server=on,wait=off");
    EXPECT_THAT(argv, Contains("socket,id=agent,path=/run/x/agent.sock,server=on,wait=off"));
    EXPECT_THAT(argv, Contains("file,id=console,path=/run/x/console.log"));
    EXPECT_THAT(argv, Contains("driver=qcow2,node-name=root,file.driver=file,"
                               "file.filename=/r/root.qcow2"));
}

TEST(QemuDriverTest, TailOfFileKeepsTheLastLines) {
    auto path = std::filesystem::temp_directory_path() / "holt-tail-test.txt";
    std::ofstream(path) << "one\ntwo\r\nthree\nfour\n";
    EXPECT_EQ(tail_of_file(path, 2), "three\nfour");
    EXPECT_EQ(tail_of_file(path, 10), "one\ntwo\nthree\nfour");
    EXPECT_EQ(tail_of_file("/nonexistent/file", 3), "");
    std::filesystem::remove(path);
}

}  // namespace
}  // namespace holt::vm
