// I/O errors (issue 7): seeded runs of the mixed workload (tests/support/pool_workload.h) on a
// pool whose data and metadata devices are FaultyDevices that fail reads or writes, once
// (the Nth) or for good from a random point on. Each run checks that
//   - a failed operation reports kIo (or kReadOnly once the pool is read-only),
//   - a metadata write failure leaves the pool read-only (SEMANTICS.md "Pool states"):
//     writes are refused, reads still work,
//   - once the fault clears and the pool is closed and reopened: it opens, Pool::check and
//     thin_check pass, every committed operation is there and a failed one is all-or-nothing
//     (a failed write: each sector old or new), no sector shows bytes its volume never
//     wrote, and new blocks read zeros.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "io/faulty_device.h"
#include "support/forwarding_device.h"
#include "support/pool_workload.h"
#include "support/test_util.h"
#include "thin/pool.h"

namespace tp::thin {
namespace {

using namespace testing::workload;  // NOLINT: the test's own vocabulary
namespace fs = std::filesystem;

using Borrowed = testing::ForwardingDevice;

Pool::DeviceWrapper borrow(io::BlockDevice& d) {
  return [&d](std::unique_ptr<io::BlockDevice>) -> std::unique_ptr<io::BlockDevice> {
    return std::make_unique<Borrowed>(d);
  };
}

struct Base {
  std::vector<std::byte> data, meta;
  std::string catalog;
  Model model;
  uint32_t next_write = 1;
  int next_name = 1;
};

// A pool with some history: volumes, snapshots, shared and exclusive blocks.
void make_base(const testing::TempDir& tmp, Base* out) {
  std::string dir = tmp.file("base");
  PoolOptions o;
  o.data_bytes = 8ull << 20;
  o.metadata_bytes = 2ull << 20;
  {
    auto p = Pool::create(dir, o);
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    Workload wl(**p, 4242, nullptr, tmp.path());
    wl.run(80);
    ASSERT_FALSE(::testing::Test::HasFailure());
    out->model = wl.model();
    out->next_write = wl.next_write();
    out->next_name = wl.next_name();
    ASSERT_TRUE((*p)->close().ok());
  }
  out->data = file_bytes(dir + "/data");
  out->meta = file_bytes(dir + "/metadata");
  out->catalog = testing::read_file(dir + "/catalog");
}

enum class Target { kDataRead, kDataWrite, kMetaRead, kMetaWrite };
const char* target_name(Target t) {
  switch (t) {
    case Target::kDataRead:
      return "data read";
    case Target::kDataWrite:
      return "data write";
    case Target::kMetaRead:
      return "metadata read";
    case Target::kMetaWrite:
      return "metadata write";
  }
  return "?";
}

constexpr size_t kSmallCache = 0;  // every metadata block lock reads the device

struct Tally {
  int runs = 0, surfaced = 0, read_only = 0, thin_checks = 0;
};

void fault_run(const Base& base, uint64_t seed, const testing::TempDir& tmp, Tally* tally) {
  std::mt19937_64 rng(seed);
  auto target = static_cast<Target>(rng() % 4);
  bool dead = rng() % 3 == 0;  // fails for good from a random op on; else once
  // Half the runs keep only a few metadata blocks in core, so that metadata reads in the
  // middle of a B-tree change reach the device (the whole test metadata fits the default).
  size_t cache = rng() % 2 ? kSmallCache : Pool::OpenOptions{}.metadata_cache_blocks;
  std::string where = "seed " + std::to_string(seed) + " (" + target_name(target) +
                      (dead ? ", for good" : ", once") +
                      (cache == kSmallCache ? ", small cache" : "") + ")";
  std::string dir = tmp.file("run");
  fs::remove_all(dir);
  fs::create_directory(dir);
  testing::write_file(dir + "/data", "");
  testing::write_file(dir + "/metadata", "");
  testing::write_file(dir + "/catalog", base.catalog);
  auto dmem = mem_from(base.data);
  auto mmem = mem_from(base.meta);
  io::FaultyDevice fdata(*dmem), fmeta(*mmem);
  io::FaultyDevice& dev =
      target == Target::kDataRead || target == Target::kDataWrite ? fdata : fmeta;
  bool reads = target == Target::kDataRead || target == Target::kMetaRead;

  tally->runs++;
  std::vector<OpRec> ops;
  uint64_t trans0 = 0;
  bool faulted = false;
  Error fault{};
  {
    auto pr = Pool::open(dir, {borrow(fmeta), borrow(fdata), cache});
    ASSERT_TRUE(pr.ok()) << where << ": " << pr.error().to_string();
    Pool& pool = **pr;
    Workload wl(pool, seed, nullptr, tmp.path(), base.model, base.next_write, base.next_name);
    wl.tolerate_io = true;
    int dead_at = static_cast<int>(rng() % 8);
    uint64_t nth = 1 + rng() % (reads ? (cache == kSmallCache ? 400 : 40) : 25);
    if (dead) {
      wl.before_step = [&](int i) {
        if (i == dead_at) dev.set_fail_all(reads, !reads);
      };
    } else if (reads) {
      dev.fail_nth_read(nth);
    } else {
      dev.fail_nth_write(nth);
    }
    wl.run(12);
    ASSERT_FALSE(::testing::Test::HasFatalFailure()) << where;
    ops = wl.ops;
    trans0 = wl.trans0;
    faulted = wl.faulted;
    fault = wl.fault;
    if (faulted) {
      tally->surfaced++;
      // A metadata write failure surfaces at a commit: the pool is read-only from then on.
      if (target == Target::kMetaWrite && fault.code == Errc::kIo) {
        EXPECT_EQ(pool.info().state, PoolState::kReadOnly) << where << ": " << fault.to_string();
      }
      if (pool.info().state == PoolState::kReadOnly) {
        tally->read_only++;
        for (auto& [n, v] : wl.model()) {
          uint64_t d = *pool.dev_id(n);
          std::vector<std::byte> buf(kSector);
          if (v.writable) {
            auto w = pool.write(d, 0, buf);
            EXPECT_TRUE(!w.ok() && w.error().code == Errc::kReadOnly)
                << where << ": a read-only pool took a write";
          }
          if (!reads) {
            EXPECT_TRUE(pool.read(d, 0, buf).ok()) << where << ": read-only pool";
          }
        }
      }
    }
    // The fault clears; the pool goes on and is closed (a commit, unless read-only).
    dev.set_fail_all(false, false);
    dev.fail_nth_read(0);
    dev.fail_nth_write(0);
    uint64_t before_close = pool.commit_id();
    auto c = pool.close();
    ASSERT_TRUE(c.ok()) << where << ": close: " << c.error().to_string();
    uint64_t after_close = pool.commit_id();
    if (after_close != before_close) {
      // What the close committed: the state after the last op (or, if it failed, what its
      // failure allows).
      OpRec close_rec;
      const OpRec& last = ops.back();
      close_rec.what = "close";
      close_rec.kind = faulted && is_data_op(last.kind) ? OpKind::kWrite : OpKind::kFlush;
      close_rec.trans_before = before_close;
      close_rec.trans_after = after_close;
      close_rec.after = last.after;
      if (faulted) {
        close_rec.mids = last.mids;
        close_rec.alts = last.alts;
      }
      ops.push_back(close_rec);
    }
  }
  // Reopen on the same media, no faults.
  auto pr = Pool::open(dir, borrow(*mmem), borrow(*dmem));
  ASSERT_TRUE(pr.ok()) << where << ": reopen: " << pr.error().to_string();
  Pool& pool = **pr;
  uint64_t t = pool.commit_id();
  // Nothing that returned is lost: every op before the failed one committed.
  size_t done = faulted ? ops.size() - 1 - (ops.back().what == "close") : ops.size();
  uint64_t t_min = done == 0 ? trans0 : ops[done - 1].trans_after;
  EXPECT_GE(t, t_min) << where << ": a committed transaction was lost";
  std::string err =
      check_pool_content(pool, t, ops, trans0, base.model, static_cast<int>(ops.size()) - 1);
  EXPECT_EQ(err, "") << where << ", failed op: "
                     << (faulted ? ops[done].what + ": " + fault.to_string() : "-");
  auto chk = pool.check();
  ASSERT_TRUE(chk.ok()) << where << ": " << chk.error().to_string();
  EXPECT_TRUE(chk->ok()) << where << ": " << (chk->ok() ? "" : chk->damage.front());
  EXPECT_EQ(probe_new_blocks(pool), "") << where;
  if (tally->runs % 5 == 0 || testing::effort() == testing::Effort::kLong) {
    std::string img(base.meta.size(), '\0');
    ASSERT_TRUE(mmem->read(0, std::as_writable_bytes(std::span(img))).ok());
    testing::write_file(dir + "/metadata", img);
    EXPECT_EQ(testing::thin_check(dir + "/metadata"), "") << where;
    tally->thin_checks++;
  }
  ASSERT_TRUE(pool.close().ok());
}

TEST(IoErrors, FailedReadsAndWritesLoseNothingCommitted) {
  testing::TempDir tmp;
  Base base;
  ASSERT_NO_FATAL_FAILURE(make_base(tmp, &base));
  Tally tally;
  const uint64_t runs = testing::scaled(300, 10);
  for (uint64_t seed = 1; seed <= runs; seed++) {
    ASSERT_NO_FATAL_FAILURE(fault_run(base, seed, tmp, &tally));
    if (::testing::Test::HasFailure()) break;
  }
  std::printf("fault runs: %d, errors surfaced: %d, read-only after: %d, thin_check runs: %d\n",
              tally.runs, tally.surfaced, tally.read_only, tally.thin_checks);
  ::testing::Test::RecordProperty("fault_runs", tally.runs);
  EXPECT_GT(tally.surfaced, tally.runs / 4);
}

// Regression: a write covering a whole block that must be copied (shared with a snapshot)
// or newly allocated does not initialise the new block, since the write fills it. If that
// data write fails, the new block must never be mapped: the block reads exactly as before
// the write, the pool stays writable, and no discard is needed to put anything back.
TEST(IoErrors, FailedWholeBlockWriteKeepsOldContent) {
  testing::TempDir tmp;
  std::string dir = tmp.file("pool");
  PoolOptions o;
  o.data_bytes = 4ull << 20;
  o.metadata_bytes = 2ull << 20;
  std::vector<std::byte> old_blk(kB), new_blk(kB), stale(kB);
  for (uint64_t s = 0; s < kSpb; s++) {
    fill_sector(old_blk.data() + s * kSector, 1, s);
    fill_sector(new_blk.data() + s * kSector, 2, s);
    fill_sector(stale.data() + s * kSector, 3, s);
  }
  {
    auto p = std::move(*Pool::create(dir, o));
    ASSERT_TRUE(p->create_volume("a", 4 * kB).ok());
    ASSERT_TRUE(p->create_volume("junk", 4 * kB).ok());
    // Blocks that held other data and were freed: the allocator hands them out again.
    uint64_t j = *p->dev_id("junk");
    for (uint64_t b = 0; b < 4; b++) ASSERT_TRUE(p->write(j, b * kB, stale).ok());
    ASSERT_TRUE(p->flush().ok());
    ASSERT_TRUE(p->remove("junk", false).ok());
    ASSERT_TRUE(p->write(*p->dev_id("a"), 0, old_blk).ok());
    ASSERT_TRUE(p->snapshot("a", "snap", false).ok());
    ASSERT_TRUE(p->close().ok());
  }
  for (uint64_t vb : {0, 1}) {  // 0: copy-on-write of a shared block; 1: unmapped
    for (bool keep_discards : {true, false}) {
      SCOPED_TRACE("block " + std::to_string(vb) + (keep_discards ? "" : ", discards fail"));
      testing::TempDir run;
      std::string rdir = run.file("pool");
      fs::copy(dir, rdir, fs::copy_options::recursive);
      testing::FaultyShell fd;
      {
        auto p = Pool::open(rdir, nullptr, fd.wrap());
        ASSERT_TRUE(p.ok()) << p.error().to_string();
        io::FaultyDevice* f = fd.dev.get();
        // Freed blocks still hold their bytes when their discard failed.
        if (!keep_discards) f->set_fail_all(false, true);
        f->fail_nth_write(1);
        auto w = (*p)->write(*(*p)->dev_id("a"), vb * kB, new_blk);
        f->set_fail_all(false, false);
        ASSERT_FALSE(w.ok());
        EXPECT_EQ(w.error().code, Errc::kIo);
        std::vector<std::byte> got(kB);
        ASSERT_TRUE((*p)->read(*(*p)->dev_id("a"), vb * kB, got).ok());
        std::vector<std::byte> before = vb == 0 ? old_blk : std::vector<std::byte>(kB);
        EXPECT_TRUE(got == before) << "live pool shows other bytes";
        EXPECT_NE((*p)->info().state, PoolState::kReadOnly);
        ASSERT_TRUE((*p)->close().ok());
      }
      auto p = Pool::open(rdir);
      ASSERT_TRUE(p.ok()) << p.error().to_string();
      std::vector<std::byte> got(kB);
      ASSERT_TRUE((*p)->read(*(*p)->dev_id("a"), vb * kB, got).ok());
      std::vector<std::byte> before = vb == 0 ? old_blk : std::vector<std::byte>(kB);
      EXPECT_TRUE(got == before) << "reopened pool shows other bytes";
      auto c = (*p)->check();
      ASSERT_TRUE(c.ok() && c->ok());
      ASSERT_TRUE((*p)->close().ok());
      EXPECT_EQ(testing::thin_check(rdir + "/metadata"), "");
    }
  }
}

// Regression: a partial write to a shared block copies it into a new block drawn from the
// volume's guarantee (or its snapshot reserve). When that copy failed, the new block was
// freed but the space it was drawn from was not given back: the guarantee lost a block, and
// with the pool full a later guaranteed write failed with ENOSPC.
TEST(IoErrors, FailedCopyKeepsTheSpaceItWasDrawnFrom) {
  for (bool reserve : {false, true}) {
    SCOPED_TRACE(reserve ? "snapshot reserve" : "guarantee");
    testing::TempDir tmp;
    std::string dir = tmp.file("pool");
    PoolOptions o;
    o.data_bytes = 16 * kB;
    o.metadata_bytes = 2ull << 20;
    std::string vol = reserve ? "u" : "a";
    {
      auto p = std::move(*Pool::create(dir, o));
      ASSERT_TRUE(p->create_volume("a", 4 * kB, !reserve).ok());
      std::vector<std::byte> blk(4 * kB, std::byte{7});
      ASSERT_TRUE(p->write(*p->dev_id("a"), 0, blk).ok());
      // "a" guaranteed: its 4 blocks now shared with "s", their copies reserved in G(a).
      // Or "u", a writable snapshot of "a" with a reserve of 4 blocks for its copies.
      ASSERT_TRUE(p->snapshot("a", reserve ? "u" : "s", reserve, reserve ? 4 * kB : 0).ok());
      // Everything else is used up.
      ASSERT_TRUE(p->create_volume("fill", 16 * kB).ok());
      uint64_t f = *p->dev_id("fill");
      for (uint64_t b = 0; b < 16; b++) {
        if (!p->write(f, b * kB, std::span(blk).first(kB)).ok()) break;
      }
      ASSERT_EQ(p->info().unreserved_blocks, 0u);
      ASSERT_TRUE(p->close().ok());
    }
    testing::FaultyShell faulty;
    auto pr = Pool::open(dir, nullptr, faulty.wrap());
    ASSERT_TRUE(pr.ok()) << pr.error().to_string();
    io::FaultyDevice* fd = faulty.dev.get();
    Pool& p = **pr;
    uint64_t d = *p.dev_id(vol);
    std::vector<std::byte> sector(kSector, std::byte{9});
    fd->fail_nth_write(1);  // the copy of the shared block
    auto w = p.write(d, 0, sector);
    ASSERT_FALSE(w.ok());
    EXPECT_EQ(w.error().code, Errc::kIo);
    EXPECT_NE(p.info().state, PoolState::kReadOnly) << "a data error leaves the pool writable";
    // The freed block is the guarantee's (reserve's) again, not anyone's for the taking.
    uint64_t f = *p.dev_id("fill");
    for (uint64_t b = 0; b < 16; b++) {
      auto r = p.write(f, b * kB, sector);
      if (!r.ok()) {
        EXPECT_EQ(r.error().code, Errc::kNoSpace);
        break;
      }
      EXPECT_LT(b, 8u) << "\"fill\" took more than its 8 blocks";
    }
    for (uint64_t b = 0; b < 4; b++) {
      auto r = p.write(d, b * kB + kSector, sector);
      EXPECT_TRUE(r.ok()) << "block " << b << ": " << r.error().to_string();
    }
    ASSERT_TRUE(p.close().ok());
    auto again = Pool::open(dir);
    ASSERT_TRUE(again.ok());
    auto c = (*again)->check();
    ASSERT_TRUE(c.ok() && c->ok());
    ASSERT_TRUE((*again)->close().ok());
    EXPECT_EQ(testing::thin_check(dir + "/metadata"), "");
  }
}

// Every metadata read of a write, a snapshot, a merge and a remove (and of the commit that
// follows) fails in turn, with a cache of a few blocks so that the reads reach the device
// in the middle of B-tree and space-map changes: the op or the commit reports kIo, and
// whatever the op had changed in core is never committed half-done (check and thin_check
// after reopening). A first run of each op counts its reads.
TEST(IoErrors, EveryMetadataReadOfAnOpFailsInTurn) {
  testing::TempDir tmp;
  Base base;
  ASSERT_NO_FATAL_FAILURE(make_base(tmp, &base));
  std::string vol, snap;
  for (auto& [name, v] : base.model) {
    if (v.writable && vol.empty()) vol = name;
    if (!v.origin.empty() && base.model.count(v.origin)) snap = name;
  }
  ASSERT_FALSE(vol.empty());
  ASSERT_FALSE(snap.empty());
  const uint64_t max_reads = testing::scaled(48, 100);
  int runs = 0, surfaced = 0, at_commit = 0;
  const char* const op_names[] = {"write",  "snapshot",         "merge",  "remove",
                                  "trim",   "provision",        "resize", "rollback",
                                  "create", "provision + zero", "extend"};
  for (int op = 0; op < 11; op++) {
    uint64_t reads = 0;  // of the op and its commit, counted by the run with n = 0
    for (uint64_t n = 0; n == 0 || n <= std::min(reads, max_reads); n++) {
      std::string dir = tmp.file("sweep");
      fs::remove_all(dir);
      fs::create_directory(dir);
      testing::write_file(dir + "/data", "");
      testing::write_file(dir + "/metadata", "");
      testing::write_file(dir + "/catalog", base.catalog);
      auto dmem = mem_from(base.data);
      auto mmem = mem_from(base.meta);
      io::FaultyDevice fmeta(*mmem);
      std::string where = std::string(op_names[op]) + ", read " + std::to_string(n) + " of " +
                          std::to_string(reads);
      {
        auto pr = Pool::open(dir, {borrow(fmeta), borrow(*dmem), kSmallCache});
        ASSERT_TRUE(pr.ok()) << pr.error().to_string();
        Pool& p = **pr;
        const uint64_t vdev = *p.dev_id(vol), vsize = *p.size_of(vdev);
        const uint64_t pool_bytes = p.info().nr_blocks * kB;
        uint64_t reads0 = fmeta.reads();
        fmeta.fail_nth_read(n);
        std::vector<std::byte> buf(3 * kB + kSector);
        for (uint64_t s = 0; s < buf.size() / kSector; s++) {
          fill_sector(buf.data() + s * kSector, 999999, s + 5);
        }
        Result<void> r;
        switch (op) {
          case 0:
            r = p.write(vdev, 5 * kSector, buf);
            break;
          case 1:
            r = p.snapshot(vol, "newsnap", true, kB);
            break;
          case 2:
            r = p.merge(snap);
            break;
          case 3:
            r = p.remove(vol, true);
            break;
          case 4:
            r = p.trim(vdev, 0, 4 * kB);
            break;
          case 5:
            r = p.provision(vol, 0, vsize, catalog::ProvisionClass::kData);
            break;
          case 6:
            r = p.resize(vol, vsize + 3 * kB);
            break;
          case 7:
            r = p.rollback(base.model.at(snap).origin, snap);
            break;
          case 8:
            r = p.create_volume("newvol", 3 * kB, true);
            break;
          case 9:
            r = p.provision_zero(vdev, kSector, vsize - 2 * kSector);
            break;
          case 10:
            r = p.extend(pool_bytes + 4 * kB);
            break;
        }
        Result<void> c = p.flush();
        fmeta.fail_nth_read(0);
        if (n == 0) {
          ASSERT_TRUE(r.ok()) << where << ": " << r.error().to_string();
          ASSERT_TRUE(c.ok()) << where << ": " << c.error().to_string();
          reads = fmeta.reads() - reads0;
        } else {
          runs++;
          if (!r.ok() || !c.ok()) surfaced++;
          if (r.ok() && !c.ok()) at_commit++;
          for (auto* e : {&r, &c}) {
            if (!e->ok()) {
              EXPECT_TRUE(e->error().code == Errc::kIo || e->error().code == Errc::kReadOnly)
                  << where << ": " << e->error().to_string();
            }
          }
          // A failed commit leaves the pool read-only; a failed op must leave nothing behind
          // that the next commit would write half-done.
          if (!c.ok()) {
            EXPECT_EQ(p.info().state, PoolState::kReadOnly) << where;
          }
        }
        auto cl = p.close();
        ASSERT_TRUE(cl.ok()) << where << ": close: " << cl.error().to_string();
      }
      auto pr = Pool::open(dir, borrow(*mmem), borrow(*dmem));
      ASSERT_TRUE(pr.ok()) << where << ": " << pr.error().to_string();
      auto c = (*pr)->check();
      ASSERT_TRUE(c.ok()) << where << ": " << c.error().to_string();
      EXPECT_TRUE(c->ok()) << where << ": " << (c->ok() ? "" : c->damage.front());
      ASSERT_TRUE((*pr)->close().ok());
      std::string img(base.meta.size(), '\0');
      ASSERT_TRUE(mmem->read(0, std::as_writable_bytes(std::span(img))).ok());
      testing::write_file(dir + "/metadata", img);
      EXPECT_EQ(testing::thin_check(dir + "/metadata"), "") << where;
      if (::testing::Test::HasFailure()) return;
    }
  }
  std::printf("metadata read faults: %d runs, %d surfaced (%d at the commit)\n", runs, surfaced,
              at_commit);
  EXPECT_EQ(surfaced, runs) << "a failed read went unreported";
}

}  // namespace
}  // namespace tp::thin
