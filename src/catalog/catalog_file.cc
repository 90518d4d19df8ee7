// The catalog file: an append-only sequence of checksummed records, one per metadata
// transaction, compacted to two generations when it grows (byte layout in catalog.h).

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "catalog/catalog.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace tp::catalog {
namespace {

// Record header: magic, trans_id, sequence, payload length, and a crc32c of the header's
// first kCrcOff bytes followed by the payload, so that a damaged byte anywhere in a record
// (header or payload) makes it invalid.
constexpr size_t kHeaderBytes = 32;
constexpr size_t kTransIdOff = 8;
constexpr size_t kSequenceOff = 16;
constexpr size_t kLengthOff = 24;
constexpr size_t kCrcOff = 28;
constexpr std::array<char, 8> kMagic = {'T', 'P', 'C', 'A', 'T', 'L', 'G', '2'};
// The first layout: same header, but the crc covered the payload alone. Recognised only to
// refuse such a file rather than take it for an empty or torn one.
constexpr std::array<char, 8> kOldMagic = {'T', 'P', 'C', 'A', 'T', 'L', 'G', '1'};
static_assert(kCrcOff + 4 == kHeaderBytes);

// Compact when the file is larger than max(kCompactMinBytes, kCompactFactor x last record).
constexpr uint64_t kCompactMinBytes = uint64_t{1} << 20;
constexpr uint64_t kCompactFactor = 8;
// A 64 MiB JSON catalog is some 200k volumes; anything bigger is a bug, and the cap keeps the
// whole file (at most ~9 records of that size before compaction) under kMaxFileBytes.
constexpr uint64_t kMaxPayloadBytes = uint64_t{64} << 20;
constexpr uint64_t kMaxFileBytes = uint64_t{1} << 30;

// --- crc32c (Castagnoli), local so that catalog does not depend on pdata -----------------

constexpr std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) {
      c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    t[i] = c;
  }
  return t;
}
constexpr auto kCrcTable = make_crc_table();

uint32_t crc_table(uint32_t crc, const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    crc = kCrcTable[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  }
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc_sse42(uint32_t crc, const unsigned char* p,
                                                     size_t n) {
  uint64_t c = crc;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  for (; n > 0; p++, n--) {
    c32 = _mm_crc32_u8(c32, *p);
  }
  return c32;
}
#endif

// Raw update: no initial or final inversion, so that pieces can be chained.
uint32_t crc32c_raw(uint32_t crc, std::string_view data) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
#if defined(__x86_64__)
  static const bool have_sse42 = __builtin_cpu_supports("sse4.2");
  if (have_sse42) return crc_sse42(crc, p, data.size());
#endif
  return crc_table(crc, p, data.size());
}

// The usual CRC-32C (iSCSI): initial ~0, final inversion. crc32c("123456789") = 0xE3069283.
uint32_t crc32c(std::string_view data) {
  return ~crc32c_raw(0xFFFFFFFFu, data);
}

// crc32c of header[0, kCrcOff) followed by the payload.
uint32_t record_crc(std::string_view header, std::string_view payload) {
  return ~crc32c_raw(crc32c_raw(0xFFFFFFFFu, header.substr(0, kCrcOff)), payload);
}

// --- little-endian fields ------------------------------------------------------------------

void store_le(char* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; i++) {
    p[i] = static_cast<char>(v >> (8 * i));
  }
}

uint64_t load_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++) {
    v |= uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  }
  return v;
}

std::string encode_record(uint64_t trans_id, uint64_t sequence, std::string_view payload) {
  std::string rec(kHeaderBytes, '\0');
  std::memcpy(rec.data(), kMagic.data(), kMagic.size());
  store_le(rec.data() + kTransIdOff, trans_id, 8);
  store_le(rec.data() + kSequenceOff, sequence, 8);
  store_le(rec.data() + kLengthOff, payload.size(), 4);
  store_le(rec.data() + kCrcOff, record_crc(rec, payload), 4);
  rec.append(payload);
  return rec;
}

struct Record {
  uint64_t offset = 0;
  uint64_t length = 0;  // header + payload
  uint64_t trans_id = 0;
  uint64_t sequence = 0;
};

struct Scan {
  std::vector<Record> valid;  // in file order
  uint64_t end = 0;           // offset after the last valid record
  bool old_format = false;    // the file starts with a valid record of the old layout
};

constexpr const char* kOldFormatError =
    "catalog written by an older thinpool format (TPCATLG1 records, header not checksummed)";

// Whether `bytes` starts with a whole, intact record of the old layout (magic TPCATLG1,
// crc32c of the payload only). Garbage that merely starts with the old magic is not.
bool starts_with_old_record(std::string_view bytes) {
  if (bytes.size() < kHeaderBytes) return false;
  if (std::memcmp(bytes.data(), kOldMagic.data(), kOldMagic.size()) != 0) return false;
  uint64_t len = load_le(bytes.data() + kLengthOff, 4);
  if (len > bytes.size() - kHeaderBytes) return false;
  return crc32c(bytes.substr(kHeaderBytes, len)) == load_le(bytes.data() + kCrcOff, 4);
}

