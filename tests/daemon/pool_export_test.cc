// The daemon's adapters: GroupCommit (flushes share commits; background commits) and
// PoolCatalog/PoolTarget over a real pool in a temp dir.

#include "daemon/pool_export.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <thread>

#include "daemon/group_commit.h"
#include "nbd/protocol.h"
#include "support/test_util.h"

namespace tp::daemon {
namespace {

using ::tp::testing::TempDir;
using namespace std::chrono_literals;

TEST(GroupCommit, ConcurrentFlushesShareCommits) {
  std::atomic<int> commits{0};
  GroupCommit g([&]() -> Result<void> {
    commits++;
    std::this_thread::sleep_for(30ms);
    return {};
  });
  std::vector<std::thread> ts;
  std::atomic<int> ok{0};
  for (int i = 0; i < 16; i++) {
    ts.emplace_back([&] { ok += g.flush().ok(); });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(ok.load(), 16);
  EXPECT_GE(commits.load(), 1);
  EXPECT_LE(commits.load(), 8);  // 16 flushes, at most one commit running + one queued each round
}

TEST(GroupCommit, AFlushArrivingDuringACommitWaitsForTheNextOne) {
  std::mutex mu;
  std::condition_variable cv;
  bool release_first = false;
  std::atomic<int> started{0};
  GroupCommit g([&]() -> Result<void> {
    int n = ++started;
    if (n == 1) {
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return release_first; });
    }
    return {};
  });
  std::thread a([&] { EXPECT_TRUE(g.flush().ok()); });
  while (started.load() == 0) std::this_thread::yield();
  std::atomic<bool> b_done{false};
  std::thread b([&] {
    EXPECT_TRUE(g.flush().ok());
    b_done = true;
  });
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(b_done.load());
  {
    std::lock_guard lk(mu);
    release_first = true;
  }
  cv.notify_all();
  a.join();
  b.join();
  EXPECT_EQ(started.load(), 2);  // b needed a commit that began after it arrived
}

TEST(GroupCommit, FailuresReachEveryWaiter) {
  GroupCommit g([]() -> Result<void> { return make_error(Errc::kIo, "disk gone"); });
  auto r = g.flush();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kIo);
}

TEST(GroupCommit, BackgroundCommitsOnlyAfterWrites) {
  std::atomic<int> commits{0};
  GroupCommit g([&]() -> Result<void> {
    commits++;
    return {};
  });
  g.start_background(20ms, nullptr);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(commits.load(), 0);
  g.note_write();
  for (int i = 0; i < 200 && commits.load() == 0; i++) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(commits.load(), 1);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(commits.load(), 1);
  g.stop_background();
}

// With a background function, the background thread runs it (not the commit) and calls it
// again while it reports work left, even with no new writes.
TEST(GroupCommit, BackgroundFunctionRunsUntilItReportsNothingLeft) {
  std::atomic<int> commits{0}, background{0};
  GroupCommit g(
      [&]() -> Result<void> {
        commits++;
        return {};
      },
      [&]() -> Result<bool> { return ++background < 3; });
  g.start_background(20ms, nullptr);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(background.load(), 0);
  g.note_write();
  for (int i = 0; i < 300 && background.load() < 3; i++) std::this_thread::sleep_for(10ms);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(background.load(), 3);  // true, true, false: then it waits for a write
  EXPECT_EQ(commits.load(), 0);
  ASSERT_TRUE(g.flush().ok());
  EXPECT_EQ(commits.load(), 1);
  g.stop_background();
}

class PoolExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    thin::PoolOptions o;
    o.data_bytes = 64ull << 20;
    auto p = thin::Pool::create(tmp.path() + "/pool", o);
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    pool = std::move(*p);
    ASSERT_TRUE(pool->create_volume("vol", 8ull << 20).ok());
    std::vector<std::byte> data(B, std::byte{0x5a});
    ASSERT_TRUE(pool->write(*pool->dev_id("vol"), 0, data).ok());
    ASSERT_TRUE(pool->snapshot("vol", "snap", false).ok());
  }
  void TearDown() override {
    if (pool) {
      EXPECT_TRUE(pool->close().ok());
      EXPECT_EQ(::tp::testing::thin_check(tmp.path() + "/pool/metadata"), "");
    }
  }
  std::unique_ptr<nbd::BlockTarget> open(PoolCatalog& cat, const std::string& name) {
    auto t = cat.open(name);
    EXPECT_TRUE(t.ok());
    return t.ok() ? std::move(*t) : nullptr;
  }
  static constexpr uint64_t B = 64 * 1024;
  TempDir tmp;
  std::unique_ptr<thin::Pool> pool;
  GroupCommit commit{[this] { return pool->flush(); }};
};

TEST_F(PoolExportTest, EveryVolumeIsAnExportAndSnapshotsAreReadOnly) {
  PoolCatalog cat(*pool, commit, {}, "");
  auto l = cat.list();
  ASSERT_EQ(l.size(), 2u);
  EXPECT_EQ(cat.default_export(), "");  // two volumes, no --default
  auto snap = open(cat, "snap");
  EXPECT_TRUE(snap->read_only());
  EXPECT_TRUE(snap->can_multi_conn());
  EXPECT_EQ(snap->preferred_block_size(), B);
  std::vector<std::byte> d(512);
  EXPECT_EQ(snap->write(0, d, false).error().code, Errc::kReadOnly);
  EXPECT_EQ(nbd::to_nbd_error(snap->write(0, d, false).error()), nbd::kEPerm);
  EXPECT_EQ(cat.open("nope").error().code, Errc::kNotFound);
}

TEST_F(PoolExportTest, ExportNamesThatCannotNameAVolumeAreNotFound) {
  PoolCatalog cat(*pool, commit, {}, "");
  const std::string overlong(129, 'v');
  for (const std::string& bad :
       {std::string("../vol"), std::string("vol/"), std::string("/vol"), std::string("a/../vol"),
        std::string("."), std::string(".."), std::string("-vol"), std::string("vol\0x", 5),
        std::string("vol\n"), std::string(""), overlong, std::string(4096, 'x')}) {
    auto r = cat.open(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, Errc::kNotFound) << bad;
  }
  EXPECT_TRUE(cat.uses().empty());
  EXPECT_TRUE(cat.open("vol").ok());  // the real name still opens
}

TEST_F(PoolExportTest, ChosenExportsAndTheDefault) {
  PoolCatalog only(*pool, commit, {"vol"}, "");
  ASSERT_EQ(only.list().size(), 1u);
  EXPECT_EQ(only.default_export(), "vol");
  EXPECT_EQ(only.open("snap").error().code, Errc::kNotFound);
  PoolCatalog dflt(*pool, commit, {}, "snap");
  EXPECT_EQ(dflt.default_export(), "snap");
}

TEST_F(PoolExportTest, BlockStatusShowsUnmappedBlocksAsZeroHoles) {
  PoolCatalog cat(*pool, commit, {}, "");
  auto vol = open(cat, "vol");
  auto st = vol->block_status(0, 4 * B);
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(st->size(), 2u);
  EXPECT_EQ((*st)[0].length, B);
  EXPECT_EQ((*st)[0].flags, 0u);
  EXPECT_EQ((*st)[1].length, 3 * B);
  EXPECT_EQ((*st)[1].flags, nbd::kStateHole | nbd::kStateZero);
}

