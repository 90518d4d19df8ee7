# thinpool: the two commands that matter on a fresh machine are `make demo` and `make test`.
SHELL := /bin/bash
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
TSAN_BUILD ?= build-tsan
FUZZ_TARGETS := pdata_fuzz_block pdata_fuzz_metadata catalog_fuzz thin_fuzz_delta \
  nbd_fuzz_request nbd_fuzz_handshake daemon_fuzz_control
# Layers whose unit tests run under ThreadSanitizer (the ones with threads).
TSAN_TESTS := thin_tests nbd_tests daemon_tests
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CTEST_FLAGS ?= --output-on-failure

.PHONY: all deps build test test-asan test-tsan fuzz-build fuzz-smoke fuzz-long fuzz-corpus \
  check-long bench bench-commit bench-rss demo format clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	@echo "== build ($$(date -u +%T))"
	cmake --build $(BUILD) -j $(JOBS)

# The ASan+UBSan build also holds the fuzz targets (libFuzzer coverage on every library), so
# `make test` compiles the engine with clang once for both.
$(ASAN_BUILD)/build.ninja:
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTP_SANITIZE=ON -DTP_FUZZ=ON \
	  -DTP_BENCH=OFF -DCMAKE_CXX_COMPILER=clang++ $(CMAKE_FLAGS)

$(FUZZ_BUILD)/build.ninja:
	cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTP_FUZZ=ON \
	  -DTP_TESTS=OFF -DTP_BENCH=OFF -DCMAKE_CXX_COMPILER=clang++ $(CMAKE_FLAGS)

$(TSAN_BUILD)/build.ninja:
	cmake -S . -B $(TSAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTP_TSAN=ON \
	  -DTP_BENCH=OFF -DCMAKE_CXX_COMPILER=clang++ $(CMAKE_FLAGS)

# Every test (unit, oracle, crash slices, end-to-end) in the normal build, then the unit
# tests again under AddressSanitizer + UndefinedBehaviorSanitizer (clang), then 10 s of
# each fuzz target (built in the same clang build).
test: build $(ASAN_BUILD)/build.ninja
	@echo "== make test: ctest, normal build ($$(date -u +%T))"
	cd $(BUILD) && ctest $(CTEST_FLAGS) -j $(JOBS)
	@bash scripts/test-figures.sh $(BUILD)
	@echo "== make test: ASan+UBSan build ($$(date -u +%T))"
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	@echo "== make test: ctest, ASan+UBSan build ($$(date -u +%T))"
	cd $(ASAN_BUILD) && TP_QUICK=1 ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest $(CTEST_FLAGS) -j $(JOBS) -LE e2e
	@echo "== make test: fuzz smoke, 10 s per target ($$(date -u +%T))"
	@bash scripts/fuzz.sh $(ASAN_BUILD) 10 $(FUZZ_TARGETS)
	@echo "== make test: done ($$(date -u +%T))"

# The unit tests of the threaded layers under ThreadSanitizer (clang).
test-tsan: deps $(TSAN_BUILD)/build.ninja
	cmake --build $(TSAN_BUILD) -j $(JOBS) --target $(TSAN_TESTS)
	@set -e; for t in $(TSAN_TESTS); do \
	  echo "tsan: $$t"; \
	  TP_QUICK=1 TP_SOURCE_DIR=$(CURDIR) TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" \
	    $(TSAN_BUILD)/tests/$$t --gtest_brief=1; \
	done

# libFuzzer targets (fuzz/, clang): built in FUZZ_BUILD, run on copies of fuzz/corpus.
fuzz-build: deps $(FUZZ_BUILD)/build.ninja
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(FUZZ_TARGETS)

fuzz-smoke: fuzz-build
	@bash scripts/fuzz.sh $(FUZZ_BUILD) 10 $(FUZZ_TARGETS)

fuzz-long: fuzz-build
	@bash scripts/fuzz.sh $(FUZZ_BUILD) 60 $(FUZZ_TARGETS)

# Rewrites the seed corpora from a real pool (after a format change); commit the result.
fuzz-corpus: fuzz-build
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target gen_corpus
	rm -rf fuzz/corpus && $(FUZZ_BUILD)/fuzz/gen_corpus fuzz/corpus

# Long suites: every crash point, long fuzzing (60 s per target), soak runs, and the
# ThreadSanitizer run.
check-long: build
	cd $(BUILD) && TP_LONG=1 ctest $(CTEST_FLAGS) -j $(JOBS) --timeout 7200
	@bash scripts/test-figures.sh $(BUILD)
	$(MAKE) fuzz-long
	$(MAKE) test-tsan

# Benchmarks (bench/README.md); timing is never a test. `make bench` runs the in-process ones
# (a few minutes); BENCH_RSS=1 adds bench-rss. Pools go in TP_BENCH_DIR (default TMPDIR or
# /tmp), which must be on a disk, not tmpfs.
# bench-commit: commits/s with 1, 8 and 64 writes per commit, and syscalls per FLUSH.
# bench-rss: RSS of `serve` after 10 GiB of random writes to a 1 TiB volume (minutes, 10 GiB
# of disk while it runs).
# BENCH_BEFORE=DIR: the build dir of an earlier version; bench-commit runs its binaries too,
# for before/after figures in one session.
BENCH_RSS ?= 0
BENCH_BEFORE ?=
define bench_commit
	$(if $(BENCH_BEFORE),@echo "before: $(BENCH_BEFORE)" && $(BENCH_BEFORE)/bench/thin_commit_bench --benchmark_counters_tabular=true)
	$(if $(BENCH_BEFORE),@echo "after: $(BUILD)")
	$(BUILD)/bench/thin_commit_bench --benchmark_counters_tabular=true
	@bash bench/flush_syscalls.sh $(BUILD)/bench/thin_flush_workload \
	  $(if $(BENCH_BEFORE),--before $(BENCH_BEFORE)/bench/thin_flush_workload)
endef
define bench_rss
	@bash bench/serve_rss.sh $(BUILD)/thinpool
endef

bench: build
	@if [ -x $(BUILD)/bench/pdata_bench ]; then $(BUILD)/bench/pdata_bench; fi
	@if [ -x $(BUILD)/bench/thin_bench ]; then $(BUILD)/bench/thin_bench; fi
	$(bench_commit)
	$(if $(filter 1,$(BENCH_RSS)),$(bench_rss))

bench-commit: build
	$(bench_commit)

bench-rss: build
	$(bench_rss)

demo: build
	@bash scripts/demo.sh $(BUILD)/thinpool

format:
	clang-format -i $$(git ls-files '*.cc' '*.h')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) $(TSAN_BUILD)
