// Image I/O: write (file -> volume, zero blocks stay unmapped), read (volume -> sparse
// file), and delta updates: diff (two volumes or image files -> delta file) and update
// (delta file -> volume, through NAME.next; SEMANTICS.md "A/B updates").

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <ostream>
#include <vector>

#include "cli/args.h"
#include "cli/command.h"
#include "cli/pool_access.h"
#include "cli/size.h"
#include "thin/update.h"

namespace tp::cli {
namespace {

constexpr uint64_t kChunkBytes = 1 << 20;              // I/O size between file and pool
constexpr uint64_t kExtentWindow = uint64_t{1} << 30;  // extents() asked per window (read)

// Closes an fd on scope exit; close errors on an fd we wrote are checked explicitly first.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  int get() const { return fd_; }
  // Closes now and reports the error (NFS and friends report write errors at close).
  int close() {
    int r = ::close(fd_);
    fd_ = -1;
    return r;
  }

 private:
  int fd_;
};

// Reads exactly buf.size() bytes at off (the file is at least that long). false + errno.
bool pread_full(int fd, std::span<std::byte> buf, uint64_t off) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::pread(fd, buf.data() + done, buf.size() - done, static_cast<off_t>(off + done));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return false;
    }
    if (n == 0) {
      errno = EIO;  // the file shrank under us
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

bool pwrite_full(int fd, std::span<const std::byte> buf, uint64_t off) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::pwrite(fd, buf.data() + done, buf.size() - done, static_cast<off_t>(off + done));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

bool all_zero(std::span<const std::byte> b) {
  // Compare 8 bytes at a time through memcpy (no aliasing games), then the tail.
  size_t i = 0;
  for (; i + 8 <= b.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, b.data() + i, 8);
    if (w != 0) {
      return false;
    }
  }
  for (; i < b.size(); i++) {
    if (b[i] != std::byte{0}) {
      return false;
    }
  }
  return true;
}

// "\rwrite vol: 42% (12.00 MiB of 26.00 MiB)" on a terminal, at most ten times a second.
class Progress {
 public:
  Progress(const Context& ctx, std::string label, uint64_t total)
      : ctx_(ctx), label_(std::move(label)), total_(total) {}
  void update(uint64_t done) {
    if (!ctx_.con.err_is_tty) {
      return;
    }
    auto now = std::chrono::steady_clock::now();
    if (shown_ && done < total_ && now - last_ < std::chrono::milliseconds(100)) {
      return;
    }
    last_ = now;
    shown_ = true;
    const unsigned pct =
        total_ == 0 ? 100u : static_cast<unsigned>((static_cast<double>(done) * 100) / total_);
    ctx_.con.err << fmt::format("\r{}: {:3}% ({} of {})\x1b[K", label_, pct, format_bytes(done),
                                format_bytes(total_))
                 << std::flush;
  }
  // Ends the progress line (also on failure, so the error message gets its own line).
  void finish() {
    if (shown_) {
      ctx_.con.err << '\n' << std::flush;
      shown_ = false;
    }
  }

 private:
  const Context& ctx_;
  std::string label_;
  uint64_t total_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point last_{};
};

bool mapped_in(const std::vector<thin::Extent>& exts, uint64_t begin, uint64_t end) {
  for (const auto& e : exts) {
    if (e.mapped && e.offset < end && begin < e.offset + e.length) {
      return true;
    }
  }
  return false;
}

// --- write ------------------------------------------------------------------------------

// Copies a file into a volume so that afterwards volume[0, file size) == file:
//  - a block the file has all zero is not written; if the volume mapped it, it is trimmed
//    (whole block) or zeroed (the part of the last, partial block);
//  - a block with data is written, and if the volume mapped it before, its zero parts are
//    zeroed too (a block that was unmapped reads as zeros already).
// The file is read in windows of whole blocks (about 1 MiB); a block larger than that is
// read in windows that divide it, and its state carries from one window to the next.
class ImageWriter {
 public:
  ImageWriter(const Context& ctx, thin::Pool& pool, const std::string& vol, uint64_t dev, int fd,
              const std::string& path, uint64_t file_bytes)
      : ctx_(ctx),
        pool_(pool),
        vol_(vol),
        dev_(dev),
        fd_(fd),
        path_(path),
        file_bytes_(file_bytes),
        bb_(pool.block_bytes()),
        progress_(ctx, "write " + vol, file_bytes) {}

