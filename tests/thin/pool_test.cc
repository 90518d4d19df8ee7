#include "thin/pool.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <condition_variable>
#include <cstdlib>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <regex>
#include <thread>

#include "support/forwarding_device.h"
#include "support/test_util.h"

namespace tp::thin {
namespace {

using testing::TempDir;

constexpr uint32_t kB = 64 * 1024;

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
std::span<std::byte> as_wbytes(std::string& s) {
  return {reinterpret_cast<std::byte*>(s.data()), s.size()};
}

std::unique_ptr<Pool> make_pool(const std::string& dir, uint64_t data_bytes, uint32_t block = kB) {
  PoolOptions o;
  o.data_bytes = data_bytes;
  o.block_bytes = block;
  auto p = Pool::create(dir, o);
  EXPECT_TRUE(p.ok()) << p.error().to_string();
  return p.ok() ? std::move(*p) : nullptr;
}

std::unique_ptr<Pool> reopen(std::unique_ptr<Pool> p, const std::string& dir) {
  if (p) {
    auto r = p->close();
    EXPECT_TRUE(r.ok()) << r.error().to_string();
    p.reset();
  }
  auto q = Pool::open(dir);
  EXPECT_TRUE(q.ok()) << q.error().to_string();
  return q.ok() ? std::move(*q) : nullptr;
}

void expect_checks_pass(Pool& p) {
  auto c = p.check();
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  ASSERT_TRUE(c->ok()) << c->damage.front();
  ASSERT_EQ(testing::thin_check(p.dir() + "/metadata"), "");
}

std::string read_all(Pool& p, const std::string& name) {
  auto dev = p.dev_id(name);
  EXPECT_TRUE(dev.ok());
  auto size = p.size_of(*dev);
  std::string out(*size, '\0');
  auto r = p.read(*dev, 0, as_wbytes(out));
  EXPECT_TRUE(r.ok()) << r.error().to_string();
  return out;
}

// Model-based test: every volume's bytes in memory; >= 100 000 mixed operations.
TEST(PoolModel, RandomOperationsMatchModel) {
  TempDir tmp;
  std::string dir = tmp.file("pool");
  auto p = make_pool(dir, 512ull << 20);
  ASSERT_TRUE(p);
  struct Vol {
    std::string bytes;
    bool ro = false;
    std::string origin;
  };
  std::map<std::string, Vol> model;
  std::mt19937_64 rng(2024);
  const int kOps = static_cast<int>(testing::scaled(100000));
  int next = 0, reopens = 0, reads = 0, snapshots = 0;
  auto pick = [&]() -> std::string {
    auto it = model.begin();
    std::advance(it, static_cast<long>(rng() % model.size()));
    return it->first;
  };
  auto rand_range = [&](uint64_t size, uint64_t max_len, uint64_t* off, uint64_t* len) {
    *off = rng() % size;
    uint64_t l = 1 + rng() % std::min<uint64_t>(max_len, size - *off);
    if (rng() % 4 == 0) {  // block-aligned
      *off = *off / kB * kB;
      l = std::min<uint64_t>(size - *off, (1 + rng() % 3) * kB);
    }
    *len = l;
  };
  std::string buf;
  for (int op = 0; op < kOps; op++) {
    int r = static_cast<int>(rng() % 1000);
    if (model.empty() || (r < 5 && model.size() < 8)) {
      std::string name = "v" + std::to_string(next++);
      uint64_t size = (1 + rng() % 32) * kB - (rng() % 2) * 512 * (1 + rng() % 100);
      ASSERT_TRUE(p->create_volume(name, size).ok());
      model[name] = Vol{std::string(size, '\0'), false, ""};
    } else if (r < 12 && model.size() < 8) {
      std::string origin = pick();
      std::string name = "s" + std::to_string(next++);
      bool writable = rng() % 3 != 0;
      ASSERT_TRUE(p->snapshot(origin, name, writable).ok());
      model[name] = Vol{model[origin].bytes, !writable, origin};
      snapshots++;
    } else if (r < 17 && model.size() > 2) {
      std::string name = pick();
      bool has_snaps = false;
      for (auto& [n, v] : model) has_snaps |= v.origin == name;
      auto res = p->remove(name, false);
      if (has_snaps) {
        ASSERT_EQ(res.error().code, Errc::kBusy);
      } else {
        ASSERT_TRUE(res.ok()) << res.error().to_string();
        model.erase(name);
      }
    } else if (r < 22) {
      std::string name = pick();
      uint64_t size = (1 + rng() % 32) * kB - (rng() % 2) * 512;
      ASSERT_TRUE(p->resize(name, size).ok());
      model[name].bytes.resize(size, '\0');
    } else if (r < 24) {
      p = reopen(std::move(p), dir);
      ASSERT_TRUE(p);
      expect_checks_pass(*p);
      for (auto& [n, v] : model) ASSERT_EQ(read_all(*p, n), v.bytes) << n;
      reopens++;
    } else if (r < 32) {
      ASSERT_TRUE(p->flush().ok());
    } else {
      std::string name = pick();
      Vol& v = model[name];
      uint64_t dev = *p->dev_id(name);
      uint64_t off, len;
      rand_range(v.bytes.size(), (rng() % 10 == 0) ? 300000 : 9000, &off, &len);
      if (r < 500) {
        buf.resize(len);
        for (auto& c : buf) c = static_cast<char>(rng());
        auto res = p->write(dev, off, as_bytes(buf));
        if (v.ro) {
          ASSERT_EQ(res.error().code, Errc::kReadOnly);
        } else {
          ASSERT_TRUE(res.ok()) << res.error().to_string();
          v.bytes.replace(off, len, buf);
        }
      } else if (r < 560) {
        auto res = p->trim(dev, off, len);
        if (v.ro) {
          ASSERT_FALSE(res.ok());
          continue;
        }
        ASSERT_TRUE(res.ok());
        // Whole blocks inside the range read as zeros now; the rest is unchanged.
        uint64_t first = (off + kB - 1) / kB * kB, last = (off + len) / kB * kB;
        if (off + len == v.bytes.size()) last = v.bytes.size();
        if (first < last) std::fill(v.bytes.begin() + first, v.bytes.begin() + last, '\0');
      } else if (r < 620) {
        auto res = p->write_zeroes(dev, off, len);
        if (v.ro) {
          ASSERT_FALSE(res.ok());
          continue;
        }
        ASSERT_TRUE(res.ok()) << res.error().to_string();
        std::fill(v.bytes.begin() + off, v.bytes.begin() + off + len, '\0');
      } else {
        buf.assign(len, '\0');
        ASSERT_TRUE(p->read(dev, off, as_wbytes(buf)).ok());
        ASSERT_EQ(buf, v.bytes.substr(off, len)) << name << " op " << op << " off " << off;
        reads++;
      }
    }
  }
  p = reopen(std::move(p), dir);
  expect_checks_pass(*p);
  for (auto& [n, v] : model) ASSERT_EQ(read_all(*p, n), v.bytes) << n;
  std::printf("model test: %d ops, %d reads checked, %d snapshots, %d reopens\n", kOps, reads,
              snapshots, reopens);
  EXPECT_GT(reopens, kOps / 2000);
}

// thin_ls and thin_delta (the independent tools) agree with list and delta.
TEST(PoolOracle, ThinLsAndThinDeltaAgree) {
  TempDir tmp;
  std::string dir = tmp.file("pool");
  auto p = make_pool(dir, 256ull << 20);
  ASSERT_TRUE(p);
  std::mt19937_64 rng(7);
  ASSERT_TRUE(p->create_volume("a", 16ull << 20).ok());
  uint64_t a = *p->dev_id("a");
  std::string blk(kB, 'x');
  for (int i = 0; i < 200; i++) {
    blk[0] = static_cast<char>(i);
    ASSERT_TRUE(p->write(a, (rng() % 256) * kB, as_bytes(blk)).ok());
  }
  ASSERT_TRUE(p->snapshot("a", "b", true).ok());
  uint64_t b = *p->dev_id("b");
  for (int i = 0; i < 60; i++) {
    ASSERT_TRUE(p->write(b, (rng() % 256) * kB + 100, as_bytes(blk.substr(0, 5000))).ok());
  }
  ASSERT_TRUE(p->trim(b, 0, 64 * kB).ok());
  for (int i = 0; i < 30; i++) ASSERT_TRUE(p->write(a, (rng() % 256) * kB, as_bytes(blk)).ok());
  ASSERT_TRUE(p->close().ok());
  p = reopen(nullptr, dir);

  auto ls = testing::run_cmd(
      {"thin_ls", "--no-headers", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS", dir + "/metadata"});
  if (ls.rc == 127) GTEST_SKIP() << "thin_ls not installed";
  ASSERT_EQ(ls.rc, 0) << ls.err;
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> tools;
  std::istringstream in(ls.out);
  uint64_t dev, mapped, excl;
  while (in >> dev >> mapped >> excl) tools[dev] = {mapped, excl};
  auto vols = p->list();
  ASSERT_EQ(vols.size(), tools.size());
  for (auto& v : vols) {
    ASSERT_TRUE(tools.count(v.dev_id));
    EXPECT_EQ(tools[v.dev_id].first, v.mapped_blocks) << v.name;
    EXPECT_EQ(tools[v.dev_id].second, v.exclusive_blocks) << v.name;
  }

  auto td = testing::run_cmd({"thin_delta", "--snap1", std::to_string(a), "--snap2",
                              std::to_string(b), dir + "/metadata"});
  ASSERT_EQ(td.rc, 0) << td.err;
  // Expand both into per-block kinds.
  std::map<uint64_t, std::string> want, got;
  std::regex re(R"re(<(different|left_only|right_only) begin="(\d+)" length="(\d+)"/>)re");
  for (std::sregex_iterator it(td.out.begin(), td.out.end(), re), e; it != e; ++it) {
    std::string k = (*it)[1] == "different"   ? "changed"
                    : (*it)[1] == "left_only" ? "removed"
                                              : "added";
    uint64_t beg = std::stoull((*it)[2]), n = std::stoull((*it)[3]);
    for (uint64_t i = 0; i < n; i++) want[beg + i] = k;
  }
  auto d = p->delta("a", "b");
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  for (auto& r : *d) {
    for (uint64_t off = r.offset; off < r.offset + r.length; off += kB) got[off / kB] = r.kind;
  }
  EXPECT_FALSE(want.empty());
  EXPECT_EQ(got, want);

  // A byte range compares only the blocks it touches: every window agrees with the full
  // delta clipped to it; max_ranges keeps the first ranges.
  const uint64_t vol_bytes = *p->size_of(a);
  for (uint64_t off : std::vector<uint64_t>{0, kB / 2, 5 * kB + 7, vol_bytes / 3}) {
    for (uint64_t len : std::vector<uint64_t>{1, kB, 17 * kB + 3, vol_bytes}) {
      auto w = p->delta("a", "b", off, len);
      ASSERT_TRUE(w.ok());
      std::map<uint64_t, std::string> in_window, clipped;
      for (auto& r : *w) {
        for (uint64_t o = r.offset; o < r.offset + r.length; o += kB) in_window[o / kB] = r.kind;
      }
      const uint64_t first = off / kB, last = (off + len - 1) / kB;
      for (auto& [blk, kind] : want) {
        if (blk >= first && blk <= last) clipped[blk] = kind;
      }
      EXPECT_EQ(in_window, clipped) << off << "+" << len;
    }
  }
  auto two = p->delta("a", "b", 0, vol_bytes, 2);
  ASSERT_TRUE(two.ok());
  ASSERT_LE(two->size(), 2u);
  ASSERT_GE(d->size(), two->size());
  for (size_t i = 0; i < two->size(); i++) {
    EXPECT_EQ((*two)[i].offset, (*d)[i].offset);
    EXPECT_EQ((*two)[i].length, (*d)[i].length);
  }
}

TEST(PoolSpace, RemoveFreesBlocksAndShrinksDataFile) {
  TempDir tmp;
  std::string dir = tmp.file("pool");
  auto p = make_pool(dir, 128ull << 20);
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->create_volume("a", 32ull << 20).ok());
  uint64_t a = *p->dev_id("a");
  std::string data(8ull << 20, 'z');
  ASSERT_TRUE(p->write(a, 0, as_bytes(data)).ok());
  ASSERT_TRUE(p->snapshot("a", "s", false).ok());
  ASSERT_TRUE(p->write(a, 0, as_bytes(data.substr(0, 2 * kB))).ok());  // 2 blocks copied
  ASSERT_TRUE(p->flush().ok());
  PoolInfo before = p->info();
  EXPECT_EQ(before.used_blocks, 128u + 2u);
  uint64_t du_before = p->data_device().allocated_bytes();
  // The snapshot holds 126 blocks shared and 2 exclusive: removing it frees exactly 2.
  ASSERT_TRUE(p->remove("s", false).ok());
  EXPECT_EQ(p->info().used_blocks, 128u);
  EXPECT_EQ(p->data_device().allocated_bytes(), du_before - 2 * kB);
  ASSERT_TRUE(p->remove("a", false).ok());
  PoolInfo after = p->info();
  EXPECT_EQ(after.used_blocks, 0u);
  EXPECT_EQ(after.free_blocks, after.nr_blocks);
  EXPECT_EQ(p->data_device().allocated_bytes(), 0u);
  expect_checks_pass(*p);
}

TEST(PoolSnapshot, SnapshotCostDoesNotDependOnVolumeSize) {
  TempDir tmp;
  auto p = make_pool(tmp.file("pool"), 1ull << 30);
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->create_volume("small", 1ull << 30).ok());
  ASSERT_TRUE(p->create_volume("huge", 1ull << 40).ok());
  std::string data(1 << 20, 'q');
  for (const char* n : {"small", "huge"}) {
    ASSERT_TRUE(p->write(*p->dev_id(n), 0, as_bytes(data)).ok());
    ASSERT_TRUE(p->write(*p->dev_id(n), 100 * kB, as_bytes(data)).ok());
  }
  ASSERT_TRUE(p->checkpoint().ok());  // the writes' mappings: in the metadata, not the journal
  uint64_t w0 = p->metadata_writes();
  ASSERT_TRUE(p->snapshot("small", "small.snap", false).ok());
  uint64_t w1 = p->metadata_writes();
  ASSERT_TRUE(p->snapshot("huge", "huge.snap", false).ok());
  uint64_t w2 = p->metadata_writes();
  EXPECT_EQ(w1 - w0, w2 - w1);
  EXPECT_LT(w1 - w0, 16u);
}

TEST(PoolIsolation, NoStaleDataAfterRemove) {
  TempDir tmp;
  std::string dir = tmp.file("pool");
  auto p = make_pool(dir, 16ull << 20);
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->create_volume("secret", 16ull << 20).ok());
  std::string pattern(16ull << 20, '\xA5');
  ASSERT_TRUE(p->write(*p->dev_id("secret"), 0, as_bytes(pattern)).ok());
  ASSERT_TRUE(p->remove("secret", false).ok());
  ASSERT_TRUE(p->create_volume("new", 16ull << 20).ok());
  uint64_t dev = *p->dev_id("new");
  // Partial writes into every block: the rest of each block must read as zeros.
  for (uint64_t b = 0; b < 256; b++) ASSERT_TRUE(p->write(dev, b * kB + 7, as_bytes("hi")).ok());
  std::string got = read_all(*p, "new");
  for (uint64_t i = 0; i < got.size(); i++) {
    uint64_t in = i % kB;
    char want = in == 7 ? 'h' : in == 8 ? 'i' : '\0';
    ASSERT_EQ(got[i], want) << "byte " << i;
  }
}

TEST(PoolIsolation, NoStaleDataAfterCrashBetweenAllocationAndCommit) {
  TempDir tmp;
  std::string dir = tmp.file("pool");
  {
    auto p = make_pool(dir, 8ull << 20);
    ASSERT_TRUE(p);
    ASSERT_TRUE(p->create_volume("a", 8ull << 20).ok());
    std::string pattern(8ull << 20, '\x5A');
    ASSERT_TRUE(p->write(*p->dev_id("a"), 0, as_bytes(pattern)).ok());
    // No flush, no close: the data blocks hold the pattern, the metadata never mapped it.
  }
  auto p = reopen(nullptr, dir);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->info().used_blocks, 0u);
  ASSERT_TRUE(p->create_volume("b", 8ull << 20).ok());
  uint64_t dev = *p->dev_id("b");
  for (uint64_t b = 0; b < 128; b++) ASSERT_TRUE(p->write(dev, b * kB + 1000, as_bytes("x")).ok());
  std::string got = read_all(*p, "b");
  for (uint64_t i = 0; i < got.size(); i++) {
    ASSERT_EQ(got[i], (i % kB == 1000) ? 'x' : '\0') << "byte " << i;
  }
  std::string a_got = read_all(*p, "a");
  EXPECT_EQ(a_got, std::string(8ull << 20, '\0'));
  expect_checks_pass(*p);
}

