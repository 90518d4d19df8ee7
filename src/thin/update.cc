#include "thin/update.h"

#include <fcntl.h>
#include <nettle/sha2.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "pdata/crc32c.h"
#include "pdata/endian.h"

namespace tp::thin {

namespace {

using pdata::load_le32;
using pdata::load_le64;
using pdata::store_le32;
using pdata::store_le64;

constexpr char kMagic[8] = {'T', 'P', 'D', 'E', 'L', 'T', 'A', '1'};
constexpr char kTrailerMagic[8] = {'T', 'P', 'D', 'E', 'N', 'D', '0', '1'};
constexpr size_t kHeaderSize = 128;
constexpr size_t kTrailerSize = 16;
constexpr uint64_t kZeroFlag = 1ull << 63;
constexpr uint32_t kMaxDeltaBlock = 64u << 20;
constexpr size_t kChunk = 1 << 20;

// Byte source the parser reads from: a file (pread) or memory.
struct ByteSource {
  uint64_t size = 0;
  std::function<Result<void>(uint64_t off, std::span<std::byte> out)> read;
};

Result<void> encode_header(const DeltaHeader& h, std::span<std::byte, kHeaderSize> b) {
  std::memset(b.data(), 0, kHeaderSize);
  std::memcpy(b.data(), kMagic, 8);
  store_le32(b.data() + 8, 1);
  store_le32(b.data() + 12, h.block_bytes);
  store_le64(b.data() + 16, h.base_size);
  store_le64(b.data() + 24, h.result_size);
  store_le64(b.data() + 32, h.nr_entries);
  std::memcpy(b.data() + 40, h.base_sha256.data(), 32);
  std::memcpy(b.data() + 72, h.result_sha256.data(), 32);
  store_le32(b.data() + 124, pdata::crc32c(b.first(124)));
  return {};
}

Result<DeltaFile> parse(const ByteSource& src) {
  DeltaFile df;
  if (src.size < kHeaderSize + kTrailerSize) {
    return make_error(Errc::kCorruption, "delta file is truncated (shorter than its header)");
  }
  std::array<std::byte, kHeaderSize> hb;
  TP_TRY(src.read(0, hb));
  if (std::memcmp(hb.data(), kMagic, 8) != 0) {
    return make_error(Errc::kCorruption, "not a thinpool delta file (bad magic)");
  }
  if (load_le32(hb.data() + 124) != pdata::crc32c(std::span(hb).first(124))) {
    return make_error(Errc::kCorruption, "delta file header checksum mismatch");
  }
  if (load_le32(hb.data() + 8) != 1) {
    return make_error(Errc::kUnsupported, "unsupported delta file version");
  }
  DeltaHeader& h = df.header;
  h.block_bytes = load_le32(hb.data() + 12);
  h.base_size = load_le64(hb.data() + 16);
  h.result_size = load_le64(hb.data() + 24);
  h.nr_entries = load_le64(hb.data() + 32);
  std::memcpy(h.base_sha256.data(), hb.data() + 40, 32);
  std::memcpy(h.result_sha256.data(), hb.data() + 72, 32);
  if (h.block_bytes == 0 || h.block_bytes % 4096 != 0 || h.block_bytes > kMaxDeltaBlock) {
    return make_error(Errc::kCorruption, "delta file has a bad block size");
  }
  if (h.result_size > kMaxVolumeBytes || h.base_size > kMaxVolumeBytes) {
    return make_error(Errc::kCorruption, "delta file has an impossible image size");
  }
  uint64_t result_blocks = (h.result_size + h.block_bytes - 1) / h.block_bytes;
  if (h.nr_entries > result_blocks) {
    return make_error(Errc::kCorruption, "delta file has more entries than the result has blocks");
  }
  // Walk the entries: strictly increasing, inside the result, data within the file.
  uint64_t pos = kHeaderSize;
  uint64_t body_end = src.size - kTrailerSize;
  int64_t last = -1;
  df.entries.reserve(static_cast<size_t>(std::min<uint64_t>(h.nr_entries, 1 << 20)));
  for (uint64_t i = 0; i < h.nr_entries; i++) {
    if (pos + 8 > body_end) {
      return make_error(Errc::kCorruption, "delta file is truncated (entries missing)");
    }
    std::array<std::byte, 8> ib;
    TP_TRY(src.read(pos, ib));
    pos += 8;
    uint64_t raw = load_le64(ib.data());
    DeltaEntry e;
    e.zero = (raw & kZeroFlag) != 0;
    e.block = raw & ~kZeroFlag;
    if (e.block >= result_blocks || static_cast<int64_t>(e.block) <= last) {
      return make_error(Errc::kCorruption, "delta file entries out of order or out of range");
    }
    last = static_cast<int64_t>(e.block);
    uint64_t start = e.block * h.block_bytes;
    e.length = static_cast<uint32_t>(std::min<uint64_t>(h.block_bytes, h.result_size - start));
    if (!e.zero) {
      if (pos + e.length > body_end) {
        return make_error(Errc::kCorruption, "delta file is truncated (block data missing)");
      }
      e.data_offset = pos;
      pos += e.length;
    }
    df.entries.push_back(e);
  }
  if (pos != body_end) {
    return make_error(Errc::kCorruption, "delta file has trailing bytes or is truncated");
  }
  std::array<std::byte, kTrailerSize> tb;
  TP_TRY(src.read(body_end, tb));
  if (std::memcmp(tb.data(), kTrailerMagic, 8) != 0) {
    return make_error(Errc::kCorruption, "delta file trailer missing (truncated?)");
  }
  // Checksum of everything before the trailer.
  uint32_t crc = 0xFFFFFFFFu;
  std::vector<std::byte> buf(kChunk);
  for (uint64_t off = 0; off < body_end; off += kChunk) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, body_end - off));
    TP_TRY(src.read(off, std::span(buf).first(n)));
    crc = pdata::crc32c_raw(crc, std::span(buf).first(n));
  }
  if (load_le32(tb.data() + 8) != ~crc) {
    return make_error(Errc::kCorruption, "delta file checksum mismatch (corrupt)");
  }
  return df;
}

