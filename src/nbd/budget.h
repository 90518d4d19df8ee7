#pragma once
// The server-wide budget of READ/WRITE buffer bytes in flight, shared by every connection
// (ServerOptions::max_inflight_bytes_total). A session's reader takes budget before it
// allocates a request's buffer and gives it back once the reply is sent or the request
// has failed.
//
// No deadlock, no starvation:
//   - a request is granted when it fits, or when nothing at all is in flight, so one
//     request larger than the whole budget (up to kMaxPayload) still goes through alone;
//   - waiters are served in arrival order (tickets), so a large request is not passed over
//     forever by small ones that would fit;
//   - holders never wait for budget: a worker runs its request and sends the reply (bounded
//     by the target and by SessionOptions::send_timeout), then releases; a session's reader
//     sends the replies it holds before it waits here (try_acquire first, session.h);
//   - close() (Server::stop) wakes every waiter and fails every later acquire, so a reader
//     waiting here never holds up a graceful stop.
//
// Thread-safety: every method from any thread. acquire/release take one mutex and never
// allocate.

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace tp::nbd {

class ByteBudget {
 public:
  explicit ByteBudget(uint64_t limit) : limit_(limit) {}
  ByteBudget(const ByteBudget&) = delete;
  ByteBudget& operator=(const ByteBudget&) = delete;

  // Blocks until `cost` bytes are granted (true), or until close() (false: nothing taken).
  bool acquire(uint64_t cost);
  // acquire without the wait: true (granted) only when no one is waiting and cost fits now.
  // False takes nothing (the session flushes the replies it holds, then acquire()s).
  bool try_acquire(uint64_t cost);
  // Gives back what acquire granted.
  void release(uint64_t cost);
  // Wakes every waiter; acquire fails from now on. Releases still work.
  void close();

  uint64_t limit() const { return limit_; }
  uint64_t in_use();
  uint64_t peak();     // the most ever held at once
  unsigned waiters();  // acquires blocked now

 private:
  const uint64_t limit_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t in_use_ = 0;
  uint64_t peak_ = 0;
  uint64_t next_ticket_ = 0;  // handed to the next acquire that has to wait its turn
  uint64_t serving_ = 0;      // the ticket whose turn it is
  bool closed_ = false;
};

}  // namespace tp::nbd
