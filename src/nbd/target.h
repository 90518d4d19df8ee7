#pragma once
// What the NBD server serves, and nothing more: a BlockTarget is one open export (a byte
// range with read/write/flush/trim/zero/status), an ExportCatalog names the exports and
// opens them. The server never sees a pool, a btree or a file: the daemon adapts thin::Pool
// to these interfaces, tests use an in-memory target (STYLE.md "A god object").
//
// Errors are tp::Result all the way to the one function that turns them into NBD errors
// (to_nbd_error below), so a full pool reaches the client as ENOSPC.

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/result.h"

namespace tp::nbd {

// A run of bytes with one status. For base:allocation the flags are kStateHole/kStateZero
// (protocol.h); for a thinpool:delta context, kStateChanged.
struct StatusExtent {
  uint64_t length = 0;
  uint32_t flags = 0;
};

// One open export. Created per connection (and per NBD_OPT_INFO); destroyed when the
// connection ends.
//
// Thread-safety: the server calls read/read_sparse/write/trim/zero/flush/block_status/
// delta_status from several threads of one connection at once (the reader and the worker
// threads, session.h), on overlapping ranges too (the client orders its own requests);
// implementations must be safe for that. Several connections to
// the same export each have their own BlockTarget.
//
// Ranges: the server checks every request against size() before calling (off + len <=
// size(), len > 0), so implementations may treat an out-of-range call as a bug and return
// kInvalidArgument.
class BlockTarget {
 public:
  BlockTarget() = default;
  BlockTarget(const BlockTarget&) = delete;
  BlockTarget& operator=(const BlockTarget&) = delete;
  virtual ~BlockTarget() = default;

  virtual uint64_t size() const = 0;
  // Writes, trims and zeroes are refused (EPERM) and NBD_FLAG_READ_ONLY is advertised.
  virtual bool read_only() const = 0;
  // True when a flush on one connection makes writes from every connection to this export
  // durable and visible (NBD_FLAG_CAN_MULTI_CONN).
  virtual bool can_multi_conn() const = 0;
  // The preferred I/O size advertised in NBD_INFO_BLOCK_SIZE (a power of two).
  virtual uint32_t preferred_block_size() const { return 4096; }

  virtual Result<void> read(uint64_t off, std::span<std::byte> buf) = 0;
  // fua: the data must be durable before this returns.
  virtual Result<void> write(uint64_t off, std::span<const std::byte> buf, bool fua) = 0;
  // Makes every write that completed before this call durable.
  virtual Result<void> flush() = 0;
  // A hint that the range is no longer needed; it may read back as anything (thinpool:
  // zeros for whole unmapped blocks).
  virtual Result<void> trim(uint64_t off, uint64_t len) = 0;
  // The range reads as zeros afterwards. no_hole (NBD_CMD_FLAG_NO_HOLE): keep it allocated
  // (thinpool: provision it); otherwise it may be deallocated.
  virtual Result<void> zero(uint64_t off, uint64_t len, bool no_hole) = 0;
  // base:allocation for [off, off + len): consecutive extents starting at off. They may
  // cover less than len (at least one byte) or more (the server trims). kUnsupported: the
  // server reports the range as allocated data.
  virtual Result<std::vector<StatusExtent>> block_status(uint64_t off, uint64_t len) = 0;
  // A READ with structured replies in one call: fills buf with the bytes at [off, off +
  // buf.size()) and sets extents (cleared first; the caller reuses it, so its capacity is
  // kept) to the base:allocation runs from off, same rules as block_status. Every byte of a
  // run flagged kStateZero is zero in buf. No extents (a target that cannot tell) means
  // "all data". The default calls block_status then read, and skips read when the whole
  // range is a zero hole; a failed or unsupported block_status is not an error (no
  // extents). Targets that find mappings and data in one pass (thinpool) override it.
  virtual Result<void> read_sparse(uint64_t off, std::span<std::byte> buf,
                                   std::vector<StatusExtent>& extents);

  // A READ whose data the server reads itself, with the reads of other requests in one
  // batch (io_uring, session.h). start_read does what read_sparse (extents given) or read
  // (nullptr) does, except the file reads listed in parts (appended): for each, read
  // length bytes at file_offset of fd into buf at buf_offset. The server then calls
  // finish_read(ticket) exactly once, when those reads have ended (also when they failed).
  // may_wait false: kBusy where the target would wait for requests in flight to end (a
  // caller holding tickets of reads it has not started yet must start them first).
  // kUnsupported (the default): this target reads through read/read_sparse only.
  struct FileRead {
    int fd = -1;
    uint64_t file_offset = 0;
    uint64_t buf_offset = 0;
    uint64_t length = 0;
  };
  virtual Result<uint64_t> start_read(uint64_t off, std::span<std::byte> buf,
                                      std::vector<StatusExtent>* extents,
                                      std::vector<FileRead>& parts, bool may_wait) {
    (void)off, (void)buf, (void)extents, (void)parts, (void)may_wait;
    return make_error(Errc::kUnsupported, "the target reads itself");
  }
  virtual void finish_read(uint64_t ticket) { (void)ticket; }

  // thinpool:delta:<base>: names usable as <base> for this export (the other volumes).
  virtual std::vector<std::string> delta_bases() { return {}; }
  // Extents flagged kStateChanged where this export differs from base; same rules as
  // block_status.
  virtual Result<std::vector<StatusExtent>> delta_status(const std::string& base, uint64_t off,
                                                         uint64_t len) {
    (void)base, (void)off, (void)len;
    return make_error(Errc::kUnsupported, "no delta contexts for this export");
  }
};

struct ExportEntry {
  std::string name;
  std::string description;  // one line for humans (NBD_REP_SERVER, NBD_INFO_DESCRIPTION)
};

// The set of exports. Thread-safety: called from every connection's thread at once.
class ExportCatalog {
 public:
  ExportCatalog() = default;
  ExportCatalog(const ExportCatalog&) = delete;
  ExportCatalog& operator=(const ExportCatalog&) = delete;
  virtual ~ExportCatalog() = default;

  virtual std::vector<ExportEntry> list() = 0;
  // The export the empty name stands for; "" if there is none.
  virtual std::string default_export() = 0;
  // Opens an export by its (non-empty) name: kNotFound if there is no such export.
  virtual Result<std::unique_ptr<BlockTarget>> open(const std::string& name) = 0;
};

// The one place where an Error becomes an NBD error value (protocol.h kE*):
// kNoSpace (and a host EDQUOT/EFBIG) -> ENOSPC, kReadOnly -> EPERM, kInvalidArgument and
// kUnsupported -> EINVAL, everything else (kIo, kCorruption, kNotFound of a volume removed
// under us, kBusy) -> EIO.
uint32_t to_nbd_error(const Error& e);

}  // namespace tp::nbd
