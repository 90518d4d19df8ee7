// BlockDevice over a regular file or a block device node, with positioned syscalls only
// (pread/pwrite/fallocate/copy_file_range), so concurrent calls share nothing but the fd.
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <limits>

#include "io/block_device.h"
#include "io/read_ring.h"

namespace tp::io {
namespace {

// Source of zeros for write_zeroes/discard when the kernel cannot zero a range for us.
constexpr size_t kZeroBufSize = 64 << 10;
alignas(4096) const std::byte kZeros[kZeroBufSize] = {};

bool out_of_range(uint64_t off, uint64_t len, uint64_t size) {
  return len > size || off > size - len;
}

class FileDevice final : public BlockDevice {
 public:
  FileDevice(int fd, bool is_blk, bool read_only, uint64_t size)
      : fd_(fd), is_blk_(is_blk), read_only_(read_only), size_(size) {}
  ~FileDevice() override { ::close(fd_); }

  uint64_t size() const override { return size_.load(std::memory_order_relaxed); }

  Result<void> read(uint64_t off, std::span<std::byte> buf) override {
    TP_TRY(check(off, buf.size(), false));
    return pread_all(fd_, buf, off);
  }

  int read_fd() const override { return fd_; }

  Result<void> write(uint64_t off, std::span<const std::byte> buf) override {
    TP_TRY(check(off, buf.size(), true));
    return write_all(off, buf);
  }

  Result<void> flush() override {
    if (::fdatasync(fd_) != 0) return sys_error("fdatasync");
    return ok_result();
  }

  Result<void> discard(uint64_t off, uint64_t len) override {
    TP_TRY(check(off, len, true));
    if (len == 0) return ok_result();
    if (is_blk_) {
      // BLKDISCARD does not promise zeros afterwards; BLKZEROOUT does (and unmaps when the
      // device can). It needs 512-byte alignment, else EINVAL: then write the zeros.
      uint64_t range[2] = {off, len};
      if (::ioctl(fd_, BLKZEROOUT, &range) == 0) return ok_result();
      if (!can_fall_back(errno)) return sys_error("ioctl(BLKZEROOUT)", off);
      return write_zeros(off, len);
    }
    if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                    static_cast<off_t>(len)) == 0) {
      return ok_result();
    }
    if (!can_fall_back(errno)) return sys_error("fallocate(PUNCH_HOLE)", off);
    return write_zeros(off, len);  // the range must still read as zeros
  }

  Result<void> write_zeroes(uint64_t off, uint64_t len) override {
    TP_TRY(check(off, len, true));
    if (len == 0) return ok_result();
    if (::fallocate(fd_, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                    static_cast<off_t>(len)) == 0) {
      return ok_result();
    }
    if (!can_fall_back(errno)) return sys_error("fallocate(ZERO_RANGE)", off);
    return write_zeros(off, len);
  }

