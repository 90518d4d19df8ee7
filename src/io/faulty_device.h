#pragma once
// FaultyDevice wraps a real device (LevelDB's EnvWrapper pattern) and breaks it on purpose:
// fail the Nth read or write, tear a write (only a prefix of its 512-byte sectors reaches the
// media), or cut power (every write not covered by a completed flush is lost, or only some
// of them survive, in any order the device was allowed to reorder them).
//
// Every mutating call (write, discard, write_zeroes, provision, copy's destination, resize)
// counts as a "write" for the counters below. The wrapper records, for each write since the
// last completed flush, the bytes it replaced, so power_cut() can rebuild the crashed state
// in the inner device itself, without copying the whole device. Recording is per whole
// 512-byte sector. provision() and resize() count but are not recorded: provision() changes no
// content, and a resize() is durable at once.
//
// Not thread-safe: tests drive it from one thread.

#include <cstdint>
#include <functional>
#include <vector>

#include "io/block_device.h"

namespace tp::io {

enum class CrashMode {
  kDropUnflushed,  // only flushed writes survive
  kKeepPrefix,     // a random prefix of the unflushed writes survives, the last one maybe torn
  kRandomSubset,   // a random subset survives (the device may reorder between flushes)
};

class FaultyDevice final : public BlockDevice {
 public:
  // Borrows inner; it must outlive this wrapper.
  explicit FaultyDevice(BlockDevice& inner);
  ~FaultyDevice() override;

  uint64_t size() const override;
  Result<void> read(uint64_t off, std::span<std::byte> buf) override;
  Result<void> write(uint64_t off, std::span<const std::byte> buf) override;
  Result<void> flush() override;
  Result<void> discard(uint64_t off, uint64_t len) override;
  Result<void> write_zeroes(uint64_t off, uint64_t len) override;
  Result<void> provision(uint64_t off, uint64_t len) override;
  Result<void> copy(uint64_t src, uint64_t dst, uint64_t len) override;
  Result<void> resize(uint64_t new_size) override;
  uint64_t allocated_bytes() const override;
  // What the inner device holds now (unflushed writes included).
  Result<uint64_t> next_data(uint64_t off, uint64_t end) override {
    return inner_.next_data(off, end);
  }
  Result<uint64_t> next_hole(uint64_t off, uint64_t end) override {
    return inner_.next_hole(off, end);
  }

  // The n-th read / write from now (1-based) fails with Errc::kIo, once. 0 disarms.
  void fail_nth_read(uint64_t n);
  void fail_nth_write(uint64_t n);
  // Every read / write fails with kIo while set (a dead disk), until cleared.
  void set_fail_all(bool reads, bool writes);

  // After n more writes the power goes: the n-th write is the last one that reaches the
  // device (if tear_sectors > 0 it is torn: only its first tear_sectors sectors land, the
  // caller still gets kIo; untorn, it succeeds), and every later operation fails with kIo.
  // 0 disarms.
  void cut_power_after(uint64_t n, uint32_t tear_sectors = 0);
  bool power_is_cut() const { return dead_; }

  // Rebuilds, in the inner device, the state the media would hold after a power loss now,
  // as chosen by mode (seed drives the random choices), then forgets the unflushed writes
  // and revives the device. Returns how many of the unflushed writes were kept.
  uint64_t power_cut(CrashMode mode, uint64_t seed);

  // Counters since construction.
  uint64_t writes() const { return nr_writes_; }
  uint64_t reads() const { return nr_reads_; }
  uint64_t flushes() const { return nr_flushes_; }
  uint64_t unflushed_writes() const { return pending_.size(); }

 private:
  struct Pending {
    uint64_t off;
    std::vector<std::byte> old_data;  // content of [off, off+old_data.size()) before it
    std::vector<std::byte> new_data;  // content it wrote (after the whole operation)
  };
  Result<void> before_write();
  Result<void> record(uint64_t off, uint64_t len, const std::function<Result<void>()>& op);
  Result<void> after_write(Result<void> r);
  void restore(uint64_t off, std::span<const std::byte> data);

  BlockDevice& inner_;
  std::vector<Pending> pending_;
  uint64_t nr_writes_ = 0, nr_reads_ = 0, nr_flushes_ = 0;
  uint64_t fail_read_at_ = 0, fail_write_at_ = 0;
  uint64_t cut_at_ = 0;
  uint32_t tear_sectors_ = 0;
  bool fail_all_reads_ = false, fail_all_writes_ = false;
  bool dead_ = false;
  bool cutting_ = false;  // the write in progress is the last one before the power goes
};

}  // namespace tp::io