Result<ByteSource> file_bytes(const std::string& path, std::shared_ptr<int>* keep) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error("open delta file");
  auto holder = std::shared_ptr<int>(new int(fd), [](int* p) {
    ::close(*p);
    delete p;
  });
  struct stat st;
  if (::fstat(fd, &st) != 0) return sys_error("stat delta file");
  ByteSource s;
  s.size = static_cast<uint64_t>(st.st_size);
  s.read = [holder](uint64_t off, std::span<std::byte> out) -> Result<void> {
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n =
          ::pread(*holder, out.data() + done, out.size() - done, static_cast<off_t>(off + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return sys_error("read delta file", off);
      }
      if (n == 0) return make_error(Errc::kCorruption, "delta file is truncated", off);
      done += static_cast<size_t>(n);
    }
    return {};
  };
  *keep = holder;
  return s;
}

bool all_zero(std::span<const std::byte> b) {
  for (std::byte x : b) {
    if (x != std::byte{0}) return false;
  }
  return true;
}

// Reads [off, off+len) of an image; bytes past its end read as zeros.
Result<void> read_padded(const ImageSource& img, uint64_t off, std::span<std::byte> out) {
  std::memset(out.data(), 0, out.size());
  if (off >= img.size) return {};
  uint64_t n = std::min<uint64_t>(out.size(), img.size - off);
  return img.read(off, out.first(n));
}

}  // namespace

Result<DeltaFile> parse_delta(std::span<const std::byte> bytes) {
  ByteSource s;
  s.size = bytes.size();
  s.read = [bytes](uint64_t off, std::span<std::byte> out) -> Result<void> {
    if (off > bytes.size() || out.size() > bytes.size() - off) {
      return make_error(Errc::kCorruption, "delta is truncated", off);
    }
    std::memcpy(out.data(), bytes.data() + off, out.size());
    return {};
  };
  return parse(s);
}

Result<DeltaFile> read_delta(const std::string& path) {
  std::shared_ptr<int> keep;
  TP_ASSIGN_OR_RETURN(ByteSource s, file_bytes(path, &keep));
  TP_ASSIGN_OR_RETURN(DeltaFile df, parse(s));
  df.path = path;
  return df;
}

Result<Sha256> sha256_of(const ImageSource& src) {
  sha256_ctx ctx;
  sha256_init(&ctx);
  std::vector<std::byte> buf(kChunk);
  for (uint64_t off = 0; off < src.size; off += kChunk) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, src.size - off));
    TP_TRY(src.read(off, std::span(buf).first(n)));
    sha256_update(&ctx, n, reinterpret_cast<const uint8_t*>(buf.data()));
  }
  Sha256 out;
  sha256_digest(&ctx, SHA256_DIGEST_SIZE, out.data());
  return out;
}

ImageSource volume_source(Pool& pool, uint64_t dev) {
  ImageSource s;
  auto size = pool.size_of(dev);
  s.size = size.ok() ? *size : 0;
  s.read = [&pool, dev](uint64_t off, std::span<std::byte> out) {
    return pool.read(dev, off, out);
  };
  return s;
}

