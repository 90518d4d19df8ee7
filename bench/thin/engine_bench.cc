// Single-threaded engine throughput, in process, next to raw pread/pwrite on the same data
// file: 4 KiB random writes to fresh blocks, overwrites, writes after a snapshot (every
// first touch of a block copies it), and 4 KiB random reads. Results: bench/RESULTS.md.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "thin/pool.h"

namespace tp::thin {
namespace {

constexpr uint64_t kVolBytes = 1ull << 30;  // 1 GiB volume, 16384 blocks of 64 KiB
constexpr uint64_t kIo = 4096;

struct BenchPool {
  std::string dir;
  std::unique_ptr<Pool> pool;
  uint64_t dev = 0;
  BenchPool() {
    char tmpl[] = "/tmp/tp_bench.XXXXXX";
    dir = ::mkdtemp(tmpl);
    PoolOptions o;
    o.data_bytes = 4ull << 30;
    pool = std::move(*Pool::create(dir + "/pool", o));
    (void)pool->create_volume("v", kVolBytes);
    dev = *pool->dev_id("v");
  }
  ~BenchPool() {
    pool.reset();
    std::filesystem::remove_all(dir);
  }
  void fill() {
    std::vector<std::byte> buf(1 << 20, std::byte{1});
    for (uint64_t off = 0; off < kVolBytes; off += buf.size()) (void)pool->write(dev, off, buf);
    (void)pool->flush();
  }
};

std::vector<std::byte> io_buf() {
  return std::vector<std::byte>(kIo, std::byte{0x42});
}

void BM_EngineWriteFresh(benchmark::State& state) {
  BenchPool b;
  auto buf = io_buf();
  std::mt19937_64 rng(1);
  for (auto _ : state) {
    // A random 4 KiB inside a random block: allocation + punch + write.
    uint64_t off = (rng() % (kVolBytes / kIo)) * kIo;
    if (!b.pool->write(b.dev, off, buf).ok()) state.SkipWithError("write failed");
  }
  state.SetBytesProcessed(state.iterations() * kIo);
}
BENCHMARK(BM_EngineWriteFresh)->Iterations(16384);

void BM_EngineOverwrite(benchmark::State& state) {
  BenchPool b;
  b.fill();
  auto buf = io_buf();
  std::mt19937_64 rng(2);
  for (auto _ : state) {
    uint64_t off = (rng() % (kVolBytes / kIo)) * kIo;
    if (!b.pool->write(b.dev, off, buf).ok()) state.SkipWithError("write failed");
  }
  state.SetBytesProcessed(state.iterations() * kIo);
}
BENCHMARK(BM_EngineOverwrite)->Iterations(200000);

void BM_EngineWriteAfterSnapshot(benchmark::State& state) {
  BenchPool b;
  b.fill();
  (void)b.pool->snapshot("v", "snap", false);
  auto buf = io_buf();
  std::mt19937_64 rng(3);
  for (auto _ : state) {
    uint64_t off = (rng() % (kVolBytes / kIo)) * kIo;
    if (!b.pool->write(b.dev, off, buf).ok()) state.SkipWithError("write failed");
  }
  state.SetBytesProcessed(state.iterations() * kIo);
}
BENCHMARK(BM_EngineWriteAfterSnapshot)->Iterations(16384);

void BM_EngineRead(benchmark::State& state) {
  BenchPool b;
  b.fill();
  auto buf = io_buf();
  std::mt19937_64 rng(4);
  for (auto _ : state) {
    uint64_t off = (rng() % (kVolBytes / kIo)) * kIo;
    if (!b.pool->read(b.dev, off, buf).ok()) state.SkipWithError("read failed");
  }
  state.SetBytesProcessed(state.iterations() * kIo);
}
BENCHMARK(BM_EngineRead)->Iterations(200000);

// The reference: the same file, plain pwrite/pread at random 4 KiB offsets.
void raw(benchmark::State& state, bool write) {
  BenchPool b;
  b.fill();
  int fd = ::open((b.dir + "/pool/data").c_str(), O_RDWR);
  auto buf = io_buf();
  std::mt19937_64 rng(5);
  for (auto _ : state) {
    uint64_t off = (rng() % (kVolBytes / kIo)) * kIo;
    ssize_t n = write ? ::pwrite(fd, buf.data(), kIo, static_cast<off_t>(off))
                      : ::pread(fd, buf.data(), kIo, static_cast<off_t>(off));
    if (n != static_cast<ssize_t>(kIo)) state.SkipWithError("raw I/O failed");
  }
  ::close(fd);
  state.SetBytesProcessed(state.iterations() * kIo);
}
void BM_RawPwrite(benchmark::State& state) {
  raw(state, true);
}
void BM_RawPread(benchmark::State& state) {
  raw(state, false);
}
BENCHMARK(BM_RawPwrite)->Iterations(200000);
BENCHMARK(BM_RawPread)->Iterations(200000);

}  // namespace
}  // namespace tp::thin

BENCHMARK_MAIN();
