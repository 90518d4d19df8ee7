#pragma once
// The catalog: what dm-thin's metadata has no room for (volume names, sizes, flags,
// lineage, guarantees, reservations, pool settings). It lives in the pool directory's
// `catalog` file beside `metadata` and is tied to it by the metadata transaction id.
//
// Durability protocol (the two generations): a catalog that changed in transaction N+1 is
// appended and synced BEFORE the metadata superblock for N+1 is written; a transaction that
// did not change it writes nothing. Opening picks the newest record whose trans_id is <= the
// superblock's; the previous generation is always still there, so a crash between the two
// writes resolves to a consistent pair either way.
//
// File format (all integers little-endian): a sequence of records, each
//   0  8 bytes magic "TPCATLG2"   8  le64 trans_id   16 le64 sequence (strictly increasing)
//   24 le32 payload length        28 le32 crc32c of bytes 0..27 followed by the payload
//   32 payload: JSON (UTF-8), see Catalog::to_json
// The crc covers the whole record but itself, so a damaged byte anywhere in a record makes
// it invalid. The scan stops at the first record that is cut short, has a bad magic or crc,
// or does not raise the sequence: that record and everything after it are a torn tail,
// ignored (and overwritten by the next append); the generations before it stay usable.
// A file whose first record is an intact one of the first layout ("TPCATLG1": same header,
// crc of the payload only) is refused with kCorruption ("catalog written by an older
// thinpool format"), never read as empty or torn. When the file grows past
// max(1 MiB, 8 x the last record) it is compacted: the last two generations are written to
// catalog.tmp, synced, renamed over catalog, and the directory synced. "The last two" are
// the record just written and the newest record of an earlier transaction (the one the
// superblock may still name; a stale record for the same trans_id, left by a commit that
// failed and was retried, is dropped), or the record before it when there is none.
//
// Not thread-safe: the pool serialises access.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/result.h"

namespace tp::catalog {

enum class ProvisionClass : uint8_t { kData = 0, kMeta = 1 };

// A guaranteed range of virtual blocks [begin, end).
struct GuaranteeRange {
  uint64_t begin = 0;
  uint64_t end = 0;
  ProvisionClass cls = ProvisionClass::kData;
  bool operator==(const GuaranteeRange&) const = default;
};

struct VolumeRecord {
  std::string name;
  uint64_t dev_id = 0;
  uint64_t size_bytes = 0;
  bool read_only = false;                 // snapshots not created --writable
  std::string origin;                     // name of the origin at snapshot time ("" for none)
  uint64_t origin_dev_id = 0;             // valid when origin != ""
  int64_t created_unix = 0;               // seconds since the epoch
  std::vector<GuaranteeRange> guarantee;  // sorted, non-overlapping, merged when adjacent
  uint64_t reserve_blocks = 0;            // explicit reservation (reserve / snapshot --reserve)
  bool operator==(const VolumeRecord&) const = default;
};

struct PoolSettings {
  uint32_t block_bytes = 64 * 1024;
  uint64_t data_bytes = 0;
  uint32_t low_water_percent = 10;
  std::string low_water_hook;  // command run when the low-water mark is crossed
  // Random at init (0 < id < 2^53), never changed: the pool's journal batches carry it, so a
  // journal file beside another pool's metadata is never replayed. 0 in catalogs written
  // before it existed (the pool assigns one when it opens such a catalog).
  uint64_t pool_id = 0;
  bool operator==(const PoolSettings&) const = default;
};

struct Catalog {
  PoolSettings settings;
  std::map<std::string, VolumeRecord> volumes;  // by name
  uint64_t next_dev_id = 1;
  bool operator==(const Catalog&) const = default;

  // Lookups by name / device id; nullptr when absent.
  VolumeRecord* find(const std::string& name);
  const VolumeRecord* find(const std::string& name) const;
  const VolumeRecord* find_dev(uint64_t dev_id) const;

