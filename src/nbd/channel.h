#pragma once
// A connected stream socket: exact reads with an optional deadline, gathered writes, and the
// shutdown that wakes a blocked reader (graceful stop). Nothing here knows NBD.
//
// Thread-safety: one thread reads while others write; writers must serialise among
// themselves (the session's write mutex). shutdown_read()/shutdown_both() may be called from
// any thread at any time.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

#include "io/result.h"

namespace tp::nbd {

using Clock = std::chrono::steady_clock;
inline constexpr Clock::time_point kNoDeadline = Clock::time_point::max();

// Error::what of a read that found the peer gone (EOF or reset) on a message boundary or in
// the middle of one: a client hanging up is logged at debug level, not as an error.
inline constexpr const char* kPeerClosed = "connection closed by peer";
inline constexpr const char* kTimedOut = "timed out waiting for the client";
bool is_peer_closed(const Error& e);

class Channel {
 public:
  // Takes ownership of fd (a connected SOCK_STREAM socket); sets MSG_NOSIGNAL semantics.
  explicit Channel(int fd);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  int fd() const { return fd_; }

  // Reads exactly buf.size() bytes; kIo with what == kPeerClosed at EOF, kTimedOut (sys_errno
  // ETIMEDOUT) past the deadline.
  Result<void> read_exact(std::span<std::byte> buf, Clock::time_point deadline = kNoDeadline);
  // Reads and discards n bytes.
  Result<void> skip(uint64_t n, Clock::time_point deadline = kNoDeadline);
  // Writes every piece, in order (sendmsg, retried on short writes). A write blocked longer
  // than the send timeout fails with kIo.
  Result<void> write_all(std::span<const std::span<const std::byte>> pieces);
  Result<void> write_all(std::span<const std::byte> piece) {
    std::span<const std::byte> one[] = {piece};
    return write_all(one);
  }
  // SO_SNDTIMEO: how long one blocked send may wait for the client to read (0: forever).
  void set_send_timeout(std::chrono::milliseconds t);

  // Makes a blocked or later read_exact return kPeerClosed; writes still work, so replies
  // to requests in flight can still be sent.
  void shutdown_read();
  // Ends the connection in both directions (hard disconnect).
  void shutdown_both();

 private:
  int fd_;
};

}  // namespace tp::nbd