  int run() {
    const uint64_t window = window_bytes();
    std::vector<std::byte> buf(window);
    for (uint64_t w = 0; w < file_bytes_; w += window) {
      const uint64_t len = std::min(window, file_bytes_ - w);
      if (!pread_full(fd_, std::span(buf.data(), len), w)) {
        const int e = errno;
        progress_.finish();
        return ctx_.fail("write", path_, std::strerror(e), kExitFailed);
      }
      if (int st = window_done(w, std::span<const std::byte>(buf.data(), len)); st != kExitOk) {
        progress_.finish();
        return st;
      }
      progress_.update(w + len);
    }
    progress_.finish();
    if (auto f = pool_.flush(); !f.ok()) {
      return ctx_.fail("write", vol_, f.error());
    }
    return kExitOk;
  }

 private:
  struct Block {
    uint64_t start = 0;
    bool was_mapped = false;
    bool all_zero = true;
    std::vector<std::pair<uint64_t, uint64_t>> zeros;  // [begin, end) inside the file
  };

  // Whole blocks up to 1 MiB; for bigger blocks the largest divisor of the block that is
  // at most 1 MiB and a multiple of 64 KiB (the block size always is one).
  uint64_t window_bytes() const {
    if (bb_ <= kChunkBytes) {
      return (kChunkBytes / bb_) * bb_;
    }
    const uint64_t units = bb_ / thin::kMinBlockBytes;
    for (uint64_t s = 2; s <= units; s++) {
      if (units % s == 0 && bb_ / s <= kChunkBytes) {
        return bb_ / s;
      }
    }
    return thin::kMinBlockBytes;
  }

  int fail(const Error& e) { return ctx_.fail("write", vol_, e); }

  int window_done(uint64_t w, std::span<const std::byte> data) {
    const uint64_t end = w + data.size();
    auto exts = pool_.extents(dev_, w, data.size());
    if (!exts.ok()) {
      return fail(exts.error());
    }
    uint64_t run_begin = w, run_end = w;  // pending non-zero bytes to write
    auto flush_run = [&]() -> int {
      if (run_end > run_begin) {
        auto wr = pool_.write(dev_, run_begin, data.subspan(run_begin - w, run_end - run_begin));
        if (!wr.ok()) {
          return fail(wr.error());
        }
      }
      run_begin = run_end;
      return kExitOk;
    };
    for (uint64_t s = w; s < end;) {
      const uint64_t bstart = s / bb_ * bb_;
      const uint64_t bend = bstart + bb_;
      const uint64_t e = std::min(bend, end);
      if (s == bstart) {
        // The first piece of this block: nothing was written to it yet in this run.
        cur_ = Block{};
        cur_.start = bstart;
        cur_.was_mapped = mapped_in(*exts, s, e);
      }
      if (all_zero(data.subspan(s - w, e - s))) {
        if (int st = flush_run(); st != kExitOk) {
          return st;
        }
        run_begin = run_end = e;
        cur_.zeros.emplace_back(s, e);
      } else {
        if (run_end != s) {
          run_begin = s;
        }
        run_end = e;
        cur_.all_zero = false;
      }
      if (e == bend || e == file_bytes_) {
        if (int st = block_done(e == bend); st != kExitOk) {
          return st;
        }
      }
      s = e;
    }
    return flush_run();
  }

