// VMs and snapshots that outlive the process that made them: what lets a service restart (even
// after `kill -9`) without losing a sandbox, and what keeps sweeps from removing another's VMs.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

#include "holt/common/child_process.hpp"
#include "holt/common/data_dir.hpp"
#include "holt/common/files.hpp"
#include "holt/vm/agent_client.hpp"
#include "holt/vm/engine.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

fs::path test_run_dir() {
    static fs::path root = "/tmp/holt-adopttest-" + std::to_string(::getpid());
    return root;
}

std::unique_ptr<Engine> make_engine(const std::string& owner) {
    EngineOptions options;
    // Only this process makes layers under the test's run directory.
    options.unnamed_layer_grace = std::chrono::milliseconds(0);
    options.data_dir = default_data_dir();
    options.recipes_dir = HOLT_IMAGES_DIR;
    options.run_dir = test_run_dir();
    options.owner = owner;
    return std::make_unique<Engine>(options);
}

std::string run_ok(Vm& vm, const std::string& command) {
    ExecRequest request;
    request.shell = command;
    auto result = vm.agent().run(request);
    EXPECT_EQ(result.status.exit_code, 0) << command << ": " << result.stderr_data;
    return result.stdout_data;
}

// A separate process that makes VMs (a parent and `fork_children` children) as `owner`, then is
// killed with SIGKILL: its VMs are left exactly as a crashed service leaves them.
std::vector<std::string> vms_of_a_killed_owner(const std::string& owner, int fork_children = 0) {
    fs::path output = test_run_dir() / ("owner-" + std::to_string(::getpid()) + ".out");
    fs::create_directories(test_run_dir());
    std::vector<std::string> argv = {HOLT_TEST_VM_OWNER, test_run_dir().string(), owner, "base"};
    if (fork_children > 0) {
        argv.push_back(std::to_string(fork_children));
    }
    ChildProcess process = ChildProcess::spawn(argv, {.output_file = output});
    std::vector<std::string> ids;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
    for (;;) {
        std::string text = read_text_file(output);
        if (text.find("ready\n") != std::string::npos) {
            std::istringstream lines(text);
            for (std::string line; std::getline(lines, line) && line != "ready";) {
                if (line.rfind("vm-", 0) == 0) {
                    ids.push_back(line);
                }
            }
            break;
        }
        if (!process.running() || std::chrono::steady_clock::now() > deadline) {
            ADD_FAILURE() << "the owner process failed:\n" << text;
            return {};
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    process.send_signal(SIGKILL);
    process.wait_for(std::chrono::seconds(5));
    fs::remove(output);
    return ids;
}

class AdoptTest : public ::testing::Test {
  protected:
    void TearDown() override {
        // Every VM and snapshot of the test is gone by now: nothing of them may be left.
        std::error_code ec;
        for (const char* sub : {"vms", "layers", "snapshots"}) {
            EXPECT_EQ(std::distance(fs::directory_iterator(test_run_dir() / sub, ec),
                                    fs::directory_iterator()),
                      0)
                << sub << " is not empty";
        }
    }
};

TEST_F(AdoptTest, ADetachedVmIsAdoptedWithItsFilesAndProcesses) {
    std::string id;
    std::string sleeper_id;
    {
        auto engine = make_engine("test");
        auto vm = engine->create({.template_name = "base"});
        run_ok(*vm, "echo kept > /root/file");
        ExecRequest sleeper;
        sleeper.shell = "sleep 100000";
        sleeper.background = true;
        sleeper_id = vm->agent().start(sleeper, {})->process_id();
        id = vm->id();
        vm->detach();
    }
    // The engine and the Vm object are gone; the VM is not, and a sweep leaves it alone.
    auto engine = make_engine("test");
    auto swept = engine->sweep_stale_vms();
    EXPECT_THAT(swept, Not(Contains(id)));

    auto vm = engine->adopt(id);
    EXPECT_EQ(run_ok(*vm, "cat /root/file"), "kept\n");
    auto processes = vm->agent().processes();
    auto it = std::find_if(processes.begin(), processes.end(),
                           [&](const auto& p) { return p.id == sleeper_id; });
    ASSERT_NE(it, processes.end());
    EXPECT_TRUE(it->running);
    // Adopted VMs work like any other: they snapshot, and the snapshot restores.
    auto snapshot = engine->snapshot(*vm);
    auto restored = engine->restore(snapshot);
    EXPECT_EQ(run_ok(*restored, "cat /root/file"), "kept\n");
    engine->delete_snapshot(snapshot->id());
}

TEST_F(AdoptTest, VmsOfAnOwnerKilledWithSigkillAreAdoptedAndTheRestSwept) {
    auto ids = vms_of_a_killed_owner("test-service", /*fork_children=*/2);
    ASSERT_EQ(ids.size(), 3u);
    auto engine = make_engine("test-service");
    auto parent = engine->adopt(ids[0]);
    auto child = engine->adopt(ids[1]);
    // The second child is nobody's now: the sweep removes it, and only it.
    auto swept = engine->sweep_stale_vms();
    EXPECT_THAT(swept, Contains(ids[2]));
    EXPECT_THAT(swept, Not(Contains(ids[0])));
    EXPECT_THAT(swept, Not(Contains(ids[1])));
    EXPECT_FALSE(fs::exists(engine->vms_dir() / ids[2]));

    EXPECT_EQ(run_ok(*parent, "cat /root/marker"), "made-by-owner\n");
    EXPECT_EQ(run_ok(*child, "cat /root/marker"), "made-by-owner\n");
    // The layers the swept child shared with its sibling are intact: the sibling snapshots and
    // restores.
    auto snapshot = engine->snapshot(*child);
    auto restored = engine->restore(snapshot);
    EXPECT_EQ(run_ok(*restored, "cat /root/marker"), "made-by-owner\n");
    engine->delete_snapshot(snapshot->id());
    // The layers the adopted VMs stood on are deleted by a sweep once nothing names them.
    restored.reset();
    snapshot.reset();
    parent.reset();
    child.reset();
    engine->sweep_stale_vms();
}

TEST_F(AdoptTest, SweepsLeaveVmsOfOtherOwnersAlone) {
    auto ids = vms_of_a_killed_owner("someone-else");
    ASSERT_EQ(ids.size(), 1u);
    EXPECT_THAT(make_engine("test")->sweep_stale_vms(), Not(Contains(ids[0])));
    EXPECT_TRUE(fs::exists(test_run_dir() / "vms" / ids[0]));
    // Its own owner's sweep removes it, hypervisor and all.
    EXPECT_THAT(make_engine("someone-else")->sweep_stale_vms(), Contains(ids[0]));
    EXPECT_FALSE(fs::exists(test_run_dir() / "vms" / ids[0]));
}

TEST_F(AdoptTest, AVmOwnedByALiveProcessCannotBeAdopted) {
    auto engine = make_engine("test");
    auto vm = engine->create({.template_name = "base"});
    try {
        make_engine("test")->adopt(vm->id());
        FAIL() << "adopted a VM that has a live owner";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("owned by a running process"));
    }
    EXPECT_EQ(run_ok(*vm, "echo still mine"), "still mine\n");
    EXPECT_THROW(engine->adopt("vm-00000000"), Error);
}

TEST_F(AdoptTest, AKeptSnapshotOutlivesTheEngineThatMadeIt) {
    std::string snapshot_id;
    {
        auto engine = make_engine("test");
        auto vm = engine->create({.template_name = "base"});
        run_ok(*vm, "echo from-snapshot > /root/file");
        snapshot_id = engine->snapshot(*vm)->id();
    }
    auto engine = make_engine("test");
    EXPECT_THAT(engine->list_snapshots(), Contains(snapshot_id));
    auto restored = engine->restore(engine->open_snapshot(snapshot_id));
    EXPECT_EQ(run_ok(*restored, "cat /root/file"), "from-snapshot\n");
    // Deleting the snapshot does not pull the disk from under the VM restored from it.
    engine->delete_snapshot(snapshot_id);
    EXPECT_THAT(engine->list_snapshots(), Not(Contains(snapshot_id)));
    EXPECT_THROW(engine->open_snapshot(snapshot_id), Error);
    run_ok(*restored, "sync; echo 3 > /proc/sys/vm/drop_caches");
    EXPECT_EQ(run_ok(*restored, "cat /root/file"), "from-snapshot\n");
}

}  // namespace
}  // namespace holt::vm
