#include "io/read_ring.h"

#include <liburing.h>
#include <unistd.h>

#include <cerrno>

namespace tp::io {

struct ReadRing::Impl {
  io_uring ring{};
  bool live = false;
  ~Impl() {
    if (live) io_uring_queue_exit(&ring);
  }
};

Result<std::unique_ptr<ReadRing>> ReadRing::create(unsigned entries) {
  auto impl = std::make_unique<Impl>();
  int r = io_uring_queue_init(entries, &impl->ring, 0);
  if (r < 0) return make_error(Errc::kUnsupported, "io_uring_queue_init", kNoAddr, -r);
  impl->live = true;
  // Completions beyond the completion queue wait in the kernel instead of being dropped
  // (IORING_FEAT_NODROP, Linux 5.5); without it a full queue could lose a read's end.
  if (!(impl->ring.features & IORING_FEAT_NODROP)) {
    return make_error(Errc::kUnsupported, "io_uring without IORING_FEAT_NODROP");
  }
  const unsigned cap = impl->ring.sq.ring_entries;
  return std::unique_ptr<ReadRing>(new ReadRing(std::move(impl), cap));
}

ReadRing::ReadRing(std::unique_ptr<Impl> impl, unsigned capacity)
    : impl_(std::move(impl)), capacity_(capacity) {}

ReadRing::~ReadRing() = default;

bool ReadRing::queue_read(int fd, std::span<std::byte> buf, uint64_t off, uint64_t tag) {
  io_uring_sqe* sqe = io_uring_get_sqe(&impl_->ring);
  if (!sqe) return false;
  io_uring_prep_read(sqe, fd, buf.data(), static_cast<unsigned>(buf.size()), off);
  io_uring_sqe_set_data64(sqe, tag);
  return true;
}

bool ReadRing::queue_wake(uint64_t tag) {
  io_uring_sqe* sqe = io_uring_get_sqe(&impl_->ring);
  if (!sqe) return false;
  io_uring_prep_nop(sqe);
  io_uring_sqe_set_data64(sqe, tag);
  return true;
}

Result<void> ReadRing::submit() {
  for (;;) {
    int r = io_uring_submit(&impl_->ring);
    if (r >= 0) return ok_result();
    if (r == -EINTR) continue;
    // EAGAIN/EBUSY: the kernel is short of memory or holds overflowed completions; they
    // drain as the completing thread takes completions.
    if (r == -EAGAIN || r == -EBUSY) {
      ::usleep(100);
      continue;
    }
    return make_error(Errc::kIo, "io_uring_submit", kNoAddr, -r);
  }
}

Result<size_t> ReadRing::wait(std::span<Completion> out) {
  io_uring_cqe* cqe = nullptr;
  for (;;) {
    int r = io_uring_wait_cqe(&impl_->ring, &cqe);
    if (r == 0) break;
    if (r == -EINTR || r == -EAGAIN) continue;
    return make_error(Errc::kIo, "io_uring_wait_cqe", kNoAddr, -r);
  }
  size_t n = 0;
  while (n < out.size() && io_uring_peek_cqe(&impl_->ring, &cqe) == 0) {
    out[n++] = {io_uring_cqe_get_data64(cqe), cqe->res};
    io_uring_cqe_seen(&impl_->ring, cqe);
  }
  return n;
}

Result<void> pread_all(int fd, std::span<std::byte> buf, uint64_t off) {
  while (!buf.empty()) {
    ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sys_error("pread", off);
    // The file shrank under us: not the caller's fault.
    if (n == 0) return make_error(Errc::kIo, "pread: unexpected end of file", off);
    buf = buf.subspan(static_cast<size_t>(n));
    off += static_cast<uint64_t>(n);
  }
  return ok_result();
}

}  // namespace tp::io
