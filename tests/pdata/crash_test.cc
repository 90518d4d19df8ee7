// Crash safety of the transaction manager: cut power at every write of a run of >= 200
// transactions (every point with TP_LONG=1, a spread of hundreds otherwise); each
// reopened image must hold exactly the last committed state and pass the checks.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "io/faulty_device.h"
#include "pdata/checker.h"
#include "pdata/thin_metadata.h"
#include "support/md_model.h"
#include "support/md_xml.h"
#include "support/test_util.h"

namespace tp::pdata {
namespace {

constexpr uint64_t kMetaBytes = 4 << 20;
constexpr uint64_t kDataBlocks = 1 << 16;
constexpr int kTxns = 200;
constexpr int kOpsPerTxn = 12;

bool long_mode() {
  return std::getenv("TP_LONG") != nullptr;
}

struct RunResult {
  std::vector<testing::XmlPool> committed;  // committed[k] = state after commit k
  bool inflight = false;  // the cut hit a commit: committed.back() may or may not have landed
};

// Formats, then runs the workload until the device dies (or to the end).
RunResult run_workload(io::FaultyDevice& dev, uint64_t crash_after, uint32_t tear) {
  RunResult out;
  auto mdr = ThinMetadata::format(dev, 128, kDataBlocks, 64);
  if (!mdr.ok()) {
    ADD_FAILURE() << mdr.error().to_string();
    return out;
  }
  auto md = std::move(*mdr);
  testing::MdModel model;
  model.pool.data_block_size = 128;
  model.pool.nr_data_blocks = kDataBlocks;
  out.committed.push_back(model.pool);
  if (crash_after) dev.cut_power_after(crash_after, tear);
  testing::RandomMdOps ops(99, 3000, 8);
  for (int t = 1; t <= kTxns; t++) {
    for (int i = 0; i < kOpsPerTxn; i++) {
      if (!ops.step(*md, model).ok()) {
        return out;  // died in a cache write-back: the last commit stands
      }
    }
    md->set_trans_id(t);
    model.pool.transaction = t;
    if (!md->commit().ok()) {
      out.inflight = true;
      out.committed.push_back(model.pool);  // the superblock may have landed
      return out;
    }
    out.committed.push_back(model.pool);
  }
  return out;
}

TEST(CrashSafety, PowerCutAtEveryWriteKeepsLastCommit) {
  // Dry run: how many writes does the workload issue after format?
  auto mem = io::make_mem_device(kMetaBytes);
  io::FaultyDevice probe(*mem);
  auto full = run_workload(probe, 0, 0);
  ASSERT_EQ(full.committed.size(), size_t{kTxns + 1});
  auto fmt_mem = io::make_mem_device(kMetaBytes);
  io::FaultyDevice fmt_dev(*fmt_mem);
  ASSERT_TRUE(ThinMetadata::format(fmt_dev, 128, kDataBlocks, 64).ok());
  uint64_t total = probe.writes() - fmt_dev.writes();
  ASSERT_GT(total, uint64_t{kTxns});

  uint64_t stride = long_mode() ? 1 : std::max<uint64_t>(1, total / testing::scaled(500));
  testing::TempDir tmp;
  int points = 0, thin_checked = 0;
  for (uint64_t n = 1; n <= total; n += stride) {
    auto m = io::make_mem_device(kMetaBytes);
    io::FaultyDevice dev(*m);
    uint32_t tear = (n % 3 == 0) ? static_cast<uint32_t>(n % 8) : 0;
    RunResult run = run_workload(dev, n, tear);
    ASSERT_TRUE(dev.power_is_cut()) << "crash point " << n << " never reached";
    auto mode = static_cast<io::CrashMode>(n % 3);
    dev.power_cut(mode, n);
    auto mdr = ThinMetadata::open(*m);
    ASSERT_TRUE(mdr.ok()) << "crash point " << n << ": " << mdr.error().to_string();
    testing::XmlPool got = testing::read_pool(**mdr);
    // The last completed commit, or the one in flight if its superblock landed.
    size_t last_ok = run.committed.size() - (run.inflight ? 2 : 1);
    bool old_state = testing::first_difference(run.committed[last_ok], got).empty();
    bool new_state = last_ok + 1 < run.committed.size() &&
                     testing::first_difference(run.committed[last_ok + 1], got).empty();
    ASSERT_TRUE(old_state || new_state)
        << "crash point " << n << ": " << testing::first_difference(run.committed[last_ok], got);
    auto rep = check_metadata(**mdr);
    ASSERT_TRUE(rep.ok() && rep->ok())
        << "crash point " << n << ": "
        << (rep.ok() ? rep->damage.front() : rep.error().to_string());
    // The independent oracle on a sample (every point in long mode).
    if (long_mode() || points % 10 == 0) {
      std::string f = tmp.file("meta");
      std::string bytes(kMetaBytes, '\0');
      ASSERT_TRUE(m->read(0, std::as_writable_bytes(std::span(bytes))).ok());
      testing::write_file(f, bytes);
      ASSERT_EQ(testing::thin_check(f), "") << "crash point " << n;
      thin_checked++;
    }
    points++;
  }
  std::printf("crash points: %d of %llu writes (%d thin_check runs)\n", points,
              static_cast<unsigned long long>(total), thin_checked);
  EXPECT_GE(points, long_mode() ? static_cast<int>(total)
                                : static_cast<int>(std::min<uint64_t>(total, testing::scaled(500))) - 1);
}

}  // namespace
}  // namespace tp::pdata
