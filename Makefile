# thinpool: the two commands that matter on a fresh machine are `make demo` and `make test`.
SHELL := /bin/bash
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CTEST_FLAGS ?= --output-on-failure

.PHONY: all deps build test test-asan check-long bench demo format clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

$(ASAN_BUILD)/build.ninja:
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTP_SANITIZE=ON -DTP_BENCH=OFF \
	  -DCMAKE_CXX_COMPILER=clang++ $(CMAKE_FLAGS)

# Every test (unit, oracle, crash slices, end-to-end) in the normal build, then the unit
# tests again under AddressSanitizer + UndefinedBehaviorSanitizer (clang).
test: build $(ASAN_BUILD)/build.ninja
	cd $(BUILD) && ctest $(CTEST_FLAGS) -j $(JOBS)
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && TP_QUICK=1 ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest $(CTEST_FLAGS) -j $(JOBS) -LE e2e

# Long suites: every crash point, long fuzzing and soak runs.
check-long: build
	cd $(BUILD) && TP_LONG=1 ctest $(CTEST_FLAGS) -j $(JOBS) --timeout 7200

bench: build
	@if [ -x $(BUILD)/bench/pdata_bench ]; then $(BUILD)/bench/pdata_bench; fi
	@if [ -x $(BUILD)/bench/thin_bench ]; then $(BUILD)/bench/thin_bench; fi

demo: build
	@bash scripts/demo.sh $(BUILD)/thinpool

format:
	clang-format -i $$(git ls-files '*.cc' '*.h')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
