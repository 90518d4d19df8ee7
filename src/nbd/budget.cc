#include "nbd/budget.h"

#include <algorithm>

namespace tp::nbd {

bool ByteBudget::acquire(uint64_t cost) {
  std::unique_lock lk(mu_);
  if (closed_) return false;
  const uint64_t ticket = next_ticket_++;
  cv_.wait(lk, [&] {
    return closed_ || (serving_ == ticket &&
                       (in_use_ == 0 || (in_use_ <= limit_ && cost <= limit_ - in_use_)));
  });
  if (closed_) return false;
  serving_++;
  in_use_ += cost;
  peak_ = std::max(peak_, in_use_);
  // The next ticket may fit too.
  if (serving_ != next_ticket_) cv_.notify_all();
  return true;
}

bool ByteBudget::try_acquire(uint64_t cost) {
  std::lock_guard lk(mu_);
  if (closed_ || serving_ != next_ticket_) return false;
  if (in_use_ != 0 && (in_use_ > limit_ || cost > limit_ - in_use_)) return false;
  in_use_ += cost;
  peak_ = std::max(peak_, in_use_);
  return true;
}

void ByteBudget::release(uint64_t cost) {
  std::lock_guard lk(mu_);
  in_use_ -= cost;
  if (serving_ != next_ticket_) cv_.notify_all();
}

void ByteBudget::close() {
  std::lock_guard lk(mu_);
  closed_ = true;
  cv_.notify_all();
}

uint64_t ByteBudget::in_use() {
  std::lock_guard lk(mu_);
  return in_use_;
}

uint64_t ByteBudget::peak() {
  std::lock_guard lk(mu_);
  return peak_;
}

unsigned ByteBudget::waiters() {
  std::lock_guard lk(mu_);
  return closed_ ? 0 : static_cast<unsigned>(next_ticket_ - serving_);
}

}  // namespace tp::nbd