  // The block's last piece from the file has been seen.
  int block_done(bool whole_block) {
    if (!cur_.was_mapped) {
      return kExitOk;  // unmapped blocks read as zeros; written parts were zero-filled
    }
    if (cur_.all_zero && whole_block) {
      if (auto t = pool_.trim(dev_, cur_.start, bb_); !t.ok()) {
        return fail(t.error());
      }
      return kExitOk;
    }
    for (const auto& [b, e] : cur_.zeros) {
      if (auto z = pool_.write_zeroes(dev_, b, e - b); !z.ok()) {
        return fail(z.error());
      }
    }
    return kExitOk;
  }

  const Context& ctx_;
  thin::Pool& pool_;
  const std::string& vol_;
  uint64_t dev_;
  int fd_;
  const std::string& path_;
  uint64_t file_bytes_;
  uint64_t bb_;
  Progress progress_;
  Block cur_;
};

class WriteCommand final : public Command {
 public:
  const char* name() const override { return "write"; }
  const char* description() const override {
    return "Copy an image FILE into volume NAME (zero blocks stay unmapped)";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume")->required();
    sub.add_option("FILE", file_, "Image file (or block device) to copy in")->required();
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), name_)) {
      return kExitUsage;
    }
    file_ = ctx.path(file_);
    Fd fd(::open(file_.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
      return ctx.fail(name(), file_, std::strerror(errno), kExitFailed);
    }
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) {
      return ctx.fail(name(), file_, std::strerror(errno), kExitFailed);
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
      return ctx.fail(name(), file_, "not a regular file or block device", kExitFailed);
    }
    const off_t end = ::lseek(fd.get(), 0, SEEK_END);  // also right for a block device
    if (end < 0) {
      return ctx.fail(name(), file_, std::strerror(errno), kExitFailed);
    }
    const uint64_t file_bytes = static_cast<uint64_t>(end);

    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      auto vol = pool.volume(name_);
      if (!vol.ok()) {
        return ctx.fail(name(), name_, vol.error());
      }
      if (vol->read_only) {
        return ctx.fail(name(), name_, "read-only: the volume is a read-only snapshot",
                        kExitFailed);
      }
      if (file_bytes > vol->size_bytes) {
        return ctx.fail(name(), name_,
                        fmt::format("{} is larger than the volume ({} > {} bytes)", file_,
                                    file_bytes, vol->size_bytes),
                        kExitFailed);
      }
      ImageWriter writer(ctx, pool, name_, vol->dev_id, fd.get(), file_, file_bytes);
      if (int st = writer.run(); st != kExitOk) {
        return st;
      }
      r.json = {{"volume", name_}, {"file", file_}, {"bytes", file_bytes}};
      r.text = fmt::format("wrote {} ({}) into {}\n", file_, format_bytes(file_bytes), name_);
      return kExitOk;
    });
  }

 private:
  std::string name_, file_;
};

// --- read -------------------------------------------------------------------------------

