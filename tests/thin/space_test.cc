// Guaranteed space (docs/SEMANTICS.md): provisioning, reservations, snapshots with a write
// budget, merge, rollback, and the pool states; then every operation at the exact boundary
// of its space decision (SpaceBoundaryTest). Every test ends with check + thin_check.
#include <gtest/gtest.h>
#include <unistd.h>

#include <random>

#include "support/test_util.h"
#include "thin/pool.h"
#include "thin/update.h"

namespace tp::thin {
namespace {

using testing::TempDir;
constexpr uint64_t kB = 64 * 1024;

std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

class SpaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.file("pool");
    PoolOptions o;
    o.data_bytes = 64ull << 20;  // 1024 blocks
    auto p = Pool::create(dir_, o);
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    pool_ = std::move(*p);
  }
  void TearDown() override {
    if (!pool_) return;
    auto c = pool_->check();
    ASSERT_TRUE(c.ok()) << c.error().to_string();
    EXPECT_TRUE(c->ok()) << c->damage.front();
    ASSERT_TRUE(pool_->close().ok());
    EXPECT_EQ(testing::thin_check(dir_ + "/metadata"), "");
    // And it reopens with the same accounting.
    auto p = Pool::open(dir_);
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    auto c2 = (*p)->check();
    ASSERT_TRUE(c2.ok());
    EXPECT_TRUE(c2->ok()) << c2->damage.front();
  }
  uint64_t dev(const std::string& n) { return *pool_->dev_id(n); }
  std::string pattern(uint64_t len, uint32_t seed) {
    std::string s(len, '\0');
    std::mt19937 rng(seed);
    for (auto& c : s) c = static_cast<char>(rng());
    return s;
  }
  std::string read(const std::string& n, uint64_t off, uint64_t len) {
    std::string s(len, '\0');
    auto r = pool_->read(dev(n), off, {reinterpret_cast<std::byte*>(s.data()), len});
    EXPECT_TRUE(r.ok()) << r.error().to_string();
    return s;
  }
  // Writes whole blocks into name from block `from` on until the pool refuses; returns
  // how many blocks were written. Expects the refusal to be kNoSpace.
  uint64_t fill(const std::string& n, uint64_t from = 0) {
    std::string blk = pattern(kB, 99);
    uint64_t size = *pool_->size_of(dev(n));
    uint64_t written = 0;
    for (uint64_t b = from; (b + 1) * kB <= size; b++) {
      auto r = pool_->write(dev(n), b * kB, bytes(blk));
      if (!r.ok()) {
        EXPECT_EQ(r.error().code, Errc::kNoSpace) << r.error().to_string();
        break;
      }
      written++;
    }
    return written;
  }

  TempDir tmp_;
  std::string dir_;
  std::unique_ptr<Pool> pool_;
};

TEST_F(SpaceTest, ProvisionedVolumeKeepsWorkingWhenPoolIsFull) {
  ASSERT_TRUE(pool_->create_volume("base", 16ull << 20, true).ok());  // 256 blocks
  PoolInfo i = pool_->info();
  EXPECT_EQ(i.used_blocks, 256u);
  EXPECT_EQ(i.reserved_blocks, 0u);  // all mapped and exclusive: nothing more to hold back
  std::string img = pattern(16ull << 20, 1);
  ASSERT_TRUE(pool_->write(dev("base"), 0, bytes(img)).ok());
  ASSERT_TRUE(pool_->create_volume("filler", 100ull << 20).ok());
  EXPECT_EQ(fill("filler"), 1024u - 256u);
  EXPECT_EQ(pool_->info().state, PoolState::kFull);
  // Every block of the base can still be rewritten, whole or in part.
  std::string img2 = pattern(16ull << 20, 2);
  for (uint64_t off = 0; off < img2.size(); off += 100000) {
    uint64_t len = std::min<uint64_t>(100000, img2.size() - off);
    ASSERT_TRUE(pool_->write(dev("base"), off, bytes(img2.substr(off, len))).ok()) << off;
  }
  EXPECT_EQ(read("base", 0, img2.size()), img2);
  // A trimmed guaranteed block stays guaranteed: it can be written again on a full pool.
  ASSERT_TRUE(pool_->trim(dev("base"), 0, 8 * kB).ok());
  ASSERT_TRUE(pool_->flush().ok());
  EXPECT_EQ(pool_->info().unreserved_blocks, 0u);
  EXPECT_EQ(pool_->write(dev("filler"), 900 * kB, bytes(pattern(kB, 3))).error().code,
            Errc::kNoSpace);
  ASSERT_TRUE(pool_->write(dev("base"), 0, bytes(img2.substr(0, 8 * kB))).ok());
  EXPECT_EQ(read("base", 0, img2.size()), img2);
}

