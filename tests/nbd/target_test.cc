// BlockTarget's default read_sparse (nbd/target.h): block_status, then read unless the
// whole range is a zero hole, against the in-memory target.

#include "nbd/target.h"

#include <gtest/gtest.h>

#include "nbd_test_util.h"

namespace tp::nbd {
namespace {

using testing::MemDisk;
using testing::MemTarget;

std::vector<std::byte> filled(size_t n, uint8_t v) {
  return std::vector<std::byte>(n, std::byte{v});
}

std::vector<std::pair<uint64_t, uint32_t>> runs(const std::vector<StatusExtent>& e) {
  std::vector<std::pair<uint64_t, uint32_t>> out;
  for (const StatusExtent& x : e) out.emplace_back(x.length, x.flags);
  return out;
}

constexpr uint32_t kZeroHole = kStateHole | kStateZero;

TEST(ReadSparse, DefaultGivesTheDataAndTheHolesOfTheRange) {
  auto d = std::make_shared<MemDisk>(65536);
  MemTarget t(d);
  auto data = filled(4096, 0x42);
  ASSERT_TRUE(t.write(8192, data, false).ok());
  auto buf = filled(16384, 0xee);
  std::vector<StatusExtent> ext{{1, kStateChanged}};  // left from an earlier call: cleared
  ASSERT_TRUE(t.read_sparse(0, buf, ext).ok());
  EXPECT_EQ(runs(ext), (std::vector<std::pair<uint64_t, uint32_t>>{
                           {8192, kZeroHole}, {4096, 0}, {4096, kZeroHole}}));
  std::vector<std::byte> want(16384);
  std::copy(data.begin(), data.end(), want.begin() + 8192);
  EXPECT_EQ(buf, want);
  EXPECT_EQ(d->status_calls.load(), 1);
  EXPECT_EQ(d->reads.load(), 1);
}

TEST(ReadSparse, DefaultZeroesAWholeHoleWithoutReading) {
  auto d = std::make_shared<MemDisk>(65536);
  MemTarget t(d);
  auto buf = filled(10000, 0xee);
  std::vector<StatusExtent> ext;
  ASSERT_TRUE(t.read_sparse(100, buf, ext).ok());
  EXPECT_EQ(runs(ext), (std::vector<std::pair<uint64_t, uint32_t>>{{10000, kZeroHole}}));
  EXPECT_EQ(buf, filled(10000, 0));
  EXPECT_EQ(d->reads.load(), 0);
}

// A target without base:allocation: everything is data.
class NoStatusTarget : public MemTarget {
 public:
  using MemTarget::MemTarget;
  Result<std::vector<StatusExtent>> block_status(uint64_t, uint64_t) override {
    return make_error(Errc::kUnsupported, "no status");
  }
};

TEST(ReadSparse, DefaultReadsItAllWhenStatusIsUnsupported) {
  auto d = std::make_shared<MemDisk>(65536);
  NoStatusTarget t(d);
  auto buf = filled(4096, 0xee);
  std::vector<StatusExtent> ext{{1, 0}};
  ASSERT_TRUE(t.read_sparse(4096, buf, ext).ok());
  EXPECT_TRUE(ext.empty());
  EXPECT_EQ(buf, filled(4096, 0));  // the target's bytes: never written
  EXPECT_EQ(d->reads.load(), 1);
}

TEST(ReadSparse, DefaultPassesReadErrorsOn) {
  auto d = std::make_shared<MemDisk>(65536);
  NoStatusTarget t(d);
  d->fail_next = Errc::kIo;
  auto buf = filled(4096, 0);
  std::vector<StatusExtent> ext;
  auto r = t.read_sparse(0, buf, ext);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kIo);
}

}  // namespace
}  // namespace tp::nbd
