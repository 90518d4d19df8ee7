// The oracle tests of the persistent-data layer: we read what thin_restore writes, and
// thin_check / thin_dump accept what we write (DM_THIN_FORMAT.md §9).
#include "pdata/thin_metadata.h"

#include <gtest/gtest.h>

#include "io/faulty_device.h"
#include "pdata/checker.h"
#include "support/md_model.h"
#include "support/md_xml.h"
#include "support/test_util.h"

namespace tp::pdata {
namespace {

using testing::TempDir;
using testing::XmlPool;

std::unique_ptr<ThinMetadata> open_md(io::BlockDevice& dev) {
  auto md = ThinMetadata::open(dev);
  EXPECT_TRUE(md.ok()) << md.error().to_string();
  return md.ok() ? std::move(*md) : nullptr;
}

void expect_clean(ThinMetadata& md) {
  auto rep = check_metadata(md);
  ASSERT_TRUE(rep.ok()) << rep.error().to_string();
  ASSERT_TRUE(rep->ok()) << rep->damage.size() << " findings, first: " << rep->damage.front();
}

void read_restored(uint64_t seed, const testing::RandomPoolParams& params) {
  TempDir tmp;
  XmlPool pool = testing::random_pool(seed, params);
  std::string meta = tmp.file("meta");
  auto rr = testing::thin_restore(pool, meta, testing::metadata_bytes_for(pool));
  if (rr.rc == 127) GTEST_SKIP() << "thin_restore not installed";
  ASSERT_EQ(rr.rc, 0) << rr.err;
  auto dev = io::open_file(meta);
  ASSERT_TRUE(dev.ok());
  auto md = open_md(**dev);
  ASSERT_TRUE(md);
  XmlPool got = testing::read_pool(*md);
  EXPECT_EQ(testing::first_difference(testing::normalized_for_dump(pool), got), "");
  // Reference counts: thin_restore shares no nodes, so counts = mappings per block.
  auto want = testing::data_ref_counts(pool);
  for (auto [b, n] : want) {
    auto c = md->data_ref_count(b);
    ASSERT_TRUE(c.ok());
    ASSERT_EQ(*c, n) << "data block " << b;
  }
  EXPECT_EQ(md->data_sm().nr_allocated(), want.size());
  expect_clean(*md);
}

TEST(ThinMetadataOracle, ReadsWhatThinRestoreWrites) {
  for (uint64_t seed = 1; seed <= 6; seed++) read_restored(seed, {});
}

TEST(ThinMetadataOracle, ReadsLargeSharedPoolFromThinRestore) {
  testing::RandomPoolParams p;
  p.devices = 8;
  p.max_mappings_per_device = 40000;
  p.nr_data_blocks = 1 << 20;
  p.share_fraction = 0.4;
  read_restored(7, p);
}

// Random operations on real metadata, committed many times; after each checked commit the
// file passes thin_check and thin_dump equals the model.
void random_ops(uint64_t seed, int commits, int ops_per_commit, int check_every, uint64_t vspace,
                uint64_t meta_bytes) {
  TempDir tmp;
  std::string meta = tmp.file("meta");
  auto devr = io::create_file(meta, meta_bytes);
  ASSERT_TRUE(devr.ok());
  auto& dev = **devr;
  const uint64_t nr_data = 1 << 22;
  auto mdr = ThinMetadata::format(dev, 128, nr_data);
  ASSERT_TRUE(mdr.ok()) << mdr.error().to_string();
  auto md = std::move(*mdr);
  testing::MdModel model;
  model.pool.data_block_size = 128;
  model.pool.nr_data_blocks = nr_data;
  testing::RandomMdOps ops(seed, vspace);

  for (int c = 0; c < commits; c++) {
    for (int i = 0; i < ops_per_commit; i++) {
      auto r = ops.step(*md, model);
      ASSERT_TRUE(r.ok()) << r.error().to_string();
    }
    model.pool.transaction = c + 1;
    md->set_trans_id(c + 1);
    auto cr = md->commit();
    ASSERT_TRUE(cr.ok()) << cr.error().to_string();
    if ((c + 1) % check_every == 0 || c + 1 == commits) {
      ASSERT_EQ(testing::thin_check(meta), "") << "after commit " << c + 1;
      auto dumped = testing::thin_dump(meta);
      ASSERT_TRUE(dumped.has_value());
      ASSERT_EQ(testing::first_difference(model.pool, *dumped), "") << "after commit " << c + 1;
    }
  }
  // Reopen: our own reader and checker agree too.
  md.reset();
  auto md2 = open_md(dev);
  ASSERT_TRUE(md2);
  EXPECT_EQ(testing::first_difference(model.pool, testing::read_pool(*md2)), "");
  expect_clean(*md2);
}

TEST(ThinMetadataOracle, ThinCheckAcceptsEveryCommitOfRandomOps) {
  random_ops(11, static_cast<int>(testing::scaled(150, 4)), 100, 1, 5000, 8 << 20);
}

TEST(ThinMetadataOracle, ThinCheckAcceptsLargeTrees) {
  // Hundreds of thousands of keys: deep trees, many splits and merges, shared subtrees.
  random_ops(12, 40, 12000, 8, 1 << 20, 256 << 20);
}

TEST(ThinMetadataOracle, CloneByReferenceThenDiverge) {
  TempDir tmp;
  std::string meta = tmp.file("meta");
  auto devr = io::create_file(meta, 32 << 20);
  ASSERT_TRUE(devr.ok());
  auto mdr = ThinMetadata::format(**devr, 256, 100000);
  ASSERT_TRUE(mdr.ok());
  auto& md = **mdr;
  ASSERT_TRUE(md.create_thin(1).ok());
  for (uint64_t vb = 0; vb < 20000; vb++) {
    auto b = md.alloc_data_block();
    ASSERT_TRUE(b.ok() && md.insert(1, vb, *b).ok());
  }
  ASSERT_TRUE(md.commit().ok());
  uint64_t used = md.metadata_sm().nr_allocated();
  // A snapshot adds no tree nodes: it shares the origin's root.
  ASSERT_TRUE(md.create_snap(2, 1).ok());
  ASSERT_TRUE(md.commit().ok());
  EXPECT_LE(md.metadata_sm().nr_allocated(), used + 4);
  auto root1 = md.device_root(1), root2 = md.device_root(2);
  EXPECT_EQ(*root1, *root2);
  EXPECT_EQ(testing::thin_check(meta), "");
  auto dumped = testing::thin_dump(meta);
  ASSERT_TRUE(dumped.has_value());
  ASSERT_EQ(dumped->devices.size(), 2u);
  EXPECT_EQ(dumped->devices[0].mappings, dumped->devices[1].mappings);
}

// A change that fails half way (here a metadata read in the middle of B-tree inserts, with
// no cache so the reads reach the device) marks the transaction broken: commit() refuses it
// and the device keeps the last commit. An error found before anything changes does not.
TEST(ThinMetadataBroken, HalfDoneChangeIsNeverCommitted) {
  auto mem = io::make_mem_device(4 << 20);
  {
    auto md = ThinMetadata::format(*mem, 128, 10000);
    ASSERT_TRUE(md.ok());
    ASSERT_TRUE((*md)->create_thin(1).ok());
    for (uint64_t vb = 0; vb < 2000; vb++) {
      auto b = (*md)->alloc_data_block();
      ASSERT_TRUE(b.ok() && (*md)->insert(1, vb, *b).ok());
    }
    ASSERT_TRUE((*md)->commit().ok());
  }
  io::FaultyDevice dev(*mem);
  auto md = ThinMetadata::open(dev, 0);
  ASSERT_TRUE(md.ok()) << md.error().to_string();
  const uint64_t trans = (*md)->trans_id();
  EXPECT_EQ((*md)->create_thin(1).error().code, Errc::kExists);
  EXPECT_FALSE((*md)->broken()) << "a refused change is not a half-done one";
  EXPECT_EQ((*md)->lookup(1, 99999).ok(), true);
  dev.fail_nth_read(1);
  EXPECT_FALSE((*md)->lookup(1, 5).ok());
  EXPECT_FALSE((*md)->broken()) << "a failed lookup changes nothing";
  // Inserts until one meets the failing read (each reads its path from the device).
  dev.fail_nth_read(3);
  Result<void> r;
  for (uint64_t vb = 5000; vb < 5100 && r.ok(); vb++) {
    auto b = (*md)->alloc_data_block();
    ASSERT_TRUE(b.ok()) << b.error().to_string();
    r = (*md)->insert(1, vb, *b);
  }
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kIo);
  EXPECT_TRUE((*md)->broken());
  auto c = (*md)->commit();
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, Errc::kReadOnly);
  auto again = ThinMetadata::open(*mem);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->trans_id(), trans);
  auto lk = (*again)->lookup(1, 5000);
  ASSERT_TRUE(lk.ok());
  EXPECT_FALSE(lk->has_value());
  auto rep = check_metadata(**again);
  ASSERT_TRUE(rep.ok()) << rep.error().to_string();
  EXPECT_TRUE(rep->ok());
}

}  // namespace
}  // namespace tp::pdata
