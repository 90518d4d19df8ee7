// Guaranteed space (docs/SEMANTICS.md): provisioning, reservations, snapshots with a write
// budget, merge, rollback, and the pool states. Every test ends with check + thin_check.
#include <gtest/gtest.h>
#include <unistd.h>

#include <random>

#include "support/test_util.h"
#include "thin/pool.h"

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

}  // namespace
}  // namespace tp::thin
