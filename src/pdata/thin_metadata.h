#pragma once
// The dm-thin metadata (kernel drivers/md/dm-thin-metadata.c): the superblock, the two-level
// mapping tree (device id -> per-device tree of virtual block -> block_time), the
// device-details tree, and the data and metadata space maps, committed together.
//
// This layer speaks of thin device ids and virtual/data block numbers only; volumes, names
// and space policy live in `thin`.
//
// Sharing: a mapping is "shared" when the next write to it must copy: a node on the path
// to it is shared between devices (ref count > 1) or its data block is referenced by more
// than one leaf. This is exact, unlike dm-thin's time rule, and it is what the pool's
// accounting uses too. Mapping times are still written as dm-thin does.
//
// Not thread-safe: the caller (thin::Pool) serialises access.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "io/block_device.h"
#include "pdata/block_manager.h"
#include "pdata/btree.h"
#include "pdata/space_map.h"
#include "pdata/transaction_manager.h"

namespace tp::pdata {

struct Mapping {
  uint64_t data_block = 0;
  uint32_t time = 0;
  bool shared = false;  // filled by lookup() only
};

class ThinMetadata {
 public:
  // Writes a fresh, empty pool's metadata onto dev (the whole device becomes metadata).
  static Result<std::unique_ptr<ThinMetadata>> format(io::BlockDevice& dev,
                                                      uint32_t data_block_sectors,
                                                      uint64_t nr_data_blocks,
                                                      size_t cache_blocks = 4096);
  // Opens existing metadata; validates the superblock and the space map indexes.
  static Result<std::unique_ptr<ThinMetadata>> open(io::BlockDevice& dev,
                                                    size_t cache_blocks = 4096);
  ~ThinMetadata();

  const Superblock& superblock() const { return sb_; }
  // The checksum field of the superblock on the device (as opened, or as last committed).
  uint32_t superblock_csum() const { return sb_csum_; }
  uint32_t time() const { return sb_.time; }
  // dm-thin's needs_check flag (superblock flags, bit 0): as opened or last committed, or as
  // the next commit writes it once set. thin_dump shows it (flags="1"); a kernel keeps a pool
  // that has it out of read-write mode until it is checked.
  bool needs_check() const { return (sb_.flags & kNeedsCheckFlag) != 0; }
  void set_needs_check(bool on) {
    sb_.flags = on ? (sb_.flags | kNeedsCheckFlag) : (sb_.flags & ~kNeedsCheckFlag);
  }
  uint64_t trans_id() const { return sb_.trans_id; }
  void set_trans_id(uint64_t id) { sb_.trans_id = id; }
  // Sets the pool's snapshot clock (repair: the clock of the metadata being rebuilt).
  void set_time(uint32_t t) { sb_.time = t; }
  uint32_t data_block_sectors() const { return sb_.data_block_size; }
  uint64_t nr_data_blocks() const { return dsm_->nr_blocks(); }
  uint64_t nr_free_data_blocks() const { return dsm_->nr_free(); }
  uint64_t nr_metadata_blocks() const { return msm_->nr_blocks(); }
  uint64_t nr_free_metadata_blocks() const { return msm_->nr_free(); }

  // --- devices (pool messages create_thin, create_snap, delete) ---
  Result<void> create_thin(uint64_t dev);
  // O(1): the snapshot shares the origin's tree; pool time advances.
  Result<void> create_snap(uint64_t dev, uint64_t origin);
  // Frees what only this device used; freed data blocks go to the next commit's ticket.
  Result<void> delete_device(uint64_t dev);
  bool device_exists(uint64_t dev) const { return devices_.count(dev) != 0; }
  std::vector<uint64_t> devices() const;
  Result<DeviceDetails> details(uint64_t dev) const;
  // Replaces dev's mappings by a shared copy of src's (src unchanged); dev keeps its
  // details except mapped_blocks. Used by merge and rollback. O(1) + freeing dev's old tree.
  Result<void> clone_tree_into(uint64_t dev, uint64_t src);

  // --- restore (repair rebuilds metadata from what it salvaged; thin_restore's role) ---
  // Creates dev with the given details and an empty tree, or, with share_with, sharing
  // that device's current tree (its root gains a reference; no clock or details change).
  // mapped_blocks is taken as given.
  Result<void> restore_device(uint64_t dev, const DeviceDetails& d,
                              std::optional<uint64_t> share_with = std::nullopt);
  // Maps vblock to data_block with an explicit time (the caller holds the data block's
  // reference, as for insert). Does not touch mapped_blocks.
  Result<void> restore_mapping(uint64_t dev, uint64_t vblock, uint64_t data_block, uint32_t time);

  // --- mappings ---
  // O(log n). nullopt when unmapped.
  Result<std::optional<Mapping>> lookup(uint64_t dev, uint64_t vblock);
  // Maps vblock to data_block (whose reference the caller already holds) with the current
  // time; an old mapping's data block loses a reference.
  Result<void> insert(uint64_t dev, uint64_t vblock, uint64_t data_block);
  // Unmaps; the data block loses a reference. Returns whether it was mapped.
  Result<bool> remove(uint64_t dev, uint64_t vblock);
  // fn(vblock, mapping) for mapped blocks in [lo, hi] in order; return false to stop.
  using MappingVisitor = std::function<Result<bool>(uint64_t vblock, const Mapping& m)>;
  Result<void> walk(uint64_t dev, uint64_t lo, uint64_t hi, const MappingVisitor& fn);
  // Like walk, with Mapping::shared filled in exactly (path sharing and data counts).
  Result<void> walk_exact(uint64_t dev, uint64_t lo, uint64_t hi, const MappingVisitor& fn);
  // Root of dev's mapping tree (for delta walks that skip shared subtrees).
  Result<uint64_t> device_root(uint64_t dev) const;

