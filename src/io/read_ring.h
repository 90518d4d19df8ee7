#pragma once
// Reads in flight without a thread each (io_uring, through liburing): one thread queues
// reads and submits them together, so a burst of reads that miss the page cache reaches the
// disk as one batch; another thread takes their completions. This is how the NBD server
// keeps every READ of a deep queue at the disk at once (DESIGN.md "The I/O path and
// commits").
//
// Thread-safety: one submitting thread (queue_read, queue_wake, submit) and one completing
// thread (wait) may use a ring at once; nothing else.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "io/result.h"

namespace tp::io {

class ReadRing {
 public:
  struct Completion {
    uint64_t tag = 0;
    int32_t result = 0;  // bytes read, or -errno
  };

  // A ring with room for `entries` reads queued or in flight (a power of two is best). Fails
  // (kUnsupported) where io_uring cannot be had: an old kernel, a seccomp filter, or
  // kernel.io_uring_disabled; callers then read synchronously.
  static Result<std::unique_ptr<ReadRing>> create(unsigned entries);

  ReadRing(const ReadRing&) = delete;
  ReadRing& operator=(const ReadRing&) = delete;
  ~ReadRing();

  unsigned capacity() const { return capacity_; }
  // Queues a pread(fd, buf, off); false when the submission queue is full (submit first).
  bool queue_read(int fd, std::span<std::byte> buf, uint64_t off, uint64_t tag);
  // Queues an entry that completes at once with `tag`: wakes the completing thread.
  bool queue_wake(uint64_t tag);
  // Hands what is queued to the kernel. Never waits for a read.
  Result<void> submit();
  // Waits for at least one completion, then takes up to out.size() of them; returns how
  // many it took (0 only on an error of the wait itself, given as a Result error).
  Result<size_t> wait(std::span<Completion> out);

 private:
  struct Impl;
  explicit ReadRing(std::unique_ptr<Impl> impl, unsigned capacity);
  std::unique_ptr<Impl> impl_;
  unsigned capacity_;
};

// pread until buf is full: the rest of a short read. kIo on an error or the end of the file.
Result<void> pread_all(int fd, std::span<std::byte> buf, uint64_t off);

}  // namespace tp::io
