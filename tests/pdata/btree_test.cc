#include "pdata/btree.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "io/block_device.h"
#include "pdata/checker.h"
#include "pdata/thin_metadata.h"

namespace tp::pdata {
namespace {

// A metadata device with one thin device; the bottom-level tree is the B-tree under test,
// and check_metadata() verifies shape and every reference count.
class BtreeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dev_ = io::make_mem_device(64ull << 20);
    auto md = ThinMetadata::format(*dev_, 128, 1 << 20);
    ASSERT_TRUE(md.ok()) << md.error().to_string();
    md_ = std::move(*md);
    ASSERT_TRUE(md_->create_thin(1).ok());
  }
  void reopen() {
    ASSERT_TRUE(md_->commit().ok());
    md_.reset();
    auto md = ThinMetadata::open(*dev_);
    ASSERT_TRUE(md.ok()) << md.error().to_string();
    md_ = std::move(*md);
  }
  void expect_model(uint64_t dev, const std::map<uint64_t, uint64_t>& model) {
    std::map<uint64_t, uint64_t> got;
    auto r = md_->walk(dev, 0, ~uint64_t{0}, [&](uint64_t k, const Mapping& m) -> Result<bool> {
      got[k] = m.data_block;
      return true;
    });
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    ASSERT_EQ(got, model);
  }
  void expect_consistent() {
    auto rep = check_metadata(*md_);
    ASSERT_TRUE(rep.ok()) << rep.error().to_string();
    ASSERT_TRUE(rep->ok()) << rep->damage.front();
  }
  uint64_t map_new(uint64_t dev, uint64_t vb) {
    auto b = md_->alloc_data_block();
    EXPECT_TRUE(b.ok());
    EXPECT_TRUE(md_->insert(dev, vb, *b).ok());
    return *b;
  }

  std::unique_ptr<io::BlockDevice> dev_;
  std::unique_ptr<ThinMetadata> md_;
};

TEST_F(BtreeTest, InsertLookupAcrossManySplits) {
  std::map<uint64_t, uint64_t> model;
  std::mt19937_64 rng(1);
  for (int i = 0; i < 20000; i++) {
    uint64_t k = rng() % 1000000;
    if (model.count(k)) continue;
    model[k] = map_new(1, k);
  }
  expect_model(1, model);
  for (auto [k, v] : model) {
    auto m = md_->lookup(1, k);
    ASSERT_TRUE(m.ok() && m->has_value());
    ASSERT_EQ((*m)->data_block, v);
  }
  auto miss = md_->lookup(1, 1000001);
  ASSERT_TRUE(miss.ok());
  EXPECT_FALSE(miss->has_value());
  reopen();
  expect_model(1, model);
  expect_consistent();
}

TEST_F(BtreeTest, RemoveRebalancesAndKeepsFill) {
  std::map<uint64_t, uint64_t> model;
  for (uint64_t k = 0; k < 30000; k++) model[k * 3] = map_new(1, k * 3);
  reopen();
  std::mt19937_64 rng(2);
  std::vector<uint64_t> keys;
  for (auto& [k, v] : model) keys.push_back(k);
  std::shuffle(keys.begin(), keys.end(), rng);
  for (size_t i = 0; i < keys.size(); i++) {
    auto r = md_->remove(1, keys[i]);
    ASSERT_TRUE(r.ok() && *r) << i;
    model.erase(keys[i]);
    if (i % 7000 == 0) {
      reopen();
      expect_consistent();
      expect_model(1, model);
    }
  }
  reopen();
  expect_consistent();
  expect_model(1, model);
  EXPECT_EQ(md_->nr_free_data_blocks(), md_->nr_data_blocks());
}

TEST_F(BtreeTest, RemoveOfAbsentKeyChangesNothing) {
  map_new(1, 5);
  reopen();
  auto before = md_->bm().stats().writes;
  auto r = md_->remove(1, 6);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
  EXPECT_EQ(md_->bm().stats().writes, before);
}