TEST(PoolBadInput, ClearErrorsAndPoolUnchanged) {
  TempDir tmp;
  std::string dir = tmp.file("pool");
  auto p = make_pool(dir, 16ull << 20);
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->create_volume("a", 1 << 20).ok());
  ASSERT_TRUE(p->snapshot("a", "s", false).ok());
  uint64_t trans = p->info().trans_id;
  EXPECT_EQ(p->create_volume("a", 1 << 20).error().code, Errc::kExists);
  EXPECT_EQ(p->create_volume("b", 0).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(p->create_volume("b", 1000).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(p->create_volume("b", kMaxVolumeBytes + 512).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(p->create_volume("../x", 1 << 20).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(p->snapshot("nope", "x", false).error().code, Errc::kNotFound);
  EXPECT_EQ(p->remove("nope", false).error().code, Errc::kNotFound);
  EXPECT_EQ(p->remove("a", false).error().code, Errc::kBusy);
  EXPECT_EQ(p->resize("nope", 1 << 20).error().code, Errc::kNotFound);
  EXPECT_EQ(p->write(*p->dev_id("s"), 0, as_bytes("x")).error().code, Errc::kReadOnly);
  EXPECT_EQ(p->write(*p->dev_id("a"), (1 << 20) - 1, as_bytes("xy")).error().code,
            Errc::kInvalidArgument);
  EXPECT_EQ(p->extend(1 << 20).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(p->info().trans_id, trans);
  // A second opener is refused while the pool is open.
  auto second = Pool::open(dir);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, Errc::kBusy);
  ASSERT_TRUE(p->close().ok());
  p = reopen(nullptr, dir);
  EXPECT_EQ(p->info().trans_id, trans);
  EXPECT_EQ(p->list().size(), 2u);
  expect_checks_pass(*p);
}

TEST(PoolBadInput, NotAPoolAndTruncatedMetadata) {
  TempDir tmp;
  auto r = Pool::open(tmp.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kCorruption);
  std::string dir = tmp.file("pool");
  auto p = make_pool(dir, 16ull << 20);
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->close().ok());
  p.reset();
  ASSERT_EQ(::truncate((dir + "/metadata").c_str(), 4096), 0);
  r = Pool::open(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kCorruption) << r.error().to_string();
  // Creating over an existing pool is refused.
  PoolOptions o;
  o.data_bytes = 16 << 20;
  auto c = Pool::create(dir, o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, Errc::kExists);
}

TEST(PoolExtend, NewBlocksAreUsable) {
  TempDir tmp;
  std::string dir = tmp.file("pool");
  auto p = make_pool(dir, 1 << 20);  // 16 blocks
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->create_volume("a", 4 << 20).ok());
  uint64_t a = *p->dev_id("a");
  std::string data(1 << 20, 'e');
  ASSERT_TRUE(p->write(a, 0, as_bytes(data)).ok());
  EXPECT_EQ(p->write(a, 1 << 20, as_bytes(data)).error().code, Errc::kNoSpace);
  ASSERT_TRUE(p->extend(4 << 20).ok());
  ASSERT_TRUE(p->write(a, 1 << 20, as_bytes(data)).ok());
  p = reopen(std::move(p), dir);
  EXPECT_EQ(p->info().nr_blocks, 64u);
  EXPECT_EQ(read_all(*p, "a").substr(0, 2 << 20), data + data);
  expect_checks_pass(*p);
}

}  // namespace
}  // namespace tp::thin