// Valid records from offset 0 up to the first that is short, has a bad magic or checksum
// (which covers the header too), runs past the end of the file, or does not raise the
// sequence: that one and everything after it is a torn tail from an interrupted append.
// A file of the old layout has no valid records and old_format set.
Scan scan(std::string_view bytes) {
  Scan s;
  if (starts_with_old_record(bytes)) {
    s.old_format = true;
    return s;
  }
  uint64_t off = 0;
  while (bytes.size() - off >= kHeaderBytes) {
    const char* h = bytes.data() + off;
    if (std::memcmp(h, kMagic.data(), kMagic.size()) != 0) break;
    uint64_t len = load_le(h + kLengthOff, 4);
    if (len > bytes.size() - off - kHeaderBytes) break;
    if (record_crc(bytes.substr(off, kHeaderBytes), bytes.substr(off + kHeaderBytes, len)) !=
        load_le(h + kCrcOff, 4)) {
      break;
    }
    Record r{off, kHeaderBytes + len, load_le(h + kTransIdOff, 8), load_le(h + kSequenceOff, 8)};
    if (!s.valid.empty() && r.sequence <= s.valid.back().sequence) break;
    s.valid.push_back(r);
    off += r.length;
  }
  s.end = off;
  return s;
}

std::string_view payload_of(std::string_view bytes, const Record& r) {
  return bytes.substr(r.offset + kHeaderBytes, r.length - kHeaderBytes);
}

// --- syscalls ------------------------------------------------------------------------------

// Owns a file descriptor. Closing cannot report an error; every written file is synced
// (and the sync checked) before it is closed.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  bool ok() const { return fd_ >= 0; }
  int get() const { return fd_; }

 private:
  int fd_;
};

Result<void> pwrite_all(int fd, std::string_view data, uint64_t off) {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error("catalog write failed", off);
    }
    if (n == 0) return make_error(Errc::kIo, "catalog write made no progress", off);
    data.remove_prefix(static_cast<size_t>(n));
    off += static_cast<uint64_t>(n);
  }
  return ok_result();
}

Result<std::string> read_file(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.ok()) return sys_error("cannot open catalog");
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return sys_error("cannot stat catalog");
  if (static_cast<uint64_t>(st.st_size) > kMaxFileBytes) {
    return make_error(Errc::kCorruption, "catalog file is implausibly large");
  }
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t n = ::pread(fd.get(), bytes.data() + got, bytes.size() - got, static_cast<off_t>(got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error("catalog read failed", got);
    }
    if (n == 0) break;  // shrank since fstat: what is there is all there is
    got += static_cast<size_t>(n);
  }
  bytes.resize(got);
  return bytes;
}

// Makes a create/rename of `path` durable by syncing its directory.
Result<void> sync_parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.ok()) return sys_error("cannot open the catalog's directory");
  if (::fsync(fd.get()) != 0) return sys_error("fsync of the catalog's directory failed");
  return ok_result();
}

Result<std::string> encode_catalog(const Catalog& c, uint64_t trans_id, uint64_t sequence) {
  TP_TRY(c.validate());
  std::string payload = c.to_json();
  if (payload.size() > kMaxPayloadBytes) {
    return make_error(Errc::kInvalidArgument, "catalog is too large for one record");
  }
  return encode_record(trans_id, sequence, payload);
}

}  // namespace

Result<CatalogFile> CatalogFile::create(const std::string& path, const Catalog& initial,
                                        uint64_t trans_id) {
  TP_ASSIGN_OR_RETURN(std::string rec, encode_catalog(initial, trans_id, 1));
  Result<void> r;
  {
    Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd.ok()) {
      if (errno == EEXIST) {
        return make_error(Errc::kExists, "catalog file already exists", kNoAddr, EEXIST);
      }
      return sys_error("cannot create catalog");
    }
    r = pwrite_all(fd.get(), rec, 0);
    if (r.ok() && ::fsync(fd.get()) != 0) r = sys_error("fsync of new catalog failed");
  }
  if (r.ok()) r = sync_parent_dir(path);
  if (!r.ok()) {
    ::unlink(path.c_str());  // best effort: a failed create leaves no file behind
    return r.error();
  }
  CatalogFile f;
  f.path_ = path;
  f.current_ = initial;
  f.trans_id_ = trans_id;
  f.sequence_ = 1;
  f.end_ = rec.size();
  f.last_record_ = rec.size();
  return f;
}

Result<CatalogFile> CatalogFile::open(const std::string& path, uint64_t trans_id) {
  TP_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  Scan s = scan(bytes);
  if (s.old_format) return make_error(Errc::kCorruption, kOldFormatError);
  // A generation is written only when the catalog changed, so transaction N uses the newest
  // record (in file order) whose trans_id is <= N. Records for later transactions belong to
  // commits that failed or were cut off before their superblock: ignored (newer_ tells the
  // pool to write the catalog at its next commit, so they can never be picked later).
  const Record* pick = nullptr;
  bool newer = false;
  for (const Record& r : s.valid) {
    if (r.trans_id <= trans_id) {
      pick = &r;
    } else {
      newer = true;
    }
  }
  if (pick == nullptr) {
    return make_error(Errc::kCorruption, "catalog has no generation for the metadata transaction");
  }
  TP_ASSIGN_OR_RETURN(Catalog c, Catalog::from_json(payload_of(bytes, *pick)));
  CatalogFile f;
  f.path_ = path;
  f.current_ = std::move(c);
  f.trans_id_ = pick->trans_id;
  f.newer_ = newer;
  f.sequence_ = s.valid.back().sequence;
  f.end_ = s.end;
  f.last_record_ = s.valid.back().length;
  return f;
}

