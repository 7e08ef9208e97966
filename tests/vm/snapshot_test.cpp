// Snapshot-restore, fork and hibernate of real QEMU microVMs: what sandboxes, databases and apps
// rely on when they are created from a snapshot instead of a cold boot.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "holt/common/data_dir.hpp"
#include "holt/vm/agent_client.hpp"
#include "holt/vm/engine.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

fs::path test_run_dir() {
    static fs::path root = "/tmp/holt-snaptest-" + std::to_string(::getpid());
    return root;
}

Engine& engine() {
    static Engine instance([] {
        EngineOptions options;
        options.data_dir = default_data_dir();
        options.recipes_dir = HOLT_IMAGES_DIR;
        options.run_dir = test_run_dir();
        return options;
    }());
    return instance;
}

ExecRequest shell(const std::string& command) {
    ExecRequest request;
    request.shell = command;
    return request;
}

std::string run_ok(Vm& vm, const std::string& command) {
    auto result = vm.agent().run(shell(command));
    EXPECT_EQ(result.status.exit_code, 0) << command << ": " << result.stderr_data;
    return result.stdout_data;
}

void write_text(Vm& vm, const std::string& path, const std::string& text) {
    std::istringstream in(text);
    vm.agent().write_file(path, in);
}

std::string read_text(Vm& vm, const std::string& path) {
    std::ostringstream out;
    vm.agent().read_file(path, out);
    return out.str();
}

class SnapshotTest : public ::testing::Test {
  protected:
    void TearDown() override {
        // Every VM of the test is gone by now: nothing of them may be left on the host.
        std::error_code ec;
        for (const char* sub : {"vms", "layers", "snapshots"}) {
            EXPECT_EQ(std::distance(fs::directory_iterator(test_run_dir() / sub, ec),
                                    fs::directory_iterator()),
                      0)
                << sub << " is not empty";
        }
    }
};

TEST_F(SnapshotTest, TenClonesRestoredAtOnceRunCommandsAndSeeOnlyTheirOwnFiles) {
    constexpr int kClones = 10;
    engine().template_snapshot({.template_name = "base"});  // made once, outside the race
    std::vector<std::future<std::unique_ptr<Vm>>> pending;
    for (int i = 0; i < kClones; ++i) {
        pending.push_back(std::async(std::launch::async,
                                     [] { return engine().create({.template_name = "base"}); }));
    }
    std::vector<std::unique_ptr<Vm>> clones;
    for (auto& p : pending) {
        clones.push_back(p.get());
    }
    for (int i = 0; i < kClones; ++i) {
        write_text(*clones[i], "/root/who", "clone " + std::to_string(i));
    }
    for (int i = 0; i < kClones; ++i) {
        EXPECT_EQ(run_ok(*clones[i], "cat /root/who; echo; ls /root | wc -l"),
                  "clone " + std::to_string(i) + "\n1\n");
    }
}

TEST_F(SnapshotTest, ClonesOfOneSnapshotGetDifferentRandomBytesAndTheHostsClock) {
    auto a = engine().create({.template_name = "base"});
    auto b = engine().create({.template_name = "base"});
    std::string random_a = run_ok(*a, "head -c 32 /dev/urandom | od -An -tx1");
    std::string random_b = run_ok(*b, "head -c 32 /dev/urandom | od -An -tx1");
    EXPECT_NE(random_a, random_b);

    for (Vm* vm : {a.get(), b.get()}) {
        auto host_before = std::chrono::system_clock::now();
        std::string guest = run_ok(*vm, "date +%s.%N");
        auto host_after = std::chrono::system_clock::now();
        double guest_s = std::stod(guest);
        double before_s = std::chrono::duration<double>(host_before.time_since_epoch()).count();
        double after_s = std::chrono::duration<double>(host_after.time_since_epoch()).count();
        EXPECT_GT(guest_s, before_s - 1.0);
        EXPECT_LT(guest_s, after_s + 1.0);
    }
}

