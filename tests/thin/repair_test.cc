#include "thin/repair.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <random>

#include "pdata/btree.h"
#include "pdata/thin_metadata.h"
#include "support/test_util.h"
#include "thin/pool.h"

namespace tp::thin {
namespace {

using testing::TempDir;

constexpr uint32_t kB = 64 * 1024;
// Enough mappings for a three-level tree (leaves split in halves: ~126 entries each, and
// the root splits past 252 leaves).
constexpr uint64_t kBigBlocks = 40000;

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::string tag(const std::string& vol, uint64_t vb) {
  return vol + ":" + std::to_string(vb) + ";";
}

// A pool with:
//   big   kBigBlocks mapped blocks (a three-level mapping tree), tagged every 97th block;
//   small 20 tagged blocks; snap, a snapshot of small, after which small's block 0 changed;
//   g     4 provisioned (guaranteed) tagged blocks.
class RepairTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.file("pool");
    {
      PoolOptions o;
      o.data_bytes = (kBigBlocks + 200) * uint64_t{kB};
      o.block_bytes = kB;
      auto p = Pool::create(dir_, o);
      ASSERT_TRUE(p.ok()) << p.error().to_string();
      Pool& pool = **p;
      ASSERT_TRUE(pool.create_volume("big", kBigBlocks * kB).ok());
      ASSERT_TRUE(pool.create_volume("small", 32 * kB).ok());
      ASSERT_TRUE(pool.create_volume("g", 4 * kB, /*provision=*/true).ok());
      for (uint64_t vb = 0; vb < 20; vb++) put(pool, "small", vb);
      ASSERT_TRUE(pool.snapshot("small", "snap", false).ok());
      tags_["snap"] = tags_["small"];
      put(pool, "small", 0, "small:0:new;");
      for (uint64_t vb = 0; vb < 4; vb++) put(pool, "g", vb);
      for (uint64_t vb = 0; vb < kBigBlocks; vb += 97) put(pool, "big", vb);
      big_dev_ = *pool.dev_id("big");
      small_dev_ = *pool.dev_id("small");
      ASSERT_TRUE(pool.close().ok());
    }
    // The rest of big's blocks are mapped straight in the metadata (they read as zeros):
    // a pool-level write per block would make the fixture slow. Same transaction id, so
    // the catalog still matches.
    auto dev = io::open_file(meta());
    ASSERT_TRUE(dev.ok());
    auto md = pdata::ThinMetadata::open(**dev);
    ASSERT_TRUE(md.ok()) << md.error().to_string();
    for (uint64_t vb = 0; vb < kBigBlocks; vb++) {
      if (vb % 97 == 0) continue;
      auto b = (*md)->alloc_data_block();
      ASSERT_TRUE(b.ok());
      ASSERT_TRUE((*md)->insert(big_dev_, vb, *b).ok());
    }
    ASSERT_TRUE((*md)->commit().ok());
    sb_ = (*md)->superblock();
    big_root_ = *(*md)->device_root(big_dev_);
    small_root_ = *(*md)->device_root(small_dev_);
  }

  void put(Pool& pool, const std::string& vol, uint64_t vb, std::string s = "") {
    if (s.empty()) s = tag(vol, vb);
    auto dev = pool.dev_id(vol);
    ASSERT_TRUE(dev.ok());
    ASSERT_TRUE(pool.write(*dev, vb * kB, as_bytes(s)).ok());
    tags_[vol][vb] = s;
  }

  std::string meta() const { return dir_ + "/metadata"; }

  std::vector<std::byte> block(uint64_t b) {
    std::vector<std::byte> buf(pdata::kBlockSize);
    int fd = ::open(meta().c_str(), O_RDONLY);
    EXPECT_EQ(::pread(fd, buf.data(), buf.size(), static_cast<off_t>(b * pdata::kBlockSize)),
              static_cast<ssize_t>(buf.size()));
    ::close(fd);
    return buf;
  }
  pdata::NodeView node(std::vector<std::byte>& buf) { return pdata::NodeView(buf.data()); }

