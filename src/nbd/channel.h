#pragma once
// The byte channel of one connection: exact reads with an optional deadline, gathered
// writes, and the shutdown that wakes a blocked reader (graceful stop). Nothing here knows
// NBD. Two implementations: SocketChannel (a connected stream socket) and TlsChannel
// (nbd/tls.h, a TLS session layered over another channel after NBD_OPT_STARTTLS), so the
// handshake and the session never know which one they talk to.
//
// Thread-safety: one thread reads while others write; writers must serialise among
// themselves (the session's write mutex). shutdown_read()/shutdown_both() may be called from
// any thread at any time.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "io/result.h"

namespace tp::nbd {

using Clock = std::chrono::steady_clock;
inline constexpr Clock::time_point kNoDeadline = Clock::time_point::max();

// Error::what of a read that found the peer gone (EOF or reset) on a message boundary or in
// the middle of one: a client hanging up is logged at debug level, not as an error.
// Compared by address: arrays, one object in the whole program (a pointer constant would
// point at a copy of the literal that may differ per translation unit, as under clang -O0).
inline constexpr char kPeerClosed[] = "connection closed by peer";
inline constexpr char kTimedOut[] = "timed out waiting for the client";
bool is_peer_closed(const Error& e);
// An error of this layer for a log line. Error::to_string() would print Error::where as
// "(block N)"; here it is never a block: for channel reads it is the bytes of the message
// received before the failure, and it is printed as such.
std::string describe(const Error& e);

class Channel {
 public:
  Channel() = default;
  virtual ~Channel() = default;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Reads at least one and at most buf.size() bytes (buf is not empty): kIo with what ==
  // kPeerClosed at EOF, kTimedOut (sys_errno ETIMEDOUT) past the deadline.
  virtual Result<size_t> read_some(std::span<std::byte> buf, Clock::time_point deadline) = 0;
  // Waits until read_some would not block (data or EOF): true, or false at the deadline.
  virtual Result<bool> wait_readable(Clock::time_point deadline) = 0;

  // Reads exactly buf.size() bytes; the errors of read_some (Error::where: bytes read).
  Result<void> read_exact(std::span<std::byte> buf, Clock::time_point deadline = kNoDeadline);
  // Reads and discards n bytes.
  Result<void> skip(uint64_t n, Clock::time_point deadline = kNoDeadline);

  // Writes every piece, in order. A write blocked longer than the send timeout fails with
  // kIo; a peer gone is kIo with what == kPeerClosed.
  virtual Result<void> write_all(std::span<const std::span<const std::byte>> pieces) = 0;
  Result<void> write_all(std::span<const std::byte> piece) {
    std::span<const std::byte> one[] = {piece};
    return write_all(one);
  }
  // How long one blocked send may wait for the client to read (0: forever).
  virtual void set_send_timeout(std::chrono::milliseconds t) = 0;

  // Makes a blocked or later read return kPeerClosed; writes still work, so replies to
  // requests in flight can still be sent.
  virtual void shutdown_read() = 0;
  // Ends the connection in both directions (hard disconnect).
  virtual void shutdown_both() = 0;
  // Ends the connection politely after the last reply (TLS: close_notify); best effort,
  // bounded by the send timeout. REQUIRES: no other thread uses the channel.
  virtual void close_gracefully() {}

  // True when the bytes on the wire are encrypted (a TLS session is running).
  virtual bool encrypted() const { return false; }
};

// A connected SOCK_STREAM socket (TCP or Unix). Sends use MSG_NOSIGNAL.
class SocketChannel final : public Channel {
 public:
  // Takes ownership of fd.
  explicit SocketChannel(int fd);
  ~SocketChannel() override;

  int fd() const { return fd_; }

  Result<size_t> read_some(std::span<std::byte> buf, Clock::time_point deadline) override;
  Result<bool> wait_readable(Clock::time_point deadline) override;
  using Channel::write_all;
  Result<void> write_all(std::span<const std::span<const std::byte>> pieces) override;
  // SO_SNDTIMEO.
  void set_send_timeout(std::chrono::milliseconds t) override;
  void shutdown_read() override;
  void shutdown_both() override;

 private:
  int fd_;
};

}  // namespace tp::nbd