TEST_F(SnapshotTest, TheClockIsRightAfterRestoringASnapshotTakenEarlier) {
    auto vm = engine().create({.template_name = "base"});
    auto snapshot = engine().snapshot(*vm);
    vm.reset();
    // The snapshot's guest clock stopped when it was taken; a restore must not resume from it.
    std::this_thread::sleep_for(std::chrono::seconds(5));
    auto restored = engine().restore(snapshot);
    double guest_s = std::stod(run_ok(*restored, "date +%s.%N"));
    double host_s =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    EXPECT_NEAR(guest_s, host_s, 1.0);
    engine().delete_snapshot(snapshot->id());
}

TEST_F(SnapshotTest, ForkedChildrenStartWithTheParentsProcessesAndDivergeAfterwards) {
    auto parent = engine().create({.template_name = "base"});
    // A process whose in-memory state (a counter) only exists in the parent's RAM.
    ExecRequest counter = shell(
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count;"
        " sleep 0.2; done");
    counter.background = true;
    std::string counter_id = parent->agent().start(counter, {})->process_id();
    write_text(*parent, "/root/before-fork", "shared");
    // Wait until the counter has counted a few times, so a child starting from scratch differs.
    int count_before_fork = 0;
    for (int i = 0; i < 100 && count_before_fork < 3; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        try {
            count_before_fork = std::stoi(read_text(*parent, "/tmp/count"));
        } catch (const std::exception&) {
        }
    }
    ASSERT_GE(count_before_fork, 3);

    auto children = engine().fork(*parent, 2);
    ASSERT_EQ(children.size(), 2u);
    for (auto& child : children) {
        EXPECT_EQ(read_text(*child, "/root/before-fork"), "shared");
        auto processes = child->agent().processes();
        auto it = std::find_if(processes.begin(), processes.end(),
                               [&](const auto& p) { return p.id == counter_id; });
        ASSERT_NE(it, processes.end()) << "the counter did not survive the fork";
        EXPECT_TRUE(it->running);
        // The counter goes on from the parent's value, not from zero.
        EXPECT_GE(std::stoi(read_text(*child, "/tmp/count")), count_before_fork);
    }

    write_text(*children[0], "/root/after-fork", "child 0");
    write_text(*parent, "/root/after-fork", "parent");
    EXPECT_EQ(read_text(*children[0], "/root/after-fork"), "child 0");
    EXPECT_EQ(read_text(*parent, "/root/after-fork"), "parent");
    EXPECT_THAT(run_ok(*children[1], "ls /root"), ::testing::Not(HasSubstr("after-fork")));
}

TEST_F(SnapshotTest, ASnapshotRestoresAnyNumberOfTimes) {
    auto vm = engine().create({.template_name = "base"});
    write_text(*vm, "/root/state", "at snapshot");
    auto snapshot = engine().snapshot(*vm);
    write_text(*vm, "/root/state", "after snapshot");
    for (int i = 0; i < 3; ++i) {
        auto restored = engine().restore(snapshot);
        EXPECT_EQ(read_text(*restored, "/root/state"), "at snapshot");
        write_text(*restored, "/root/state", "changed in restore");
    }
    EXPECT_EQ(read_text(*vm, "/root/state"), "after snapshot");
    engine().delete_snapshot(snapshot->id());
}

TEST_F(SnapshotTest, FilesAndProcessesSurviveFiveHibernateWakeCycles) {
    auto vm = engine().create({.template_name = "base"});
    ExecRequest sleeper = shell("sleep 100000");
    sleeper.background = true;
    std::string sleeper_id = vm->agent().start(sleeper, {})->process_id();
    std::string expected;
    for (int cycle = 0; cycle < 5; ++cycle) {
        std::string line = "cycle " + std::to_string(cycle) + "\n";
        expected += line;
        run_ok(*vm, "echo 'cycle " + std::to_string(cycle) + "' >> /root/journal");
        auto hibernated = engine().hibernate(vm);
        vm = engine().wake(hibernated);
        EXPECT_EQ(read_text(*vm, "/root/journal"), expected) << "after cycle " << cycle;
    }
    auto processes = vm->agent().processes();
    auto it = std::find_if(processes.begin(), processes.end(),
                           [&](const auto& p) { return p.id == sleeper_id; });
    ASSERT_NE(it, processes.end());
    EXPECT_TRUE(it->running);
}