Result<void> CatalogFile::write(const Catalog& c, uint64_t trans_id) {
  // The next record's sequence must exceed the last one's, or the scan would take the new
  // record for a torn tail and the write, though synced, would be lost. The header is
  // checksummed, so only a writer bug (or 2^64 writes) can bring the sequence this far.
  if (sequence_ == UINT64_MAX) {
    return make_error(Errc::kCorruption, "catalog record sequence numbers are exhausted");
  }
  TP_ASSIGN_OR_RETURN(std::string rec, encode_catalog(c, trans_id, sequence_ + 1));
  {
    Fd fd(::open(path_.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd.ok()) return sys_error("cannot open catalog for writing");
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return sys_error("cannot stat catalog");
    uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size < end_) {
      // Appending past EOF would leave a hole that ends the record scan before our record.
      return make_error(Errc::kCorruption, "catalog file shrank while open", size);
    }
    // Overwrites any torn tail left by an interrupted append.
    TP_TRY(pwrite_all(fd.get(), rec, end_));
    uint64_t new_end = end_ + rec.size();
    if (size > new_end && ::ftruncate(fd.get(), static_cast<off_t>(new_end)) != 0) {
      return sys_error("cannot trim the catalog's torn tail", new_end);
    }
    if (::fdatasync(fd.get()) != 0) return sys_error("fdatasync of catalog failed");
  }
  // The record is durable: the file now ends with it, whatever compaction does.
  end_ += rec.size();
  sequence_++;
  last_record_ = rec.size();
  if (end_ > std::max(kCompactMinBytes, kCompactFactor * last_record_)) {
    TP_TRY(compact(trans_id));
  }
  current_ = c;
  trans_id_ = trans_id;
  newer_ = false;
  return ok_result();
}

Result<void> CatalogFile::compact(uint64_t trans_id) {
  TP_ASSIGN_OR_RETURN(std::string bytes, read_file(path_));
  Scan s = scan(bytes);
  if (s.valid.empty() || s.end != end_ || s.valid.back().sequence != sequence_) {
    return make_error(Errc::kCorruption, "catalog file changed while open");
  }
  const Record& latest = s.valid.back();
  // Keep the generation the superblock may still name: the newest record of an EARLIER
  // transaction. The record just before ours can be a stale one for this same trans_id
  // (written before a commit that failed); keeping only that would lose the committed one.
  const Record* keep = nullptr;
  for (size_t i = 0; i + 1 < s.valid.size(); i++) {
    if (s.valid[i].trans_id < trans_id) keep = &s.valid[i];
  }
  if (keep == nullptr && s.valid.size() >= 2) keep = &s.valid[s.valid.size() - 2];
  std::string out;
  if (keep != nullptr) out.append(bytes, keep->offset, keep->length);
  out.append(bytes, latest.offset, latest.length);

  std::string tmp = path_ + ".tmp";
  Result<void> r;
  {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd.ok()) return sys_error("cannot create catalog.tmp");
    r = pwrite_all(fd.get(), out, 0);
    if (r.ok() && ::fsync(fd.get()) != 0) r = sys_error("fsync of catalog.tmp failed");
  }
  if (r.ok() && ::rename(tmp.c_str(), path_.c_str()) != 0) {
    r = sys_error("cannot rename catalog.tmp over catalog");
  }
  if (!r.ok()) {
    ::unlink(tmp.c_str());  // best effort; the uncompacted file is intact
    return r.error();
  }
  end_ = out.size();
  return sync_parent_dir(path_);
}

Result<std::vector<CatalogFile::RecordInfo>> CatalogFile::records() const {
  TP_ASSIGN_OR_RETURN(std::string bytes, read_file(path_));
  Scan s = scan(bytes);
  if (s.old_format) return make_error(Errc::kCorruption, kOldFormatError);
  std::vector<RecordInfo> out;
  out.reserve(s.valid.size() + 1);
  for (const Record& r : s.valid) {
    out.push_back(RecordInfo{r.offset, r.trans_id, r.sequence, true});
  }
  if (s.end < bytes.size()) {
    // The torn tail, with whatever its header claims (zeros when even that is cut short).
    RecordInfo tail{s.end, 0, 0, false};
    if (bytes.size() - s.end >= kHeaderBytes) {
      tail.trans_id = load_le(bytes.data() + s.end + kTransIdOff, 8);
      tail.sequence = load_le(bytes.data() + s.end + kSequenceOff, 8);
    }
    out.push_back(tail);
  }
  return out;
}

}  // namespace tp::catalog