Result<ImageSource> file_source(const std::string& path, int* fd_out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error("open image file");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return sys_error("stat image file");
  }
  *fd_out = fd;
  ImageSource s;
  s.size = static_cast<uint64_t>(st.st_size);
  s.read = [fd](uint64_t off, std::span<std::byte> out) -> Result<void> {
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(off + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return sys_error("read image file", off);
      }
      if (n == 0) return make_error(Errc::kIo, "image file shrank while reading", off);
      done += static_cast<size_t>(n);
    }
    return {};
  };
  return s;
}

Result<DiffStats> write_delta(const std::string& out_path, const ImageSource& old_img,
                              const ImageSource& new_img, uint32_t block_bytes) {
  if (block_bytes == 0 || block_bytes % 4096 != 0 || block_bytes > kMaxDeltaBlock) {
    return make_error(Errc::kInvalidArgument, "delta block size must be a multiple of 4 KiB");
  }
  DeltaHeader h;
  h.block_bytes = block_bytes;
  h.base_size = old_img.size;
  h.result_size = new_img.size;
  TP_ASSIGN_OR_RETURN(h.base_sha256, sha256_of(old_img));
  TP_ASSIGN_OR_RETURN(h.result_sha256, sha256_of(new_img));
  // Which blocks to compare: the candidates, plus everything past the shorter image.
  uint64_t result_blocks = (new_img.size + block_bytes - 1) / block_bytes;
  std::vector<uint64_t> blocks;
  if (new_img.candidates) {
    blocks = *new_img.candidates;
    uint64_t tail = std::min(old_img.size, new_img.size) / block_bytes;
    for (uint64_t b = tail; b < result_blocks; b++) blocks.push_back(b);
    std::sort(blocks.begin(), blocks.end());
    blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
    std::erase_if(blocks, [&](uint64_t b) { return b >= result_blocks; });
  } else {
    blocks.resize(result_blocks);
    for (uint64_t b = 0; b < result_blocks; b++) blocks[b] = b;
  }
  std::vector<std::byte> nb(block_bytes), ob(block_bytes);
  std::vector<std::pair<uint64_t, bool>> entries;  // (block, zero)
  for (uint64_t b : blocks) {
    uint64_t off = b * block_bytes;
    uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(block_bytes, new_img.size - off));
    TP_TRY(read_padded(new_img, off, std::span(nb).first(len)));
    TP_TRY(read_padded(old_img, off, std::span(ob).first(len)));
    // A block the old image did not fully have must be written even if equal to zeros.
    bool old_whole = off + len <= old_img.size;
    if (old_whole && std::memcmp(nb.data(), ob.data(), len) == 0) continue;
    entries.emplace_back(b, all_zero(std::span(nb).first(len)));
  }
  h.nr_entries = entries.size();

  std::string tmp = out_path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return sys_error("create delta file");
  uint32_t crc = 0xFFFFFFFFu;
  uint64_t written = 0;
  auto put = [&](std::span<const std::byte> b) -> Result<void> {
    crc = pdata::crc32c_raw(crc, b);
    size_t done = 0;
    while (done < b.size()) {
      ssize_t n = ::write(fd, b.data() + done, b.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return sys_error("write delta file");
      }
      done += static_cast<size_t>(n);
    }
    written += b.size();
    return {};
  };
  Result<void> r;
  std::array<std::byte, kHeaderSize> hb;
  (void)encode_header(h, hb);
  r = put(hb);
  DiffStats st;
  for (size_t i = 0; r.ok() && i < entries.size(); i++) {
    auto [b, zero] = entries[i];
    std::array<std::byte, 8> ib;
    store_le64(ib.data(), b | (zero ? kZeroFlag : 0));
    r = put(ib);
    if (!r.ok() || zero) {
      st.zero_entries += zero;
      continue;
    }
    uint64_t off = b * block_bytes;
    uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(block_bytes, new_img.size - off));
    r = read_padded(new_img, off, std::span(nb).first(len));
    if (r.ok()) r = put(std::span(nb).first(len));
    st.data_entries++;
  }
  if (r.ok()) {
    std::array<std::byte, kTrailerSize> tb{};
    std::memcpy(tb.data(), kTrailerMagic, 8);
    store_le32(tb.data() + 8, ~crc);
    r = put(tb);
  }
  if (r.ok() && ::fsync(fd) != 0) r = sys_error("sync delta file");
  ::close(fd);
  if (r.ok() && ::rename(tmp.c_str(), out_path.c_str()) != 0) r = sys_error("rename delta file");
  if (!r.ok()) {
    ::unlink(tmp.c_str());
    return r.error();
  }
  st.entries = entries.size();
  st.bytes = written;
  return st;
}

namespace {
Result<UpdateResult> apply_update_inner(Pool& pool, const std::string& name,
                                        const std::string& delta, bool stage);
}  // namespace