class ReadCommand final : public Command {
 public:
  const char* name() const override { return "read"; }
  const char* description() const override {
    return "Copy volume NAME out to FILE (a regular file stays sparse)";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume")->required();
    sub.add_option("FILE", file_, "File to create or truncate (or a block device)")->required();
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), name_)) {
      return kExitUsage;
    }
    file_ = ctx.path(file_);
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      // Look the volume up before touching FILE, so a typo does not truncate it.
      auto vol = pool.volume(name_);
      if (!vol.ok()) {
        return ctx.fail(name(), name_, vol.error());
      }
      const uint64_t size = vol->size_bytes;
      Fd fd(::open(file_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
      if (fd.get() < 0) {
        return ctx.fail(name(), file_, std::strerror(errno), kExitFailed);
      }
      struct stat st;
      if (::fstat(fd.get(), &st) != 0) {
        return ctx.fail(name(), file_, std::strerror(errno), kExitFailed);
      }
      const bool sparse = S_ISREG(st.st_mode);
      if (sparse &&
          (::ftruncate(fd.get(), 0) != 0 || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)) {
        return ctx.fail(name(), file_, std::strerror(errno), kExitFailed);
      }
      if (int s = copy_out(ctx, pool, vol->dev_id, size, fd.get(), sparse); s != kExitOk) {
        return s;
      }
      if (::fsync(fd.get()) != 0 && sparse) {  // block devices and others may not sync
        return ctx.fail(name(), file_, std::strerror(errno), kExitFailed);
      }
      if (fd.close() != 0) {
        return ctx.fail(name(), file_, std::strerror(errno), kExitFailed);
      }
      r.json = {{"volume", name_}, {"file", file_}, {"bytes", size}};
      r.text = fmt::format("read {} ({}) into {}\n", name_, format_bytes(size), file_);
      return kExitOk;
    });
  }

 private:
  // Mapped ranges are copied; unmapped ones (and all-zero chunks) are skipped in a sparse
  // file, written as zeros elsewhere.
  int copy_out(const Context& ctx, thin::Pool& pool, uint64_t dev, uint64_t size, int fd,
               bool sparse) {
    Progress progress(ctx, "read " + name_, size);
    std::vector<std::byte> buf(kChunkBytes);
    auto fail_file = [&]() {
      int e = errno;
      progress.finish();
      return ctx.fail(name(), file_, std::strerror(e), kExitFailed);
    };
    for (uint64_t w = 0; w < size; w += kExtentWindow) {
      const uint64_t wlen = std::min(kExtentWindow, size - w);
      auto exts = pool.extents(dev, w, wlen);
      if (!exts.ok()) {
        progress.finish();
        return ctx.fail(name(), name_, exts.error());
      }
      for (const auto& ext : *exts) {
        if (!ext.mapped && sparse) {  // a hole already
          progress.update(ext.offset + ext.length);
          continue;
        }
        for (uint64_t off = ext.offset; off < ext.offset + ext.length; off += kChunkBytes) {
          const uint64_t n = std::min(kChunkBytes, ext.offset + ext.length - off);
          auto chunk = std::span(buf.data(), n);
          if (ext.mapped) {
            if (auto rd = pool.read(dev, off, chunk); !rd.ok()) {
              progress.finish();
              return ctx.fail(name(), name_, rd.error());
            }
          } else {
            std::fill(chunk.begin(), chunk.end(), std::byte{0});
          }
          if (!(sparse && all_zero(chunk)) && !pwrite_full(fd, chunk, off)) {
            return fail_file();
          }
          progress.update(off + n);
        }
        progress.update(ext.offset + ext.length);
      }
    }
    progress.finish();
    return kExitOk;
  }

  std::string name_, file_;
};

// --- diff -------------------------------------------------------------------------------

// An input file (image or delta) must be a readable regular file: checked before the pool is
// opened so that the message names the file. (thin::file_source takes the size from stat,
// which is 0 for a block device.)
int check_input_file(const Context& ctx, std::string_view command, const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    return ctx.fail(command, path, std::strerror(errno), kExitFailed);
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return ctx.fail(command, path, std::strerror(errno), kExitFailed);
  }
  if (!S_ISREG(st.st_mode)) {
    return ctx.fail(command, path, "not a regular file", kExitFailed);
  }
  return kExitOk;
}

// The delta blocks (of delta_bytes) that ranges from Pool::delta touch, sorted and unique:
// the only blocks write_delta compares, so blocks both volumes share are not read for the
// comparison. (The SHA-256 of both volumes in the delta's header still reads each once.)
std::vector<uint64_t> candidate_blocks(const std::vector<thin::DeltaRange>& ranges,
                                       uint64_t delta_bytes) {
  std::vector<uint64_t> blocks;
  for (const auto& r : ranges) {
    if (r.length == 0) {
      continue;
    }
    const uint64_t first = r.offset / delta_bytes;
    const uint64_t last = (r.offset + r.length - 1) / delta_bytes;
    for (uint64_t b = first; b <= last; b++) {
      if (blocks.empty() || blocks.back() != b) {  // neighbouring ranges share a block
        blocks.push_back(b);
      }
    }
  }
  std::sort(blocks.begin(), blocks.end());
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  return blocks;
}