TEST_F(BtreeTest, SharedTreeIsCopiedOnWriteNotModified) {
  std::map<uint64_t, uint64_t> a;
  for (uint64_t k = 0; k < 5000; k++) a[k] = map_new(1, k);
  ASSERT_TRUE(md_->create_snap(2, 1).ok());
  std::map<uint64_t, uint64_t> b = a;
  // Overwrite half of the origin with new blocks, remove some of the snapshot.
  for (uint64_t k = 0; k < 5000; k += 2) a[k] = map_new(1, k);
  for (uint64_t k = 1; k < 5000; k += 3) {
    ASSERT_TRUE(md_->remove(2, k).ok());
    b.erase(k);
  }
  expect_model(1, a);
  expect_model(2, b);
  reopen();
  expect_consistent();
  expect_model(1, a);
  expect_model(2, b);
  // Sharing is exact: untouched blocks are shared, rewritten ones are not.
  auto m = md_->lookup(1, 3);
  ASSERT_TRUE(m.ok() && m->has_value());
  EXPECT_TRUE((*m)->shared);
  m = md_->lookup(1, 2);
  ASSERT_TRUE(m.ok() && m->has_value());
  EXPECT_FALSE((*m)->shared);
  // Deleting the origin leaves the snapshot intact and frees only the origin's own blocks.
  ASSERT_TRUE(md_->delete_device(1).ok());
  reopen();
  expect_consistent();
  expect_model(2, b);
  EXPECT_EQ(md_->nr_data_blocks() - md_->nr_free_data_blocks(), b.size());
}

TEST_F(BtreeTest, ReferenceCountsAboveTwoUseTheOverflowTree) {
  map_new(1, 0);
  for (uint64_t s = 2; s < 8; s++) ASSERT_TRUE(md_->create_snap(s, 1).ok());
  // Touch every snapshot so each shadows the shared leaf and the data block count climbs.
  for (uint64_t s = 2; s < 8; s++) map_new(s, 100);
  reopen();
  expect_consistent();
  auto m = md_->lookup(1, 0);
  ASSERT_TRUE(m.ok() && m->has_value());
  auto c = md_->data_ref_count((*m)->data_block);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, 7u);
  for (uint64_t s = 2; s < 8; s++) ASSERT_TRUE(md_->delete_device(s).ok());
  reopen();
  expect_consistent();
  c = md_->data_ref_count((*m)->data_block);
  EXPECT_EQ(*c, 1u);
}

}  // namespace
}  // namespace tp::pdata

