#pragma once
// The io layer: every byte thinpool reads or writes goes through a BlockDevice, so tests can
// replace the disk (MemBlockDevice) or break it on purpose (FaultyDevice).
//
// Thread-safety: read/write/discard/write_zeroes/provision/copy on non-overlapping ranges may
// run concurrently from several threads. flush() may run concurrently with them; it makes
// durable every write that completed before flush() was called. resize() must not run
// concurrently with anything else.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "io/result.h"

namespace tp::io {

class BlockDevice {
 public:
  BlockDevice() = default;
  BlockDevice(const BlockDevice&) = delete;
  BlockDevice& operator=(const BlockDevice&) = delete;
  virtual ~BlockDevice() = default;

  // Size in bytes.
  virtual uint64_t size() const = 0;

  // REQUIRES: off + buf.size() <= size(). Short reads/writes are retried inside; a
  // failure is Errc::kIo (or kNoSpace when the host filesystem is full).
  virtual Result<void> read(uint64_t off, std::span<std::byte> buf) = 0;
  virtual Result<void> write(uint64_t off, std::span<const std::byte> buf) = 0;

  // Makes every completed write durable (fdatasync).
  virtual Result<void> flush() = 0;

  // Deallocates the range; afterwards it reads as zeros (file: punch hole).
  virtual Result<void> discard(uint64_t off, uint64_t len) = 0;

  // Writes zeros over the range; the range stays (or becomes) allocated.
  virtual Result<void> write_zeroes(uint64_t off, uint64_t len) = 0;

  // Allocates backing store for the range without changing its content (fallocate mode 0),
  // so later writes there cannot fail for lack of space in the host filesystem.
  virtual Result<void> provision(uint64_t off, uint64_t len) = 0;

  // Copies len bytes from src to dst inside this device (copy_file_range on a file).
  // REQUIRES: the ranges do not overlap.
  virtual Result<void> copy(uint64_t src, uint64_t dst, uint64_t len);

  // A file descriptor the bytes of read() may be read from directly (pread, io_uring), or
  // -1: read() only (memory, fault injection). Valid as long as the device.
  virtual int read_fd() const { return -1; }

  // Grows (or shrinks) the device. A file grows sparse.
  virtual Result<void> resize(uint64_t new_size) = 0;

  // Bytes of backing store in use (st_blocks * 512 for a file), for space reporting.
  virtual uint64_t allocated_bytes() const = 0;

  // Holes (ranges that read as zeros without backing store; a file's SEEK_DATA/SEEK_HOLE).
  // next_data: the first offset in [off, end) that may hold data, or end when the whole
  // range is a hole. next_hole: the first offset in [off, end) where a hole starts, or end.
  // A device that cannot tell reports no holes (the defaults). REQUIRES: off <= end <= size().
  virtual Result<uint64_t> next_data(uint64_t off, uint64_t end) {
    (void)end;
    return off;
  }
  virtual Result<uint64_t> next_hole(uint64_t off, uint64_t end) {
    (void)off;
    return end;
  }
};

// A regular file (or a block device node) opened with O_RDWR.
// create: make a new sparse file of `size` bytes (fails if it exists).
Result<std::unique_ptr<BlockDevice>> open_file(const std::string& path, bool read_only = false);
Result<std::unique_ptr<BlockDevice>> create_file(const std::string& path, uint64_t size);

// Bytes in memory; discard really frees (tracked per 4 KiB page) so allocated_bytes() is honest.
std::unique_ptr<BlockDevice> make_mem_device(uint64_t size);

}  // namespace tp::io
