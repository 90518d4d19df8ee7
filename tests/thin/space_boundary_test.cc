// Space decisions at the exact boundary (SEMANTICS.md "Operations", issue 13): every
// operation that frees blocks and changes reservations in one step is decided on the state
// after it. With 0 blocks to spare it succeeds; one block short it fails with kNoSpace, the
// numbers (Error::space) say what was needed and what was available, and nothing changes:
// thin_dump of the committed metadata, the catalog and the accounting are the same before
// and after (also after a flush, so nothing was left in the transaction either).
// Operations that can only give space back succeed on a full pool.
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

std::string pattern(uint64_t len, uint32_t seed) {
  std::string s(len, '\0');
  std::mt19937 rng(seed);
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// What must not change when an operation is refused.
struct Observed {
  std::string dump;  // thin_dump of the committed metadata ("" without thin_dump)
  std::string catalog;
  uint64_t trans_id = 0, free = 0, reserved = 0;
};

class SpaceBoundaryTest : public ::testing::Test {
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
  }

  uint64_t dev(const std::string& n) { return *pool_->dev_id(n); }
  void write_blocks(const std::string& n, uint64_t first, uint64_t count, uint32_t seed) {
    auto w = pool_->write(dev(n), first * kB, bytes(pattern(count * kB, seed)));
    ASSERT_TRUE(w.ok()) << n << ": " << w.error().to_string();
  }
  std::string content(const std::string& n) {
    std::string s(*pool_->size_of(dev(n)), '\0');
    auto r = pool_->read(dev(n), 0, {reinterpret_cast<std::byte*>(s.data()), s.size()});
    EXPECT_TRUE(r.ok()) << r.error().to_string();
    return s;
  }
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
    EXPECT_TRUE(pool_->flush().ok());
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

  TempDir tmp_;
  std::string dir_;
  std::unique_ptr<Pool> pool_;
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
