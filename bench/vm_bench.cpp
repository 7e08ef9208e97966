// holt-bench-vm: measures the VM engine on this host and prints one JSON object per line:
//   {"metric": ..., "unit": "ms", "n": ..., "p50": ..., "p99": ..., ...}
// Figures are medians and 99th percentiles over the runs of one invocation; compare ratios
// measured in one run, since shared machines are noisy.

#include <CLI/CLI.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "holt/common/data_dir.hpp"
#include "holt/common/log.hpp"
#include "holt/vm/agent_client.hpp"
#include "holt/vm/engine.hpp"

namespace {

using Clock = std::chrono::steady_clock;

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
    std::string data_dir;
    app.add_option("--templates", templates, "templates to cold-boot");
    app.add_option("--boots", boots, "cold boots per template")->check(CLI::Range(1, 1000));
    app.add_option("--execs", execs, "runs of `true` in one ready VM")->check(CLI::Range(1, 100000));
    app.add_option("--data-dir", data_dir, "data directory with built images");
    CLI11_PARSE(app, argc, argv);
    holt::log::init("warn");

    holt::vm::EngineOptions options;
    options.data_dir = data_dir.empty() ? holt::default_data_dir() : std::filesystem::path(data_dir);
    options.recipes_dir = HOLT_IMAGES_DIR;
    options.qemu.die_with_parent = true;
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

        auto vm = engine.boot({.template_name = templates.front()});
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
