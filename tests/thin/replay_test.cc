// Crash-point replay at the pool level (issue 7). A seeded mixed workload (writes of random
// size and alignment, trims, write-zeroes, provision, snapshots, merge, rollback, remove, delta
// updates, flushes at random points) runs on a pool whose data and metadata devices record
// every write, discard, write-zeroes and flush they receive, and whose catalog file is logged
// each time it changes. Then, for crash points along that log, the device images a power
// cut could leave are rebuilt and the pool is opened on them:
//   - every prefix of the log (a sample of them in make test, every one with TP_LONG=1),
//   - the same with its last write torn (only a prefix of its 512-byte sectors landed),
//   - the same with a random subset of each device's unflushed writes (reordering).
// Each image must open at the transaction its superblock names, which must be no older than
// the last commit that returned; pass thin_check (on a sample of the points, see
// kThinCheckEvery) and Pool::check (space invariant included); hold exactly the volumes of
// a committed state (merge, rollback, remove, update all-or-nothing); and every 512-byte
// sector of every volume must read back as zeros or a pattern that this volume (or its
// lineage) wrote there, no older than the committed state: durable writes survive, and no
// block shows bytes its volume never wrote.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "pdata/format.h"
#include "support/pool_workload.h"
#include "support/test_util.h"
#include "thin/pool.h"

namespace tp::thin {
namespace {

using namespace testing::workload;  // NOLINT: the test's own vocabulary
namespace fs = std::filesystem;
constexpr uint64_t kDataBytes = 8ull << 20;
constexpr uint64_t kMetaBytes = 2ull << 20;
// ------------------------------------------------------------------ replay

enum class Mode { kAll, kTorn, kSubset };

struct Replay {
  std::vector<std::byte> data0, meta0, jrn0;
  std::string cat0;
  const std::vector<Entry>* log = nullptr;
  const std::vector<OpRec>* ops = nullptr;
  uint64_t trans0 = 0;
  std::string dir;  // scratch pool directory
  std::string seed_name;

  int points = 0, failures = 0, thin_checks = 0;
  uint64_t thin_check_every = 1;

  void fail(const std::string& msg) {
    failures++;
    if (failures <= 10) ADD_FAILURE() << seed_name << ": " << msg;
  }

