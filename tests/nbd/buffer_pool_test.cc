// Per-connection READ/WRITE buffers (nbd/buffer_pool.h): size classes, reuse, and the cap
// on what is kept.

#include "nbd/buffer_pool.h"

#include <gtest/gtest.h>

#include "nbd/protocol.h"

namespace tp::nbd {
namespace {

TEST(BufferPool, SizesAreRoundedUpToAPowerOfTwoFrom4KiB) {
  EXPECT_EQ(BufferPool::class_bytes(1), 4096u);
  EXPECT_EQ(BufferPool::class_bytes(4096), 4096u);
  EXPECT_EQ(BufferPool::class_bytes(4097), 8192u);
  EXPECT_EQ(BufferPool::class_bytes(65536), 65536u);
  EXPECT_EQ(BufferPool::class_bytes((1 << 20) + 1), 2u << 20);
  EXPECT_EQ(BufferPool::class_bytes(kMaxPayload), size_t{kMaxPayload});
  BufferPool p(1 << 20);
  EXPECT_EQ(p.get(5000).capacity(), 8192u);
}

TEST(BufferPool, AFreedBufferServesTheNextRequestOfItsClass) {
  BufferPool p(1 << 20);
  Buffer a = p.get(5000);
  std::byte* where = a.first(1).data();
  p.put(std::move(a));
  EXPECT_EQ(p.cached_bytes(), 8192u);
  Buffer other = p.get(4096);  // another class: a new buffer
  EXPECT_NE(other.first(1).data(), where);
  Buffer b = p.get(8192);
  EXPECT_EQ(b.first(1).data(), where);
  EXPECT_EQ(p.cached_bytes(), 0u);
}

TEST(BufferPool, KeepsNoMoreThanItsCap) {
  BufferPool p(16384);
  Buffer a = p.get(8192), b = p.get(8192), c = p.get(8192);
  p.put(std::move(a));
  p.put(std::move(b));
  p.put(std::move(c));  // over the cap: freed
  EXPECT_EQ(p.cached_bytes(), 16384u);
  p.put(Buffer());  // nothing to take
  EXPECT_EQ(p.cached_bytes(), 16384u);
  BufferPool none(0);
  none.put(none.get(100));
  EXPECT_EQ(none.cached_bytes(), 0u);
}

}  // namespace
}  // namespace tp::nbd