  Result<void> provision(uint64_t off, uint64_t len) override {
    TP_TRY(check(off, len, true));
    if (len == 0) return ok_result();
    // Mode 0 allocates; KEEP_SIZE is a no-op inside the file but documents the intent.
    if (::fallocate(fd_, FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off), static_cast<off_t>(len)) ==
        0) {
      return ok_result();
    }
    // Nothing to reserve on a block device or a filesystem without fallocate: writes there
    // cannot be refused for lack of host space that we could have reserved.
    if (errno == EOPNOTSUPP) return ok_result();
    return sys_error("fallocate", off);
  }

  Result<void> copy(uint64_t src, uint64_t dst, uint64_t len) override {
    TP_TRY(check(src, len, false));
    TP_TRY(check(dst, len, true));
    uint64_t done = 0;
    while (done < len) {
      auto in = static_cast<off_t>(src + done);
      auto out = static_cast<off_t>(dst + done);
      ssize_t n = ::copy_file_range(fd_, &in, fd_, &out, static_cast<size_t>(len - done), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        // Cross-device, block device nodes, old kernels, filesystems without support.
        if (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) {
          return BlockDevice::copy(src + done, dst + done, len - done);
        }
        return sys_error("copy_file_range", dst + done);
      }
      if (n == 0) return make_error(Errc::kIo, "copy_file_range: unexpected end of file", src);
      done += static_cast<uint64_t>(n);
    }
    return ok_result();
  }

  Result<void> resize(uint64_t new_size) override {
    if (read_only_) return make_error(Errc::kReadOnly, "resize: device opened read-only");
    if (new_size == size()) return ok_result();
    if (is_blk_) return make_error(Errc::kUnsupported, "resize: cannot resize a block device");
    if (new_size > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
      return make_error(Errc::kInvalidArgument, "resize: size too large", new_size);
    }
    if (::ftruncate(fd_, static_cast<off_t>(new_size)) != 0) {
      return sys_error("ftruncate", new_size);
    }
    size_.store(new_size, std::memory_order_relaxed);
    return ok_result();
  }

  Result<uint64_t> next_data(uint64_t off, uint64_t end) override {
    return seek(off, end, SEEK_DATA);
  }
  Result<uint64_t> next_hole(uint64_t off, uint64_t end) override {
    return seek(off, end, SEEK_HOLE);
  }

  uint64_t allocated_bytes() const override {
    // A device node has no st_blocks; all of it is backing store as far as we can tell.
    if (is_blk_) return size();
    struct stat st;
    if (::fstat(fd_, &st) != 0) return 0;
    return static_cast<uint64_t>(st.st_blocks) * 512;
  }

 private:
  Result<void> check(uint64_t off, uint64_t len, bool mutating) const {
    if (mutating && read_only_) return make_error(Errc::kReadOnly, "device opened read-only", off);
    if (out_of_range(off, len, size())) {
      return make_error(Errc::kInvalidArgument, "range beyond end of device", off);
    }
    return ok_result();
  }

  Result<uint64_t> seek(uint64_t off, uint64_t end, int whence) const {
    if (off >= end) return end;
    // A device node has no holes we can see.
    if (is_blk_) return whence == SEEK_DATA ? off : end;
    off_t r = ::lseek(fd_, static_cast<off_t>(off), whence);
    if (r < 0) {
      if (errno == ENXIO) return end;  // nothing of that kind after off
      if (errno == EINVAL || errno == EOPNOTSUPP) return whence == SEEK_DATA ? off : end;
      return sys_error(whence == SEEK_DATA ? "lseek(SEEK_DATA)" : "lseek(SEEK_HOLE)", off);
    }
    return std::min<uint64_t>(static_cast<uint64_t>(r), end);
  }

  // Errnos meaning "the kernel will not do this for this file", as opposed to a failure.
  bool can_fall_back(int e) const {
    return e == EOPNOTSUPP || e == ENOSYS || (is_blk_ && (e == EINVAL || e == ENOTTY));
  }

  Result<void> write_all(uint64_t off, std::span<const std::byte> buf) {
    while (!buf.empty()) {
      ssize_t n = ::pwrite(fd_, buf.data(), buf.size(), static_cast<off_t>(off));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return sys_error("pwrite", off);
      buf = buf.subspan(static_cast<size_t>(n));
      off += static_cast<uint64_t>(n);
    }
    return ok_result();
  }

  Result<void> write_zeros(uint64_t off, uint64_t len) {
    while (len > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(len, kZeroBufSize));
      TP_TRY(write_all(off, std::span(kZeros, n)));
      off += n;
      len -= n;
    }
    return ok_result();
  }

  const int fd_;
  const bool is_blk_;
  const bool read_only_;
  // Cached from fstat / BLKGETSIZE64 at open and updated by resize(), so bounds checks cost
  // no syscall. Atomic only to keep a misused concurrent resize() free of data races.
  std::atomic<uint64_t> size_;
};

Result<std::unique_ptr<BlockDevice>> make_device(int fd, bool read_only) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    Error e = sys_error("fstat");
    ::close(fd);
    return e;
  }
  uint64_t size = 0;
  bool is_blk = S_ISBLK(st.st_mode);
  if (is_blk) {
    if (::ioctl(fd, BLKGETSIZE64, &size) != 0) {
      Error e = sys_error("ioctl(BLKGETSIZE64)");
      ::close(fd);
      return e;
    }
  } else if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else {
    ::close(fd);
    return make_error(Errc::kInvalidArgument, "open: not a regular file or block device");
  }
  return std::unique_ptr<BlockDevice>(new FileDevice(fd, is_blk, read_only, size));
}

// open(2) errors, with the two callers care about mapped to their own codes.
Error open_error() {
  Error e = sys_error("open");
  if (e.sys_errno == ENOENT) e.code = Errc::kNotFound;
  if (e.sys_errno == EEXIST) e.code = Errc::kExists;
  return e;
}

}  // namespace

Result<std::unique_ptr<BlockDevice>> open_file(const std::string& path, bool read_only) {
  int fd = ::open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) return open_error();
  return make_device(fd, read_only);
}

Result<std::unique_ptr<BlockDevice>> create_file(const std::string& path, uint64_t size) {
  if (size > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
    return make_error(Errc::kInvalidArgument, "create: size too large", size);
  }
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return open_error();
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    Error e = sys_error("ftruncate", size);
    ::close(fd);
    ::unlink(path.c_str());
    return e;
  }
  auto dev = make_device(fd, false);
  if (!dev.ok()) ::unlink(path.c_str());
  return dev;
}

}  // namespace tp::io
