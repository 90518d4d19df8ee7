#include "daemon/events.h"

#include <algorithm>
#include <ctime>

namespace tp::daemon {

void EventBus::publish(nlohmann::json event) {
  std::lock_guard lk(mu_);
  event["seq"] = ++seq_;
  event["time"] = static_cast<int64_t>(std::time(nullptr));
  for (const Handle& s : subs_) {
    if (s->queue_.size() >= kQueueLimit) {
      s->queue_.pop_front();
      s->dropped_++;
    }
    s->queue_.push_back(event);
  }
  cv_.notify_all();
}

EventBus::Handle EventBus::subscribe() {
  std::lock_guard lk(mu_);
  Handle h(new Subscription(*this));
  subs_.push_back(h);
  return h;
}

void EventBus::unsubscribe(const Handle& h) {
  std::lock_guard lk(mu_);
  subs_.remove(h);
}

void EventBus::close() {
  std::lock_guard lk(mu_);
  closed_ = true;
  cv_.notify_all();
}

uint64_t EventBus::published() const {
  std::lock_guard lk(mu_);
  return seq_;
}

std::optional<nlohmann::json> EventBus::Subscription::next(std::chrono::milliseconds timeout) {
  std::unique_lock lk(bus_.mu_);
  bus_.cv_.wait_for(lk, timeout, [&] { return bus_.closed_ || !queue_.empty(); });
  if (bus_.closed_ || queue_.empty()) return std::nullopt;
  nlohmann::json ev = std::move(queue_.front());
  queue_.pop_front();
  if (dropped_) {
    ev["dropped"] = dropped_;
    dropped_ = 0;
  }
  return ev;
}

}  // namespace tp::daemon
