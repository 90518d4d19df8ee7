// Crash at every metadata write during merge, rollback and update: after reopening, the
// volume holds wholly the old or wholly the new content, check (space invariant
// included) and thin_check pass.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "io/faulty_device.h"
#include "support/forwarding_device.h"
#include "support/test_util.h"
#include "thin/pool.h"
#include "thin/update.h"

namespace tp::thin {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kB = 64 * 1024;
constexpr uint64_t kVol = 2ull << 20;

std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
std::string image(uint32_t seed) {
  std::string s(kVol, '\0');
  std::mt19937 rng(seed);
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string content(Pool& p, const std::string& n) {
  uint64_t dev = *p.dev_id(n);
  std::string s(*p.size_of(dev), '\0');
  EXPECT_TRUE(p.read(dev, 0, {reinterpret_cast<std::byte*>(s.data()), s.size()}).ok());
  return s;
}

enum class Op { kMerge, kRollback, kUpdate };

class CrashDuringOp : public ::testing::TestWithParam<Op> {
 protected:
  void SetUp() override {
    pristine_ = tmp_.file("pristine");
    v1_ = image(1);
    v2_ = v1_;
    v2_.replace(5 * kB + 77, 3 * kB, image(2).substr(0, 3 * kB));
    PoolOptions o;
    o.data_bytes = 8ull << 20;
    o.metadata_bytes = 2ull << 20;
    auto p = std::move(*Pool::create(pristine_, o));
    ASSERT_TRUE(p->create_volume("base", kVol, true).ok());
    ASSERT_TRUE(p->write(*p->dev_id("base"), 0, bytes(v1_)).ok());
    if (GetParam() == Op::kMerge) {
      ASSERT_TRUE(p->snapshot("base", "base.next", true, 8 * kB).ok());
      ASSERT_TRUE(p->write(*p->dev_id("base.next"), 0, bytes(v2_)).ok());
    } else if (GetParam() == Op::kRollback) {
      // base holds v2 and rolls back to pre (v1).
      ASSERT_TRUE(p->snapshot("base", "pre", false).ok());
      ASSERT_TRUE(p->write(*p->dev_id("base"), 0, bytes(v2_)).ok());
      std::swap(v1_, v2_);  // old = what base holds now, new = what rollback brings
    } else {
      testing::write_file(tmp_.file("v1.img"), v1_);
      testing::write_file(tmp_.file("v2.img"), v2_);
      int a, b;
      auto sa = file_source(tmp_.file("v1.img"), &a);
      auto sb = file_source(tmp_.file("v2.img"), &b);
      ASSERT_TRUE(write_delta(tmp_.file("d"), *sa, *sb, 4096).ok());
    }
    ASSERT_TRUE(p->close().ok());
  }

  Result<void> run(Pool& p) {
    switch (GetParam()) {
      case Op::kMerge:
        return p.merge("base.next");
      case Op::kRollback:
        return p.rollback("base", "pre");
      case Op::kUpdate: {
        auto r = apply_update(p, "base", tmp_.file("d"), false);
        if (!r.ok()) return r.error();
        return {};
      }
    }
    return {};
  }

  void restore(const std::string& dir) {
    fs::remove_all(dir);
    fs::copy(pristine_, dir, fs::copy_options::recursive);
  }

  testing::TempDir tmp_;
  std::string pristine_;
  std::string v1_, v2_;
};

TEST_P(CrashDuringOp, WhollyOldOrWhollyNew) {
  std::string dir = tmp_.file("pool");
  // Count the metadata writes the operation issues.
  restore(dir);
  uint64_t total;
  {
    testing::FaultyShell counter;
    auto p = Pool::open(dir, counter.wrap());
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    uint64_t before = counter.dev->writes();
    ASSERT_TRUE(run(**p).ok());
    total = counter.dev->writes() - before;
    ASSERT_TRUE((*p)->close().ok());
    EXPECT_EQ(content(*std::move(*Pool::open(dir)), "base"), v2_);
  }
  ASSERT_GT(total, 0u);
  uint64_t stride = std::max<uint64_t>(1, total / testing::scaled(60, 100));
  int points = 0, old_seen = 0, new_seen = 0;
  for (uint64_t n = 1; n <= total; n += stride) {
    restore(dir);
    testing::FaultyShell shell;
    {
      auto p = Pool::open(dir, shell.wrap());
      ASSERT_TRUE(p.ok());
      io::FaultyDevice* f = shell.dev.get();
      f->cut_power_after(n, (n % 2) ? 0 : static_cast<uint32_t>(n % 8));
      (void)run(**p);
      f->power_cut(static_cast<io::CrashMode>(n % 3), n);
      // The process dies here: no close, no commit.
    }
    shell.dev.reset();  // before the device it wraps
    shell.inner.reset();
    auto p = Pool::open(dir);
    ASSERT_TRUE(p.ok()) << "crash point " << n << ": " << p.error().to_string();
    std::string got = content(**p, "base");
    bool is_old = got == v1_, is_new = got == v2_;
    ASSERT_TRUE(is_old || is_new) << "crash point " << n << ": base is a mix";
    old_seen += is_old;
    new_seen += is_new;
    auto c = (*p)->check();
    ASSERT_TRUE(c.ok() && c->ok())
        << "crash point " << n << ": " << (c.ok() ? c->damage.front() : c.error().to_string());
    ASSERT_TRUE((*p)->close().ok());
    ASSERT_EQ(testing::thin_check(dir + "/metadata"), "") << "crash point " << n;
    points++;
  }
  std::printf("crash points: %d of %llu metadata writes; old %d, new %d\n", points,
              static_cast<unsigned long long>(total), old_seen, new_seen);
  EXPECT_GT(old_seen, 0);
}

INSTANTIATE_TEST_SUITE_P(Ops, CrashDuringOp,
                         ::testing::Values(Op::kMerge, Op::kRollback, Op::kUpdate),
                         [](const auto& info) {
                           switch (info.param) {
                             case Op::kMerge:
                               return std::string("Merge");
                             case Op::kRollback:
                               return std::string("Rollback");
                             case Op::kUpdate:
                               return std::string("Update");
                           }
                           return std::string("?");
                         });

}  // namespace
}  // namespace tp::thin
