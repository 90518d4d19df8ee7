// Fault injection over a real device. The model of the media, in 512-byte sectors:
//
// - Every mutating call goes straight to the inner device (which plays the role of the
//   drive's volatile cache), and the wrapper remembers, per call since the last completed
//   flush, the whole sectors it touched: their content before and after the call. Sub-sector
//   calls are widened to whole sectors, like the read-modify-write a real stack would do.
// - power_cut() picks which of those calls survive, undoes every one of them newest first
//   (each touched sector gets back its content at the last flush), then replays the
//   survivors oldest first (each sector ends with the last survivor's content). A sector
//   therefore only ever holds content that some call or the flushed state gave it.
//
// provision() and resize() count as writes (fault injection applies to them) but are not
// recorded: provision() does not change content, and resize() is treated as durable at once
// (after a shrink, recorded content past the new end is simply not replayed).
#include "io/faulty_device.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>

namespace tp::io {
namespace {

constexpr uint64_t kSectorSize = 512;

Error injected(const char* what) {
  return make_error(Errc::kIo, what);
}

}  // namespace

FaultyDevice::FaultyDevice(BlockDevice& inner) : inner_(inner) {}
FaultyDevice::~FaultyDevice() = default;

uint64_t FaultyDevice::size() const {
  return inner_.size();
}
uint64_t FaultyDevice::allocated_bytes() const {
  return inner_.allocated_bytes();
}

Result<void> FaultyDevice::read(uint64_t off, std::span<std::byte> buf) {
  if (dead_) return injected("faulty device: power is cut");
  nr_reads_++;
  // The counters only grow, so an armed fail_nth_* fires once.
  if (fail_all_reads_ || nr_reads_ == fail_read_at_) {
    return injected("faulty device: injected read error");
  }
  return inner_.read(off, buf);
}

Result<void> FaultyDevice::flush() {
  if (dead_) return injected("faulty device: power is cut");
  nr_flushes_++;
  TP_TRY(inner_.flush());
  pending_.clear();
  return ok_result();
}

Result<void> FaultyDevice::write(uint64_t off, std::span<const std::byte> buf) {
  return record(off, buf.size(), [&] { return inner_.write(off, buf); });
}

Result<void> FaultyDevice::discard(uint64_t off, uint64_t len) {
  return record(off, len, [&] { return inner_.discard(off, len); });
}

Result<void> FaultyDevice::write_zeroes(uint64_t off, uint64_t len) {
  return record(off, len, [&] { return inner_.write_zeroes(off, len); });
}

Result<void> FaultyDevice::copy(uint64_t src, uint64_t dst, uint64_t len) {
  return record(dst, len, [&] { return inner_.copy(src, dst, len); });
}

Result<void> FaultyDevice::provision(uint64_t off, uint64_t len) {
  TP_TRY(before_write());
  return after_write(inner_.provision(off, len));
}

Result<void> FaultyDevice::resize(uint64_t new_size) {
  TP_TRY(before_write());
  return after_write(inner_.resize(new_size));
}

void FaultyDevice::fail_nth_read(uint64_t n) {
  fail_read_at_ = n ? nr_reads_ + n : 0;
}
void FaultyDevice::fail_nth_write(uint64_t n) {
  fail_write_at_ = n ? nr_writes_ + n : 0;
}

void FaultyDevice::set_fail_all(bool reads, bool writes) {
  fail_all_reads_ = reads;
  fail_all_writes_ = writes;
}

void FaultyDevice::cut_power_after(uint64_t n, uint32_t tear_sectors) {
  cut_at_ = n ? nr_writes_ + n : 0;
  tear_sectors_ = tear_sectors;
}

// Counts the write and decides its fate. On success the call goes to the inner device;
// cutting_ then says it is the last one before the power goes.
Result<void> FaultyDevice::before_write() {
  if (dead_) return injected("faulty device: power is cut");
  nr_writes_++;
  cutting_ = nr_writes_ == cut_at_;
  if (fail_all_writes_ || nr_writes_ == fail_write_at_) {
    // The cut still happens, right after a write that never reached the device.
    if (cutting_) dead_ = true;
    cutting_ = false;
    return injected("faulty device: injected write error");
  }
  return ok_result();
}

// A torn last write reports kIo; an untorn one completed before the power went.
Result<void> FaultyDevice::after_write(Result<void> r) {
  if (!cutting_) return r;
  cutting_ = false;
  dead_ = true;
  if (tear_sectors_ > 0) return injected("faulty device: write torn by power cut");
  return r;
}

Result<void> FaultyDevice::record(uint64_t off, uint64_t len,
                                  const std::function<Result<void>()>& op) {
  TP_TRY(before_write());
  auto run = [&]() -> Result<void> {
    uint64_t dev_size = inner_.size();
    if (len == 0 || len > dev_size || off > dev_size - len) {
      return op();  // nothing to record: a no-op, or the inner device refuses it
    }
    // Whole sectors (the last one may be cut short by the end of the device).
    uint64_t begin = off / kSectorSize * kSectorSize;
    uint64_t end = std::min((off + len + kSectorSize - 1) / kSectorSize * kSectorSize, dev_size);
    Pending p{begin, std::vector<std::byte>(end - begin), std::vector<std::byte>(end - begin)};
    TP_TRY(inner_.read(begin, p.old_data));  // inner_: does not count as a read
    Result<void> r = op();
    // Even a failed call may have changed part of the range: record what it left there.
    TP_TRY(inner_.read(begin, p.new_data));
    if (cutting_ && tear_sectors_ > 0) {
      // Only the first tear_sectors_ sectors reached the media; put the rest back.
      uint64_t landed = std::min<uint64_t>(uint64_t{tear_sectors_} * kSectorSize, end - begin);
      auto rest = std::span(p.old_data).subspan(landed);
      std::copy(rest.begin(), rest.end(), p.new_data.begin() + static_cast<ptrdiff_t>(landed));
      TP_TRY(inner_.write(begin + landed, rest));
    }
    pending_.push_back(std::move(p));
    return r;
  };
  return after_write(run());
}

uint64_t FaultyDevice::power_cut(CrashMode mode, uint64_t seed) {
  std::mt19937_64 rng(seed);
  // keep[i]: how many leading bytes of pending_[i].new_data survive (0: none).
  std::vector<uint64_t> keep(pending_.size(), 0);
  switch (mode) {
    case CrashMode::kDropUnflushed:
      break;
    case CrashMode::kKeepPrefix: {
      size_t n = std::uniform_int_distribution<size_t>(0, pending_.size())(rng);
      for (size_t i = 0; i < n; i++) keep[i] = pending_[i].new_data.size();
      if (n > 0) {
        // Tear the last survivor after 1..all of its sectors (all: not torn).
        uint64_t bytes = keep[n - 1];
        uint64_t sectors = (bytes + kSectorSize - 1) / kSectorSize;
        uint64_t t = std::uniform_int_distribution<uint64_t>(1, sectors)(rng);
        keep[n - 1] = std::min(bytes, t * kSectorSize);
      }
      break;
    }
    case CrashMode::kRandomSubset:
      for (size_t i = 0; i < pending_.size(); i++) {
        if (rng() & 1) keep[i] = pending_[i].new_data.size();
      }
      break;
  }
  for (size_t i = pending_.size(); i-- > 0;) {
    restore(pending_[i].off, pending_[i].old_data);
  }
  uint64_t kept = 0;
  for (size_t i = 0; i < pending_.size(); i++) {
    if (keep[i] == 0) continue;
    restore(pending_[i].off, std::span(pending_[i].new_data).first(keep[i]));
    kept++;
  }
  pending_.clear();
  dead_ = false;
  cutting_ = false;
  cut_at_ = 0;
  return kept;
}

// Writes recorded content back to the inner device, clipped to its current size (it may have
// shrunk since). power_cut() cannot return an error, and carrying on would silently corrupt
// the crash image under test, so a failure here aborts.
void FaultyDevice::restore(uint64_t off, std::span<const std::byte> data) {
  uint64_t dev_size = inner_.size();
  if (off >= dev_size) return;
  data = data.first(static_cast<size_t>(std::min<uint64_t>(data.size(), dev_size - off)));
  Result<void> r = inner_.write(off, data);
  if (!r.ok()) {
    std::fprintf(stderr, "FaultyDevice::power_cut: cannot rebuild the media: %s\n",
                 r.error().to_string().c_str());
    std::abort();
  }
}

}  // namespace tp::io