class DiffCommand final : public Command {
 public:
  const char* name() const override { return "diff"; }
  const char* description() const override {
    return "Write a delta file: the blocks where volumes OLD and NEW differ (or, with --files, "
           "two image files) and the checksum of NEW";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("OLD", old_, "Old volume (image file with --files)")->required();
    sub.add_option("NEW", new_, "New volume (image file with --files)")->required();
    sub.add_option("-o,--output", output_, "Delta file to write")->required();
    sub.add_flag("--files", files_, "OLD and NEW are image files (no pool needed)");
    sub.add_option("--block-size", block_size_,
                   "Granularity of the delta: a multiple of 4K, at most 64M")
        ->capture_default_str();
  }
  int run(const Context& ctx) override {
    auto block = size_arg(ctx, name(), "--block-size", block_size_);
    if (!block) {
      return kExitUsage;
    }
    if (*block == 0 || *block % 4096 != 0 || *block > (64u << 20)) {
      return ctx.usage(name(), "--block-size \"" + block_size_ + "\"",
                       "the delta block size must be a multiple of 4 KiB, at most 64 MiB");
    }
    const uint32_t bb = static_cast<uint32_t>(*block);
    output_ = ctx.path(output_);
    if (files_) {
      old_ = ctx.path(old_);
      new_ = ctx.path(new_);
      return diff_files(ctx, bb);
    }
    if (!name_arg(ctx, name(), old_) || !name_arg(ctx, name(), new_)) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      uint64_t devs[2];
      for (int i = 0; i < 2; i++) {
        const std::string& n = i == 0 ? old_ : new_;
        auto d = pool.dev_id(n);
        if (!d.ok()) {
          return ctx.fail(name(), n, d.error());
        }
        devs[i] = *d;
      }
      auto ranges = pool.delta(old_, new_);
      if (!ranges.ok()) {
        return ctx.fail(name(), old_ + " " + new_, ranges.error());
      }
      const std::vector<uint64_t> candidates = candidate_blocks(*ranges, bb);
      thin::ImageSource o = thin::volume_source(pool, devs[0]);
      thin::ImageSource n = thin::volume_source(pool, devs[1]);
      o.candidates = &candidates;
      n.candidates = &candidates;
      return write(ctx, o, n, bb, r);
    });
  }

 private:
  int diff_files(const Context& ctx, uint32_t bb) {
    for (const std::string* path : {&old_, &new_}) {
      if (int st = check_input_file(ctx, name(), *path); st != kExitOk) {
        return st;
      }
    }
    int fds[2] = {-1, -1};
    thin::ImageSource src[2];
    for (int i = 0; i < 2; i++) {
      const std::string& path = i == 0 ? old_ : new_;
      auto s = thin::file_source(path, &fds[i]);
      if (!s.ok()) {
        if (i == 1) {
          ::close(fds[0]);
        }
        return ctx.fail(name(), path, s.error().to_string(), kExitFailed);
      }
      src[i] = std::move(s).value();
    }
    Fd keep_old(fds[0]), keep_new(fds[1]);
    Report r;
    if (int st = write(ctx, src[0], src[1], bb, r); st != kExitOk) {
      return st;
    }
    return print_report(ctx, name(), r);
  }

  int write(const Context& ctx, const thin::ImageSource& o, const thin::ImageSource& n, uint32_t bb,
            Report& r) {
    auto st = thin::write_delta(output_, o, n, bb);
    if (!st.ok()) {
      // Reading a volume or an image, or writing the delta: never damage of the pool.
      return ctx.fail(name(), output_, st.error().to_string(), kExitFailed);
    }
    r.json = {{"old", old_},
              {"new", new_},
              {"output", output_},
              {"block_bytes", bb},
              {"old_size_bytes", o.size},
              {"new_size_bytes", n.size},
              {"entries", st->entries},
              {"data_entries", st->data_entries},
              {"zero_entries", st->zero_entries},
              {"bytes", st->bytes}};
    r.text = fmt::format("wrote {}: {} entr{} of {} ({} with data, {} zero), {} ({} bytes)\n",
                         output_, st->entries, st->entries == 1 ? "y" : "ies", format_bytes(bb),
                         st->data_entries, st->zero_entries, format_bytes(st->bytes), st->bytes);
    return kExitOk;
  }

  std::string old_, new_, output_;
  std::string block_size_ = "64K";
  bool files_ = false;
};

