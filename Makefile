# The two commands of the README:
#   make up    installs what is missing, builds Holt and the guest images; today the platform is
#              the VM engine and its operator tool, so "up" ends with the engine ready to use
#   make test  installs what is missing, builds, builds the guest images and runs every test
# Both are incremental and safe to run again.

BUILD_DIR ?= build
HOLT_VM   := $(BUILD_DIR)/bin/holt-vm
JOBS      ?= $(shell nproc)

.PHONY: all deps configure build images up test unit-test vm-test store-test bench format clean

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
	@echo "holt: the VM engine is ready. Try:"
	@echo "  $(HOLT_VM) run --template code-interpreter -- python3 -c 'import numpy; print(6*7)'"
	@echo "  $(HOLT_VM) shell --template base"

unit-test: build
	@cd $(BUILD_DIR) && ctest -L unit --output-on-failure

store-test: build
	@cd $(BUILD_DIR) && ctest -L store --output-on-failure

vm-test: images
	@cd $(BUILD_DIR) && ctest -L vm --output-on-failure

test: images
	@cd $(BUILD_DIR) && ctest --output-on-failure

bench: images
	@$(BUILD_DIR)/bin/holt-bench-vm

format:
	@git ls-files '*.cpp' '*.hpp' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR)
