#pragma once
// The metadata journal (DIR/journal): what the I/O path changed in the mappings since the
// last checkpoint (a dm-thin metadata commit), so that a FLUSH costs one small journal write
// synced together with the data device instead of a B-tree commit. The B-tree commit (the
// checkpoint) happens every so many journal bytes or seconds, at volume operations and at
// close; opening a pool replays the batches that follow its checkpoint, then checkpoints.
//
// File format (little-endian). The file has a fixed size (zero-filled when created, so an
// append changes no file-system metadata). Batches are appended from offset 0 after each
// checkpoint, each starting on a 4 KiB boundary:
//   0  8  magic "TPJRNL01"
//   8  8  pool id (catalog settings.pool_id: another pool's journal never matches)
//   16 8  base: the transaction id of the checkpoint the batch follows
//   24 4  base_csum: the checksum field of that checkpoint's superblock (metadata restored
//         from elsewhere at the same transaction id does not match)
//   28 4  nr_records
//   32 8  sequence: 1, 2, ... after each checkpoint
//   40 4  crc32c of bytes 0..39, of this field as zero, of bytes 44..47 and of the records
//   44 4  zero
//   48 24 x nr_records, then zeros to the next 4 KiB:
//      0 1 kind (1 map, 2 unmap)   1 1 flags (1: the block was drawn from the volume's
//      explicit reservation)       2 2 zero   4 4 thin device id   8 8 virtual block
//      16 8 data block (map)
// Replay takes the batches from offset 0 while each is intact (magic, crc), names this pool
// and the checkpoint the superblock holds (base, base_csum) and continues the sequence; the
// first one that does not ends the journal (a torn or stale batch). Batches of an older
// checkpoint left in the file stop the scan the same way.
//
// Thread-safety: none; the pool's committer (one at a time) and open use it.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/block_device.h"

namespace tp::thin {

struct JournalRecord {
  enum Kind : uint8_t { kMap = 1, kUnmap = 2 };
  static constexpr uint8_t kFromReserve = 1;
  uint8_t kind = kMap;
  uint8_t flags = 0;
  uint32_t dev = 0;
  uint64_t vb = 0;
  uint64_t block = 0;  // kMap
};

class Journal {
 public:
  static constexpr uint64_t kAlign = 4096;
  static constexpr uint64_t kHeaderBytes = 48;
  static constexpr uint64_t kRecordBytes = 24;
  static constexpr char kFileName[] = "journal";

  // The journal size for a pool with this much metadata: 1..16 MiB.
  static uint64_t default_bytes(uint64_t metadata_bytes);
  // Creates DIR/journal, zero-filled and synced (kExists if it exists).
  static Result<void> create_file(const std::string& path, uint64_t bytes);

  explicit Journal(std::unique_ptr<io::BlockDevice> dev);
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  struct Replayed {
    uint64_t batches = 0, records = 0;
  };
  // Which checkpoint of which pool batches follow.
  struct Base {
    uint64_t pool_id = 0, trans_id = 0;
    uint32_t sb_csum = 0;
  };
  // Calls apply for every record of the batches that follow the checkpoint `base`, in
  // order; stops at the first batch that does not (see the file comment). An error from
  // apply is returned as is. Afterwards appends continue after them.
  Result<Replayed> replay(const Base& base,
                          const std::function<Result<void>(const JournalRecord&)>& apply);

  // A new checkpoint is durable: later batches follow it, from offset 0.
  void reset(const Base& base);
  // Bytes a batch of n records takes.
  static uint64_t batch_bytes(size_t n);
  bool fits(size_t n) const { return pos_ + batch_bytes(n) <= dev_->size(); }
  // Writes one batch and syncs the journal. REQUIRES: fits(records.size()), records not
  // empty. On error the journal must not be appended to again before a reset.
  Result<void> append(std::span<const JournalRecord> records);

  uint64_t used_bytes() const { return pos_; }
  uint64_t capacity_bytes() const { return dev_->size(); }
  uint64_t batches() const { return seq_; }
  io::BlockDevice& device() { return *dev_; }

 private:
  std::unique_ptr<io::BlockDevice> dev_;
  Base base_;
  uint64_t pos_ = 0;  // where the next batch goes
  uint64_t seq_ = 0;  // batches since the checkpoint
  std::vector<std::byte> buf_;
};

}  // namespace tp::thin