// --- update -----------------------------------------------------------------------------

class UpdateCommand final : public Command {
 public:
  const char* name() const override { return "update"; }
  const char* description() const override {
    return "Apply a delta file to volume NAME through the writable snapshot NAME.next: "
           "verify, then merge (or stop there with --stage)";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume to update")->required();
    sub.add_option("--delta", delta_, "Delta file (from diff)")->required();
    sub.add_flag("--stage", stage_,
                 "Stop before the merge: NAME.next holds the new image (merge or remove it "
                 "later)");
    sub.add_flag("--force", force_, "Merge even while NAME is exported writable over NBD");
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), name_)) {
      return kExitUsage;
    }
    // NAME.next must be a valid name too (NAME may be 128 characters long already).
    if (!name_arg(ctx, name(), name_ + ".next")) {
      return kExitUsage;
    }
    delta_ = ctx.path(delta_);
    if (int st = check_input_file(ctx, name(), delta_); st != kExitOk) {
      return st;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      const std::string next = name_ + ".next";
      std::optional<thin::UpdateResult> done;
      auto up = unless_exported(ctx, {next}, {name_}, force_ || stage_, [&]() -> Result<void> {
        TP_ASSIGN_OR_RETURN(done, thin::apply_update(pool, name_, delta_, stage_));
        return {};
      });
      if (!up.ok()) {
        // A bad delta, a wrong base, no space or an export in the way: the update failed,
        // the pool is fine.
        // (A refused snapshot for the update names no volume yet: it is NAME.next.)
        return ctx.fail(name(), name_, up.error(), kExitFailed, next);
      }
      const thin::UpdateResult& u = *done;
      const uint64_t bb = pool.block_bytes();
      r.json = {{"volume", name_},
                {"delta", delta_},
                {"next", next},
                {"used_existing_next", u.used_existing_next},
                {"reserved_blocks", u.reserved_blocks},
                {"reserved_bytes", u.reserved_blocks * bb},
                {"entries_applied", u.entries_applied},
                {"staged", u.staged},
                {"merged", !u.staged}};
      std::string& t = r.text;
      if (u.used_existing_next) {
        t += fmt::format("using the reserved snapshot {}\n", next);
      } else {
        t += fmt::format("created {} with {} reserved ({} block{})\n", next,
                         format_bytes(u.reserved_blocks * bb), u.reserved_blocks,
                         u.reserved_blocks == 1 ? "" : "s");
      }
      t += fmt::format("applied {} entr{} from {}; checksum verified\n", u.entries_applied,
                       u.entries_applied == 1 ? "y" : "ies", delta_);
      if (u.staged) {
        t += fmt::format(
            "staged: {} holds the new image (merge {} to finish, remove {} to "
            "drop it)\n",
            next, next, next);
      } else {
        t += fmt::format("merged {} into {}\n", next, name_);
      }
      return kExitOk;
    });
  }

 private:
  std::string name_, delta_;
  bool stage_ = false;
  bool force_ = false;
};

}  // namespace

void add_io_commands(CommandList& list) {
  list.push_back(std::make_unique<WriteCommand>());
  list.push_back(std::make_unique<ReadCommand>());
  list.push_back(std::make_unique<DiffCommand>());
  list.push_back(std::make_unique<UpdateCommand>());
}

}  // namespace tp::cli