namespace tp::pdata {
namespace {

TEST(SpaceMapReuse, FreedDataBlockWaitsForTheCommitEvenIfNeverCommitted) {
  // A freed data block is handed out again only after the commit that follows (the pool
  // punches it first, and requests that may still touch it finish): also one allocated and
  // freed in the same transaction.
  auto dev = io::make_mem_device(8 << 20);
  auto md = std::move(*ThinMetadata::format(*dev, 128, 100));
  ASSERT_TRUE(md->create_thin(1).ok());
  ASSERT_TRUE(md->commit().ok());
  for (uint64_t vb = 0; vb < 100; vb++)
    ASSERT_TRUE(md->insert(1, vb, *md->alloc_data_block()).ok());
  EXPECT_EQ(md->alloc_data_block().error().code, Errc::kNoSpace);
  for (uint64_t vb = 0; vb < 40; vb++) ASSERT_TRUE(md->remove(1, vb).ok());
  EXPECT_EQ(md->alloc_data_block().error().code, Errc::kNoSpace);
  EXPECT_EQ(md->data_sm().nr_pending_free(), 40u);
  EXPECT_EQ(md->nr_free_data_blocks(), 40u);
  ASSERT_TRUE(md->commit().ok());
  EXPECT_EQ(md->data_sm().nr_pending_free(), 0u);
  for (uint64_t vb = 0; vb < 40; vb++) {
    auto b = md->alloc_data_block();
    ASSERT_TRUE(b.ok()) << vb;
    ASSERT_TRUE(md->insert(1, vb, *b).ok());
  }
  ASSERT_TRUE(md->commit().ok());
  // Committed blocks freed now wait for the next commit.
  for (uint64_t vb = 0; vb < 10; vb++) ASSERT_TRUE(md->remove(1, vb).ok());
  EXPECT_EQ(md->alloc_data_block().error().code, Errc::kNoSpace);
  EXPECT_EQ(md->data_sm().nr_pending_free(), 10u);
  ASSERT_TRUE(md->commit().ok());
  EXPECT_TRUE(md->alloc_data_block().ok());
}

TEST(SpaceMapReuse, HeldBlockIsFreeOnDiskButNotHandedOut) {
  auto dev = io::make_mem_device(8 << 20);
  auto md = std::move(*ThinMetadata::format(*dev, 128, 4));
  ASSERT_TRUE(md->create_thin(1).ok());
  auto held = md->hold_data_block();
  ASSERT_TRUE(held.ok());
  EXPECT_EQ(md->nr_free_data_blocks(), 3u);
  // A commit cut while it is held sees it free (no leak for thin_check), and nobody else
  // gets it.
  ASSERT_TRUE(md->commit().ok());
  EXPECT_EQ(md->superblock().data_sm_root.nr_allocated, 0u);
  for (int i = 0; i < 3; i++) {
    auto b = md->alloc_data_block();
    ASSERT_TRUE(b.ok());
    EXPECT_NE(*b, *held);
  }
  EXPECT_EQ(md->alloc_data_block().error().code, Errc::kNoSpace);
  ASSERT_TRUE(md->insert_held(1, 7, *held).ok());
  EXPECT_EQ(*md->data_ref_count(*held), 1u);
  ASSERT_TRUE(md->commit().ok());
  EXPECT_EQ(md->superblock().data_sm_root.nr_allocated, 4u);  // the three others and it
}

TEST(SpaceMapReuse, ReleasedHeldBlockIsFreeAgain) {
  auto dev = io::make_mem_device(8 << 20);
  auto md = std::move(*ThinMetadata::format(*dev, 128, 1));
  auto held = md->hold_data_block();
  ASSERT_TRUE(held.ok());
  EXPECT_EQ(md->alloc_data_block().error().code, Errc::kNoSpace);
  md->release_held(*held);
  EXPECT_EQ(md->nr_free_data_blocks(), 1u);
  EXPECT_EQ(*md->alloc_data_block(), *held);
}

TEST(SpaceMapReuse, NextTransactionNeverReusesWhatTheCommitInFlightReferences) {
  // begin_commit / end_commit with work in between (a commit overlapping the next
  // transaction): a block freed after the cut stays unusable until the commit after.
  auto dev = io::make_mem_device(8 << 20);
  auto md = std::move(*ThinMetadata::format(*dev, 128, 4));
  ASSERT_TRUE(md->create_thin(1).ok());
  for (uint64_t vb = 0; vb < 4; vb++) ASSERT_TRUE(md->insert(1, vb, *md->alloc_data_block()).ok());
  ASSERT_TRUE(md->commit().ok());
  ASSERT_TRUE(md->remove(1, 0).ok());  // before the cut
  auto t = md->begin_commit();
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(md->remove(1, 1).ok());  // after the cut: belongs to the next transaction
  EXPECT_EQ(md->alloc_data_block().error().code, Errc::kNoSpace);
  ASSERT_TRUE(md->write_commit(*t).ok());
  md->end_commit(*t, true);
  md->release_freed(*t);
  auto b = md->alloc_data_block();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(md->alloc_data_block().error().code, Errc::kNoSpace);  // the other one waits
  ASSERT_TRUE(md->commit().ok());
  EXPECT_TRUE(md->alloc_data_block().ok());
}

}  // namespace
}  // namespace tp::pdata