  // Scribbles over a metadata block: its checksum no longer matches.
  void corrupt(uint64_t b) {
    int fd = ::open(meta().c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    std::string junk(64, '\xa5');
    ASSERT_EQ(
        ::pwrite(fd, junk.data(), junk.size(), static_cast<off_t>(b * pdata::kBlockSize + 200)),
        64);
    ::close(fd);
  }

  // Every tag reads back, except in the given lost virtual block ranges of `lost_vol`
  // (which read as zeros); volumes in `gone` no longer exist.
  void verify(const std::string& lost_vol = "", std::vector<LostRange> lost = {},
              std::vector<std::string> gone = {}) {
    std::map<std::string, std::vector<LostRange>> by_vol;
    if (!lost_vol.empty()) by_vol[lost_vol] = lost;
    verify_each(by_vol, gone);
  }

  // What the report says was lost is exactly what does not read back.
  void verify_report(const RepairReport& r) {
    std::map<std::string, std::vector<LostRange>> by_vol;
    std::vector<std::string> gone;
    for (auto& d : r.devices) by_vol[d.volume] = d.lost_ranges;
    for (auto& l : r.lost) gone.push_back(l.volume);
    verify_each(by_vol, gone);
  }

  void verify_each(const std::map<std::string, std::vector<LostRange>>& lost_by_vol,
                   const std::vector<std::string>& gone) {
    auto p = Pool::open(dir_);
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    Pool& pool = **p;
    auto c = pool.check();
    ASSERT_TRUE(c.ok()) << c.error().to_string();
    ASSERT_TRUE(c->ok()) << c->damage.front();
    for (auto& [vol, tags] : tags_) {
      auto dev = pool.dev_id(vol);
      if (std::find(gone.begin(), gone.end(), vol) != gone.end()) {
        EXPECT_FALSE(dev.ok()) << vol << " should be gone";
        continue;
      }
      ASSERT_TRUE(dev.ok()) << vol;
      for (auto& [block_nr, want] : tags) {
        const uint64_t vb = block_nr;
        std::string got(want.size(), '?');
        ASSERT_TRUE(
            pool.read(*dev, vb * kB, {reinterpret_cast<std::byte*>(got.data()), got.size()}).ok());
        auto lost = lost_by_vol.find(vol);
        bool in_lost = lost != lost_by_vol.end() &&
                       std::any_of(lost->second.begin(), lost->second.end(),
                                   [&](auto& r) { return vb >= r.begin && vb < r.end; });
        EXPECT_EQ(got, in_lost ? std::string(want.size(), '\0') : want) << vol << " block " << vb;
      }
    }
    ASSERT_TRUE(pool.close().ok());
    EXPECT_EQ(testing::thin_check(meta()), "");
  }

  const RepairedDevice* find(const RepairReport& r, uint64_t dev) {
    for (auto& d : r.devices) {
      if (d.dev_id == dev) return &d;
    }
    return nullptr;
  }

  TempDir tmp_;
  std::string dir_;
  std::map<std::string, std::map<uint64_t, std::string>> tags_;
  uint64_t big_dev_ = 0, small_dev_ = 0;
  uint64_t big_root_ = 0, small_root_ = 0;
  pdata::Superblock sb_;
};

TEST_F(RepairTest, CleanPoolRebuildKeepsEverything) {
  auto r = repair_pool(dir_);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->devices.size(), 4u);
  EXPECT_TRUE(r->lost.empty());
  EXPECT_TRUE(r->damage.empty());
  EXPECT_EQ(r->mappings_lost, 0u);
  EXPECT_EQ(r->mappings, kBigBlocks + 20 + 20 + 4);
  EXPECT_EQ(r->new_trans_id, sb_.trans_id + 1);
  EXPECT_TRUE(std::filesystem::exists(r->damaged_metadata));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/metadata.repaired"));
  verify();
}

TEST_F(RepairTest, CorruptLeafLosesOnlyItsRange) {
  auto root = block(big_root_);
  auto mid = block(node(root).value64(1));  // second child of the root: internal
  ASSERT_FALSE(node(mid).is_leaf()) << "fixture should give a three-level tree";
  const uint64_t leaf = node(mid).value64(2);
  auto lb = block(leaf);
  ASSERT_TRUE(node(lb).is_leaf());
  const uint64_t lo = node(mid).key(2), hi = node(mid).key(3), n = node(lb).nr_entries();
  corrupt(leaf);
  auto r = repair_pool(dir_);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(r->lost.empty());
  auto* d = find(*r, big_dev_);
  ASSERT_TRUE(d);
  ASSERT_EQ(d->lost_ranges.size(), 1u);
  EXPECT_EQ(d->lost_ranges[0].begin, lo);
  EXPECT_EQ(d->lost_ranges[0].end, hi);
  EXPECT_EQ(d->mappings_lost, n);
  EXPECT_EQ(d->mappings, kBigBlocks - n);
  EXPECT_EQ(r->mappings_lost, n);
  EXPECT_FALSE(r->damage.empty());
  verify("big", {{lo, hi}});
}

TEST_F(RepairTest, CorruptInternalNodeLosesItsSubtree) {
  auto root = block(big_root_);
  ASSERT_GE(node(root).nr_entries(), 2u);
  const uint64_t mid = node(root).value64(0);
  auto mb = block(mid);
  ASSERT_FALSE(node(mb).is_leaf());
  const uint64_t hi = node(root).key(1);
  corrupt(mid);
  auto r = repair_pool(dir_);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto* d = find(*r, big_dev_);
  ASSERT_TRUE(d);
  ASSERT_EQ(d->lost_ranges.size(), 1u);
  EXPECT_EQ(d->lost_ranges[0].begin, 0u);
  EXPECT_EQ(d->lost_ranges[0].end, hi);
  EXPECT_EQ(d->mappings, kBigBlocks - hi);  // big maps every block
  EXPECT_EQ(d->mappings_lost, hi);
  verify("big", {{0, hi}});
}

