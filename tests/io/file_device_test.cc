#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "io/block_device.h"
#include "support/test_util.h"

namespace tp::io {
namespace {

constexpr uint64_t kMiB = 1 << 20;

std::vector<std::byte> pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; i++) v[i] = std::byte(static_cast<uint8_t>(seed + i * 7 + i / 251));
  return v;
}

std::vector<std::byte> read_back(BlockDevice& dev, uint64_t off, size_t n) {
  std::vector<std::byte> v(n, std::byte{0xEE});
  EXPECT_TRUE(dev.read(off, v).ok());
  return v;
}

bool all_zero(const std::vector<std::byte>& v) {
  return std::all_of(v.begin(), v.end(), [](std::byte b) { return b == std::byte{0}; });
}

class FileDeviceTest : public ::testing::Test {
 protected:
  std::unique_ptr<BlockDevice> create(uint64_t size) {
    auto r = create_file(path_, size);
    EXPECT_TRUE(r.ok()) << r.error().to_string();
    return r.ok() ? std::move(*r) : nullptr;
  }

  tp::testing::TempDir tmp_;
  std::string path_ = tmp_.file("dev");
};

TEST_F(FileDeviceTest, CreateMakesASparseFileOfTheGivenSize) {
  auto dev = create(64 * kMiB);
  ASSERT_TRUE(dev);
  EXPECT_EQ(dev->size(), 64 * kMiB);
  EXPECT_LT(dev->allocated_bytes(), kMiB);
  EXPECT_TRUE(all_zero(read_back(*dev, 32 * kMiB, 4096)));
}

TEST_F(FileDeviceTest, CreateFailsIfTheFileExists) {
  ASSERT_TRUE(create(4096));
  auto again = create_file(path_, 4096);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, Errc::kExists);
}