TEST_F(PoolExportTest, ReadSparseReturnsTheDataAndZeroHolesInOneCall) {
  PoolCatalog cat(*pool, commit, {}, "");
  auto vol = open(cat, "vol");
  // The last 4 KiB of the written first block, then 4 KiB of the unmapped second one.
  std::vector<std::byte> buf(8192, std::byte{0xee});
  std::vector<nbd::StatusExtent> ext{{1, 7}};  // stale content: cleared
  ASSERT_TRUE(vol->read_sparse(B - 4096, buf, ext).ok());
  ASSERT_EQ(ext.size(), 2u);
  EXPECT_EQ(ext[0].length, 4096u);
  EXPECT_EQ(ext[0].flags, 0u);
  EXPECT_EQ(ext[1].length, 4096u);
  EXPECT_EQ(ext[1].flags, nbd::kStateHole | nbd::kStateZero);
  EXPECT_TRUE(std::all_of(buf.begin(), buf.begin() + 4096,
                          [](std::byte b) { return b == std::byte{0x5a}; }));
  EXPECT_TRUE(
      std::all_of(buf.begin() + 4096, buf.end(), [](std::byte b) { return b == std::byte{0}; }));
  // All unmapped: zeros, one hole.
  std::fill(buf.begin(), buf.end(), std::byte{0xee});
  ASSERT_TRUE(vol->read_sparse(3 * B, buf, ext).ok());
  ASSERT_EQ(ext.size(), 1u);
  EXPECT_EQ(ext[0].flags, nbd::kStateHole | nbd::kStateZero);
  EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](std::byte b) { return b == std::byte{0}; }));
  // Past the end: the pool's error.
  EXPECT_EQ(vol->read_sparse(vol->size() - 100, buf, ext).error().code, Errc::kInvalidArgument);
}

// start_read + the file reads it hands out give what read_sparse (and read) give; the
// ticket keeps a volume operation waiting until it is finished, and a start_read that must
// not wait is kBusy meanwhile.
TEST_F(PoolExportTest, StartReadHandsOutTheFileReadsOfAReadAndPinsItsEpoch) {
  PoolCatalog cat(*pool, commit, {}, "");
  auto vol = open(cat, "vol");
  std::vector<std::byte> d(2 * B);
  for (size_t i = 0; i < d.size(); i++) d[i] = std::byte(i * 13 % 251);
  ASSERT_TRUE(vol->write(2 * B, d, false).ok());
  const uint64_t off = B - 4096, len = 4 * B - 100 - off;  // mapped, hole, mapped, hole
  for (bool sparse : {true, false}) {
    std::vector<std::byte> want(len), got(len, std::byte{0xee});
    std::vector<nbd::StatusExtent> want_ext, got_ext{{1, 7}};
    ASSERT_TRUE((sparse ? vol->read_sparse(off, want, want_ext) : vol->read(off, want)).ok());
    std::vector<nbd::BlockTarget::FileRead> parts;
    auto ticket = vol->start_read(off, got, sparse ? &got_ext : nullptr, parts, true);
    ASSERT_TRUE(ticket.ok()) << ticket.error().to_string();
    EXPECT_EQ(parts.size(), 2u);
    for (const auto& p : parts) {
      ASSERT_EQ(::pread(p.fd, got.data() + p.buf_offset, p.length, off_t(p.file_offset)),
                ssize_t(p.length));
    }
    vol->finish_read(*ticket);
    EXPECT_EQ(got, want) << "sparse " << sparse;
    if (sparse) {
      ASSERT_EQ(got_ext.size(), want_ext.size());
      for (size_t i = 0; i < got_ext.size(); i++) {
        EXPECT_EQ(got_ext[i].length, want_ext[i].length);
        EXPECT_EQ(got_ext[i].flags, want_ext[i].flags);
      }
    }
  }
  std::vector<std::byte> buf(4096);
  std::vector<nbd::BlockTarget::FileRead> parts;
  // Past the end: the pool's error, no file reads, no ticket out (the snapshot below would
  // wait for it forever).
  auto past = vol->start_read(vol->size() - 100, buf, nullptr, parts, true);
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.error().code, Errc::kInvalidArgument);
  EXPECT_TRUE(parts.empty());
  auto held = vol->start_read(0, buf, nullptr, parts, true);
  ASSERT_TRUE(held.ok());
  std::atomic<bool> done{false};
  std::thread op([&] {
    EXPECT_TRUE(pool->snapshot("vol", "s2", false).ok());
    done = true;
  });
  // Wait until the snapshot holds new requests back: a start_read that may not wait says so.
  bool busy = false;
  for (int i = 0; i < 10000 && !busy; i++) {
    parts.clear();
    auto r = vol->start_read(0, buf, nullptr, parts, false);
    if (r.ok()) {
      vol->finish_read(*r);
      std::this_thread::sleep_for(1ms);
    } else {
      EXPECT_EQ(r.error().code, Errc::kBusy);
      busy = true;
    }
  }
  EXPECT_TRUE(busy);
  EXPECT_FALSE(done.load()) << "the snapshot did not wait for the read in flight";
  vol->finish_read(*held);
  op.join();
  EXPECT_TRUE(done.load());
  parts.clear();
  auto after = vol->start_read(0, buf, nullptr, parts, false);
  ASSERT_TRUE(after.ok());
  vol->finish_read(*after);
}

