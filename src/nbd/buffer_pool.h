#pragma once
// READ/WRITE payload buffers of one connection, reused so that a request in steady state
// allocates nothing (a 4 KiB READ costs a few microseconds; malloc, free and zeroing a
// fresh vector were a visible part of that).
//
// Sizes come in classes: powers of two from kMinBufferBytes to kMaxPayload. A request gets
// a buffer of its class (less than twice its length), so a freed buffer serves any later
// request of the same class; the session charges the class size against its budgets
// (session.h), which therefore bound the bytes really allocated. Freed buffers are kept up
// to max_cached bytes (over every class), the rest goes back to the heap; a buffer is
// uninitialised when new and holds an earlier request's bytes when reused, so a user must
// overwrite what it sends.
//
// Thread-safety: get, put and cached_bytes from any thread (one mutex, held for a pop or a
// push; never while allocating or freeing a buffer).

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

namespace tp::nbd {

inline constexpr size_t kMinBufferBytes = 4096;

// One buffer, owned; move-only.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Buffer&&) noexcept = default;
  Buffer& operator=(Buffer&&) noexcept = default;

  size_t capacity() const { return capacity_; }
  bool empty() const { return capacity_ == 0; }
  // The first n bytes. REQUIRES: n <= capacity().
  std::span<std::byte> first(size_t n) { return {data_.get(), n}; }

 private:
  friend class BufferPool;
  std::unique_ptr<std::byte[]> data_;
  size_t capacity_ = 0;
};

class BufferPool {
 public:
  explicit BufferPool(uint64_t max_cached) : max_cached_(max_cached) {}
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // The capacity of the buffer get(n) returns: n rounded up to a power of two, at least
  // kMinBufferBytes. REQUIRES: n <= kMaxPayload.
  static size_t class_bytes(size_t n);

  // A buffer of class_bytes(n): a cached one of that class, else a new one.
  // REQUIRES: n <= kMaxPayload.
  Buffer get(size_t n);
  // Takes b back: kept for reuse while the cache stays within max_cached, else freed.
  // An empty Buffer is ignored.
  void put(Buffer b);

  uint64_t cached_bytes();

 private:
  static constexpr int kMinShift = 12;  // kMinBufferBytes
  static constexpr int kMaxShift = 25;  // kMaxPayload
  static int shift_for(size_t n);

  const uint64_t max_cached_;
  std::mutex mu_;
  uint64_t cached_ = 0;
  std::array<std::vector<std::unique_ptr<std::byte[]>>, kMaxShift - kMinShift + 1> free_;
};

}  // namespace tp::nbd
