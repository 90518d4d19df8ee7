#include <gtest/gtest.h>

#include <algorithm>
#include <thread>
#include <vector>

#include "io/block_device.h"

namespace tp::io {
namespace {

constexpr uint64_t kPage = 4096;

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
  for (std::byte b : v) {
    if (b != std::byte{0}) return false;
  }
  return true;
}

TEST(MemDevice, NewDeviceReadsZerosAndAllocatesNothing) {
  auto dev = make_mem_device(1 << 20);
  EXPECT_EQ(dev->size(), uint64_t{1} << 20);
  EXPECT_EQ(dev->allocated_bytes(), 0u);
  EXPECT_TRUE(all_zero(read_back(*dev, 12345, 10000)));
}

TEST(MemDevice, RoundTripAtOddOffsetsAcrossPages) {
  auto dev = make_mem_device(1 << 20);
  auto data = pattern(3 * kPage + 333, 1);
  ASSERT_TRUE(dev->write(kPage - 17, data).ok());
  EXPECT_EQ(read_back(*dev, kPage - 17, data.size()), data);
  // The bytes around the write are untouched.
  EXPECT_TRUE(all_zero(read_back(*dev, 0, kPage - 17)));
  EXPECT_TRUE(all_zero(read_back(*dev, kPage - 17 + data.size(), 100)));
  EXPECT_EQ(dev->allocated_bytes(), 5 * kPage);
}

TEST(MemDevice, OutOfRangeCallsAreInvalidArgument) {
  auto dev = make_mem_device(8 * kPage);
  std::vector<std::byte> buf(100);
  EXPECT_EQ(dev->read(8 * kPage - 99, buf).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(dev->write(8 * kPage, buf).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(dev->read(~uint64_t{0} - 10, buf).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(dev->discard(0, 8 * kPage + 1).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(dev->write_zeroes(4 * kPage, 5 * kPage).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(dev->provision(9 * kPage, 0).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(dev->copy(0, 7 * kPage, 2 * kPage).error().code, Errc::kInvalidArgument);
  EXPECT_TRUE(dev->read(8 * kPage - 100, buf).ok());
  EXPECT_EQ(dev->allocated_bytes(), 0u);
}

TEST(MemDevice, DiscardReadsZeroAndFreesWholePages) {
  auto dev = make_mem_device(16 * kPage);
  ASSERT_TRUE(dev->write(0, pattern(16 * kPage, 2)).ok());
  ASSERT_EQ(dev->allocated_bytes(), 16 * kPage);
  ASSERT_TRUE(dev->discard(2 * kPage, 4 * kPage).ok());
  EXPECT_TRUE(all_zero(read_back(*dev, 2 * kPage, 4 * kPage)));
  EXPECT_EQ(dev->allocated_bytes(), 12 * kPage);
  auto data = pattern(16 * kPage, 2);
  std::fill(data.begin() + 2 * kPage, data.begin() + 6 * kPage, std::byte{0});
  EXPECT_EQ(read_back(*dev, 0, 16 * kPage), data);
}

TEST(MemDevice, DiscardZeroesPartialPagesAndKeepsTheRest) {
  auto dev = make_mem_device(4 * kPage);
  auto data = pattern(4 * kPage, 3);
  ASSERT_TRUE(dev->write(0, data).ok());
  ASSERT_TRUE(dev->discard(100, kPage).ok());  // the ends of pages 0 and 1: neither whole
  auto expect = data;
  std::fill(expect.begin() + 100, expect.begin() + 100 + kPage, std::byte{0});
  EXPECT_EQ(read_back(*dev, 0, 4 * kPage), expect);
  EXPECT_EQ(dev->allocated_bytes(), 4 * kPage);
}

TEST(MemDevice, WriteZeroesZeroesAndAllocates) {
  auto dev = make_mem_device(8 * kPage);
  ASSERT_TRUE(dev->write(kPage, pattern(kPage, 4)).ok());
  ASSERT_TRUE(dev->write_zeroes(kPage / 2, 3 * kPage).ok());
  EXPECT_TRUE(all_zero(read_back(*dev, 0, 8 * kPage)));
  EXPECT_EQ(dev->allocated_bytes(), 4 * kPage);
}

TEST(MemDevice, ProvisionAllocatesWithoutChangingContent) {
  auto dev = make_mem_device(8 * kPage);
  auto data = pattern(10, 5);
  ASSERT_TRUE(dev->write(kPage + 5, data).ok());
  ASSERT_TRUE(dev->provision(kPage, 3 * kPage).ok());
  EXPECT_EQ(dev->allocated_bytes(), 3 * kPage);
  EXPECT_EQ(read_back(*dev, kPage + 5, 10), data);
  EXPECT_TRUE(all_zero(read_back(*dev, 2 * kPage, 2 * kPage)));
}

TEST(MemDevice, CopyMovesDataBetweenRangesInChunks) {
  // Larger than the 1 MiB bounce buffer of BlockDevice::copy, at unaligned offsets.
  constexpr uint64_t kLen = (5 << 20) / 2 + 123;
  auto dev = make_mem_device(8 << 20);
  auto data = pattern(kLen, 6);
  ASSERT_TRUE(dev->write(77, data).ok());
  ASSERT_TRUE(dev->copy(77, (4 << 20) + 5, kLen).ok());
  EXPECT_EQ(read_back(*dev, (4 << 20) + 5, kLen), data);
  EXPECT_EQ(read_back(*dev, 77, kLen), data);
}

TEST(MemDevice, ResizeGrowsSparse) {
  auto dev = make_mem_device(4 * kPage);
  ASSERT_TRUE(dev->write(0, pattern(4 * kPage, 7)).ok());
  ASSERT_TRUE(dev->resize(1 << 30).ok());
  EXPECT_EQ(dev->size(), uint64_t{1} << 30);
  EXPECT_EQ(dev->allocated_bytes(), 4 * kPage);
  EXPECT_TRUE(all_zero(read_back(*dev, (1 << 30) - kPage, kPage)));
  EXPECT_EQ(read_back(*dev, 0, 4 * kPage), pattern(4 * kPage, 7));
}

TEST(MemDevice, ShrinkThenGrowExposesZeros) {
  auto dev = make_mem_device(4 * kPage);
  ASSERT_TRUE(dev->write(0, pattern(4 * kPage, 8)).ok());
  ASSERT_TRUE(dev->resize(kPage + 10).ok());
  EXPECT_EQ(dev->allocated_bytes(), 2 * kPage);
  std::vector<std::byte> buf(11);
  EXPECT_EQ(dev->read(kPage, buf).error().code, Errc::kInvalidArgument);
  ASSERT_TRUE(dev->resize(4 * kPage).ok());
  auto expect = pattern(4 * kPage, 8);
  std::fill(expect.begin() + kPage + 10, expect.end(), std::byte{0});
  EXPECT_EQ(read_back(*dev, 0, 4 * kPage), expect);
}

TEST(MemDevice, ConcurrentWritesToDisjointRangesAllLand) {
  constexpr int kThreads = 8;
  constexpr uint64_t kSpan = 64 * 1024 + 100;
  auto dev = make_mem_device(kThreads * kSpan);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&, t] {
      auto data = pattern(kSpan, static_cast<uint8_t>(t));
      for (int round = 0; round < 20; round++) {
        EXPECT_TRUE(dev->write(t * kSpan, data).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; t++) {
    EXPECT_EQ(read_back(*dev, t * kSpan, kSpan), pattern(kSpan, static_cast<uint8_t>(t)));
  }
}

}  // namespace
}  // namespace tp::io
