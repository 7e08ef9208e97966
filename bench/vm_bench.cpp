// holt-bench-vm: measures the VM engine on this host and prints one JSON object per line:
//   {"metric": ..., "unit": "ms", "n": ..., "p50": ..., "p99": ..., ...}
// Metrics: cold boot of each template to a ready agent; restore from the template snapshot to a
// ready agent; fork of a running VM to a ready child; hibernate; wake; host memory per idle
// clone with many running; the round trip of running `true` in a ready VM.
// Figures are medians and 99th percentiles over the runs of one invocation; compare ratios
// measured in one run, since shared machines are noisy.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "holt/common/data_dir.hpp"
#include "holt/common/log.hpp"
#include "holt/vm/agent_client.hpp"
#include "holt/vm/engine.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// A process's proportional set size in MiB: its private memory plus its share of pages it
// maps together with others (the template snapshot's RAM file, QEMU's code).
double pss_mib(int pid) {
    std::ifstream rollup("/proc/" + std::to_string(pid) + "/smaps_rollup");
    std::string line;
    while (std::getline(rollup, line)) {
        if (line.rfind("Pss:", 0) == 0) {
            return std::stod(line.substr(4)) / 1024.0;
        }
    }
    return 0;
}

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Nearest-rank percentile of `samples` (0 < p <= 100).
double percentile(std::vector<double> samples, double p) {
    std::sort(samples.begin(), samples.end());
    auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * samples.size()));
    return samples[std::clamp<std::size_t>(rank, 1, samples.size()) - 1];
}

void report(const std::string& metric, const std::vector<double>& samples,
            boost::json::object extra = {}) {
    boost::json::object line{{"metric", metric}, {"unit", "ms"}, {"n", samples.size()}};
    line["p50"] = std::round(percentile(samples, 50) * 100) / 100;
    line["p99"] = std::round(percentile(samples, 99) * 100) / 100;
    for (auto& [key, value] : extra) {
        line[key] = value;
    }
    std::printf("%s\n", boost::json::serialize(line).c_str());
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"holt-bench-vm: cold boot and exec latency of Holt microVMs, as JSON lines"};
    std::vector<std::string> templates = {"base", "code-interpreter"};
    int boots = 5;
    int execs = 200;
    int restore_count = 50;
    int cycles = 10;
    int idle_clones = 50;
    std::string data_dir;
    app.add_option("--templates", templates, "templates to cold-boot");
    app.add_option("--boots", boots, "cold boots per template")->check(CLI::Range(1, 1000));
    app.add_option("--execs", execs, "runs of `true` in one ready VM")
        ->check(CLI::Range(1, 100000));
    app.add_option("--restores", restore_count, "restores from the template snapshot")
        ->check(CLI::Range(1, 100000));
    app.add_option("--cycles", cycles, "forks, and hibernate/wake cycles, of one VM")
        ->check(CLI::Range(1, 10000));
    app.add_option("--idle-clones", idle_clones, "clones kept running at once to measure memory")
        ->check(CLI::Range(0, 1000));
    app.add_option("--data-dir", data_dir, "data directory with built images");
    CLI11_PARSE(app, argc, argv);
    holt::log::init("warn");

    holt::vm::EngineOptions options;
    options.data_dir =
        data_dir.empty() ? holt::default_data_dir() : std::filesystem::path(data_dir);
    options.recipes_dir = HOLT_IMAGES_DIR;
    holt::vm::Engine engine(options);

    try {
        auto accel = engine.accelerator(templates.front());
        boost::json::object context{{"accel", holt::vm::to_string(accel.accel)}};

        for (const auto& name : templates) {
            std::vector<double> samples;
            for (int i = 0; i < boots; ++i) {
                auto start = Clock::now();
                auto vm = engine.boot({.template_name = name});
                samples.push_back(ms_since(start));
                vm->kill();
            }
            auto extra = context;
            extra["template"] = name;
            report("cold_boot_to_ready_agent", samples, extra);
        }

        const std::string& main_template = templates.front();
        engine.template_snapshot({.template_name = main_template});
        std::vector<double> restores;
        for (int i = 0; i < restore_count; ++i) {
            auto start = Clock::now();
            auto vm = engine.create({.template_name = main_template});
            restores.push_back(ms_since(start));
        }
        auto restore_extra = context;
        restore_extra["template"] = main_template;
        report("restore_to_ready_agent", restores, restore_extra);

        {
            std::vector<double> forks, hibernates, wakes;
            auto parent = engine.create({.template_name = main_template});
            for (int i = 0; i < cycles; ++i) {
                auto start = Clock::now();
                auto children = engine.fork(*parent, 1);
                forks.push_back(ms_since(start));
            }
            for (int i = 0; i < cycles; ++i) {
                auto start = Clock::now();
                auto hibernated = engine.hibernate(parent);
                hibernates.push_back(ms_since(start));
                start = Clock::now();
                parent = engine.wake(hibernated);
                wakes.push_back(ms_since(start));
            }
            report("fork_to_ready_child", forks, restore_extra);
            report("hibernate", hibernates, restore_extra);
            report("wake_to_ready_agent", wakes, restore_extra);
        }

        if (idle_clones > 0) {
            std::vector<std::unique_ptr<holt::vm::Vm>> clones;
            for (int i = 0; i < idle_clones; ++i) {
                clones.push_back(engine.create({.template_name = main_template}));
            }
            std::this_thread::sleep_for(std::chrono::seconds(2));
            std::vector<double> pss;
            for (auto& clone : clones) {
                pss.push_back(pss_mib(clone->machine().pid()));
            }
            auto extra = restore_extra;
            extra["unit"] = "MiB";
            extra["running_at_once"] = idle_clones;
            report("host_memory_per_idle_clone_pss", pss, extra);
        }

        auto vm = engine.create({.template_name = main_template});
        holt::vm::ExecRequest spec;
        spec.argv = {"true"};
        for (int i = 0; i < 5; ++i) {
            vm->agent().run(spec);  // warm up the page cache of the guest
        }
        std::vector<double> samples;
        for (int i = 0; i < execs; ++i) {
            auto start = Clock::now();
            vm->agent().run(spec);
            samples.push_back(ms_since(start));
        }
        auto extra = context;
        extra["template"] = templates.front();
        report("exec_true_round_trip", samples, extra);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "holt-bench-vm: %s\n", e.what());
        return 1;
    }
    return 0;
}