TEST_F(SpaceTest, SnapshotOfGuaranteedVolumeReservesOrFailsAndChangesNothing) {
  ASSERT_TRUE(pool_->create_volume("base", 16ull << 20, true).ok());
  ASSERT_TRUE(pool_->create_volume("filler", 100ull << 20).ok());
  EXPECT_EQ(fill("filler"), 768u);
  uint64_t trans = pool_->info().trans_id;
  auto r = pool_->snapshot("base", "snap", false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kNoSpace);
  EXPECT_EQ(pool_->info().trans_id, trans);
  EXPECT_EQ(pool_->list().size(), 2u);
  // Free 300 blocks: now the snapshot fits, and reserves a copy of every guaranteed block.
  ASSERT_TRUE(pool_->trim(dev("filler"), 0, 300 * kB).ok());
  ASSERT_TRUE(pool_->snapshot("base", "snap", false).ok());
  PoolInfo i = pool_->info();
  EXPECT_EQ(i.reserved_blocks, 256u);
  EXPECT_EQ(i.unreserved_blocks, 300u - 256u);
  // Fill again: the filler gets only the unreserved 44 blocks; base's copy-on-write never fails.
  EXPECT_EQ(fill("filler", 0), 44u);
  std::string img = pattern(16ull << 20, 5);
  ASSERT_TRUE(pool_->write(dev("base"), 0, bytes(img)).ok());
  EXPECT_EQ(read("base", 0, img.size()), img);
  EXPECT_EQ(pool_->info().reserved_blocks, 0u);
  // The snapshot still holds the old content.
  EXPECT_EQ(read("snap", 0, kB), std::string(kB, '\0'));
  // Removing the snapshot frees its blocks.
  ASSERT_TRUE(pool_->remove("snap", false).ok());
  EXPECT_EQ(pool_->info().free_blocks, 256u);
}

TEST_F(SpaceTest, RemovingSnapshotReleasesTheReservationItForced) {
  ASSERT_TRUE(pool_->create_volume("base", 16ull << 20, true).ok());
  ASSERT_TRUE(pool_->snapshot("base", "pre", false).ok());
  EXPECT_EQ(pool_->info().reserved_blocks, 256u);
  ASSERT_TRUE(pool_->remove("pre", false).ok());
  EXPECT_EQ(pool_->info().reserved_blocks, 0u);
  EXPECT_EQ(pool_->info().unreserved_blocks, 1024u - 256u);
}

TEST_F(SpaceTest, ABUpdateWithWriteBudgetThenMerge) {
  ASSERT_TRUE(pool_->create_volume("base", 16ull << 20, true).ok());
  std::string v1 = pattern(16ull << 20, 10);
  ASSERT_TRUE(pool_->write(dev("base"), 0, bytes(v1)).ok());
  // Reserve 32 blocks of write budget for the update.
  ASSERT_TRUE(pool_->snapshot("base", "next", true, 32 * kB).ok());
  EXPECT_EQ(pool_->info().reserved_blocks, 256u + 32u);
  ASSERT_TRUE(pool_->create_volume("filler", 100ull << 20).ok());
  EXPECT_EQ(fill("filler"), 1024u - 256u - 256u - 32u);
  // The update writes 32 blocks: all fit in the budget on a full pool.
  std::string v2 = v1;
  std::string delta = pattern(32 * kB, 11);
  v2.replace(64 * kB, delta.size(), delta);
  ASSERT_TRUE(pool_->write(dev("next"), 64 * kB, bytes(delta)).ok());
  // The 32 base blocks the update replaced are the base's alone now: their reservation
  // is released (exact sharing), so the filler gets exactly those 32 and no more.
  EXPECT_EQ(pool_->info().unreserved_blocks, 32u);
  EXPECT_EQ(fill("filler", 1024u - 256u - 256u - 32u), 32u);
  auto over = pool_->write(dev("next"), 200 * kB, bytes(pattern(kB, 12)));
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.error().code, Errc::kNoSpace) << over.error().to_string();
  EXPECT_EQ(read("next", 0, v2.size()), v2);
  EXPECT_EQ(read("base", 0, v1.size()), v1);
  ASSERT_TRUE(pool_->merge("next").ok());
  EXPECT_FALSE(pool_->dev_id("next").ok());
  EXPECT_EQ(read("base", 0, v2.size()), v2);
  // The base's guarantee holds again with nothing extra reserved; the old 32 blocks are free.
  PoolInfo i = pool_->info();
  EXPECT_EQ(i.reserved_blocks, 0u);
  EXPECT_EQ(i.free_blocks, 256u);  // the old image's 32 exclusive blocks went to the filler
  auto vi = pool_->volume("base");
  EXPECT_EQ(vi->guaranteed_blocks, 256u);
  EXPECT_EQ(vi->exclusive_blocks, 256u);
}

