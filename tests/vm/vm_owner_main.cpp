// A process that owns VMs and then waits to be killed: tests kill it with SIGKILL to leave its VMs
// the way a crashed service would, then adopt or sweep them.
//
//   holt-test-vm-owner RUN_DIR OWNER TEMPLATE [FORK_CHILDREN]
//
// Prints the id of every VM it made, one per line (the parent first), then "ready".

#include <unistd.h>

#include <cstdio>
#include <string>

#include "holt/common/data_dir.hpp"
#include "holt/vm/agent_client.hpp"
#include "holt/vm/engine.hpp"

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s RUN_DIR OWNER TEMPLATE [FORK_CHILDREN]\n", argv[0]);
        return 2;
    }
    holt::vm::Engine engine([&] {
        holt::vm::EngineOptions options;
        options.data_dir = holt::default_data_dir();
        options.recipes_dir = HOLT_IMAGES_DIR;
        options.run_dir = argv[1];
        options.owner = argv[2];
        return options;
    }());
    auto vm = engine.create({.template_name = argv[3]});
    holt::vm::ExecRequest marker;
    marker.shell = "echo made-by-owner > /root/marker";
    vm->agent().run(marker);
    std::printf("%s\n", vm->id().c_str());
    std::vector<std::unique_ptr<holt::vm::Vm>> children;
    if (argc > 4) {
        children = engine.fork(*vm, std::stoi(argv[4]));
        for (const auto& child : children) {
            std::printf("%s\n", child->id().c_str());
        }
    }
    std::printf("ready\n");
    std::fflush(stdout);
    for (;;) {
        ::pause();
    }
}