  // Checks what from_json checks beyond types: map keys equal the names, valid names (and
  // origin names, when set), unique dev ids < 2^24, origin_dev_id < 2^24, next_dev_id <= 2^24,
  // sorted non-overlapping guarantee ranges with begin < end, block_bytes 64 KiB..1 GiB and a
  // multiple of 64 KiB, low_water_percent <= 100. kInvalidArgument naming the first problem.
  // CatalogFile refuses to write a catalog that fails this, so every record written reopens.
  Result<void> validate() const;

  // One JSON object, fields in the documented order, volumes sorted by name. Strings that
  // are not UTF-8 (only possible in low_water_hook/origin) have bad bytes replaced by U+FFFD.
  std::string to_json() const;
  // kCorruption on anything malformed (bad JSON, wrong types, missing fields, format != 1,
  // duplicate names, or what validate() rejects). Never throws; safe on arbitrary bytes.
  static Result<Catalog> from_json(std::string_view text);
};

// Volume names: 1..128 bytes of [A-Za-z0-9._+-], not starting with '.' or '-'.
bool valid_volume_name(std::string_view name);

// Guarantee range sets (sorted, merged). Both return the new set.
// REQUIRES: `set` is sorted and non-overlapping (as validate() checks).
// add_range: the part of the set under r becomes r's class (the newly added class wins),
// and r merges with same-class ranges it overlaps or touches; an empty r changes nothing.
// remove_range: cuts [begin, end) out of every range, splitting one that spans it.
// O(n) in the number of ranges.
std::vector<GuaranteeRange> add_range(std::vector<GuaranteeRange> set, GuaranteeRange r);
std::vector<GuaranteeRange> remove_range(std::vector<GuaranteeRange> set, uint64_t begin,
                                         uint64_t end);
// Blocks of [begin, end) covered by the set, of either class. O(log n + ranges touched).
uint64_t covered_blocks(const std::vector<GuaranteeRange>& set, uint64_t begin, uint64_t end);
bool is_covered(const std::vector<GuaranteeRange>& set, uint64_t block);

class CatalogFile {
 public:
  // Creates a new catalog file (fails with kExists if it exists) holding `initial` for
  // transaction trans_id.
  static Result<CatalogFile> create(const std::string& path, const Catalog& initial,
                                    uint64_t trans_id);
  // Opens the file and loads the newest valid record whose trans_id <= trans_id.
  // kCorruption when no record qualifies, when the file is of the old layout (see above), or
  // when the matching record's JSON is bad (the
  // error's `what` is a literal: the caller adds the path to its message). The file itself
  // failing to open/read: kIo with sys_errno (ENOENT when missing).
  static Result<CatalogFile> open(const std::string& path, uint64_t trans_id);

  const Catalog& current() const { return current_; }
  // The transaction id of the record current() came from.
  uint64_t trans_id() const { return trans_id_; }
  // open() found records for transactions after the one asked for (left by a commit that did
  // not complete): the next write must happen even if the catalog did not change, so that a
  // later open never picks one of them.
  bool has_newer() const { return newer_; }

  // Appends and fsyncs a record of `c` for trans_id (compacting when due). Call before the
  // metadata commit of that transaction. kInvalidArgument (nothing written) when
  // c.validate() fails. On any error current()/trans_id() are unchanged; the file is
  // always left openable at the previous generation (and at the new one if its append was
  // synced before a later step, e.g. compaction, failed).
  Result<void> write(const Catalog& c, uint64_t trans_id);

  // Record sequence numbers and trans ids present in the file (for tests and `check`): the
  // valid records in file order, then, if the file has a torn tail, one entry for it with
  // valid = false (trans_id/sequence as its header claims, 0 when the header is cut short).
  // kCorruption for a file of the old layout, as open().
  struct RecordInfo {
    uint64_t offset, trans_id, sequence;
    bool valid;
  };
  Result<std::vector<RecordInfo>> records() const;

 private:
  // Rewrites the file as two generations (see the file comment). REQUIRES: the last record
  // in the file is the one just written for trans_id.
  Result<void> compact(uint64_t trans_id);

  std::string path_;
  Catalog current_;
  uint64_t trans_id_ = 0;
  uint64_t sequence_ = 0;
  uint64_t end_ = 0;          // file offset after the last valid record
  uint64_t last_record_ = 0;  // size of the last record
  bool newer_ = false;
};

}  // namespace tp::catalog