namespace tp::thin {
namespace {

// The data device with slow writes: a whole-block write stays in flight long enough for a
// concurrent read to look at its block.
class SlowWrites final : public testing::ForwardingDevice {
 public:
  explicit SlowWrites(std::unique_ptr<io::BlockDevice> d)
      : ForwardingDevice(*d), own_(std::move(d)) {}
  Result<void> write(uint64_t o, std::span<const std::byte> b) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return ForwardingDevice::write(o, b);
  }

 private:
  std::unique_ptr<io::BlockDevice> own_;
};

// A whole-block write maps a new block before its bytes land (no zeroing: the write covers
// it). A concurrent read of that block must see the old content or the new, never the new
// block's undefined bytes (here: zeros where the snapshot-shared old block held 'A').
TEST(PoolConcurrency, ReadDuringWholeBlockCopyOnWriteSeesOldOrNew) {
  TempDir tmp;
  const std::string dir = tmp.file("pool");
  const uint64_t kBlocks = 48;
  {
    auto p = make_pool(dir, 16ull << 20);
    ASSERT_TRUE(p);
    ASSERT_TRUE(p->create_volume("v", kBlocks * kB).ok());
    std::string a(kBlocks * kB, 'A');
    ASSERT_TRUE(p->write(*p->dev_id("v"), 0, as_bytes(a)).ok());
    ASSERT_TRUE(p->snapshot("v", "s", false).ok());  // every block of v now shared
    ASSERT_TRUE(p->close().ok());
  }
  auto opened = Pool::open(
      dir, nullptr, [](std::unique_ptr<io::BlockDevice> d) -> std::unique_ptr<io::BlockDevice> {
        return std::make_unique<SlowWrites>(std::move(d));
      });
  ASSERT_TRUE(opened.ok()) << opened.error().to_string();
  Pool& p = **opened;
  const uint64_t v = *p.dev_id("v");
  std::atomic<bool> done{false};
  std::atomic<int> bad{0}, reads{0};
  std::thread reader([&] {
    std::string buf(kB, '\0');
    while (!done) {
      for (uint64_t b = 0; b < kBlocks; b++) {
        if (!p.read(v, b * kB, as_wbytes(buf)).ok()) {
          bad++;
          continue;
        }
        reads++;
        const bool old_ = buf == std::string(kB, 'A'), new_ = buf == std::string(kB, 'B');
        if (!old_ && !new_) bad++;
      }
    }
  });
  std::string blk(kB, 'B');
  for (uint64_t b = 0; b < kBlocks; b++) {
    ASSERT_TRUE(p.write(v, b * kB, as_bytes(blk)).ok());  // copy-on-write, whole block
  }
  done = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0) << "of " << reads.load() << " reads";
  EXPECT_GT(reads.load(), 0);
  std::string s(kB, '\0');
  ASSERT_TRUE(p.read(*p.dev_id("s"), 0, as_wbytes(s)).ok());
  EXPECT_EQ(s, std::string(kB, 'A'));
  ASSERT_TRUE(p.close().ok());
}

