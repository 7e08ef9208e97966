# The two commands of the README:
#   make up    installs what is missing, builds Holt and the guest images, then runs the platform
#              in the foreground (infra/holt-up.sh: private PostgreSQL, first API key, services)
#   make test  installs what is missing, builds, builds the guest images and runs every test
# Both are incremental and safe to run again.

BUILD_DIR ?= build
HOLT_VM   := $(BUILD_DIR)/bin/holt-vm
JOBS      ?= $(shell nproc)

.PHONY: all deps configure build images up test unit-test vm-test store-test proxy-test e2e-test bench \
        bench-sandbox bench-proxy format clean

all: build

deps:
	@bash infra/install-deps.sh

configure: deps
	@if [ ! -f $(BUILD_DIR)/build.ninja ]; then \
	  cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo; fi

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

images: build
	@$(HOLT_VM) images build

up: images
	@BUILD_DIR=$(BUILD_DIR) infra/holt-up.sh

unit-test: build
	@cd $(BUILD_DIR) && ctest -L unit --output-on-failure

store-test: build
	@cd $(BUILD_DIR) && ctest -L store --output-on-failure

proxy-test: build
	@cd $(BUILD_DIR) && ctest -L proxy --output-on-failure

vm-test: images
	@cd $(BUILD_DIR) && ctest -L vm --output-on-failure

e2e-test: images
	@cd $(BUILD_DIR) && ctest -L e2e --output-on-failure

test: images
	@cd $(BUILD_DIR) && ctest --output-on-failure

bench: images
	@$(BUILD_DIR)/bin/holt-bench-vm

# Needs the platform running (make up) and HOLT_API_URL, HOLT_API_KEY set.
bench-sandbox:
	@bench/sandbox_bench.py

# holt-proxy beside nginx in front of one static backend, driven by wrk (loopback only).
bench-proxy: build
	@bench/proxy_bench.py --bin $(BUILD_DIR)/bin

format:
	@git ls-files '*.cpp' '*.hpp' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR)
