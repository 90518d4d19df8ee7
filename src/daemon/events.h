#pragma once
// The daemon's event stream (SEMANTICS.md "Pool states"): the pool's state changes (ok, low,
// full, read-only) as JSON objects, delivered to every subscriber of the control socket.
// Each subscriber has a bounded queue; a subscriber that does not keep up loses the oldest
// events and is told how many (field "dropped" on the next event it gets), so a stuck client
// never holds memory or blocks the pool.
//
// Thread-safety: every method from any thread.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>

namespace tp::daemon {

class EventBus {
 public:
  static constexpr size_t kQueueLimit = 256;

  class Subscription {
   public:
    // The next event, or nullopt after timeout or once the bus is closed.
    std::optional<nlohmann::json> next(std::chrono::milliseconds timeout);

   private:
    friend class EventBus;
    explicit Subscription(EventBus& bus) : bus_(bus) {}
    EventBus& bus_;
    std::deque<nlohmann::json> queue_;
    uint64_t dropped_ = 0;
  };
  using Handle = std::shared_ptr<Subscription>;

  // Stamps the event with "time" (Unix seconds) and a sequence number "seq", then queues it
  // for every subscriber.
  void publish(nlohmann::json event);
  Handle subscribe();
  void unsubscribe(const Handle& h);
  // Wakes every subscriber; next() returns nullopt from now on.
  void close();
  uint64_t published() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::list<Handle> subs_;
  uint64_t seq_ = 0;
  bool closed_ = false;
};

}  // namespace tp::daemon