TEST_F(SpaceTest, FailedUpdateDroppedLeavesBaseUntouched) {
  ASSERT_TRUE(pool_->create_volume("base", 4ull << 20, true).ok());
  std::string v1 = pattern(4ull << 20, 20);
  ASSERT_TRUE(pool_->write(dev("base"), 0, bytes(v1)).ok());
  ASSERT_TRUE(pool_->snapshot("base", "next", true, 8 * kB).ok());
  ASSERT_TRUE(pool_->write(dev("next"), 0, bytes(pattern(8 * kB, 21))).ok());
  ASSERT_TRUE(pool_->remove("next", false).ok());
  EXPECT_EQ(read("base", 0, v1.size()), v1);
  EXPECT_EQ(pool_->info().reserved_blocks, 0u);
  EXPECT_EQ(pool_->info().used_blocks, 64u);
}

TEST_F(SpaceTest, RollbackRestoresSnapshotAndKeepsIt) {
  ASSERT_TRUE(pool_->create_volume("vol", 4ull << 20).ok());
  std::string a = pattern(4ull << 20, 30), b = pattern(1ull << 20, 31);
  ASSERT_TRUE(pool_->write(dev("vol"), 0, bytes(a)).ok());
  ASSERT_TRUE(pool_->snapshot("vol", "pre", false).ok());
  ASSERT_TRUE(pool_->write(dev("vol"), 123, bytes(b)).ok());
  ASSERT_TRUE(pool_->trim(dev("vol"), 2ull << 20, 1ull << 20).ok());
  ASSERT_TRUE(pool_->rollback("vol", "pre").ok());
  EXPECT_EQ(read("vol", 0, a.size()), a);
  ASSERT_TRUE(pool_->dev_id("pre").ok());
  ASSERT_TRUE(pool_->write(dev("vol"), 0, bytes(b)).ok());
  ASSERT_TRUE(pool_->rollback("vol", "pre").ok());
  EXPECT_EQ(read("vol", 0, a.size()), a);
  EXPECT_EQ(pool_->rollback("vol", "vol").error().code, Errc::kInvalidArgument);
  EXPECT_EQ(pool_->rollback("vol", "nope").error().code, Errc::kNotFound);
}

// The rollback to an empty volume unmaps all 256 guaranteed blocks (256 more reserved) and
// frees the 256 blocks they held: it fits on a full pool (SEMANTICS.md "Space decisions").
TEST_F(SpaceTest, RollbackOfGuaranteedVolumeCountsTheBlocksItFrees) {
  ASSERT_TRUE(pool_->create_volume("vol", 16ull << 20, true).ok());
  ASSERT_TRUE(pool_->create_volume("pre", 16ull << 20).ok());
  ASSERT_TRUE(pool_->create_volume("filler", 100ull << 20).ok());
  EXPECT_EQ(fill("filler"), 768u);
  auto r = pool_->rollback("vol", "pre");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  // Every guaranteed block is now unmapped (pre is empty): all of it is reserved.
  EXPECT_EQ(pool_->info().reserved_blocks, 256u);
  EXPECT_EQ(pool_->info().unreserved_blocks, 0u);
  EXPECT_EQ(read("vol", 0, kB), std::string(kB, '\0'));
  // ... and can be written again on the full pool.
  ASSERT_TRUE(pool_->write(dev("vol"), 0, bytes(pattern(kB, 3))).ok());
}

TEST_F(SpaceTest, ExplicitReservationIsAWriteBudget) {
  ASSERT_TRUE(pool_->create_volume("a", 32ull << 20).ok());
  ASSERT_TRUE(pool_->create_volume("b", 100ull << 20).ok());
  ASSERT_TRUE(pool_->reserve("a", 10 * kB).ok());
  EXPECT_EQ(pool_->info().reserved_blocks, 10u);
  EXPECT_EQ(fill("b"), 1014u);
  EXPECT_EQ(fill("a"), 10u);  // the budget, on a full pool
  EXPECT_EQ(pool_->volume("a")->explicit_reserve_blocks, 0u);
  EXPECT_EQ(pool_->reserve("a", kB).error().code, Errc::kNoSpace);
  ASSERT_TRUE(pool_->reserve("a", 0).ok());
}

