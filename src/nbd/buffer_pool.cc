#include "nbd/buffer_pool.h"

#include <bit>
#include <cassert>

#include "nbd/protocol.h"

namespace tp::nbd {

static_assert(kMinBufferBytes == size_t{1} << 12);
static_assert(kMaxPayload == uint32_t{1} << 25);

int BufferPool::shift_for(size_t n) {
  assert(n <= kMaxPayload);
  if (n <= kMinBufferBytes) return kMinShift;
  return std::bit_width(n - 1);
}

size_t BufferPool::class_bytes(size_t n) {
  return size_t{1} << shift_for(n);
}

Buffer BufferPool::get(size_t n) {
  const int shift = shift_for(n);
  Buffer b;
  b.capacity_ = size_t{1} << shift;
  {
    std::lock_guard lk(mu_);
    auto& list = free_[shift - kMinShift];
    if (!list.empty()) {
      b.data_ = std::move(list.back());
      list.pop_back();
      cached_ -= b.capacity_;
      return b;
    }
  }
  // Not zeroed: the target or the client overwrites every byte that is sent.
  b.data_ = std::make_unique_for_overwrite<std::byte[]>(b.capacity_);
  return b;
}

void BufferPool::put(Buffer b) {
  if (b.empty()) return;
  {
    std::lock_guard lk(mu_);
    if (cached_ + b.capacity_ <= max_cached_) {
      free_[shift_for(b.capacity_) - kMinShift].push_back(std::move(b.data_));
      cached_ += b.capacity_;
      return;
    }
  }
  // Over the cap: b's destructor frees it, outside the lock.
}

uint64_t BufferPool::cached_bytes() {
  std::lock_guard lk(mu_);
  return cached_;
}

}  // namespace tp::nbd
