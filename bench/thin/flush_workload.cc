// The workload that bench/flush_syscalls.sh runs under strace to count the system calls of
// one FLUSH (issue 12): a new pool with one 1 GiB volume, WRITES 4 KiB writes (the same
// offsets for the same arguments), Pool::flush() after every FLUSH_EVERY writes, one last
// flush, close. With FLUSH_EVERY 0 the only flush is the last one, so the difference between
// two runs is the cost of the extra flushes alone: every write, the setup and the teardown
// are in both.
//
//   thin_flush_workload fresh|mapped WRITES FLUSH_EVERY
//     fresh   every write allocates (a block never written before)
//     mapped  writes land in 128 MiB filled and committed beforehand (mapped, not shared)
// Prints "flushes N". The pool goes in a temp dir (TP_BENCH_DIR, TMPDIR or /tmp; not tmpfs),
// removed at the end. Only the public Pool API is used.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_pool.h"

namespace tp::thin::bench {
namespace {

constexpr uint64_t kPoolBytes = 1ull << 30;
constexpr uint64_t kVolBytes = 1ull << 30;
constexpr uint64_t kMappedBytes = 128ull << 20;

int fail(const std::string& what) {
  std::fprintf(stderr, "thin_flush_workload: %s\n", what.c_str());
  return 1;
}

int run(Target target, uint64_t writes, uint64_t flush_every) {
  std::string error;
  auto b = BenchPool::create("tp_flush_workload", kPoolBytes, kVolBytes, &error);
  if (!b) return fail(error);
  if (target == Target::kMapped) {
    if (auto r = b->fill(kMappedBytes); !r.ok()) return fail("fill: " + r.error().to_string());
  }
  WriteOffsets offsets(target, target == Target::kFresh ? kVolBytes : kMappedBytes,
                       b->pool().block_bytes(), 1);
  std::vector<std::byte> buf(kIo, std::byte{0x42});
  uint64_t flushes = 0;
  for (uint64_t i = 1; i <= writes; i++) {
    auto off = offsets.next();
    if (!off) return fail("more writes than fresh blocks in the volume");
    if (auto r = b->pool().write(b->dev(), *off, buf); !r.ok()) {
      return fail("write: " + r.error().to_string());
    }
    // The last write is followed by the final flush below, in both kinds of run.
    if (flush_every != 0 && i % flush_every == 0 && i != writes) {
      if (auto r = b->pool().flush(); !r.ok()) return fail("flush: " + r.error().to_string());
      flushes++;
    }
  }
  if (auto r = b->pool().flush(); !r.ok()) return fail("flush: " + r.error().to_string());
  flushes++;
  if (auto r = b->pool().close(); !r.ok()) return fail("close: " + r.error().to_string());
  std::printf("flushes %llu\n", static_cast<unsigned long long>(flushes));
  return 0;
}

}  // namespace
}  // namespace tp::thin::bench

int main(int argc, char** argv) {
  using tp::thin::bench::Target;
  std::string kind = argc == 4 ? argv[1] : "";
  if (kind != "fresh" && kind != "mapped") {
    std::fprintf(stderr, "usage: %s fresh|mapped WRITES FLUSH_EVERY\n", argv[0]);
    return 2;
  }
  return tp::thin::bench::run(kind == "fresh" ? Target::kFresh : Target::kMapped,
                              std::strtoull(argv[2], nullptr, 10),
                              std::strtoull(argv[3], nullptr, 10));
}
