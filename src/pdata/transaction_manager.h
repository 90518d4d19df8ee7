#pragma once
// Transaction manager (kernel persistent-data/dm-transaction-manager.c): the only way to
// get a writable metadata block. A block is either new in this transaction (allocated by
// new_block or made by shadow) and may be written freely, or it belongs to the committed
// state and must be shadowed (copied to a new block) before it changes.
//
// Commit is two-phase, in the kernel's order: the metadata layer flushes its space maps
// (pre-commit work), then commit() writes every dirty block, syncs, writes the superblock
// last, and syncs again. A crash before the superblock write leaves the previous
// transaction intact.
//
// Not thread-safe for mutation: the caller holds the pool's metadata lock exclusively.
// read_lock may be called under a shared lock.

#include <cstdint>
#include <unordered_set>
#include <utility>
#include <vector>

#include "pdata/block_manager.h"
#include "pdata/space_map.h"

namespace tp::pdata {

class TransactionManager {
 public:
  // Borrows both. Binds msm to this transaction manager.
  TransactionManager(BlockManager& bm, SpaceMap& metadata_sm);
  TransactionManager(const TransactionManager&) = delete;
  TransactionManager& operator=(const TransactionManager&) = delete;

  BlockManager& bm() { return bm_; }
  SpaceMap& metadata_sm() { return msm_; }

  // A zeroed block, ref count 1, new in this transaction.
  Result<WriteRef> new_block(const Validator& v);

  // A writable version of block b. If b is new in this transaction and not shared it is
  // returned as is; otherwise it is copied to a new block, b loses a reference, and
  // .second is true when b was shared (count > 1): the caller must then inc every child
  // the copy references.
  Result<std::pair<WriteRef, bool>> shadow(uint64_t b, const Validator& v);

  Result<ReadRef> read_lock(uint64_t b, const Validator& v) { return bm_.read_lock(b, v); }

  Result<void> inc(uint64_t b) { return msm_.inc(b); }
  Result<uint32_t> dec(uint64_t b) { return msm_.dec(b); }
  Result<uint32_t> ref_count(uint64_t b) { return msm_.get_count(b); }
  bool is_new(uint64_t b) const { return new_blocks_.count(b) != 0; }

  // Phase two: writes all dirty blocks, syncs, writes sb as block 0, syncs.
  // REQUIRES: every space map was flushed after its last change.
  Result<void> commit(const Superblock& sb);

  // Phase two, split so that the next transaction can be built while this one is written:
  //   begin_commit (under the metadata lock): the dirty blocks and the superblock are sealed
  //     and pinned; the next transaction starts (every block of this one is shadowed before
  //     it changes, and the space maps hand out nothing this one references);
  //   write_commit (no lock): dirty blocks, sync, superblock, sync (write_blocks and
  //     write_superblock: the same in two steps, for a caller with work in between);
  //   end_commit (under the metadata lock): unpins; when the write succeeded, the metadata
  //     space map learns that the cut state is durable.
  // At most one commit in flight. REQUIRES for begin_commit: as commit().
  struct Ticket {
    BlockManager::Pinned blocks;
    // The sealed superblock, kept out of the cache: an eviction must never write it before
    // the blocks it names are synced.
    std::vector<std::byte> superblock;
    uint32_t sb_csum = 0;  // its checksum field
  };
  Result<Ticket> begin_commit(const Superblock& sb);
  Result<void> write_commit(const Ticket& t);
  Result<void> write_blocks(const Ticket& t);
  Result<void> write_superblock(const Ticket& t);
  void end_commit(Ticket& t, bool written);

  // Forgets the current transaction's blocks (after a failed commit or an abort).
  void abort();

 private:
  BlockManager& bm_;
  SpaceMap& msm_;
  std::unordered_set<uint64_t> new_blocks_;
};

}  // namespace tp::pdata
