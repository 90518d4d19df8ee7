#pragma once
// A BlockDevice that forwards every call to a device the test owns, so a test can hand a
// pool its own shell (the pool owns the shell) and keep the device: a FaultyDevice to
// inspect, a recorder, or a wrapper that changes one call (derive and override it).

#include <memory>

#include "io/block_device.h"
#include "io/faulty_device.h"

namespace tp::testing {

class ForwardingDevice : public io::BlockDevice {
 public:
  explicit ForwardingDevice(io::BlockDevice& d) : d_(d) {}
  uint64_t size() const override { return d_.size(); }
  Result<void> read(uint64_t o, std::span<std::byte> b) override { return d_.read(o, b); }
  Result<void> write(uint64_t o, std::span<const std::byte> b) override { return d_.write(o, b); }
  Result<void> flush() override { return d_.flush(); }
  Result<void> discard(uint64_t o, uint64_t l) override { return d_.discard(o, l); }
  Result<void> write_zeroes(uint64_t o, uint64_t l) override { return d_.write_zeroes(o, l); }
  Result<void> provision(uint64_t o, uint64_t l) override { return d_.provision(o, l); }
  Result<void> copy(uint64_t s, uint64_t d, uint64_t l) override { return d_.copy(s, d, l); }
  Result<void> resize(uint64_t n) override { return d_.resize(n); }
  uint64_t allocated_bytes() const override { return d_.allocated_bytes(); }
  Result<uint64_t> next_data(uint64_t o, uint64_t e) override { return d_.next_data(o, e); }
  Result<uint64_t> next_hole(uint64_t o, uint64_t e) override { return d_.next_hole(o, e); }

 private:
  io::BlockDevice& d_;
};

// A FaultyDevice over the device a pool opens, for Pool::open's device wrappers:
//   FaultyShell f;  auto p = Pool::open(dir, f.wrap());  f.dev->fail_nth_write(1);
// Declare it before the pool (it must outlive it); each wrap() call replaces dev.
struct FaultyShell {
  std::unique_ptr<io::BlockDevice> inner;
  std::unique_ptr<io::FaultyDevice> dev;
  auto wrap() {
    return [this](std::unique_ptr<io::BlockDevice> d) -> std::unique_ptr<io::BlockDevice> {
      inner = std::move(d);
      dev = std::make_unique<io::FaultyDevice>(*inner);
      return std::make_unique<ForwardingDevice>(*dev);
    };
  }
};

}  // namespace tp::testing
