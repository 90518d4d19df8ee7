// libFuzzer target: the delta-file reader (thin/update.h), what `update --delta` reads, and
// the update itself on a real pool for deltas that pass the reader.
//
// Input: one mode byte, then the delta file's bytes.
//   mode & 1: fix the header's and the trailer's crc32c first (so the fuzzer gets past them);
//   mode & 2: also set the header's base size and SHA-256 to those of the pool's volume
//             "base" (so the update gets past the base check), implies 1;
//   mode & 4: apply it with apply_update (--stage when mode & 8) to "base" of a real pool
//             (when the result is at most 4 MiB: the update reads all of it back).
// Properties: parse_delta (memory) and read_delta (file) agree; accepted entries are in
// increasing order inside the result and their data inside the file; an applied update
// leaves the pool passing its full check, and a failed one leaves no "base.next" behind.
// Seeds (fuzz/corpus/thin_fuzz_delta): deltas written by write_delta (diff --output).

#include <cstring>
#include <memory>
#include <vector>

#include "fuzz_util.h"
#include "pdata/crc32c.h"
#include "pdata/endian.h"
#include "thin/pool.h"
#include "thin/update.h"

namespace {

using namespace tp;
using namespace tp::thin;

constexpr size_t kHeader = 128, kTrailer = 16;
constexpr uint64_t kBaseSize = 1 << 20;

struct PoolHolder {
  std::unique_ptr<Pool> pool;
  Sha256 base_sha{};
  uint64_t dev = 0;
};

PoolHolder& pool() {
  static PoolHolder h = [] {
    PoolHolder p;
    PoolOptions o;
    o.data_bytes = 64ull << 20;
    auto r = Pool::create(fuzz::scratch_dir() + "/pool", o);
    TP_FUZZ_REQUIRE(r.ok());
    p.pool = std::move(*r);
    TP_FUZZ_REQUIRE(p.pool->create_volume("base", kBaseSize).ok());
    p.dev = *p.pool->dev_id("base");
    std::vector<std::byte> block(64 * 1024, std::byte{0x5a});
    TP_FUZZ_REQUIRE(p.pool->write(p.dev, 128 * 1024, block).ok());
    TP_FUZZ_REQUIRE(p.pool->flush().ok());
    auto sha = sha256_of(volume_source(*p.pool, p.dev));
    TP_FUZZ_REQUIRE(sha.ok());
    p.base_sha = *sha;
    return p;
  }();
  return h;
}

void fix_up(std::vector<std::byte>& d, uint8_t mode) {
  if (d.size() < kHeader + kTrailer) return;
  if (mode & 2) {
    pdata::store_le64(d.data() + 16, kBaseSize);
    std::memcpy(d.data() + 40, pool().base_sha.data(), 32);
  }
  pdata::store_le32(d.data() + 124, pdata::crc32c(std::span(d).first(124)));
  size_t body = d.size() - kTrailer;
  pdata::store_le32(d.data() + body + 8, pdata::crc32c(std::span(d).first(body)));
}

void check_entries(const DeltaFile& df, uint64_t file_size) {
  const DeltaHeader& h = df.header;
  TP_FUZZ_REQUIRE(h.block_bytes > 0 && h.block_bytes % 4096 == 0);
  TP_FUZZ_REQUIRE(df.entries.size() == h.nr_entries);
  uint64_t prev = 0;
  for (size_t i = 0; i < df.entries.size(); i++) {
    const DeltaEntry& e = df.entries[i];
    TP_FUZZ_REQUIRE(i == 0 || e.block > prev);
    prev = e.block;
    TP_FUZZ_REQUIRE(e.block * h.block_bytes < h.result_size);
    TP_FUZZ_REQUIRE(e.length > 0 && e.length <= h.block_bytes);
    TP_FUZZ_REQUIRE(e.block * h.block_bytes + e.length <= h.result_size);
    if (!e.zero) {
      TP_FUZZ_REQUIRE(e.data_offset >= kHeader);
      TP_FUZZ_REQUIRE(e.data_offset + e.length <= file_size - kTrailer);
    }
  }
}

void apply_to_pool(const std::string& path, bool stage) {
  PoolHolder& p = pool();
  auto r = apply_update(*p.pool, "base", path, stage);
  if (!r.ok()) {
    TP_FUZZ_REQUIRE(!p.pool->volume("base.next", false).ok());
  } else if (r->staged) {
    TP_FUZZ_REQUIRE(p.pool->remove("base.next", false).ok());
  }
  auto c = p.pool->check();
  TP_FUZZ_REQUIRE(c.ok() && c->ok());
  // Back to the base image for the next input (a merged update changed "base").
  if (r.ok() && !r->staged) {
    TP_FUZZ_REQUIRE(p.pool->remove("base", false).ok());
    TP_FUZZ_REQUIRE(p.pool->create_volume("base", kBaseSize).ok());
    p.dev = *p.pool->dev_id("base");
    std::vector<std::byte> block(64 * 1024, std::byte{0x5a});
    TP_FUZZ_REQUIRE(p.pool->write(p.dev, 128 * 1024, block).ok());
    TP_FUZZ_REQUIRE(p.pool->flush().ok());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  uint8_t mode = data[0];
  std::vector<std::byte> d(reinterpret_cast<const std::byte*>(data) + 1,
                           reinterpret_cast<const std::byte*>(data) + size);
  if (mode & 3) fix_up(d, mode);
  auto mem = parse_delta(d);
  const std::string path = fuzz::scratch_dir() + "/delta";
  fuzz::write_file(path, d);
  auto file = read_delta(path);
  TP_FUZZ_REQUIRE(mem.ok() == file.ok());
  if (!mem.ok()) {
    TP_FUZZ_REQUIRE(mem.error().code == file.error().code);
    return 0;
  }
  check_entries(*mem, d.size());
  TP_FUZZ_REQUIRE(file->entries.size() == mem->entries.size());
  // The update reads the whole result back for its checksum: keep results small.
  if ((mode & 4) && mem->header.result_size <= (4u << 20)) apply_to_pool(path, mode & 8);
  return 0;
}
