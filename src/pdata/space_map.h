#pragma once
// Space maps (kernel persistent-data/dm-space-map-common.c, -disk.c, -metadata.c): one
// reference count per block. On disk: bitmaps of 2-bit entries (0, 1, 2, 3 = "look in the
// ref-count tree"), an index of bitmaps, and an overflow B-tree of counts >= 3.
//
// In core, each bitmap's counts are loaded on first use into a Chunk; changes accumulate
// there and are written to freshly shadowed bitmaps, the ref-count tree and the index by
// flush(), which the metadata layer calls just before committing.
//
// A block is handed out only when no state that may become durable references it: free now,
// free in the last committed state, and free in the state being committed (a commit may be
// in flight while the next transaction is built: see flush() and on_commit()). A block freed
// in the current transaction is therefore not reused before the commit that follows: the
// committed superblock may still reach it (a metadata node) or map it (a data block). A data
// map goes further: a freed data block waits until release_freed() (the pool punches it and
// lets every request that may still touch it finish first).
//
// Held blocks (data maps): hold() takes a free block for a write in flight without counting
// it yet, so a commit cut in the meantime sees it free (no leak on disk) while no one else
// can take it; commit_held() turns it into a reference when the mapping is inserted,
// release_held() gives it back when the write fails.
//
// The metadata space map counts the blocks that hold its own structures; flush() repeats
// until writing them allocates nothing new (the kernel's recursion, done as a loop).
//
// Not thread-safe: the caller holds the pool's metadata lock.

#include <cstdint>
#include <memory>
#include <vector>

#include "pdata/format.h"

namespace tp::pdata {

class TransactionManager;
class BlockManager;

class SpaceMap {
 public:
  enum class Kind { kData, kMetadata };

  // A new, empty space map of nr_blocks blocks. Nothing is written until flush().
  static std::unique_ptr<SpaceMap> create(Kind kind, uint64_t nr_blocks);
  // Opens the space map described by root (from the superblock). Reads the index only.
  static Result<std::unique_ptr<SpaceMap>> open(Kind kind, BlockManager& bm, const SmRoot& root);

  Kind kind() const { return kind_; }
  uint64_t nr_blocks() const { return nr_blocks_; }
  uint64_t nr_allocated() const { return nr_allocated_; }
  // Free blocks, not counting held ones.
  uint64_t nr_free() const { return nr_blocks_ - nr_allocated_ - nr_held_; }
  uint64_t nr_held() const { return nr_held_; }

  // Binds the transaction manager used to load chunks and write structures (set once).
  void bind(TransactionManager* tm) { tm_ = tm; }

  Result<uint32_t> get_count(uint64_t b);
  Result<void> set_count(uint64_t b, uint32_t count);
  Result<void> inc(uint64_t b);
  // Returns the new count.
  Result<uint32_t> dec(uint64_t b);
  // Allocates a block free now, in the committed state and in the state being committed;
  // its count becomes 1. Errc::kNoSpace when there is none.
  Result<uint64_t> new_block();
  // Like new_block, but the count stays 0 and the block is held (see the file comment).
  Result<uint64_t> hold();
  // REQUIRES: b held. Its count becomes 1.
  Result<void> commit_held(uint64_t b);
  // REQUIRES: b held. It is free again.
  void release_held(uint64_t b);
  // Free, not held and not waiting for release_freed().
  bool idle(uint64_t b) const {
    if (b >= nr_blocks_) return false;
    const Chunk& c = chunks_[b / kEntriesPerBitmap];
    const uint32_t i = static_cast<uint32_t>(b % kEntriesPerBitmap);
    if (!c.loaded) return false;
    return c.counts[i] == 0 && !(c.flags[i] & (kHeld | kFreed));
  }
  // Blocks that are free now but not reusable yet (see the file comment).
  uint64_t nr_pending_free() const { return pending_free_; }
  // Data maps: b, freed before the cut of a commit that has now completed, may be handed out
  // again. REQUIRES: on_commit() of that commit ran.
  void release_freed(uint64_t b);

  // Grows the map to nr_blocks (new blocks free).
  Result<void> extend(uint64_t nr_blocks);

  // Writes every change since the last flush into bitmaps, the ref-count tree and the index.
  // This is the cut of a commit: the counts as flushed are the state being committed.
  Result<void> flush();
  // The root to store in the superblock. REQUIRES: flush() just ran.
  SmRoot root() const;
  // The transaction whose cut was the last flush() is durable: blocks free at that cut and
  // in the state before it become reusable (data maps: after release_freed()).
  // REQUIRES: no flush() since that cut.
  void on_commit();

 private:
  // Per-entry flags.
  static constexpr uint8_t kCommitted = 1;  // in use at the last completed commit
  static constexpr uint8_t kHeld = 2;       // held for a write in flight (count 0)
  static constexpr uint8_t kFreed = 4;      // data map: freed, waiting for release_freed()
  struct Chunk {
    bool loaded = false;
    bool dirty = false;              // changed since the last flush
    bool touched = false;            // changed since the last flush (cut)
    bool cut_touched = false;        // changed before the last cut, not yet on_commit()ed
    std::vector<uint32_t> counts;    // current
    std::vector<uint32_t> flushed;   // as last written to disk structures (at the last cut)
    std::vector<uint8_t> flags;      // kCommitted | kHeld | kFreed
    uint32_t nr_free = 0;            // entries with count 0 (within nr_blocks)
    uint32_t scan_hint = 0;          // no allocatable entry below this index
  };
  bool allocatable(const Chunk& c, uint32_t i) const {
    return c.counts[i] == 0 && c.flags[i] == 0 && c.flushed[i] == 0;
  }
  // Free but not reusable yet (not held, waiting for a commit or for release_freed()).
  bool pending(const Chunk& c, uint32_t i) const {
    return c.counts[i] == 0 && !(c.flags[i] & kHeld) && !allocatable(c, i);
  }
  // Finds an allocatable entry; kNoSpace when none.
  Result<uint64_t> find_free();

  SpaceMap(Kind kind, uint64_t nr_blocks);
  uint32_t chunk_entries(uint64_t k) const;
  Result<Chunk*> chunk(uint64_t k);
  Result<void> flush_chunk(uint64_t k);
  Result<void> write_index();
  void change(Chunk& c, uint64_t k, uint32_t i, uint32_t new_count);

  Kind kind_;
  uint64_t nr_blocks_;
  uint64_t nr_allocated_ = 0;
  uint64_t nr_held_ = 0;
  uint64_t pending_free_ = 0;
  uint64_t ref_count_root_ = 0;         // 0 until created
  uint64_t index_root_ = 0;             // data: index btree root; metadata: index block
  std::vector<IndexEntry> index_;       // current in-core index entries
  std::vector<IndexEntry> index_disk_;  // as in the written index
  std::vector<Chunk> chunks_;
  uint64_t alloc_cursor_ = 0;
  TransactionManager* tm_ = nullptr;
  BlockManager* bm_ = nullptr;
};

}  // namespace tp::pdata