Result<UpdateResult> apply_update(Pool& pool, const std::string& name, const std::string& delta,
                                  bool stage) {
  auto r = apply_update_inner(pool, name, delta, stage);
  if (!r.ok() && r.error().code != Errc::kNotFound) {
    // Whatever failed, NAME.next does not survive (SEMANTICS.md): remove it if it is
    // there, whether this run made it or it was prepared ahead of time.
    if (pool.volume(name + ".next").ok()) (void)pool.remove(name + ".next", false);
  }
  return r;
}

namespace {
Result<UpdateResult> apply_update_inner(Pool& pool, const std::string& name,
                                        const std::string& delta, bool stage) {
  UpdateResult out;
  TP_ASSIGN_OR_RETURN(DeltaFile df, read_delta(delta));
  const DeltaHeader& h = df.header;
  TP_ASSIGN_OR_RETURN(uint64_t dev, pool.dev_id(name));
  TP_ASSIGN_OR_RETURN(uint64_t base_size, pool.size_of(dev));
  if (base_size != h.base_size) {
    return make_error(Errc::kInvalidArgument, "delta was made for a base of another size");
  }
  TP_ASSIGN_OR_RETURN(Sha256 base_sha, sha256_of(volume_source(pool, dev)));
  if (base_sha != h.base_sha256) {
    return make_error(Errc::kInvalidArgument,
                      "delta does not apply to this volume (base checksum differs)");
  }
  // Pool blocks the delta writes: each needs one block of the snapshot's budget.
  const uint64_t B = pool.block_bytes();
  uint64_t needed = 0, last_pool_block = ~uint64_t{0};
  for (const DeltaEntry& e : df.entries) {
    uint64_t first = e.block * h.block_bytes / B;
    uint64_t last = (e.block * h.block_bytes + e.length - 1) / B;
    for (uint64_t pb = first; pb <= last; pb++) {
      if (pb != last_pool_block) needed++;
      last_pool_block = pb;
    }
  }
  std::string next = name + ".next";
  auto existing = pool.volume(next);
  if (existing.ok()) {
    if (existing->origin != name || existing->read_only) {
      return make_error(Errc::kBusy, "NAME.next exists but is not a writable snapshot of NAME");
    }
    TP_ASSIGN_OR_RETURN(auto diverged, pool.delta(name, next));
    if (!diverged.empty()) {
      return make_error(Errc::kBusy, "NAME.next has changed since it was taken; remove it first");
    }
    out.used_existing_next = true;
  } else {
    TP_TRY(pool.snapshot(name, next, true, needed * B));
    out.reserved_blocks = needed;
  }
  // From here on every failure drops NAME.next: NAME is untouched until the merge.
  auto fail = [&](const Error& e) -> Result<UpdateResult> {
    (void)pool.remove(next, false);
    return e;
  };
  auto ndev = pool.dev_id(next);
  if (!ndev.ok()) return fail(ndev.error());
  if (h.result_size != base_size) {
    if (auto r = pool.resize(next, h.result_size); !r.ok()) return fail(r.error());
  }
  std::shared_ptr<int> keep;
  auto src = file_bytes(delta, &keep);
  if (!src.ok()) return fail(src.error());
  std::vector<std::byte> buf(h.block_bytes);
  // Runs of consecutive zero entries become one write_zeroes, which unmaps whole blocks.
  uint64_t zero_off = 0, zero_len = 0;
  auto flush_zeros = [&]() -> Result<void> {
    if (zero_len == 0) return {};
    auto r = pool.write_zeroes(*ndev, zero_off, zero_len);
    zero_len = 0;
    return r;
  };
  for (const DeltaEntry& e : df.entries) {
    uint64_t off = e.block * h.block_bytes;
    Result<void> r;
    if (e.zero) {
      if (zero_len > 0 && zero_off + zero_len != off) r = flush_zeros();
      if (zero_len == 0) zero_off = off;
      zero_len += e.length;
    } else {
      r = flush_zeros();
      if (r.ok()) r = src->read(e.data_offset, std::span(buf).first(e.length));
      if (r.ok()) r = pool.write(*ndev, off, std::span(buf).first(e.length));
    }
    if (!r.ok()) return fail(r.error());
    out.entries_applied++;
  }
  if (auto r = flush_zeros(); !r.ok()) return fail(r.error());
  if (auto r = pool.flush(); !r.ok()) return fail(r.error());
  auto got = sha256_of(volume_source(pool, *ndev));
  if (!got.ok()) return fail(got.error());
  if (*got != h.result_sha256) {
    return fail(make_error(Errc::kCorruption, "updated image checksum mismatch; update dropped"));
  }
  if (stage) {
    out.staged = true;
    return out;
  }
  if (auto r = pool.merge(next, true); !r.ok()) return fail(r.error());
  return out;
}
}  // namespace

}  // namespace tp::thin
