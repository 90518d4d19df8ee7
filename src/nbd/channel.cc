#include "nbd/channel.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace tp::nbd {

bool is_peer_closed(const Error& e) {
  return e.what == kPeerClosed;
}

std::string describe(const Error& e) {
  Error no_where = e;
  no_where.where = kNoAddr;
  std::string s = no_where.to_string();
  if (e.where != kNoAddr) s += " (after " + std::to_string(e.where) + " bytes of the message)";
  return s;
}

Result<void> Channel::read_exact(std::span<std::byte> buf, Clock::time_point deadline) {
  size_t done = 0;
  while (done < buf.size()) {
    auto n = read_some(buf.subspan(done), deadline);
    if (!n.ok()) {
      Error e = n.error();
      e.where = done;
      return e;
    }
    done += *n;
  }
  return {};
}

Result<void> Channel::skip(uint64_t n, Clock::time_point deadline) {
  std::byte scratch[64 * 1024];
  while (n > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, sizeof scratch));
    TP_TRY(read_exact(std::span(scratch, chunk), deadline));
    n -= chunk;
  }
  return {};
}

SocketChannel::SocketChannel(int fd) : fd_(fd) {}

SocketChannel::~SocketChannel() {
  if (fd_ >= 0) ::close(fd_);
}

Result<bool> SocketChannel::wait_readable(Clock::time_point deadline) {
  for (;;) {
    int timeout = -1;
    if (deadline != kNoDeadline) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      timeout = static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
    }
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, timeout);
    if (r < 0) {
      if (errno == EINTR) continue;
      return sys_error("poll");
    }
    if (r > 0) return true;
    // Nothing yet: past the deadline that is the answer; else poll woke a little early.
    if (Clock::now() >= deadline) return false;
  }
}

Result<size_t> SocketChannel::read_some(std::span<std::byte> buf, Clock::time_point deadline) {
  // With a deadline, try first and poll only when nothing is there: a client in the middle
  // of a WRITE payload usually has the rest on the way, and a poll per read was a syscall
  // per request.
  const int flags = deadline == kNoDeadline ? 0 : MSG_DONTWAIT;
  for (;;) {
    ssize_t n = ::recv(fd_, buf.data(), buf.size(), flags);
    if (n > 0) return static_cast<size_t>(n);
    if (n == 0) return Error{Errc::kIo, 0, kNoAddr, kPeerClosed};
    if (errno == EINTR) continue;
    if ((errno == EAGAIN || errno == EWOULDBLOCK) && flags != 0) {
      // A deadline already past (TLS polls with "now") needs no poll to say so.
      if (Clock::now() >= deadline) return Error{Errc::kIo, ETIMEDOUT, kNoAddr, kTimedOut};
      TP_ASSIGN_OR_RETURN(bool ready, wait_readable(deadline));
      if (!ready) return Error{Errc::kIo, ETIMEDOUT, kNoAddr, kTimedOut};
      continue;
    }
    if (errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN) {
      return Error{Errc::kIo, errno, kNoAddr, kPeerClosed};
    }
    return sys_error("recv");
  }
}

Result<void> SocketChannel::write_all(std::span<const std::span<const std::byte>> pieces) {
  // The iovecs live on the stack, kMaxIov at a time: no allocation per reply.
  constexpr size_t kMaxIov = 64;
  size_t i = 0;     // the first piece not yet sent completely
  size_t done = 0;  // bytes of pieces[i] already sent
  for (;;) {
    iovec iov[kMaxIov];
    size_t n_iov = 0;
    for (size_t j = i; j < pieces.size() && n_iov < kMaxIov; j++) {
      const size_t skip = j == i ? done : 0;
      if (pieces[j].size() == skip) continue;
      iov[n_iov++] = {const_cast<std::byte*>(pieces[j].data() + skip), pieces[j].size() - skip};
    }
    if (n_iov == 0) return {};
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = n_iov;
    ssize_t n = ::sendmsg(fd_, &m, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return Error{Errc::kIo, ETIMEDOUT, kNoAddr, "timed out sending to the client"};
      }
      if (errno == EPIPE || errno == ECONNRESET)
        return Error{Errc::kIo, errno, kNoAddr, kPeerClosed};
      return sys_error("sendmsg");
    }
    // Step over what went out (empty pieces included).
    auto left = static_cast<size_t>(n);
    while (i < pieces.size() && left >= pieces[i].size() - done) {
      left -= pieces[i].size() - done;
      done = 0;
      i++;
    }
    done += left;
  }
}

void SocketChannel::set_send_timeout(std::chrono::milliseconds t) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(t.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
  (void)::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

void SocketChannel::shutdown_read() {
  (void)::shutdown(fd_, SHUT_RD);
}
void SocketChannel::shutdown_both() {
  (void)::shutdown(fd_, SHUT_RDWR);
}

}  // namespace tp::nbd
