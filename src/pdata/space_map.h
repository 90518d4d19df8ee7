#pragma once
// Space maps (kernel persistent-data/dm-space-map-common.c, -disk.c, -metadata.c): one
// reference count per block. On disk: bitmaps of 2-bit entries (0, 1, 2, 3 = "look in the
// ref-count tree"), an index of bitmaps, and an overflow B-tree of counts >= 3.
//
// In core, each bitmap's counts are loaded on first use into a Chunk; changes accumulate
// there and are written to freshly shadowed bitmaps, the ref-count tree and the index by
// flush(), which the metadata layer calls just before committing.
//
// A block freed in the current transaction is not handed out again before the commit: the
// committed superblock may still reach it (a metadata node) or map it (a data block).
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
  uint64_t nr_free() const { return nr_blocks_ - nr_allocated_; }

  // Binds the transaction manager used to load chunks and write structures (set once).
  void bind(TransactionManager* tm) { tm_ = tm; }

  Result<uint32_t> get_count(uint64_t b);
  Result<void> set_count(uint64_t b, uint32_t count);
  Result<void> inc(uint64_t b);
  // Returns the new count.
  Result<uint32_t> dec(uint64_t b);
  // Allocates a block free now and free in the committed state; its count becomes 1.
  // Errc::kNoSpace when there is none.
  Result<uint64_t> new_block();
  // Blocks that are free now but were allocated at the last commit (not reusable yet).
  uint64_t nr_pending_free() const { return pending_free_; }

  // Grows the map to nr_blocks (new blocks free).
  Result<void> extend(uint64_t nr_blocks);

  // Writes every change since the last flush into bitmaps, the ref-count tree and the index.
  Result<void> flush();
  // The root to store in the superblock. REQUIRES: flush() just ran.
  SmRoot root() const;
  // The transaction committed: what is free now becomes reusable.
  void on_commit();

 private:
  struct Chunk {
    bool loaded = false;
    bool dirty = false;              // changed since the last flush
    bool touched = false;            // changed since the last commit
    std::vector<uint32_t> counts;    // current
    std::vector<uint32_t> flushed;   // as last written to disk structures
    std::vector<uint8_t> committed;  // 1 = in use at the last commit
    uint32_t nr_free = 0;            // entries with count 0 (within nr_blocks)
    uint32_t scan_hint = 0;          // no allocatable entry below this index
  };

  SpaceMap(Kind kind, uint64_t nr_blocks);
  uint32_t chunk_entries(uint64_t k) const;
  Result<Chunk*> chunk(uint64_t k);
  Result<void> flush_chunk(uint64_t k);
  Result<void> write_index();
  void change(Chunk& c, uint64_t k, uint32_t i, uint32_t new_count);

  Kind kind_;
  uint64_t nr_blocks_;
  uint64_t nr_allocated_ = 0;
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