TEST_F(SpaceTest, ProvisionRangeWithClassesAndUnprovision) {
  ASSERT_TRUE(pool_->create_volume("fs", 32ull << 20).ok());
  ASSERT_TRUE(pool_->provision("fs", 0, 1ull << 20, catalog::ProvisionClass::kMeta).ok());
  ASSERT_TRUE(pool_->provision("fs", 8ull << 20, 2ull << 20).ok());
  auto vi = pool_->volume("fs");
  EXPECT_EQ(vi->meta_class.guaranteed_blocks, 16u);
  EXPECT_EQ(vi->data_class.guaranteed_blocks, 32u);
  EXPECT_EQ(vi->mapped_blocks, 48u);
  PoolInfo i = pool_->info();
  EXPECT_EQ(i.meta_class.guaranteed_blocks, 16u);
  EXPECT_EQ(i.data_class.guaranteed_blocks, 32u);
  // Provisioned blocks read as zeros and are allocated in the data file.
  EXPECT_EQ(read("fs", 0, 1 << 20), std::string(1 << 20, '\0'));
  EXPECT_GE(pool_->data_device().allocated_bytes(), 48 * kB);
  // A snapshot makes the guaranteed blocks shared: they are reserved now.
  ASSERT_TRUE(pool_->snapshot("fs", "s", false).ok());
  EXPECT_EQ(pool_->volume("fs")->meta_class.reserved_blocks, 16u);
  ASSERT_TRUE(pool_->unprovision("fs", 8ull << 20, 2ull << 20).ok());
  EXPECT_EQ(pool_->volume("fs")->guaranteed_blocks, 16u);
  EXPECT_EQ(pool_->info().reserved_blocks, 16u);
  EXPECT_EQ(pool_->provision("fs", 0, 64ull << 20).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(pool_->provision("s", 0, kB).error().code, Errc::kReadOnly);
}

TEST_F(SpaceTest, ProvisionRefusedWhenItDoesNotFit) {
  ASSERT_TRUE(pool_->create_volume("a", 100ull << 20).ok());
  EXPECT_EQ(pool_->create_volume("big", 65ull << 20, true).error().code, Errc::kNoSpace);
  EXPECT_FALSE(pool_->dev_id("big").ok());
  EXPECT_EQ(pool_->provision("a", 0, 65ull << 20).error().code, Errc::kNoSpace);
  EXPECT_EQ(pool_->volume("a")->guaranteed_blocks, 0u);
  EXPECT_EQ(pool_->info().used_blocks, 0u);
}

TEST_F(SpaceTest, ResizeGrowsAndShrinksTheGuarantee) {
  ASSERT_TRUE(pool_->create_volume("a", 4ull << 20, true).ok());
  ASSERT_TRUE(pool_->resize("a", 8ull << 20).ok());
  EXPECT_EQ(pool_->volume("a")->guaranteed_blocks, 128u);
  EXPECT_EQ(pool_->info().used_blocks, 128u);
  ASSERT_TRUE(pool_->resize("a", 2ull << 20).ok());
  EXPECT_EQ(pool_->volume("a")->guaranteed_blocks, 32u);
  EXPECT_EQ(pool_->info().used_blocks, 32u);
  EXPECT_EQ(pool_->resize("a", 100ull << 20).error().code, Errc::kNoSpace);
}

TEST_F(SpaceTest, WriteZeroesWithNoHoleProvisions) {
  ASSERT_TRUE(pool_->create_volume("a", 4ull << 20).ok());
  ASSERT_TRUE(pool_->write(dev("a"), 0, bytes(pattern(4ull << 20, 40))).ok());
  ASSERT_TRUE(pool_->provision_zero(dev("a"), 100, 3 * kB).ok());
  std::string got = read("a", 0, 4 * kB);
  EXPECT_EQ(got.substr(100, 3 * kB), std::string(3 * kB, '\0'));
  EXPECT_NE(got.substr(0, 100), std::string(100, '\0'));
  EXPECT_EQ(pool_->volume("a")->guaranteed_blocks, 4u);
}

TEST_F(SpaceTest, LowWaterMarkReportedOncePerCrossing) {
  std::string marker = tmp_.file("events");
  ASSERT_TRUE(pool_->set_low_water(25, "echo \"$THINPOOL_EVENT\" >> " + marker).ok());
  ASSERT_TRUE(pool_->create_volume("a", 64ull << 20).ok());
  std::string blk = pattern(kB, 50);
  // 1024 blocks, mark at 256 unreserved: cross it, stay below, come back, cross again.
  for (uint64_t b = 0; b < 800; b++) ASSERT_TRUE(pool_->write(dev("a"), b * kB, bytes(blk)).ok());
  EXPECT_EQ(pool_->info().state, PoolState::kLow);
  EXPECT_EQ(pool_->info().low_water_crossings, 1u);
  ASSERT_TRUE(pool_->trim(dev("a"), 0, 400 * kB).ok());
  EXPECT_EQ(pool_->info().state, PoolState::kOk);
  for (uint64_t b = 0; b < 400; b++) {
    auto w = pool_->write(dev("a"), b * kB, bytes(blk));
    ASSERT_TRUE(w.ok()) << b << ": " << w.error().to_string() << " unreserved "
                        << pool_->info().unreserved_blocks;
  }
  EXPECT_EQ(pool_->info().low_water_crossings, 2u);
  // The hook ran for each crossing (it runs asynchronously: wait a little).
  std::string events;
  for (int i = 0; i < 100 && events != "low\nlow\n"; i++) {
    ::usleep(20000);
    try {
      events = testing::read_file(marker);
    } catch (...) {
    }
  }
  EXPECT_EQ(events, "low\nlow\n");
  EXPECT_EQ(pool_->set_low_water(101, "").error().code, Errc::kInvalidArgument);
}

// What must not change when an operation is refused.
struct Observed {
  std::string dump;  // thin_dump of the committed metadata ("" without thin_dump)
  std::string catalog;
  uint64_t trans_id = 0, free = 0, reserved = 0;
};

// Space decisions at the exact boundary (SEMANTICS.md "Space decisions", issue 13): every
// operation that frees blocks and changes reservations in one step is decided on the state
// after it. With 0 blocks to spare it succeeds; one block short it fails with kNoSpace, the
// numbers (Error::space) say what was needed and what was available, and nothing changes:
// thin_dump of the committed metadata, the catalog and the accounting are the same before
// and after (also after a checkpoint, so nothing was left in the transaction either).
// Operations that can only give space back succeed on a full pool.
class SpaceBoundaryTest : public SpaceTest {
 protected:
  void write_blocks(const std::string& n, uint64_t first, uint64_t count, uint32_t seed) {
    auto w = pool_->write(dev(n), first * kB, bytes(pattern(count * kB, seed)));
    ASSERT_TRUE(w.ok()) << n << ": " << w.error().to_string();
  }
  std::string content(const std::string& n) { return read(n, 0, *pool_->size_of(dev(n))); }
  uint64_t unreserved() { return pool_->info().unreserved_blocks; }
  // A volume `filler` takes unreserved blocks until exactly n are left.
  void leave_unreserved(uint64_t n) {
    if (!pool_->dev_id("filler").ok()) {
      ASSERT_TRUE(pool_->create_volume("filler", 64ull << 20).ok());
    }
    std::string blk = pattern(kB, 77);
    while (unreserved() > n) {
      ASSERT_LT(next_fill_, 1024u);
      ASSERT_TRUE(pool_->write(dev("filler"), next_fill_++ * kB, bytes(blk)).ok());
    }
    ASSERT_EQ(unreserved(), n);
  }
  Observed state() {
    // A checkpoint: the metadata file then holds every change (a flush may leave mapping
    // changes in the journal only).
    EXPECT_TRUE(pool_->checkpoint().ok());
    Observed s;
    if (testing::have_tool("thin_dump")) {
      auto r = testing::run_cmd({"thin_dump", dir_ + "/metadata"});
      EXPECT_EQ(r.rc, 0) << r.err;
      s.dump = r.out;
    }
    for (const VolumeInfo& v : pool_->list()) {
      s.catalog += v.name + " " + std::to_string(v.size_bytes) + " " +
                   std::to_string(v.guaranteed_blocks) + " " + std::to_string(v.reserved_blocks) +
                   " " + std::to_string(v.mapped_blocks) + "\n";
    }
    PoolInfo i = pool_->info();
    s.trans_id = i.trans_id;
    s.free = i.free_blocks;
    s.reserved = i.reserved_blocks;
    return s;
  }
  static void expect_same(const Observed& a, const Observed& b) {
    EXPECT_EQ(a.dump, b.dump);
    EXPECT_EQ(a.catalog, b.catalog);
    EXPECT_EQ(a.trans_id, b.trans_id);
    EXPECT_EQ(a.free, b.free);
    EXPECT_EQ(a.reserved, b.reserved);
  }
  // A refusal with its numbers: need blocks needed, available blocks available.
  void expect_refused(const Result<void>& r, uint64_t need, uint64_t available, SpaceFor what_for,
                      const std::string& vol) {
    ASSERT_FALSE(r.ok()) << "should be refused one block short";
    const Error& e = r.error();
    ASSERT_EQ(e.code, Errc::kNoSpace) << e.to_string();
    ASSERT_TRUE(e.space.present()) << e.to_string();
    EXPECT_EQ(e.space.need, need) << e.to_string();
    EXPECT_EQ(e.space.available(), available) << e.to_string();
    EXPECT_EQ(e.space.unit_bytes, kB);
    EXPECT_EQ(e.space.what_for, what_for) << e.to_string();
    if (!vol.empty()) {
      EXPECT_EQ(e.space.dev, dev(vol)) << e.to_string();
    }
    // The message names both numbers, in blocks and in bytes.
    const std::string m = e.to_string();
    EXPECT_NE(m.find("needs " + std::to_string(need) + " block"), std::string::npos) << m;
    EXPECT_NE(m.find(std::to_string(need * kB) + " bytes"), std::string::npos) << m;
    EXPECT_NE(m.find(std::to_string(available) + " block"), std::string::npos) << m;
  }

  uint64_t next_fill_ = 0;
};

// --- rollback ---------------------------------------------------------------------------

// The scenario (scaled down): the rollback frees exactly what it needs reserved.
TEST_F(SpaceBoundaryTest, RollbackOnAFullPoolCountsTheBlocksItFrees) {
  ASSERT_TRUE(pool_->create_volume("base", 64 * kB, true).ok());
  write_blocks("base", 0, 64, 1);
  ASSERT_TRUE(pool_->snapshot("base", "base.next", true, 16 * kB).ok());
  ASSERT_TRUE(pool_->snapshot("base", "pre", false).ok());
  const std::string pre = content("pre");
  leave_unreserved(0);
  write_blocks("base", 0, 52, 2);  // guaranteed overwrites: they work on the full pool
  EXPECT_EQ(unreserved(), 0u);
  auto r = pool_->rollback("base", "pre");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(content("base"), pre);
  EXPECT_EQ(unreserved(), 0u);  // 0 blocks to spare
  EXPECT_EQ(pool_->volume("base")->reserved_blocks, 64u);
}

// base's 8 rewritten blocks and its block 0 are freed (9) while base reserves 9 more and
// pre, whose guaranteed block 0 becomes shared, 1 more: 10 needed, 9 freed.
class RollbackBoundary : public SpaceBoundaryTest {
 protected:
  void SetUp() override {
    SpaceBoundaryTest::SetUp();
    ASSERT_TRUE(pool_->create_volume("base", 16 * kB, true).ok());
    write_blocks("base", 0, 16, 1);
    ASSERT_TRUE(pool_->snapshot("base", "pre", true).ok());
    ASSERT_TRUE(pool_->provision("pre", 0, kB).ok());
    write_blocks("pre", 0, 1, 2);
    write_blocks("base", 1, 8, 3);
    pre_ = content("pre");
  }
  std::string pre_;
};

TEST_F(RollbackBoundary, WithNoBlockToSpareSucceeds) {
  leave_unreserved(1);
  auto r = pool_->rollback("base", "pre");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(content("base"), pre_);
  EXPECT_EQ(unreserved(), 0u);
}

TEST_F(RollbackBoundary, OneBlockShortIsRefusedAndChangesNothing) {
  leave_unreserved(0);
  const std::string base = content("base");
  Observed before = state();
  auto r = pool_->rollback("base", "pre");
  expect_refused(r, 10, 9, SpaceFor::kGuarantee, "base");
  EXPECT_EQ(r.error().space.freed, 9u);
  EXPECT_EQ(r.error().space.shared_with, dev("pre"));
  expect_same(before, state());
  EXPECT_EQ(content("base"), base);
  EXPECT_EQ(content("pre"), pre_);
}

TEST_F(RollbackBoundary, ARefusedRollbackLeavesThePoolUsable) {
  leave_unreserved(0);
  ASSERT_FALSE(pool_->rollback("base", "pre").ok());
  // The transaction was thrown away: later operations and writes work on the committed state.
  write_blocks("base", 9, 2, 4);  // guaranteed
  ASSERT_TRUE(pool_->trim(dev("filler"), 0, kB).ok());
  ASSERT_TRUE(pool_->flush().ok());
  ASSERT_TRUE(pool_->rollback("base", "pre").ok());
  EXPECT_EQ(content("base"), pre_);
}

TEST_F(RollbackBoundary, ARefusedRollbackReportsNoSpaceEvents) {
  leave_unreserved(0);
  int events = 0;
  pool_->set_event_listener([&](const PoolEvent&) { events++; });
  ASSERT_FALSE(pool_->rollback("base", "pre").ok());
  EXPECT_EQ(events, 0);
  EXPECT_EQ(pool_->info().state, PoolState::kFull);
}

TEST_F(RollbackBoundary, APlanChangesNothingAndSaysByHowMuch) {
  leave_unreserved(1);
  Observed before = state();
  SpacePlan plan;
  ASSERT_TRUE(pool_->rollback("base", "pre", &plan).ok());
  EXPECT_TRUE(plan.decided);
  EXPECT_TRUE(plan.fits());
  EXPECT_EQ(plan.need.need, 10u);
  EXPECT_EQ(plan.need.available(), 10u);
  EXPECT_EQ(plan.unreserved_after, 0u);
  expect_same(before, state());
  ASSERT_TRUE(pool_->write(dev("filler"), 1000 * kB, bytes(pattern(kB, 9))).ok());
  SpacePlan short_plan;
  expect_refused(pool_->rollback("base", "pre", &short_plan), 10, 9, SpaceFor::kGuarantee, "base");
  EXPECT_TRUE(short_plan.decided);
  EXPECT_FALSE(short_plan.fits());
}

// --- resize down ------------------------------------------------------------------------

// u (no guarantee, no reservation) shares its 10 blocks with snapshot s. Shrinking it to
// 8.5 blocks zeroes the cut half of block 8, a copy since the block is shared: one block,
// which only the shrink itself can free (block 9, when u rewrote it: then it is u's alone).
class ResizeBoundary : public SpaceBoundaryTest {
 protected:
  void SetUp() override {
    SpaceBoundaryTest::SetUp();
    ASSERT_TRUE(pool_->create_volume("u", 10 * kB).ok());
    write_blocks("u", 0, 10, 1);
    ASSERT_TRUE(pool_->snapshot("u", "s", false).ok());
  }
};

TEST_F(ResizeBoundary, ShrinkWithNoBlockToSpareSucceeds) {
  write_blocks("u", 9, 1, 2);
  const std::string s = content("s"), u = content("u");
  leave_unreserved(0);
  const uint64_t size = 8 * kB + kB / 2;
  auto r = pool_->resize("u", size);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(unreserved(), 0u);
  EXPECT_EQ(content("u"), u.substr(0, size));
  EXPECT_EQ(content("s"), s);
  // The cut bytes do not come back when it grows again.
  ASSERT_TRUE(pool_->trim(dev("filler"), 0, kB).ok());
  ASSERT_TRUE(pool_->flush().ok());
  ASSERT_TRUE(pool_->resize("u", 10 * kB).ok());
  EXPECT_EQ(content("u"), u.substr(0, size) + std::string(10 * kB - size, '\0'));
}

TEST_F(ResizeBoundary, ShrinkOneBlockShortIsRefusedAndChangesNothing) {
  const std::string u = content("u");
  leave_unreserved(0);
  Observed before = state();
  expect_refused(pool_->resize("u", 8 * kB + kB / 2), 1, 0, SpaceFor::kWrite, "u");
  expect_same(before, state());
  EXPECT_EQ(content("u"), u);
}

TEST_F(ResizeBoundary, AlignedShrinkNeedsNothing) {
  leave_unreserved(0);
  ASSERT_TRUE(pool_->resize("u", 8 * kB).ok());
  EXPECT_EQ(*pool_->size_of(dev("u")), 8 * kB);
}

// --- merge ------------------------------------------------------------------------------

// base (16 blocks, guaranteed to its end, all shared with pre) takes next, which rewrote 2
// blocks and grew to 20: base's reservation becomes 14 shared + 4 new blocks, 2 more than
// its 16. The guarantee grows with it when that fits, and keeps its old extent otherwise
// (the merge itself never needs space: it only frees).
class MergeBoundary : public SpaceBoundaryTest {
 protected:
  void SetUp() override {
    SpaceBoundaryTest::SetUp();
    ASSERT_TRUE(pool_->create_volume("base", 16 * kB, true).ok());
    write_blocks("base", 0, 16, 1);
    ASSERT_TRUE(pool_->snapshot("base", "pre", false).ok());
    ASSERT_TRUE(pool_->snapshot("base", "next", true, 2 * kB).ok());
    write_blocks("next", 3, 2, 2);
    ASSERT_TRUE(pool_->resize("next", 20 * kB).ok());
    next_ = content("next");
  }
  std::string next_;
};

TEST_F(MergeBoundary, GrownGuaranteeWithNoBlockToSpareIsKept) {
  leave_unreserved(2);
  ASSERT_TRUE(pool_->merge("next", true).ok());
  EXPECT_EQ(content("base"), next_);
  EXPECT_EQ(pool_->volume("base")->guaranteed_blocks, 20u);
  EXPECT_EQ(unreserved(), 0u);
}

TEST_F(MergeBoundary, GrownGuaranteeOneBlockShortKeepsTheOldExtent) {
  leave_unreserved(1);
  ASSERT_TRUE(pool_->merge("next", true).ok());
  EXPECT_EQ(content("base"), next_);
  EXPECT_EQ(pool_->volume("base")->guaranteed_blocks, 16u);
  EXPECT_EQ(unreserved(), 3u);  // base's 2 own blocks need no reservation now
}

TEST_F(MergeBoundary, MergeOnAFullPoolSucceeds) {
  leave_unreserved(0);
  ASSERT_TRUE(pool_->merge("next").ok());
  EXPECT_EQ(content("base"), next_.substr(0, 16 * kB));
  // base's copies of the 2 blocks next rewrote are its alone: no reservation for them.
  EXPECT_EQ(unreserved(), 2u);
}

// --- operations that only give space back: fine on a full pool -------------------------

class FullPoolWithSnapshot : public SpaceBoundaryTest {
 protected:
  void SetUp() override {
    SpaceBoundaryTest::SetUp();
    ASSERT_TRUE(pool_->create_volume("base", 16 * kB, true).ok());
    write_blocks("base", 0, 16, 1);
    ASSERT_TRUE(pool_->snapshot("base", "pre", true, 3 * kB).ok());  // base reserves 16
    leave_unreserved(0);
  }
};

TEST_F(FullPoolWithSnapshot, RemoveReleasesWhatTheSnapshotForced) {
  ASSERT_TRUE(pool_->remove("pre", false).ok());
  EXPECT_EQ(unreserved(), 16u + 3u);
}

TEST_F(FullPoolWithSnapshot, UnprovisionReleasesTheGuarantee) {
  ASSERT_TRUE(pool_->unprovision("base", 0, 16 * kB).ok());
  EXPECT_EQ(unreserved(), 16u);
}

TEST_F(FullPoolWithSnapshot, ReserveZeroReleasesTheReservation) {
  ASSERT_TRUE(pool_->reserve("pre", 0).ok());
  EXPECT_EQ(unreserved(), 3u);
}

TEST_F(FullPoolWithSnapshot, TrimOfAGuaranteedRangeKeepsItGuaranteed) {
  write_blocks("base", 0, 4, 2);  // base's own copies of 4 blocks
  PoolInfo before = pool_->info();
  ASSERT_TRUE(pool_->trim(dev("base"), 0, 4 * kB).ok());
  PoolInfo after = pool_->info();
  EXPECT_EQ(after.free_blocks, before.free_blocks + 4);
  EXPECT_EQ(after.reserved_blocks, before.reserved_blocks + 4);
  EXPECT_EQ(after.unreserved_blocks, 0u);
  write_blocks("base", 0, 4, 3);  // still guaranteed
}

// --- operations decided up front --------------------------------------------------------

TEST_F(SpaceBoundaryTest, ReserveAtTheBoundary) {
  ASSERT_TRUE(pool_->create_volume("v", 16 * kB).ok());
  leave_unreserved(5);
  ASSERT_TRUE(pool_->reserve("v", 5 * kB).ok());
  EXPECT_EQ(unreserved(), 0u);
  Observed before = state();
  expect_refused(pool_->reserve("v", 6 * kB), 1, 0, SpaceFor::kReservation, "v");
  expect_same(before, state());
}

TEST_F(SpaceBoundaryTest, SnapshotReserveAtTheBoundary) {
  ASSERT_TRUE(pool_->create_volume("v", 16 * kB).ok());
  leave_unreserved(5);
  Observed before = state();
  expect_refused(pool_->snapshot("v", "s", true, 6 * kB), 6, 5, SpaceFor::kReservation, "");
  expect_same(before, state());
  ASSERT_TRUE(pool_->snapshot("v", "s", true, 5 * kB).ok());
  EXPECT_EQ(unreserved(), 0u);
}

TEST_F(SpaceBoundaryTest, ProvisionDrawsOnTheVolumesOwnReservation) {
  ASSERT_TRUE(pool_->create_volume("v", 16 * kB).ok());
  ASSERT_TRUE(pool_->reserve("v", 2 * kB).ok());
  leave_unreserved(3);
  Observed before = state();
  auto r = pool_->provision("v", 0, 6 * kB);
  expect_refused(r, 6, 5, SpaceFor::kGuarantee, "v");
  EXPECT_EQ(r.error().space.own, 2u);
  expect_same(before, state());
  ASSERT_TRUE(pool_->provision("v", 0, 5 * kB).ok());
  EXPECT_EQ(unreserved(), 0u);
}

TEST_F(SpaceBoundaryTest, AWriteOnAFullPoolSaysWhatItNeeded) {
  ASSERT_TRUE(pool_->create_volume("v", 16 * kB).ok());
  leave_unreserved(0);
  expect_refused(pool_->write(dev("v"), 100, bytes(pattern(10, 1))), 1, 0, SpaceFor::kWrite, "v");
}

// --- update: the snapshot it takes frees nothing; the merge only frees ----------------

class UpdateBoundary : public SpaceBoundaryTest {
 protected:
  void SetUp() override {
    SpaceBoundaryTest::SetUp();
    v1_ = pattern(16 * kB, 1);
    std::string v2 = v1_;
    for (uint64_t b : {2, 7, 11}) v2.replace(b * kB, kB, pattern(kB, 10 + b));
    v2_ = v2;
    testing::write_file(tmp_.file("v1.img"), v1_);
    testing::write_file(tmp_.file("v2.img"), v2_);
    int fa = -1, fb = -1;
    auto a = file_source(tmp_.file("v1.img"), &fa);
    auto b = file_source(tmp_.file("v2.img"), &fb);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_TRUE(write_delta(tmp_.file("d"), *a, *b, 4096).ok());
    ::close(fa);
    ::close(fb);
    ASSERT_TRUE(pool_->create_volume("base", v1_.size()).ok());
    ASSERT_TRUE(pool_->write(dev("base"), 0, bytes(v1_)).ok());
  }
  std::string v1_, v2_;
};

TEST_F(UpdateBoundary, WithNoBlockToSpareSucceeds) {
  leave_unreserved(3);
  auto r = apply_update(*pool_, "base", tmp_.file("d"), false);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(content("base"), v2_);
}

TEST_F(UpdateBoundary, OneBlockShortIsRefusedAndChangesNothing) {
  leave_unreserved(2);
  Observed before = state();
  auto r = apply_update(*pool_, "base", tmp_.file("d"), false);
  ASSERT_FALSE(r.ok());
  Result<void> e = r.error();
  expect_refused(e, 3, 2, SpaceFor::kReservation, "");
  expect_same(before, state());
  EXPECT_EQ(content("base"), v1_);
}

}  // namespace
}  // namespace tp::thin
