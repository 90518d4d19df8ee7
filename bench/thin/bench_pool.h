#pragma once
// Shared by the benchmarks of the durability path (commit_bench.cc, flush_workload.cc): a
// pool in a new directory on a real file system, and the offsets of 4 KiB writes to fresh or
// to already mapped blocks. Only Pool's public API is used, so these benchmarks run unchanged
// against any engine that keeps it.
#include <stdlib.h>
#include <sys/vfs.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "thin/pool.h"

namespace tp::thin::bench {

inline constexpr uint64_t kIo = 4096;  // every benchmark write is 4 KiB, 4 KiB aligned

// The parent directory for benchmark pools: $TP_BENCH_DIR, else $TMPDIR, else /tmp.
inline std::string bench_parent_dir() {
  for (const char* var : {"TP_BENCH_DIR", "TMPDIR"}) {
    const char* v = ::getenv(var);
    if (v != nullptr && *v != '\0') return v;
  }
  return "/tmp";
}

// Creates a new directory PARENT/PREFIX.XXXXXX (parent: bench_parent_dir()). fdatasync is
// what these benchmarks measure, so a memory file system (tmpfs, ramfs) is refused. Returns
// "" and the directory in *dir, or what went wrong.
inline std::string make_bench_dir(const std::string& prefix, std::string* dir) {
  std::string parent = bench_parent_dir();
  struct statfs fs;
  if (::statfs(parent.c_str(), &fs) != 0) return "cannot statfs " + parent;
  constexpr long kTmpfsMagic = 0x01021994;
  constexpr long kRamfsMagic = static_cast<long>(0x858458f6);
  if (fs.f_type == kTmpfsMagic || fs.f_type == kRamfsMagic) {
    return parent + " is a memory file system: set TP_BENCH_DIR to a directory on a disk";
  }
  std::string tmpl = parent + "/" + prefix + ".XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return "cannot create a directory in " + parent;
  *dir = tmpl;
  return "";
}

// A pool with one volume "v", in a directory of its own that goes with it.
class BenchPool {
 public:
  // pool_bytes of data space (a sparse file), default block size and metadata size.
  static std::unique_ptr<BenchPool> create(const std::string& prefix, uint64_t pool_bytes,
                                           uint64_t vol_bytes, std::string* error) {
    std::unique_ptr<BenchPool> b(new BenchPool());
    *error = make_bench_dir(prefix, &b->dir_);
    if (!error->empty()) return nullptr;
    PoolOptions o;
    o.data_bytes = pool_bytes;
    auto p = Pool::create(b->dir_ + "/pool", o);
    if (!p.ok()) {
      *error = "Pool::create: " + p.error().to_string();
      return nullptr;
    }
    b->pool_ = std::move(*p);
    if (auto r = b->pool_->create_volume("v", vol_bytes); !r.ok()) {
      *error = "create_volume: " + r.error().to_string();
      return nullptr;
    }
    auto id = b->pool_->dev_id("v");
    if (!id.ok()) {
      *error = "dev_id: " + id.error().to_string();
      return nullptr;
    }
    b->dev_ = *id;
    return b;
  }
  ~BenchPool() {
    pool_.reset();  // no commit: the directory goes anyway
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  BenchPool(const BenchPool&) = delete;
  BenchPool& operator=(const BenchPool&) = delete;

  Pool& pool() { return *pool_; }
  uint64_t dev() const { return dev_; }

  // Maps [0, bytes) of the volume (1 MiB writes) and commits it.
  Result<void> fill(uint64_t bytes) {
    std::vector<std::byte> buf(1 << 20, std::byte{1});
    for (uint64_t off = 0; off < bytes; off += buf.size()) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), bytes - off));
      TP_TRY(pool_->write(dev_, off, std::span<const std::byte>(buf).first(n)));
    }
    return pool_->flush();
  }

 private:
  BenchPool() = default;
  std::string dir_;
  std::unique_ptr<Pool> pool_;
  uint64_t dev_ = 0;
};

// Where 4 KiB benchmark writes go. kFresh: each into a block no earlier write touched (the
// volume's blocks in a random order), at a random 4 KiB inside it, so every write allocates;
// kMapped: at random in [0, region), which the caller has filled and committed, so the
// blocks are mapped and exclusive and no write needs a metadata change.
enum class Target { kFresh, kMapped };

class WriteOffsets {
 public:
  WriteOffsets(Target target, uint64_t region_bytes, uint32_t block_bytes, uint64_t seed)
      : target_(target), region_(region_bytes), block_(block_bytes), rng_(seed) {
    if (target_ == Target::kFresh) {
      blocks_.resize(region_ / block_);
      std::iota(blocks_.begin(), blocks_.end(), uint64_t{0});
      std::shuffle(blocks_.begin(), blocks_.end(), rng_);
    }
  }
  // The next offset; for kFresh nullopt once every block of the region has had its write.
  std::optional<uint64_t> next() {
    if (target_ == Target::kMapped) return (rng_() % (region_ / kIo)) * kIo;
    if (next_ == blocks_.size()) return std::nullopt;
    return blocks_[next_++] * block_ + (rng_() % (block_ / kIo)) * kIo;
  }

 private:
  Target target_;
  uint64_t region_;
  uint64_t block_;
  std::mt19937_64 rng_;
  std::vector<uint64_t> blocks_;
  size_t next_ = 0;
};

}  // namespace tp::thin::bench