TEST_F(RepairTest, CorruptDeviceDetailsRebuildsThem) {
  auto details_root = block(sb_.device_details_root);
  ASSERT_TRUE(node(details_root).is_leaf());
  corrupt(sb_.device_details_root);
  auto r = repair_pool(dir_);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(r->lost.empty());
  EXPECT_EQ(r->devices.size(), 4u);
  for (auto& d : r->devices) EXPECT_TRUE(d.details_rebuilt) << d.dev_id;
  EXPECT_EQ(r->mappings_lost, 0u);
  verify();
}

TEST_F(RepairTest, CorruptSpaceMapsAreRecomputed) {
  // The metadata space map's index, and the data space map's first bitmap.
  corrupt(sb_.metadata_sm_root.bitmap_root);
  auto data_index = block(sb_.data_sm_root.bitmap_root);
  ASSERT_TRUE(node(data_index).is_leaf());
  corrupt(pdata::load_le64(node(data_index).value(0)));
  EXPECT_FALSE(Pool::open(dir_).ok());
  auto r = repair_pool(dir_);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(r->damage.empty());
  EXPECT_TRUE(r->lost.empty());
  EXPECT_EQ(r->mappings_lost, 0u);
  EXPECT_EQ(r->mappings, kBigBlocks + 20 + 20 + 4);
  verify();
}

TEST_F(RepairTest, CorruptMappingRootLosesThatDeviceOnly) {
  // small and snap no longer share small's root (small changed after the snapshot).
  corrupt(small_root_);
  auto r = repair_pool(dir_);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->lost.size(), 1u);
  EXPECT_EQ(r->lost[0].dev_id, small_dev_);
  EXPECT_EQ(r->lost[0].volume, "small");
  EXPECT_EQ(r->lost[0].mappings_lost, 20u);
  EXPECT_EQ(r->devices.size(), 3u);
  verify("", {}, {"small"});
}

TEST_F(RepairTest, CorruptSuperblockFailsClearlyAndChangesNothing) {
  corrupt(0);
  const std::string before = testing::read_file(meta());
  auto r = repair_pool(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kCorruption);
  EXPECT_NE(std::string(r.error().what).find("superblock"), std::string::npos);
  EXPECT_EQ(testing::read_file(meta()), before);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/metadata.repaired"));
}

TEST_F(RepairTest, RefusesWhileThePoolIsOpen) {
  auto p = Pool::open(dir_);
  ASSERT_TRUE(p.ok());
  auto r = repair_pool(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kBusy);
  ASSERT_TRUE((*p)->close().ok());
}

// Random damage anywhere but the superblock: the repair always succeeds, the result checks
// (ours and thin_check), and exactly what the report calls lost fails to read back.
TEST_F(RepairTest, RandomDamageRepairsToAConsistentPool) {
  const std::string pristine = tmp_.file("pristine");
  std::filesystem::copy_file(meta(), pristine);
  const std::string cat = tmp_.file("catalog");
  std::filesystem::copy_file(dir_ + "/catalog", cat);
  const auto tags = tags_;
  std::mt19937_64 rng(77);
  const int rounds = static_cast<int>(testing::scaled(6, 5));
  for (int round = 0; round < rounds; round++) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::filesystem::copy_file(pristine, meta(), std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(cat, dir_ + "/catalog",
                               std::filesystem::copy_options::overwrite_existing);
    for (auto& e : std::filesystem::directory_iterator(dir_)) {
      if (e.path().filename().string().starts_with("metadata.damaged-")) {
        std::filesystem::remove(e.path());
      }
    }
    tags_ = tags;
    // The trees and space maps of this fixture live in the first few hundred blocks.
    for (int k = 0; k < 3; k++) corrupt(1 + rng() % 400);
    auto r = repair_pool(dir_);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    verify_report(*r);
    if (HasFatalFailure()) return;
  }
}

// thin_repair (thin-provisioning-tools) as an oracle: the same devices and mappings survive.
TEST_F(RepairTest, AgreesWithThinRepair) {
  if (!testing::have_tool("thin_repair") || !testing::have_tool("thin_dump")) {
    GTEST_SKIP() << "thin_repair not installed";
  }
  auto root = block(big_root_);
  auto mid = block(node(root).value64(1));
  corrupt(node(mid).value64(2));
  const std::string theirs = tmp_.file("theirs");
  testing::write_file(theirs, "");
  ASSERT_EQ(::truncate(theirs.c_str(), static_cast<off_t>(std::filesystem::file_size(meta()))), 0);
  auto tr = testing::run_cmd({"thin_repair", "-i", meta(), "-o", theirs});
  ASSERT_EQ(tr.rc, 0) << tr.err;
  auto r = repair_pool(dir_);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto want = testing::thin_dump(theirs);
  auto got = testing::thin_dump(meta());
  ASSERT_TRUE(want && got);
  ASSERT_EQ(got->devices.size(), want->devices.size());
  for (size_t i = 0; i < got->devices.size(); i++) {
    EXPECT_EQ(got->devices[i].dev_id, want->devices[i].dev_id);
    EXPECT_EQ(got->devices[i].mapped_blocks, want->devices[i].mapped_blocks);
    EXPECT_EQ(got->devices[i].mappings, want->devices[i].mappings) << got->devices[i].dev_id;
  }
}

}  // namespace
}  // namespace tp::thin