  // One crash image: durable state + the chosen unflushed entries.
  void point(uint64_t p, Mode mode, const std::vector<std::byte>& dd,
             const std::vector<std::byte>& dm, const std::vector<std::byte>& dj,
             const std::vector<size_t>& pend_d, const std::vector<size_t>& pend_m,
             const std::vector<size_t>& pend_j, const std::string& cat, const std::string& prev_cat,
             std::mt19937_64& rng) {
    const auto& L = *log;
    std::string where =
        "crash point " + std::to_string(p) + " mode " + std::to_string(static_cast<int>(mode));
    auto data = mem_from(dd);
    auto meta = mem_from(dm);
    auto jrn = mem_from(dj);
    std::string catalog = cat;
    // The torn entry, if any: the last one of the prefix.
    size_t torn = ~size_t{0};
    if (mode == Mode::kTorn) torn = p - 1;
    auto apply = [&](const std::vector<size_t>& pend, io::BlockDevice& d) {
      for (size_t i : pend) {
        if (mode == Mode::kSubset && (rng() & 1)) continue;
        const Entry& e = L[i];
        uint64_t len = e.len;
        if (i == torn) {
          uint64_t sectors = (len + kSector - 1) / kSector;
          len = std::min(len, (1 + rng() % (sectors - 1)) * kSector);
        }
        Result<void> r = e.kind == Kind::kZero ? d.write_zeroes(e.off, len)
                                               : d.write(e.off, std::span(e.bytes).first(len));
        if (!r.ok()) std::abort();
      }
    };
    apply(pend_d, *data);
    apply(pend_m, *meta);
    apply(pend_j, *jrn);
    if (torn != ~size_t{0} && L[torn].kind == Kind::kCatalog) {
      // A torn append: the old file plus part of the new record.
      uint64_t extra = L[torn].catalog.size() - prev_cat.size();
      catalog = prev_cat + L[torn].catalog.substr(prev_cat.size(), 1 + rng() % (extra - 1));
    }
    points++;
    // What the superblock in the image says.
    std::vector<std::byte> sbb(pdata::kBlockSize);
    if (!meta->read(0, sbb).ok()) std::abort();
    auto sb = pdata::decode_superblock(pdata::ConstBlock(sbb.data(), pdata::kBlockSize));
    if (!sb.ok()) return fail(where + ": superblock does not decode: " + sb.error().to_string());
    uint64_t t_image = sb->trans_id;
    // Every op before the one that issued the last entry returned: its commits are durable.
    int last_op = p == 0 ? -1 : L[p - 1].op;
    uint64_t t_min = last_op <= 0 ? trans0 : (*ops)[last_op - 1].trans_after;
    if ((t_image << 24) + ((1 << 24) - 1) < t_min) {
      return fail(where + ": image superblock at transaction " + std::to_string(t_image) +
                  ", but commit " + std::to_string(t_min) + " had returned");
    }
    // Files of the scratch pool: the catalog, and the metadata image for thin_check.
    fs::remove(dir + "/catalog.tmp");
    testing::write_file(dir + "/catalog", catalog);
    if (points % thin_check_every == 0) {
      std::string img(dm.size(), '\0');
      if (!meta->read(0, std::as_writable_bytes(std::span(img))).ok()) std::abort();
      testing::write_file(dir + "/metadata", img);
      thin_checks++;
      std::string tc = testing::thin_check(dir + "/metadata");
      if (!tc.empty()) return fail(where + ": " + tc);
    }
    Pool::OpenOptions oo;
    oo.wrap_metadata = [&](std::unique_ptr<io::BlockDevice>) { return std::move(meta); };
    oo.wrap_data = [&](std::unique_ptr<io::BlockDevice>) { return std::move(data); };
    oo.wrap_journal = [&](std::unique_ptr<io::BlockDevice>) { return std::move(jrn); };
    auto pr = Pool::open(dir, oo);
    if (!pr.ok()) return fail(where + ": open failed: " + pr.error().to_string());
    Pool& pool = **pr;
    if (pool.metadata().trans_id() != t_image) {
      return fail(where + ": opened at transaction " + std::to_string(pool.metadata().trans_id()) +
                  ", image holds " + std::to_string(t_image));
    }
    // A checkpoint the journal goes beyond says so (thin_dump, a kernel): needs_check.
    if (const uint64_t n = pool.info().journal_replayed_batches;
        n > 0 && !(sb->flags & pdata::kNeedsCheckFlag)) {
      return fail(where + ": " + std::to_string(n) +
                  " journal batches replayed on a superblock without needs_check");
    }
    // The checkpoint and the journal batches after it: no older than the last commit that
    // returned.
    uint64_t t = pool.commit_id();
    if (t < t_min) {
      return fail(where + ": opened at commit " + std::to_string(t) + ", but commit " +
                  std::to_string(t_min) + " had returned");
    }
    check_content(pool, t, p, where);
    if (std::string e = probe_new_blocks(pool); !e.empty()) return fail(where + ": " + e);
    auto c = pool.check();
    if (!c.ok()) return fail(where + ": check failed: " + c.error().to_string());
    if (!c->ok()) return fail(where + ": check: " + c->damage.front());
    if (auto r = pool.close(); !r.ok()) return fail(where + ": close: " + r.error().to_string());
  }

  void check_content(Pool& pool, uint64_t t, uint64_t p, const std::string& where) {
    // Data ops up to the one in progress at the crash may have written in place.
    int k = p < log->size() ? (*log)[p].op : static_cast<int>(ops->size()) - 1;
    std::string err = check_pool_content(pool, t, *ops, trans0, Model{}, k);
    if (!err.empty()) {
      std::string ctx = " [k=" + std::to_string(k) + "; entries";
      for (uint64_t q = p >= 4 ? p - 4 : 0; q < std::min<uint64_t>(p + 2, log->size()); q++) {
        const Entry& e = (*log)[q];
        ctx += std::string(q == p ? " |" : " ") + "op" + std::to_string(e.op) + ":" +
               "dmjx"[static_cast<int>(e.dev)] + "WZFC"[static_cast<int>(e.kind)];
      }
      fail(where + ": " + err + ctx + "]");
    }
  }