TEST_F(FileDeviceTest, OpenOfAMissingFileIsNotFound) {
  auto r = open_file(tmp_.file("missing"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kNotFound);
  EXPECT_EQ(r.error().sys_errno, ENOENT);
}

TEST_F(FileDeviceTest, RoundTripAtOddOffsets) {
  auto dev = create(4 * kMiB);
  ASSERT_TRUE(dev);
  auto data = pattern(3 * 4096 + 333, 1);
  ASSERT_TRUE(dev->write(4096 - 17, data).ok());
  EXPECT_EQ(read_back(*dev, 4096 - 17, data.size()), data);
  EXPECT_TRUE(all_zero(read_back(*dev, 0, 4096 - 17)));
}

TEST_F(FileDeviceTest, FlushedDataSurvivesReopen) {
  auto data = pattern(10000, 2);
  {
    auto dev = create(kMiB);
    ASSERT_TRUE(dev);
    ASSERT_TRUE(dev->write(555, data).ok());
    ASSERT_TRUE(dev->flush().ok());
  }
  auto r = open_file(path_);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ((*r)->size(), kMiB);
  EXPECT_EQ(read_back(**r, 555, data.size()), data);
}

TEST_F(FileDeviceTest, ReadPastEndFails) {
  auto dev = create(8192);
  ASSERT_TRUE(dev);
  std::vector<std::byte> buf(100);
  EXPECT_EQ(dev->read(8192 - 99, buf).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(dev->read(~uint64_t{0} - 10, buf).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(dev->write(8192, buf).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(dev->size(), 8192u);  // the failed write did not extend the file
}

TEST_F(FileDeviceTest, ReadOnlyOpenRefusesWritesButReads) {
  auto data = pattern(4096, 3);
  {
    auto dev = create(kMiB);
    ASSERT_TRUE(dev);
    ASSERT_TRUE(dev->write(0, data).ok());
  }
  auto r = open_file(path_, /*read_only=*/true);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(read_back(**r, 0, 4096), data);
  EXPECT_EQ((*r)->write(0, data).error().code, Errc::kReadOnly);
  EXPECT_EQ((*r)->discard(0, 4096).error().code, Errc::kReadOnly);
  EXPECT_EQ((*r)->resize(2 * kMiB).error().code, Errc::kReadOnly);
}

TEST_F(FileDeviceTest, DiscardReadsZeroAndShrinksAllocation) {
  auto dev = create(4 * kMiB);
  ASSERT_TRUE(dev);
  ASSERT_TRUE(dev->write(kMiB, pattern(kMiB, 4)).ok());
  ASSERT_TRUE(dev->flush().ok());
  uint64_t before = dev->allocated_bytes();
  ASSERT_GE(before, kMiB);
  ASSERT_TRUE(dev->discard(kMiB, kMiB).ok());
  EXPECT_TRUE(all_zero(read_back(*dev, kMiB, kMiB)));
  EXPECT_LE(dev->allocated_bytes(), before - kMiB);
}

TEST_F(FileDeviceTest, WriteZeroesZeroesTheRangeOnly) {
  auto dev = create(kMiB);
  ASSERT_TRUE(dev);
  auto data = pattern(64 * 1024, 5);
  ASSERT_TRUE(dev->write(0, data).ok());
  ASSERT_TRUE(dev->write_zeroes(1000, 20000).ok());
  std::fill(data.begin() + 1000, data.begin() + 21000, std::byte{0});
  EXPECT_EQ(read_back(*dev, 0, data.size()), data);
}

TEST_F(FileDeviceTest, ProvisionRaisesAllocatedBytesKeepsContent) {
  auto dev = create(16 * kMiB);
  ASSERT_TRUE(dev);
  auto data = pattern(100, 6);
  ASSERT_TRUE(dev->write(2 * kMiB + 7, data).ok());
  uint64_t before = dev->allocated_bytes();
  ASSERT_TRUE(dev->provision(2 * kMiB, 4 * kMiB).ok());
  EXPECT_GE(dev->allocated_bytes(), before + 3 * kMiB);
  EXPECT_EQ(dev->size(), 16 * kMiB);
  EXPECT_EQ(read_back(*dev, 2 * kMiB + 7, data.size()), data);
  EXPECT_TRUE(all_zero(read_back(*dev, 3 * kMiB, 4096)));
}

TEST_F(FileDeviceTest, CopyAcrossRanges) {
  auto dev = create(8 * kMiB);
  ASSERT_TRUE(dev);
  auto data = pattern(2 * kMiB + 4321, 7);
  ASSERT_TRUE(dev->write(12345, data).ok());
  ASSERT_TRUE(dev->copy(12345, 5 * kMiB + 1, data.size()).ok());
  EXPECT_EQ(read_back(*dev, 5 * kMiB + 1, data.size()), data);
  EXPECT_EQ(read_back(*dev, 12345, data.size()), data);
}

TEST_F(FileDeviceTest, CopyOutOfRangeFails) {
  auto dev = create(kMiB);
  ASSERT_TRUE(dev);
  EXPECT_EQ(dev->copy(0, kMiB - 10, 11).error().code, Errc::kInvalidArgument);
}

TEST_F(FileDeviceTest, ResizeGrowsSparse) {
  auto dev = create(kMiB);
  ASSERT_TRUE(dev);
  auto data = pattern(4096, 8);
  ASSERT_TRUE(dev->write(0, data).ok());
  uint64_t before = dev->allocated_bytes();
  ASSERT_TRUE(dev->resize(1024 * kMiB).ok());
  EXPECT_EQ(dev->size(), 1024 * kMiB);
  EXPECT_LE(dev->allocated_bytes(), before + 64 * 1024);
  EXPECT_TRUE(all_zero(read_back(*dev, 1024 * kMiB - 4096, 4096)));
  EXPECT_EQ(read_back(*dev, 0, 4096), data);
  // The new size is what a reopen sees.
  dev.reset();
  auto r = open_file(path_);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)->size(), 1024 * kMiB);
}

}  // namespace
}  // namespace tp::io