// A device whose flush() waits at a gate the test opens: a commit stuck in its sync.
class GatedFlush final : public testing::ForwardingDevice {
 public:
  explicit GatedFlush(std::unique_ptr<io::BlockDevice> d)
      : ForwardingDevice(*d), own_(std::move(d)) {}
  Result<void> flush() override {
    {
      std::unique_lock lk(mu_);
      if (closed_) {
        waiting_++;
        cv_.notify_all();
        cv_.wait(lk, [&] { return !closed_; });
      }
    }
    return ForwardingDevice::flush();
  }
  void close() {
    std::lock_guard lk(mu_);
    closed_ = true;
  }
  void open() {
    std::lock_guard lk(mu_);
    closed_ = false;
    cv_.notify_all();
  }
  // Waits (at most 10 s) until a flush waits at the closed gate.
  bool wait_for_waiter() {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, std::chrono::seconds(10), [&] { return waiting_ > 0; });
  }

 private:
  std::unique_ptr<io::BlockDevice> own_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false;
  int waiting_ = 0;
};

// Issue 12: writes never wait for a commit. While a commit is stuck in a sync (of the data
// device: a journal commit; of the metadata device: a checkpoint), an in-place write, a
// write that allocates a fresh block (into the next transaction) and a read all complete;
// once the sync finishes, everything flushed after it reads back after a reopen.
class WritesDuringACommit : public ::testing::TestWithParam<bool> {};