  // Walks the log; at each chosen prefix, runs the chosen modes.
  void run(uint64_t stride, std::mt19937_64& rng) {
    const auto& L = *log;
    std::vector<std::byte> dd = data0, dm = meta0, dj = jrn0;
    std::vector<size_t> pend_d, pend_m, pend_j;
    std::string cat = cat0, prev_cat = cat0;
    auto flush_into = [&](std::vector<size_t>& pend, std::vector<std::byte>& img) {
      for (size_t i : pend) {
        const Entry& e = L[i];
        if (e.kind == Kind::kZero) {
          std::memset(img.data() + e.off, 0, e.len);
        } else {
          std::memcpy(img.data() + e.off, e.bytes.data(), e.len);
        }
      }
      pend.clear();
    };
    uint64_t phase = rng() % stride;
    for (uint64_t p = 0; p <= L.size(); p++) {
      if (p % stride == phase || p == L.size()) {
        point(p, Mode::kAll, dd, dm, dj, pend_d, pend_m, pend_j, cat, prev_cat, rng);
        point(p, Mode::kSubset, dd, dm, dj, pend_d, pend_m, pend_j, cat, prev_cat, rng);
        if (p > 0) {
          const Entry& e = L[p - 1];
          bool tearable = (e.kind == Kind::kWrite || e.kind == Kind::kZero) && e.len > kSector;
          if (e.kind == Kind::kCatalog && e.catalog.size() > prev_cat.size() + 1 &&
              e.catalog.compare(0, prev_cat.size(), prev_cat) == 0) {
            tearable = true;
          }
          if (tearable) {
            point(p, Mode::kTorn, dd, dm, dj, pend_d, pend_m, pend_j, cat, prev_cat, rng);
          }
        }
        if (::testing::Test::HasFatalFailure()) return;
      }
      if (p == L.size()) break;
      const Entry& e = L[p];
      switch (e.kind) {
        case Kind::kWrite:
        case Kind::kZero:
          (e.dev == Dev::kData ? pend_d : e.dev == Dev::kMeta ? pend_m : pend_j).push_back(p);
          break;
        case Kind::kFlush:
          if (e.dev == Dev::kData) {
            flush_into(pend_d, dd);
          } else if (e.dev == Dev::kMeta) {
            flush_into(pend_m, dm);
          } else {
            flush_into(pend_j, dj);
          }
          break;
        case Kind::kCatalog:
          prev_cat = cat;
          cat = e.catalog;
          break;
      }
    }
  }
};

struct Recording {
  std::vector<std::byte> data0, meta0, jrn0;
  std::string cat0;
  std::unique_ptr<Recorder> rec;
  std::vector<OpRec> ops;
  uint64_t trans0 = 0;
};

void record(uint64_t seed, int nr_ops, const testing::TempDir& tmp, Recording* out) {
  std::string dir = tmp.file("pool");
  PoolOptions o;
  o.data_bytes = kDataBytes;
  o.metadata_bytes = kMetaBytes;
  {
    auto p = Pool::create(dir, o);
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    ASSERT_TRUE((*p)->close().ok());
  }
  out->data0 = file_bytes(dir + "/data");
  out->meta0 = file_bytes(dir + "/metadata");
  out->jrn0 = file_bytes(dir + "/journal");
  out->cat0 = testing::read_file(dir + "/catalog");
  out->rec = std::make_unique<Recorder>(dir + "/catalog");
  out->rec->note_catalog();
  out->rec->log.clear();
  Recorder& rec = *out->rec;
  Pool::OpenOptions oo;
  oo.wrap_metadata = [&](std::unique_ptr<io::BlockDevice>) -> std::unique_ptr<io::BlockDevice> {
    return std::make_unique<RecordingDevice>(mem_from(out->meta0), Dev::kMeta, rec);
  };
  oo.wrap_data = [&](std::unique_ptr<io::BlockDevice>) -> std::unique_ptr<io::BlockDevice> {
    return std::make_unique<RecordingDevice>(mem_from(out->data0), Dev::kData, rec);
  };
  oo.wrap_journal = [&](std::unique_ptr<io::BlockDevice>) -> std::unique_ptr<io::BlockDevice> {
    return std::make_unique<RecordingDevice>(mem_from(out->jrn0), Dev::kJournal, rec);
  };
  auto p = Pool::open(dir, oo);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  Workload wl(**p, seed, &rec, tmp.path());
  wl.run(nr_ops);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  out->ops = std::move(wl.ops);
  std::string tally;
  for (auto& [k, n] : wl.done) tally += " " + k + " " + std::to_string(n);
  std::printf("seed %llu: %d ops (done:%s), %zu log entries\n",
              static_cast<unsigned long long>(seed), nr_ops, tally.c_str(), rec.log.size());
  out->trans0 = wl.trans0;
  // The process dies here: no close.
}

TEST(CrashReplay, EveryCrashPointOpensConsistent) {
  const bool long_mode = testing::effort() == testing::Effort::kLong;
  const int nr_ops = static_cast<int>(testing::scaled(300, 1));
  std::vector<uint64_t> seeds =
      long_mode ? std::vector<uint64_t>{1, 2, 3, 4} : std::vector<uint64_t>{1};
  // TP_REPLAY_SEED=N: that seed only, every crash point (to reproduce a failure).
  const char* only = std::getenv("TP_REPLAY_SEED");
  if (only) seeds = {std::strtoull(only, nullptr, 10)};
  // Crash prefixes per seed: a spread in make test, every one with TP_LONG=1.
  const uint64_t target_prefixes = testing::scaled(200);
  int points = 0, failures = 0, thin_checks = 0;
  uint64_t log_entries = 0;
  for (uint64_t seed : seeds) {
    testing::TempDir tmp;
    Recording recd;
    ASSERT_NO_FATAL_FAILURE(record(seed, nr_ops, tmp, &recd));
    const auto& log = recd.rec->log;
    log_entries += log.size();
    if (const char* dbg = std::getenv("TP_REPLAY_DEBUG")) {
      // TP_REPLAY_DEBUG=VOL:SECTOR prints every op with that sector's value in the model.
      std::string d = dbg;
      std::string vol = d.substr(0, d.find(':'));
      uint64_t sec = std::strtoull(d.substr(d.find(':') + 1).c_str(), nullptr, 10);
      for (size_t i = 0; i < recd.ops.size(); i++) {
        const OpRec& o = recd.ops[i];
        auto it = o.after.find(vol);
        std::printf("op %zu %s trans %llu->%llu %s\n", i, o.what.c_str(),
                    static_cast<unsigned long long>(o.trans_before),
                    static_cast<unsigned long long>(o.trans_after),
                    it == o.after.end() ? "-" : std::to_string(it->second.s[sec]).c_str());
      }
    }
    Replay r;
    r.data0 = std::move(recd.data0);
    r.meta0 = std::move(recd.meta0);
    r.jrn0 = std::move(recd.jrn0);
    r.cat0 = recd.cat0;
    r.log = &log;
    r.ops = &recd.ops;
    r.trans0 = recd.trans0;
    r.seed_name = "seed " + std::to_string(seed);
    r.dir = tmp.file("crash");
    fs::create_directory(r.dir);
    testing::write_file(r.dir + "/data", "");
    testing::write_file(r.dir + "/metadata", "");
    testing::write_file(r.dir + "/journal", "");
    r.thin_check_every = long_mode ? 10 : testing::effort() == testing::Effort::kQuick ? 20 : 5;
    uint64_t stride = long_mode || only ? 1 : std::max<uint64_t>(1, log.size() / target_prefixes);
    std::mt19937_64 rng(seed * 7919);
    r.run(stride, rng);
    points += r.points;
    failures += r.failures;
    thin_checks += r.thin_checks;
  }
  std::printf("crash points: %d, failures: %d (log entries %llu, thin_check runs %d)\n", points,
              failures, static_cast<unsigned long long>(log_entries), thin_checks);
  ::testing::Test::RecordProperty("crash_points", points);
  ::testing::Test::RecordProperty("thin_check_runs", thin_checks);
  EXPECT_EQ(failures, 0);
  if (long_mode) {
    EXPECT_GE(points, 10000);
  } else if (testing::effort() == testing::Effort::kNormal) {
    EXPECT_GE(points, 500);
  }
}

// Regression (found by the long replay, seed 2): V and its snapshot S share a block in the
// committed state; V's write_zeroes (or trim, or copy-on-write) unmaps it, uncommitted, so S
// holds it alone in core, and S's write went in place into that block. A crash before the
// next commit brought back V's mapping of the block, now showing S's bytes.
TEST(CrashReplay, InPlaceWriteNeverChangesACommittedSharer) {
  testing::TempDir tmp;
  std::string dir = tmp.file("pool");
  PoolOptions o;
  o.data_bytes = 4ull << 20;
  o.metadata_bytes = 2ull << 20;
  {
    auto p = Pool::create(dir, o);
    ASSERT_TRUE(p.ok());
    ASSERT_TRUE((*p)->close().ok());
  }
  for (int how = 0; how < 3; how++) {  // V: write_zeroes, trim, copy-on-write
    SCOPED_TRACE(how);
    auto data = mem_from(file_bytes(dir + "/data"));
    auto meta = mem_from(file_bytes(dir + "/metadata"));
    std::string run = tmp.file("run" + std::to_string(how));
    fs::create_directory(run);
    testing::write_file(run + "/data", "");
    testing::write_file(run + "/metadata", "");
    testing::write_file(run + "/catalog", testing::read_file(dir + "/catalog"));
    Recorder rec(run + "/catalog");
    std::vector<std::byte> a(kB), b(kSector);
    for (uint64_t s = 0; s < kSpb; s++) fill_sector(a.data() + s * kSector, 1, s);
    fill_sector(b.data(), 2, 0);
    {
      auto pr = Pool::open(
          run,
          [&](std::unique_ptr<io::BlockDevice>) -> std::unique_ptr<io::BlockDevice> {
            return std::make_unique<RecordingDevice>(std::move(meta), Dev::kMeta, rec);
          },
          [&](std::unique_ptr<io::BlockDevice>) -> std::unique_ptr<io::BlockDevice> {
            return std::make_unique<RecordingDevice>(std::move(data), Dev::kData, rec);
          });
      ASSERT_TRUE(pr.ok()) << pr.error().to_string();
      Pool& p = **pr;
      ASSERT_TRUE(p.create_volume("v", 2 * kB).ok());
      uint64_t v = *p.dev_id("v");
      ASSERT_TRUE(p.write(v, 0, a).ok());
      ASSERT_TRUE(p.snapshot("v", "s", true).ok());  // commits: the block is shared
      if (how == 0) {
        ASSERT_TRUE(p.write_zeroes(v, 0, kB).ok());
      }
      if (how == 1) {
        ASSERT_TRUE(p.trim(v, 0, kB).ok());
      }
      if (how == 2) {
        ASSERT_TRUE(p.write(v, 0, a).ok());
      }
      ASSERT_TRUE(p.write(*p.dev_id("s"), 0, b).ok());
      // Power cut, every write that reached the devices kept: images from the log.
      std::vector<std::byte> dimg = file_bytes(dir + "/data"), mimg = file_bytes(dir + "/metadata");
      for (const Entry& e : rec.log) {
        if (e.kind != Kind::kWrite && e.kind != Kind::kZero) continue;
        auto& img = e.dev == Dev::kData ? dimg : mimg;
        if (e.kind == Kind::kZero) {
          std::memset(img.data() + e.off, 0, e.len);
        } else {
          std::memcpy(img.data() + e.off, e.bytes.data(), e.len);
        }
      }
      data = mem_from(dimg);
      meta = mem_from(mimg);
      std::string cat;
      for (const Entry& e : rec.log) {
        if (e.kind == Kind::kCatalog) cat = e.catalog;
      }
      if (!cat.empty()) testing::write_file(run + "/catalog.crash", cat);
    }
    if (fs::exists(run + "/catalog.crash")) fs::rename(run + "/catalog.crash", run + "/catalog");
    auto pr = Pool::open(
        run, [&](std::unique_ptr<io::BlockDevice>) { return std::move(meta); },
        [&](std::unique_ptr<io::BlockDevice>) { return std::move(data); });
    ASSERT_TRUE(pr.ok()) << pr.error().to_string();
    Pool& p = **pr;
    std::vector<std::byte> got(kB);
    ASSERT_TRUE(p.read(*p.dev_id("v"), 0, got).ok());
    bool old = got == a, zero = got == std::vector<std::byte>(kB);
    EXPECT_TRUE(old || zero) << "v shows bytes only s wrote: sector 0 holds write "
                             << decode_sector(got.data(), 0);
    auto c = p.check();
    ASSERT_TRUE(c.ok() && c->ok());
  }
}

}  // namespace
}  // namespace tp::thin