TEST_F(SnapshotTest, AStaleTemplateSnapshotIsRebuiltNotUsed) {
    VmOptions options{.template_name = "base", .memory_mib = 256};
    auto snapshot = engine().template_snapshot(options);
    fs::path dir = snapshot->dir();
    snapshot.reset();
    // Damage it the way a crash in the middle of making it would: no manifest.
    Engine fresh([&] {
        EngineOptions o = engine().options();
        return o;
    }());
    fs::remove(dir / "snapshot.json");
    auto vm = fresh.create(options);
    EXPECT_EQ(run_ok(*vm, "echo ok"), "ok\n");
    EXPECT_TRUE(fs::exists(dir / "snapshot.json"));
}

// A stand-in for a template snapshot of `current`'s template and size made from something
// else (another image, QEMU or Holt): complete enough to be opened, last written `age` ago.
fs::path stale_template_snapshot(const Snapshot& current, const std::string& suffix,
                                 std::chrono::seconds age) {
    fs::path dir = current.dir().parent_path() / ("base-1cpu-512m-stale" + suffix);
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const char* file : {"state", "memory", "disk.qcow2"}) {
        std::ofstream(dir / file) << "stand-in";
    }
    SnapshotManifest m = current.manifest();
    m.key = "made from something else";
    m.disk = "disk.qcow2";
    m.disk_chain.clear();
    Snapshot::write_manifest(dir, m);
    fs::last_write_time(dir, fs::file_time_type::clock::now() - age);
    return dir;
}

TEST_F(SnapshotTest, SweepsDeleteStaleTemplateSnapshotsOnlyOnceNothingStandsOnThem) {
    auto current = engine().template_snapshot({.template_name = "base"});
    const auto old = std::chrono::hours(2);
    fs::path unused = stale_template_snapshot(*current, "-unused", old);
    fs::path young = stale_template_snapshot(*current, "-young", std::chrono::seconds(0));
    fs::path used = stale_template_snapshot(*current, "-used", old);
    // Made by a Holt whose snapshot format this one cannot read.
    fs::path unreadable = stale_template_snapshot(*current, "-oldformat", old);
    std::ofstream(unreadable / "snapshot.json") << R"({"format": 1})";
    fs::last_write_time(unreadable, fs::file_time_type::clock::now() - old);

    // A kept snapshot of a VM that was restored from the stale template stands on its RAM file
    // and its disk layer.
    fs::path kept = test_run_dir() / "snapshots" / "snap-standsonstale";
    fs::path frozen = test_run_dir() / "layers" / "vm-standsonstale.qcow2";
    fs::create_directories(kept);
    fs::create_directories(frozen.parent_path());
    for (const fs::path& file : {kept / "state", kept / "memory.pages", frozen}) {
        std::ofstream(file) << "stand-in";
    }
    SnapshotManifest m = current->manifest();
    m.kind = "vm";
    m.ram = SavedRam::none;
    m.memory_base = used / "memory";
    m.disk = frozen;
    m.disk_chain = {frozen, used / "disk.qcow2"};
    Snapshot::write_manifest(kept, m);
    fs::last_write_time(used, fs::file_time_type::clock::now() - old);

    engine().sweep_stale_vms();
    EXPECT_FALSE(fs::exists(unused)) << "a stale template snapshot nothing uses stays";
    EXPECT_FALSE(fs::exists(unreadable));
    EXPECT_TRUE(fs::exists(young)) << "a young one may be another Holt version's current one";
    EXPECT_TRUE(fs::exists(used)) << "a kept snapshot stands on it";
    EXPECT_TRUE(fs::exists(current->memory_file())) << "the current one went";

    engine().delete_snapshot("snap-standsonstale");
    engine().sweep_stale_vms();
    EXPECT_FALSE(fs::exists(used));
    fs::remove_all(young);
    EXPECT_EQ(run_ok(*engine().create({.template_name = "base"}), "echo ok"), "ok\n");
}

}  // namespace
}  // namespace holt::vm