TEST_F(PoolExportTest, ZeroWithNoHoleProvisionsAndWithoutUnmaps) {
  PoolCatalog cat(*pool, commit, {}, "");
  auto vol = open(cat, "vol");
  ASSERT_TRUE(vol->zero(2 * B, B, true).ok());  // provision: mapped, reads zeros
  ASSERT_TRUE(vol->zero(0, B, false).ok());     // unmapped again
  auto st = vol->block_status(0, 3 * B);
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(st->size(), 2u);
  EXPECT_EQ((*st)[0].flags, nbd::kStateHole | nbd::kStateZero);
  EXPECT_EQ((*st)[0].length, 2 * B);
  EXPECT_EQ((*st)[1].flags, 0u);
  std::vector<std::byte> buf(3 * B, std::byte{1});
  ASSERT_TRUE(vol->read(0, buf).ok());
  EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](std::byte b) { return b == std::byte{0}; }));
  EXPECT_EQ(pool->volume("vol")->guaranteed_blocks, 1u);
}

TEST_F(PoolExportTest, DeltaStatusMarksWhatChangedSinceTheSnapshot) {
  PoolCatalog cat(*pool, commit, {}, "");
  auto vol = open(cat, "vol");
  EXPECT_EQ(vol->delta_bases(), std::vector<std::string>{"snap"});
  std::vector<std::byte> d(B, std::byte{7});
  ASSERT_TRUE(vol->write(2 * B, d, false).ok());
  auto st = vol->delta_status("snap", 0, 4 * B);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  ASSERT_EQ(st->size(), 3u);
  EXPECT_EQ((*st)[0].flags, 0u);
  EXPECT_EQ((*st)[0].length, 2 * B);
  EXPECT_EQ((*st)[1].flags, nbd::kStateChanged);
  EXPECT_EQ((*st)[1].length, B);
  EXPECT_EQ((*st)[2].flags, 0u);
  EXPECT_EQ(vol->delta_status("nope", 0, B).error().code, Errc::kNotFound);
}

TEST_F(PoolExportTest, FuaAndFlushCommit) {
  PoolCatalog cat(*pool, commit, {}, "");
  auto vol = open(cat, "vol");
  // A commit: a journal batch (or a checkpoint) makes the write durable.
  uint64_t before = pool->commit_id();
  std::vector<std::byte> d(B, std::byte{9});
  ASSERT_TRUE(vol->write(3 * B, d, true).ok());
  EXPECT_GT(pool->commit_id(), before);
  ASSERT_TRUE(vol->write(4 * B, d, false).ok());
  uint64_t mid = pool->commit_id();
  ASSERT_TRUE(vol->flush().ok());
  EXPECT_GT(pool->commit_id(), mid);
}

}  // namespace
}  // namespace tp::daemon