TEST_P(WritesDuringACommit, InPlaceAndFreshWritesAndReadsComplete) {
  const bool checkpoint = GetParam();
  TempDir tmp;
  const std::string dir = tmp.file("pool");
  {
    auto p = make_pool(dir, 16ull << 20);
    ASSERT_TRUE(p);
    ASSERT_TRUE(p->create_volume("v", 32 * kB).ok());
    ASSERT_TRUE(p->write(*p->dev_id("v"), 0, as_bytes(std::string(kB, 'a'))).ok());
    ASSERT_TRUE(p->close().ok());
  }
  GatedFlush* gate = nullptr;
  auto wrap = [&gate](std::unique_ptr<io::BlockDevice> d) -> std::unique_ptr<io::BlockDevice> {
    auto g = std::make_unique<GatedFlush>(std::move(d));
    gate = g.get();
    return g;
  };
  auto opened = checkpoint ? Pool::open(dir, wrap) : Pool::open(dir, nullptr, wrap);
  ASSERT_TRUE(opened.ok()) << opened.error().to_string();
  Pool& p = **opened;
  const uint64_t v = *p.dev_id("v");
  ASSERT_TRUE(p.write(v, kB, as_bytes(std::string(kB, 'b'))).ok());  // something to commit
  gate->close();
  auto commit =
      std::async(std::launch::async, [&] { return checkpoint ? p.checkpoint() : p.flush(); });
  ASSERT_TRUE(gate->wait_for_waiter()) << "the commit never reached its sync";
  auto io = std::async(std::launch::async, [&]() -> std::string {
    if (!p.write(v, 100, as_bytes(std::string(10, 'x'))).ok()) return "in-place write failed";
    if (!p.write(v, 5 * kB + 7, as_bytes(std::string(9, 'y'))).ok()) return "fresh write failed";
    std::string buf(10, '\0');
    if (!p.read(v, 100, as_wbytes(buf)).ok() || buf != std::string(10, 'x')) return "bad read";
    return "";
  });
  const bool finished = io.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  EXPECT_EQ(commit.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout)
      << "the commit did not wait at the gate";
  gate->open();
  ASSERT_TRUE(finished) << "I/O waited for the commit";
  EXPECT_EQ(io.get(), "");
  ASSERT_TRUE(commit.get().ok());
  ASSERT_TRUE(p.flush().ok());
  ASSERT_TRUE(p.close().ok());
  opened = Pool::open(dir);
  ASSERT_TRUE(opened.ok()) << opened.error().to_string();
  std::string buf(kB, '\0');
  ASSERT_TRUE((*opened)->read(v, 0, as_wbytes(buf)).ok());
  EXPECT_EQ(buf.substr(0, 100), std::string(100, 'a'));
  EXPECT_EQ(buf.substr(100, 10), std::string(10, 'x'));
  ASSERT_TRUE((*opened)->read(v, 5 * kB, as_wbytes(buf)).ok());
  EXPECT_EQ(buf.substr(7, 9), std::string(9, 'y'));
  EXPECT_EQ(buf.substr(0, 7), std::string(7, '\0'));
  ASSERT_TRUE((*opened)->close().ok());
  EXPECT_EQ(testing::thin_check(dir + "/metadata"), "");
}

INSTANTIATE_TEST_SUITE_P(Commits, WritesDuringACommit, ::testing::Values(false, true),
                         [](const auto& info) {
                           return info.param ? "Checkpoint" : "JournalCommit";
                         });

}  // namespace
}  // namespace tp::thin
