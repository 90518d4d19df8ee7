// Commits per second (issue 12): each iteration is N 4 KiB writes at random offsets of one
// volume, then Pool::flush() (a commit), for N = 1, 8 and 64. Two variants:
//   fresh   every write goes to a block never written before (allocation: new mappings);
//   mapped  writes go to blocks mapped and committed beforehand, not shared (no metadata
//           change is needed).
// The pool lives on a real file system (TP_BENCH_DIR, TMPDIR or /tmp; a tmpfs is refused)
// because the cost of fdatasync is the point. Wall-clock time (UseRealTime): a commit mostly
// waits for the disk. Counters: commits/s, writes/s, and the p50/p99 of flush() alone.
// Only the public Pool API is used. Results: bench/RESULTS.md.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "bench_pool.h"

namespace tp::thin::bench {
namespace {

constexpr uint64_t kPoolBytes = 1ull << 30;      // 16384 blocks of 64 KiB (sparse)
constexpr uint64_t kVolBytes = 1ull << 30;       // the fresh variant's region
constexpr uint64_t kMappedBytes = 128ull << 20;  // the mapped variant's region, filled first

// Commits per run: 200, and at most 3200 writes. Fixed, so that the fresh variant never runs
// out of fresh blocks (16384), and short: each fresh write leaves a 4 KiB extent in the data
// file, and freeing thousands of them at the end takes seconds on a file system mounted with
// `discard` (about 3.5 ms each on the VM of RESULTS.md).
int64_t commits_for(int64_t writes_per_commit) {
  return std::min<int64_t>(200, 3200 / writes_per_commit);
}

double percentile_ms(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i), v.end());
  return v[i];
}

void BM_Commit(benchmark::State& state, Target target) {
  const int64_t n = state.range(0);
  std::string error;
  auto b = BenchPool::create("tp_commit_bench", kPoolBytes, kVolBytes, &error);
  if (!b) {
    state.SkipWithError(error.c_str());
    return;
  }
  if (target == Target::kMapped) {
    if (auto r = b->fill(kMappedBytes); !r.ok()) {
      state.SkipWithError(("fill: " + r.error().to_string()).c_str());
      return;
    }
  }
  WriteOffsets offsets(target, target == Target::kFresh ? kVolBytes : kMappedBytes,
                       b->pool().block_bytes(), 1);
  std::vector<std::byte> buf(kIo, std::byte{0x42});
  std::vector<double> flush_ms;
  flush_ms.reserve(static_cast<size_t>(state.max_iterations));
  for (auto _ : state) {
    for (int64_t i = 0; i < n; i++) {
      auto off = offsets.next();
      if (!off) {
        state.SkipWithError("out of fresh blocks: fewer commits per run");
        return;
      }
      if (auto r = b->pool().write(b->dev(), *off, buf); !r.ok()) {
        state.SkipWithError(("write: " + r.error().to_string()).c_str());
        return;
      }
    }
    auto t0 = std::chrono::steady_clock::now();
    if (auto r = b->pool().flush(); !r.ok()) {
      state.SkipWithError(("flush: " + r.error().to_string()).c_str());
      return;
    }
    flush_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  auto commits = static_cast<double>(state.iterations());
  state.counters["commits/s"] = benchmark::Counter(commits, benchmark::Counter::kIsRate);
  state.counters["writes/s"] =
      benchmark::Counter(commits * static_cast<double>(n), benchmark::Counter::kIsRate);
  state.counters["flush_p50_ms"] = percentile_ms(flush_ms, 0.50);
  state.counters["flush_p99_ms"] = percentile_ms(flush_ms, 0.99);
}

void register_benchmarks() {
  for (auto [name, target] :
       {std::pair{"fresh", Target::kFresh}, std::pair{"mapped", Target::kMapped}}) {
    for (int64_t n : {1, 8, 64}) {
      benchmark::RegisterBenchmark((std::string("BM_Commit/") + name).c_str(), BM_Commit, target)
          ->ArgName("writes")
          ->Arg(n)
          ->Iterations(commits_for(n))
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
}

}  // namespace
}  // namespace tp::thin::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  tp::thin::bench::register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
