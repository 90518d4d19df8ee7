// B-tree and space-map microbenchmarks on an in-memory metadata device.
#include <benchmark/benchmark.h>

#include <random>

#include "io/block_device.h"
#include "pdata/thin_metadata.h"

namespace tp::pdata {
namespace {

struct Fixture {
  std::unique_ptr<io::BlockDevice> dev = io::make_mem_device(512ull << 20);
  std::unique_ptr<ThinMetadata> md;
  Fixture() {
    md = std::move(*ThinMetadata::format(*dev, 128, 1ull << 24, 16384));
    (void)md->create_thin(1);
  }
};

void BM_InsertSequential(benchmark::State& state) {
  Fixture f;
  uint64_t k = 0;
  for (auto _ : state) {
    auto b = f.md->alloc_data_block();
    benchmark::DoNotOptimize(f.md->insert(1, k++, *b).ok());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_InsertSequential);

void BM_InsertRandom(benchmark::State& state) {
  Fixture f;
  std::mt19937_64 rng(1);
  for (auto _ : state) {
    auto b = f.md->alloc_data_block();
    benchmark::DoNotOptimize(f.md->insert(1, rng() % (1ull << 30), *b).ok());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_InsertRandom);

void BM_Lookup(benchmark::State& state) {
  Fixture f;
  const uint64_t n = static_cast<uint64_t>(state.range(0));
  for (uint64_t k = 0; k < n; k++) (void)f.md->insert(1, k, *f.md->alloc_data_block());
  (void)f.md->commit();
  std::mt19937_64 rng(2);
  for (auto _ : state) {
    auto m = f.md->lookup(1, rng() % n);
    benchmark::DoNotOptimize(m.ok());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Lookup)->Arg(1000)->Arg(100000)->Arg(1000000);

void BM_RemoveRandom(benchmark::State& state) {
  Fixture f;
  const uint64_t n = 1 << 20;
  for (uint64_t k = 0; k < n; k++) (void)f.md->insert(1, k, *f.md->alloc_data_block());
  (void)f.md->commit();
  std::vector<uint64_t> keys(n);
  for (uint64_t k = 0; k < n; k++) keys[k] = k;
  std::shuffle(keys.begin(), keys.end(), std::mt19937_64(3));
  size_t i = 0;
  for (auto _ : state) {
    if (i == keys.size()) break;
    benchmark::DoNotOptimize(f.md->remove(1, keys[i++]).ok());
  }
  state.SetItemsProcessed(static_cast<int64_t>(i));
}
BENCHMARK(BM_RemoveRandom);

void BM_CommitAfter1000Inserts(benchmark::State& state) {
  Fixture f;
  std::mt19937_64 rng(4);
  for (auto _ : state) {
    state.PauseTiming();
    for (int i = 0; i < 1000; i++) {
      (void)f.md->insert(1, rng() % (1ull << 30), *f.md->alloc_data_block());
    }
    state.ResumeTiming();
    benchmark::DoNotOptimize(f.md->commit().ok());
  }
}
BENCHMARK(BM_CommitAfter1000Inserts);

void BM_DataBlockAlloc(benchmark::State& state) {
  Fixture f;
  for (auto _ : state) {
    auto b = f.md->alloc_data_block();
    benchmark::DoNotOptimize(b.ok());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DataBlockAlloc);

}  // namespace
}  // namespace tp::pdata

BENCHMARK_MAIN();
