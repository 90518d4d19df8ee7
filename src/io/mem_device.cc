// BlockDevice in memory, stored sparsely in 4 KiB pages: a page that was never written (or was
// discarded) is absent and reads as zeros, so allocated_bytes() behaves like a sparse file's.
#include <algorithm>
#include <array>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "io/block_device.h"

namespace tp::io {
namespace {

constexpr uint64_t kPageSize = 4096;
using Page = std::array<std::byte, kPageSize>;

class MemDevice final : public BlockDevice {
 public:
  explicit MemDevice(uint64_t size) : size_(size) {}

  uint64_t size() const override {
    std::lock_guard lock(mu_);
    return size_;
  }

  Result<void> read(uint64_t off, std::span<std::byte> buf) override {
    std::lock_guard lock(mu_);
    TP_TRY(check(off, buf.size()));
    for_each_page(off, buf.size(), [&](uint64_t idx, size_t in_page, size_t n, size_t pos) {
      auto it = pages_.find(idx);
      if (it == pages_.end()) {
        std::memset(buf.data() + pos, 0, n);
      } else {
        std::memcpy(buf.data() + pos, it->second->data() + in_page, n);
      }
    });
    return ok_result();
  }

  Result<void> write(uint64_t off, std::span<const std::byte> buf) override {
    std::lock_guard lock(mu_);
    TP_TRY(check(off, buf.size()));
    for_each_page(off, buf.size(), [&](uint64_t idx, size_t in_page, size_t n, size_t pos) {
      std::memcpy(page(idx).data() + in_page, buf.data() + pos, n);
    });
    return ok_result();
  }

  Result<void> flush() override { return ok_result(); }

  Result<void> discard(uint64_t off, uint64_t len) override {
    std::lock_guard lock(mu_);
    TP_TRY(check(off, len));
    for_each_page(off, len, [&](uint64_t idx, size_t in_page, size_t n, size_t) {
      auto it = pages_.find(idx);
      if (it == pages_.end()) return;
      if (n == kPageSize) {
        pages_.erase(it);
      } else {
        std::memset(it->second->data() + in_page, 0, n);
      }
    });
    return ok_result();
  }

  Result<void> write_zeroes(uint64_t off, uint64_t len) override {
    std::lock_guard lock(mu_);
    TP_TRY(check(off, len));
    for_each_page(off, len, [&](uint64_t idx, size_t in_page, size_t n, size_t) {
      std::memset(page(idx).data() + in_page, 0, n);
    });
    return ok_result();
  }

  Result<void> provision(uint64_t off, uint64_t len) override {
    std::lock_guard lock(mu_);
    TP_TRY(check(off, len));
    for_each_page(off, len, [&](uint64_t idx, size_t, size_t, size_t) { page(idx); });
    return ok_result();
  }

  Result<void> resize(uint64_t new_size) override {
    std::lock_guard lock(mu_);
    if (new_size < size_) {
      // Drop whole pages past the end and zero the tail of the last one, so that growing
      // again later exposes zeros, as ftruncate does.
      uint64_t first_gone = (new_size + kPageSize - 1) / kPageSize;
      std::erase_if(pages_, [&](const auto& kv) { return kv.first >= first_gone; });
      if (new_size % kPageSize != 0) {
        auto it = pages_.find(new_size / kPageSize);
        if (it != pages_.end()) {
          size_t keep = new_size % kPageSize;
          std::memset(it->second->data() + keep, 0, kPageSize - keep);
        }
      }
    }
    size_ = new_size;
    return ok_result();
  }

  uint64_t allocated_bytes() const override {
    std::lock_guard lock(mu_);
    return pages_.size() * kPageSize;
  }

  // A present page counts as data (even if it holds zeros), an absent one is a hole.
  Result<uint64_t> next_data(uint64_t off, uint64_t end) override {
    std::lock_guard lock(mu_);
    return seek(off, end, true);
  }
  Result<uint64_t> next_hole(uint64_t off, uint64_t end) override {
    std::lock_guard lock(mu_);
    return seek(off, end, false);
  }

 private:
  Result<void> check(uint64_t off, uint64_t len) const {
    if (len > size_ || off > size_ - len) {
      return make_error(Errc::kInvalidArgument, "mem device: range beyond end", off);
    }
    return ok_result();
  }

  // The first offset in [off, end) on a present (data) or absent (hole) page, or end.
  uint64_t seek(uint64_t off, uint64_t end, bool data) const {
    for (uint64_t idx = off / kPageSize; idx * kPageSize < end; idx++) {
      if ((pages_.count(idx) != 0) == data) return std::max(off, idx * kPageSize);
    }
    return end;
  }

  // The page at index idx, allocated (zero-filled) if absent.
  Page& page(uint64_t idx) {
    auto& p = pages_[idx];
    if (!p) p = std::make_unique<Page>();  // value-initialised: zeros
    return *p;
  }

  // Calls fn(page index, offset in page, length, offset in the caller's range) for each
  // page-sized piece of [off, off + len).
  template <typename Fn>
  static void for_each_page(uint64_t off, uint64_t len, Fn fn) {
    for (uint64_t pos = 0; pos < len;) {
      uint64_t in_page = (off + pos) % kPageSize;
      uint64_t n = std::min(kPageSize - in_page, len - pos);
      fn((off + pos) / kPageSize, static_cast<size_t>(in_page), static_cast<size_t>(n),
         static_cast<size_t>(pos));
      pos += n;
    }
  }

  mutable std::mutex mu_;  // guards everything below
  uint64_t size_;
  std::unordered_map<uint64_t, std::unique_ptr<Page>> pages_;
};

}  // namespace

std::unique_ptr<BlockDevice> make_mem_device(uint64_t size) {
  return std::make_unique<MemDevice>(size);
}

}  // namespace tp::io