  // --- data space ---
  Result<uint64_t> alloc_data_block();
  // A data block held for a write in flight (SpaceMap::hold): not counted, not handed out.
  Result<uint64_t> hold_data_block();
  // Maps vblock to a held block (its count becomes 1), as insert() does.
  Result<void> insert_held(uint64_t dev, uint64_t vblock, uint64_t data_block);
  void release_held(uint64_t b) { dsm_->release_held(b); }
  // Maps vblock to a free data block (its count becomes 1), as insert() does; for replaying
  // the journal. kCorruption when the block is not free.
  Result<void> insert_free(uint64_t dev, uint64_t vblock, uint64_t data_block);
  // Data blocks freed since the last cut (journal commits: the cut without a B-tree commit);
  // hand them back with release_freed() once the change that freed them is durable.
  std::vector<uint64_t> take_freed() { return std::exchange(freed_, {}); }
  bool has_freed() const { return !freed_.empty(); }
  void release_freed(std::span<const uint64_t> blocks) {
    for (uint64_t b : blocks) dsm_->release_freed(b);
  }
  // Free, neither held nor waiting to be released (a block that may hold a hole).
  bool data_block_idle(uint64_t b) { return dsm_->idle(b); }
  Result<uint32_t> data_ref_count(uint64_t b) { return dsm_->get_count(b); }
  Result<void> inc_data_block(uint64_t b) { return changed(dsm_->inc(b)); }
  Result<void> dec_data_block(uint64_t b);
  Result<void> resize_data(uint64_t nr_data_blocks);

  // Commits the transaction (kernel order; superblock last). On error the metadata must
  // be reopened: the in-core state no longer matches the disk. Freed data blocks are
  // reusable at once afterwards (the pool uses the split form below to punch them first).
  Result<void> commit();

  // The same in three steps, so that the next transaction can be built while this one is
  // written (TransactionManager::begin_commit):
  //   begin_commit (caller holds the pool's lock): the cut. Everything changed so far is in
  //     the ticket; changes after it belong to the next transaction.
  //   write_commit (no lock needed): the device writes and syncs.
  //   end_commit (caller holds the pool's lock): written=true: the cut state is durable;
  //     data blocks freed before the cut (ticket.freed) stay unusable until
  //     release_freed(ticket) - the pool punches them and waits for requests that may still
  //     touch them first. written=false: the transaction is broken (reopen to recover).
  // At most one commit in flight.
  struct CommitTicket {
    TransactionManager::Ticket tm;
    std::vector<uint64_t> freed;  // data blocks freed before the cut
    uint64_t trans_id = 0;
  };
  Result<CommitTicket> begin_commit();
  Result<void> write_commit(const CommitTicket& t) { return tm_->write_commit(t.tm); }
  // write_commit in two steps: the nodes (synced), then the superblock (synced).
  Result<void> write_blocks(const CommitTicket& t) { return tm_->write_blocks(t.tm); }
  Result<void> write_superblock(const CommitTicket& t) { return tm_->write_superblock(t.tm); }
  void end_commit(CommitTicket& t, bool written);
  void release_freed(const CommitTicket& t);

  // True once a change failed after it may have begun (an I/O error, corruption or no
  // metadata space met in the middle of a B-tree or space-map update, or a failed commit):
  // the in-core transaction is no longer coherent. commit() refuses it from then on;
  // reopening returns to the last commit. Errors found before anything changes (no such
  // device, id in use, data space full) do not count.
  bool broken() const { return broken_; }

  TransactionManager& tm() { return *tm_; }
  SpaceMap& data_sm() { return *dsm_; }
  SpaceMap& metadata_sm() { return *msm_; }
  BlockManager& bm() { return *bm_; }

  // Value types of the trees (bottom level reference counts data blocks).
  const ValueType& mapping_vt() const { return mapping_vt_; }
  static const ValueType& details_vt();

 private:
  struct DevState {
    uint64_t root = 0;
    DeviceDetails details;
    bool root_changed = false;
    bool details_changed = false;
  };
  ThinMetadata() = default;
  Result<void> load_devices();
  Result<DevState*> dev_state(uint64_t dev);
  Result<bool> walk_exact_node(uint64_t b, bool shared, uint64_t lo, uint64_t hi,
                               const MappingVisitor& fn, int depth);
  static Result<void> mapping_inc(void* ctx, const std::byte* v);
  static Result<void> mapping_dec(void* ctx, const std::byte* v);
  static Result<void> top_inc(void* ctx, const std::byte* v);
  // Passes r through; an error marks the transaction broken.
  template <class T>
  Result<T> changed(Result<T> r) {
    if (!r.ok()) broken_ = true;
    return r;
  }

  std::unique_ptr<BlockManager> bm_;
  std::unique_ptr<SpaceMap> msm_;
  std::unique_ptr<SpaceMap> dsm_;
  std::unique_ptr<TransactionManager> tm_;
  Superblock sb_;
  std::map<uint64_t, DevState> devices_;
  std::vector<uint64_t> deleted_;  // device ids to remove from both trees at commit
  std::vector<uint64_t> freed_;
  ValueType mapping_vt_;
  ValueType top_vt_;
  bool broken_ = false;
  uint32_t sb_csum_ = 0;
};

}  // namespace tp::pdata
