#pragma once
// thin::Pool: a thin pool in a directory (SEMANTICS.md "Words"):
//   metadata  dm-thin metadata (pdata::ThinMetadata), as of the last checkpoint
//   journal   mapping changes since that checkpoint (thin/journal.h)
//   data      the data device: a sparse file of nr_blocks * block_bytes
//   catalog   names, sizes, flags, lineage, guarantees (catalog::CatalogFile)
//   lock      flock()ed exclusively by the process that has the pool open
//
// Volumes are dm-thin devices with a name; I/O is at byte granularity over block-sized
// mappings: unmapped blocks read as zeros; the first write to a block allocates it; a
// write to a shared block copies it first (unless it covers the whole block); trim unmaps
// whole blocks. A new block is never readable with stale bytes: it is punched before it
// is mapped unless the write covers all of it.
//
// Durability (flush/commit), two kinds, both starting with a cut in memory under the pool's
// mutex and doing their I/O with no lock held:
//   - a journal commit (a FLUSH when only writes and trims changed mappings): the mapping
//     changes since the last cut go to the journal as one batch, synced in parallel with
//     the data device's fdatasync (or after it, when a change depends on data that must be
//     durable first: a copy-on-write, a block not known to be a hole);
//   - a checkpoint (volume operations, a full or old journal, close): the dm-thin
//     transaction is sealed and the next one begins; the data device's fdatasync runs in
//     parallel with the catalog generation (only when the catalog changed) and the metadata
//     nodes and their sync, then the superblock and its sync; the journal starts over.
// See docs/SEMANTICS.md "Durability and isolation" and docs/DESIGN.md "The I/O path and
// commits".
//
// Thread-safety: every public method may be called from several threads. Metadata work is
// serialised by one mutex, held only for in-memory work: never across data I/O or a sync.
//   - A write to a mapped, exclusive block looks it up under the mutex and writes in place
//     outside it; it never waits for a commit.
//   - A write that needs a new block (first write, copy-on-write) holds a free block, writes
//     the data (a copy-on-write assembles old and new bytes in one block-sized write), and
//     only then maps it: a commit never sees a mapping whose data is not written, and a
//     read in between sees the old mapping. Other writes to those blocks wait meanwhile.
//   - Every request is counted in the epoch it started in; the epoch turns at each commit's
//     cut. Data blocks freed before a cut are punched and handed out again only after the
//     commit is durable and every request of the epochs before it has finished, so no
//     request can touch a block another volume now owns.
//   - Volume operations (snapshot, merge, ...) wait until no request is in flight and hold
//     new ones back while they change the metadata; then they commit like a flush.
// Lock order: commit_mu_ before mu_.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "catalog/catalog.h"
#include "io/block_device.h"
#include "pdata/thin_metadata.h"
#include "thin/journal.h"

namespace tp::thin {

inline constexpr uint64_t kMaxVolumeBytes = 1ull << 60;  // 1 EiB
inline constexpr uint32_t kMinBlockBytes = 64 * 1024;
inline constexpr uint64_t kMaxBlockBytes = 1ull << 30;
// Metadata blocks held back for trim, remove, merge and commits: allocations for writes
// fail with kNoSpace below this, so a pool can always be emptied.
inline constexpr uint64_t kMetadataSlice = 128;

struct PoolOptions {
  uint64_t data_bytes = 0;           // rounded down to whole blocks
  uint32_t block_bytes = 64 * 1024;  // 64 KiB .. 1 GiB, a multiple of 64 KiB
  uint64_t metadata_bytes = 0;       // 0: sized like thin_metadata_size, with head room
};

// A recommended metadata size for a pool (48 bytes per data block, as dm-thin's sizing
// guide, doubled for snapshots' copies, plus 4 MiB; at most the format's limit).
uint64_t default_metadata_bytes(uint64_t data_bytes, uint32_t block_bytes);

// Takes DIR/lock exclusively without waiting, as Pool::open does (kBusy when another process
// holds it). Returns the fd; closing it releases the lock. For tools that must keep every
// other process out without opening the pool (repair).
Result<int> lock_pool_dir(const std::string& dir);

enum class PoolState { kOk, kLow, kFull, kReadOnly };
const char* pool_state_name(PoolState s);

// A change of the pool's state (SEMANTICS.md "Pool states"), for the daemon's event stream.
struct PoolEvent {
  PoolState state = PoolState::kOk;
  PoolState previous = PoolState::kOk;
  uint64_t unreserved_blocks = 0;
  uint64_t nr_blocks = 0;
};

struct ClassSpace {
  uint64_t guaranteed_blocks = 0;  // blocks in guarantees of this class
  uint64_t reserved_blocks = 0;    // of those, unmapped or shared (held back for them)
};

struct PoolInfo {
  ClassSpace data_class, meta_class;
  uint64_t explicit_reserved_blocks = 0;  // sum of reserve / snapshot --reserve budgets
  uint64_t low_water_crossings = 0;       // times unreserved fell below the mark
  uint32_t block_bytes = 0;
  uint64_t nr_blocks = 0;
  uint64_t used_blocks = 0;  // data blocks with ref count > 0
  uint64_t free_blocks = 0;
  uint64_t reserved_blocks = 0;  // promised to guarantees and reservations
  uint64_t unreserved_blocks = 0;
  uint64_t metadata_blocks = 0;  // 4 KiB blocks
  uint64_t metadata_used_blocks = 0;
  uint64_t trans_id = 0;
  uint32_t low_water_percent = 10;
  PoolState state = PoolState::kOk;
  uint64_t volumes = 0;
  uint64_t data_file_allocated_bytes = 0;  // host filesystem usage of the data file
  // The metadata journal: size, bytes and batches since the last checkpoint, and what the
  // last open replayed (a pool that was not closed cleanly).
  uint64_t journal_bytes = 0, journal_used_bytes = 0, journal_batches = 0;
  uint64_t journal_replayed_batches = 0, journal_replayed_records = 0;
  uint64_t checkpoints = 0, journal_commits = 0;  // since open
  uint64_t background_commits = 0;  // journal appends without a data sync (background_commit)
  // The superblock's needs_check flag, as committed: set while the journal may hold changes
  // DIR/metadata lacks (from the journal's first batch after a checkpoint until close).
  bool needs_check = false;
};

struct VolumeInfo {
  std::string name;
  uint64_t dev_id = 0;
  uint64_t size_bytes = 0;
  std::string origin;
  bool read_only = false;
  int64_t created_unix = 0;
  uint64_t mapped_blocks = 0;
  uint64_t exclusive_blocks = 0;         // mapped and not shared with any other volume
  uint64_t guaranteed_blocks = 0;        // blocks in the guarantee
  uint64_t reserved_blocks = 0;          // R(v) = G(v) + E(v): what the pool holds back for it
  uint64_t explicit_reserve_blocks = 0;  // E(v)
  ClassSpace data_class, meta_class;
};

// A changed range between two volumes (bytes). kind: "added" (mapped only in B),
// "removed" (mapped only in A), "changed" (both mapped, different data).
struct DeltaRange {
  uint64_t offset = 0;
  uint64_t length = 0;
  const char* kind = "changed";
};

// A run of virtual bytes and whether it is mapped (for sparse reads and block status).
struct Extent {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool mapped = false;
};

// The answer of a dry run (`thinpool plan`): an operation run with a SpacePlan does
// everything up to its space decision, fills the plan, and changes nothing.
struct SpacePlan {
  bool decided = false;           // the operation got as far as its space decision
  SpaceNeed need;                 // what it needs and what is available (as its ENOSPC would say)
  uint64_t unreserved_after = 0;  // unreserved blocks after it (0 when it does not fit)
  bool fits() const { return need.fits(); }
};

struct CheckResult {
  std::vector<std::string> damage;
  std::vector<std::string> warnings;
  uint64_t nodes = 0, mappings = 0;
  // The metadata journal: batches (and their records) that followed the last checkpoint
  // when the pool was opened (replayed: the pool was not closed cleanly), and batches
  // written since then that the check checkpointed before it looked (a served pool).
  uint64_t journal_replayed_batches = 0, journal_replayed_records = 0;
  uint64_t journal_pending_batches = 0;
  bool ok() const { return damage.empty(); }
};

class Pool {
 public:
  // Creates a pool in dir (created if missing; must not already hold a pool).
  static Result<std::unique_ptr<Pool>> create(const std::string& dir, const PoolOptions& opts);
  // Opens the pool in dir, taking its lock (kBusy if another process holds it).
  static Result<std::unique_ptr<Pool>> open(const std::string& dir);
  // The same, with the metadata device passed through wrap first and the data device through
  // wrap_data (crash and I/O error tests put a fault-injecting or recording device there).
  using DeviceWrapper =
      std::function<std::unique_ptr<io::BlockDevice>(std::unique_ptr<io::BlockDevice>)>;
  static Result<std::unique_ptr<Pool>> open(const std::string& dir, const DeviceWrapper& wrap,
                                            const DeviceWrapper& wrap_data = nullptr);
  struct OpenOptions {
    DeviceWrapper wrap_metadata, wrap_data;
    // Unpinned metadata blocks kept in the cache. Tests use none so that
    // metadata reads in the middle of an operation reach the (fault-injecting) device.
    size_t metadata_cache_blocks = 4096;
    DeviceWrapper wrap_journal = nullptr;
  };
  static Result<std::unique_ptr<Pool>> open(const std::string& dir, const OpenOptions& opts);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Commits (if anything changed) and releases the pool. The destructor does not commit.
  Result<void> close();

  const std::string& dir() const { return dir_; }
  uint32_t block_bytes() const { return block_bytes_; }

  PoolInfo info();
  // counts=false fills only what the catalog holds (name, dev_id, size, origin, read_only,
  // created): O(1) per volume, for the NBD handshake; the block counts walk the tree.
  std::vector<VolumeInfo> list(bool counts = true);
  Result<VolumeInfo> volume(const std::string& name, bool counts = true);
  // dev id of a volume by name.
  Result<uint64_t> dev_id(const std::string& name);

  // --- volume operations; each is committed before it returns ---
  // Space rules: docs/SEMANTICS.md "Operations". An operation that frees blocks and changes
  // reservations in one step (remove, merge, rollback, resize down, unprovision) is decided
  // on the state after it: it is made on the in-memory transaction and committed when
  // reserved <= free afterwards, else thrown away. A refusal is kNoSpace with the numbers
  // (Error::space) and changes nothing. With plan (a dry run), an operation goes as far as
  // its space decision, fills *plan, returns what it would return, and changes nothing.
  //
  // provision: guarantee (and map) the whole volume; needs ceil(size/B) unreserved blocks.
  Result<void> create_volume(const std::string& name, uint64_t size_bytes, bool provision = false,
                             SpacePlan* plan = nullptr);
  // O(1) in the volume size. The origin's guaranteed blocks become shared, so its
  // reservation grows by their count; reserve_bytes is the snapshot's own write budget.
  // Both must fit in the unreserved space, else kNoSpace and nothing changes.
  Result<void> snapshot(const std::string& origin, const std::string& name, bool writable,
                        uint64_t reserve_bytes = 0, SpacePlan* plan = nullptr);
  Result<void> remove(const std::string& name, bool recursive, SpacePlan* plan = nullptr);
  Result<void> resize(const std::string& name, uint64_t size_bytes, SpacePlan* plan = nullptr);
  Result<void> extend(uint64_t data_bytes);

  // --- guaranteed space (SEMANTICS.md) ---
  // Maps (zero-filled, fallocated) every unmapped block of the whole blocks touching
  // [off, off+len) and adds them to the guarantee with class cls.
  Result<void> provision(const std::string& name, uint64_t off, uint64_t len,
                         catalog::ProvisionClass cls = catalog::ProvisionClass::kData,
                         SpacePlan* plan = nullptr);
  Result<void> unprovision(const std::string& name, uint64_t off, uint64_t len,
                           SpacePlan* plan = nullptr);
  // Sets the explicit reservation to ceil(bytes / block) blocks (0 releases).
  Result<void> reserve(const std::string& name, uint64_t bytes, SpacePlan* plan = nullptr);
  // The origin takes the snapshot's content; the snapshot disappears. Metadata only.
  // take_size: the origin also takes the snapshot's size (a guarantee that covered the
  // whole origin then covers the new size, when that fits; else it keeps its old extent).
  Result<void> merge(const std::string& snapshot, bool take_size = false,
                     SpacePlan* plan = nullptr);
  // The volume takes a shared copy of the snapshot's content; the snapshot stays.
  Result<void> rollback(const std::string& name, const std::string& snapshot,
                        SpacePlan* plan = nullptr);
  // Low-water mark: the state turns `low` when unreserved space falls below percent of the
  // pool; each crossing is counted in info() and runs hook (sh -c, THINPOOL_EVENT=low,
  // THINPOOL_POOL=DIR) without waiting for it. Persisted in the catalog.
  Result<void> set_low_water(uint32_t percent, const std::string& hook);
  // listener is called on every change of state (ok, low, full, read-only), under the
  // pool's lock: it must be quick and must not call back into the pool. Not persisted.
  void set_event_listener(std::function<void(const PoolEvent&)> listener);
  // NBD WRITE_ZEROES with NO_HOLE: the range reads as zeros and is provisioned.
  Result<void> provision_zero(uint64_t dev, uint64_t off, uint64_t len);

  // --- I/O by device id; byte granularity. Durable after flush(). ---
  Result<uint64_t> size_of(uint64_t dev);
  Result<void> read(uint64_t dev, uint64_t off, std::span<std::byte> buf);
  // The same, and *extents (reused: cleared first) gets the mapped/unmapped runs of the range
  // (Pool::extents' answer) from the same walk: unmapped runs read as zeros without I/O.
  Result<void> read(uint64_t dev, uint64_t off, std::span<std::byte> buf,
                    std::vector<Extent>* extents);
  // A read in two steps, for callers that do the data I/O themselves (the NBD server's
  // io_uring): start_read does everything of read() but the data reads. It zeroes the
  // unmapped runs of buf, fills *extents as read() does, and appends to parts the mapped
  // runs: read parts[i].length bytes at parts[i].data_offset of data_device() into
  // buf[parts[i].buf_offset, ...). The data blocks stay the volume's until finish_read(the
  // returned ticket), which must follow exactly once, also when the data reads fail.
  // may_wait false: kBusy instead of waiting while a volume operation holds requests back
  // (for a caller that holds tickets whose reads it has not started yet: they would never
  // drain).
  struct ReadPart {
    uint64_t data_offset = 0;
    uint64_t buf_offset = 0;
    uint64_t length = 0;
  };
  Result<unsigned> start_read(uint64_t dev, uint64_t off, std::span<std::byte> buf,
                              std::vector<Extent>* extents, std::vector<ReadPart>& parts,
                              bool may_wait = true);
  void finish_read(unsigned ticket) { end_io(ticket); }
  Result<void> write(uint64_t dev, uint64_t off, std::span<const std::byte> buf);
  Result<void> trim(uint64_t dev, uint64_t off, uint64_t len);
  // Zeros the range: whole blocks are unmapped, partial ones written with zeros.
  Result<void> write_zeroes(uint64_t dev, uint64_t off, uint64_t len);
  // Makes every write that completed before the call durable: returns once a commit whose
  // cut came after the call has finished (commits requested meanwhile share one).
  Result<void> flush();
  // The same, and the commit is a checkpoint: the dm-thin metadata on disk holds everything
  // and the journal is empty.
  Result<void> checkpoint();
  // For a server whose clients have written but not flushed (daemon::GroupCommit's
  // background thread, once a second): makes the mapping changes of completed writes
  // crash-safe without syncing the data device, as dm-thin's periodic commit does. Appends to
  // the journal the changes that need no data sync (a fresh block that was a durable hole
  // reads as zeros, its old content, if its data is lost; a trim); a full commit (flush())
  // instead when a volume operation is uncommitted, when the journal cannot take them, when
  // many changes wait for a data sync, or when none ran for kSyncInterval (30 s, the page
  // cache's own writeback age), so what a crash loses of unflushed writes is bounded as for
  // a plain file. Promises nothing about data: only flush() does. True when changes are left
  // that wait for a FLUSH or kSyncInterval (call again later).
  Result<bool> background_commit();

  // Mapped/unmapped runs covering [off, off+len). O(mapped blocks in the range).
  Result<std::vector<Extent>> extents(uint64_t dev, uint64_t off, uint64_t len);
  // Where A and B differ; skips subtrees the two share. With a byte range, only the blocks
  // it touches are compared (cost: tree height + changes in the range), and at most
  // max_ranges ranges are returned (the first ones).
  Result<std::vector<DeltaRange>> delta(const std::string& a, const std::string& b,
                                        uint64_t off = 0, uint64_t len = ~uint64_t{0},
                                        size_t max_ranges = ~size_t{0});

  // Full check: metadata (trees, reference counts), catalog against metadata. With
  // metadata_copy, the committed metadata checked is also copied to that file (for
  // thin_check while the pool stays open and serving).
  Result<CheckResult> check(const std::string& metadata_copy = "");

  // The durable state the last commit produced, as one increasing number: the checkpoint's
  // transaction id and the journal batches after it ((trans_id << 24) + batches). After a
  // crash, open() yields the id of the last commit that became durable.
  uint64_t commit_id();

  // For tests and benchmarks. The reference is valid until the next volume operation (a
  // refused one reopens the metadata: discard_transaction_locked).
  pdata::ThinMetadata& metadata() { return *md_; }
  io::BlockDevice& data_device() { return *data_; }
  uint64_t metadata_writes();

 private:
  Pool();  // (in commit.cc, where Syncer is complete)
  class Syncer;
  // Finishes open/create: syncs the data device (holes seen from now on are durable) and
  // starts the data syncer.
  Result<void> start();

  // --- commits (commit.cc) ---
  // flush(), as a checkpoint when checkpoint is true.
  Result<void> commit(bool checkpoint);
  // Runs one commit (a journal commit when it can be one and checkpoint is false).
  // REQUIRES: commit_mu_ held, mu_ not held.
  Result<void> commit_run(bool checkpoint);
  // Opens (or creates) DIR/journal and replays it into the in-memory metadata.
  Result<void> open_journal(const DeviceWrapper& wrap);
  // The checkpoint on disk, as the journal names it.
  Journal::Base journal_base_locked() const {
    return {cat_.settings.pool_id, md_->trans_id(), md_->superblock_csum()};
  }
  // The journal can take a batch of n records: the checkpoint on disk says a journal may
  // follow it (needs_check), and the journal stays at most half full. Else: a checkpoint
  // (which sets needs_check, commit_run).
  bool journal_takes_locked(size_t n) const {
    return md_->needs_check() && journal_->fits(n) &&
           journal_->used_bytes() + Journal::batch_bytes(n) <= journal_->capacity_bytes() / 2;
  }
  // Mapping changes of requests that no commit has made durable yet (records, frees, blocks
  // unshared since the last commit).
  bool mappings_pending_locked() const {
    return !records_.empty() || md_->has_freed() || !unshared_.empty();
  }
  // Journal record of a mapping change made by a request (under mu_).
  void journal_locked(const JournalRecord& r, bool safe) {
    records_.push_back(r);
    if (safe && safe_records_ + 1 == records_.size()) safe_records_ = records_.size();
  }
  // Marks the transaction changed, reports space events, unlocks and commits (flush()).
  Result<void> commit_change(std::unique_lock<std::mutex>& lk) {
    dirty_ = true;
    note_space_locked();
    lk.unlock();
    return flush();
  }
  // Unlocks and commits.
  Result<void> commit_after(std::unique_lock<std::mutex>& lk) {
    lk.unlock();
    return flush();
  }
  // kReadOnly once a commit or a metadata update failed (the pool must be reopened).
  Result<void> live_locked() const {
    if (failed_locked()) return make_error(Errc::kReadOnly, "pool is read-only");
    return {};
  }
  bool failed_locked() const { return failed_ || md_->broken(); }
  Result<void> abort_locked(const Error& e);
  // What allocation returns when only blocks freed but not yet released by a commit are
  // left, and what a write meets at a block in unshared_: a commit lets it go on.
  static constexpr char kWaitCommit[] = "free blocks wait for a commit";
  static bool is_wait_commit(const Result<void>& r) {
    return !r.ok() && r.error().code == Errc::kBusy && r.error().what == kWaitCommit;
  }

  // --- requests in flight ---
  // Counts one request in the current epoch. REQUIRES: mu_ held. Returns its slot.
  unsigned begin_io_locked() {
    unsigned slot = static_cast<unsigned>(epoch_ & 1);
    inflight_[slot].fetch_add(1, std::memory_order_relaxed);
    return slot;
  }
  void end_io(unsigned slot) {
    if (inflight_[slot].fetch_sub(1, std::memory_order_acq_rel) == 1) inflight_[slot].notify_all();
  }
  // Waits until every request counted in slot has finished. REQUIRES: mu_ not held.
  void wait_drained(unsigned slot);
  // Requests wait here while a volume operation waits for the pool to go idle.
  void wait_io_allowed_locked(std::unique_lock<std::mutex>& lk) {
    while (quiesce_ > 0) cv_.wait(lk);
  }
  // Returns (holding lk) once no request is in flight; new ones wait meanwhile.
  void wait_idle_locked(std::unique_lock<std::mutex>& lk);
  // An allocating write's blocks [begin, end) of dev; other writes there wait.
  struct PendingRange {
    uint64_t dev, begin, end;
  };
  bool pending_overlaps_locked(uint64_t dev, uint64_t begin, uint64_t end) const;
  void pending_remove_locked(uint64_t dev, uint64_t begin);
  // Exclusive now, but shared in the last commit or in the one in flight: not writable in
  // place before the commit that follows.
  bool unshared_locked(uint64_t block) const {
    return unshared_.count(block) != 0 || unshared_cut_.count(block) != 0;
  }

  // --- data blocks known to read as zeros (holes in the data file) ---
  bool known_hole_locked(uint64_t block);
  void set_hole_locked(uint64_t block, bool hole);
  static bool bit(const std::vector<uint64_t>& v, uint64_t b) {
    return b / 64 < v.size() && ((v[b / 64] >> (b % 64)) & 1);
  }
  static void set_bit(std::vector<uint64_t>& v, uint64_t b, bool on) {
    if (b / 64 >= v.size()) return;
    if (on) {
      v[b / 64] |= uint64_t{1} << (b % 64);
    } else {
      v[b / 64] &= ~(uint64_t{1} << (b % 64));
    }
  }

  // --- the I/O path (pool.cc) ---
  Result<const catalog::VolumeRecord*> record_locked(const std::string& name);
  Result<const catalog::VolumeRecord*> record_by_dev_locked(uint64_t dev);
  Result<void> check_writable_locked(uint64_t dev);
  // How one block of a write is done.
  enum class Fill : uint8_t {
    kInPlace,  // mapped and exclusive: written where it is
    kWhole,    // new block covered by the write
    kHole,     // new block known to read as zeros: only the written bytes
    kZeroPad,  // new block of unknown content: zeros around the written bytes
    kCopy,     // copy-on-write: the old block's bytes around the written ones
  };
  struct Target {
    uint64_t vb, block;
    Fill fill;
    uint64_t old_block;  // kCopy, or a shared block replaced by kWhole
    uint8_t drawn;       // DrawnFrom of a new block
    // The new mapping may reach the journal before the data: the block was a durable hole
    // and the write replaces nothing (if the data is lost, it reads as the zeros it was).
    bool safe;
  };
  static constexpr uint64_t kNoBlock = ~uint64_t{0};
  Result<void> write_targets(const std::vector<Target>& targets, uint64_t off,
                             std::span<const std::byte> buf);
  // write(), and for internal=true (zeroing for resize/write_zeroes) also on a read-only
  // snapshot.
  Result<void> write_impl(uint64_t dev, uint64_t off, std::span<const std::byte> buf,
                          bool internal);
  // Returns (holding lk) with no request in flight (new ones wait until lk is released) and,
  // committing when needed, no freed block waiting for a commit (so the space counted next
  // is space the allocator can hand out) and, with clear_unshared, no block in unshared_.
  // May unlock lk on the way: callers re-check what they looked up before.
  Result<void> idle_settled_locked(std::unique_lock<std::mutex>& lk, bool clear_unshared = false);
  Result<void> unmap_locked(uint64_t dev, uint64_t vb_begin, uint64_t vb_end);
  Result<void> remove_locked(const std::string& name);
  // Writes zeros over [off, off+len) of dev through the write path, in bounded pieces.
  Result<void> write_zero_bytes(uint64_t dev, uint64_t off, uint64_t len);

  // Space accounting (space.cc). g_[dev] = G(v): guaranteed blocks unmapped or shared.
  uint64_t free_locked() const { return md_->nr_free_data_blocks(); }
  uint64_t unreserved_locked() const;
  // Exact G(v) by walking the volume's guaranteed ranges.
  Result<uint64_t> compute_g_locked(const catalog::VolumeRecord& rec);
  Result<ClassSpace> class_space_locked(const catalog::VolumeRecord& rec,
                                        catalog::ProvisionClass cls);
  // Recomputes G for every guaranteed volume (after remove, merge, rollback).
  Result<void> recompute_all_g_locked();
  void set_g_locked(uint64_t dev, uint64_t g);
  // Holds a data block for a write of vb in dev, by the allocation rule; *from says which
  // space it was drawn from, for unallocate_locked. The block is mapped by
  // md_->insert_held() once its content is written.
  enum class DrawnFrom : uint8_t { kGuarantee, kReserve, kPool };
  Result<uint64_t> allocate_locked(const catalog::VolumeRecord& rec, uint64_t vb, DrawnFrom* from);
  // Undoes allocate_locked when the held block could not be prepared (a data I/O error
  // before it was mapped): releases it and gives its space back to where it was drawn from,
  // so that a guarantee keeps every block it holds.
  void unallocate_locked(uint64_t dev, uint64_t block, DrawnFrom from);
  Result<void> provision_locked(const std::string& name, uint64_t vb_begin, uint64_t vb_end,
                                catalog::ProvisionClass cls, bool zero_content,
                                SpacePlan* plan = nullptr);
  void note_space_locked();

  // --- space decisions (space.cc; SEMANTICS.md "Operations") ---
  // need units for dev's f, with the unit, the unreserved blocks now and dev filled in.
  SpaceNeed space_need_locked(uint64_t need, uint64_t dev, SpaceFor f) const;
  // The refusal of a write outside dev's guarantee on a full pool, and of an allocation
  // when metadata space is low.
  Error write_no_space_locked(uint64_t dev) const;
  Error metadata_low_locked(uint64_t dev) const;
  // An operation decided before it changes anything (nothing it does frees a block):
  // fills *plan if given; kNoSpace with n when n does not fit. released: blocks of
  // reservation it gives back (for the plan's unreserved_after).
  static Result<void> decide_locked(const SpaceNeed& n, const char* what, SpacePlan* plan,
                                    uint64_t released = 0);
  // Returns (holding lk) with no request in flight and nothing uncommitted: the metadata on
  // disk is the state in memory and the journal is empty (a checkpoint when needed), so an
  // operation that follows is alone in its transaction and discard_transaction_locked()
  // can return to this state. Requests wait until lk is released. REQUIRES: lk holds mu_
  // (released while waiting).
  Result<void> settle_locked(std::unique_lock<std::mutex>& lk);
  // Throws the in-memory transaction away: the metadata is reopened from the committed
  // superblock on meta_dev_ (the old ThinMetadata and its block manager are dropped without
  // writing anything back: a transaction only writes shadows, never committed blocks), the
  // catalog comes back from catfile_->current(), G is recomputed, and what was tied to the
  // transaction (unshared_, dirty_, journal records) is cleared.
  // REQUIRES: mu_ held since settle_locked() (so nothing else was uncommitted, no request
  // is in flight or holds a block, and no commit is between its cut and its end). An error
  // (the metadata cannot be read back) leaves the pool read-only.
  Result<void> discard_transaction_locked();
  // A volume operation decided on the state after it. Constructed after settle_locked(),
  // it records the space accounting and keeps space events back (nothing is reported for
  // a state that may be thrown away); the operation then changes the in-memory
  // transaction and calls decide() (and commits) or finish().
  class Tentative {
   public:
    explicit Tentative(Pool& p);
    ~Tentative();
    Tentative(const Tentative&) = delete;
    Tentative& operator=(const Tentative&) = delete;
    // Keeps the transaction when reserved + extra <= free after the operation (extra:
    // blocks it will still allocate); else throws it away and returns kNoSpace (what) with
    // the numbers, for the volume whose R(v) grew most (shared_with: dev or other, the one
    // it was not). With plan: fills it and always throws the transaction away.
    Result<void> decide(uint64_t dev, uint64_t other, const char* what, SpacePlan* plan,
                        uint64_t extra = 0);
    // decide(), then (unless it was a dry run) unlock lk and commit.
    Result<void> finish(std::unique_lock<std::mutex>& lk, uint64_t dev, uint64_t other,
                        const char* what, SpacePlan* plan);

   private:
    Pool& p_;
    bool decided_ = false;
    uint64_t free_ = 0, reserved_ = 0;
    std::map<uint64_t, uint64_t> g_, e_;  // G(v) and E(v) by dev id, before
  };
  bool quiet_ = false;  // a Tentative operation is undecided: no space events yet
  size_t md_cache_blocks_ = 4096;
  PoolState state_locked() const;
  Result<void> copy_metadata_locked(const std::string& path);
  // Reports a change of state_locked() to the event listener.
  void note_state_locked();
  // dev's mapping of vb to old_block was replaced or removed. Sharing is always at the same
  // virtual block (snapshots, merge and rollback keep addresses), so any guaranteed volume
  // that still maps vb to old_block may now hold it alone: its G shrinks by one.
  Result<void> release_shared_locked(uint64_t dev, uint64_t vb, uint64_t old_block);
  Result<uint64_t> new_data_block_locked();

  std::string dir_;
  int lock_fd_ = -1;
  uint32_t block_bytes_ = 0;
  std::unique_ptr<io::BlockDevice> meta_dev_;
  std::unique_ptr<io::BlockDevice> data_;
  std::unique_ptr<pdata::ThinMetadata> md_;
  std::unique_ptr<catalog::CatalogFile> catfile_;  // written by the committer only
  catalog::Catalog cat_;
  std::map<uint64_t, uint64_t> g_;  // G(v) by dev id (absent: 0)
  uint64_t reserved_ = 0;           // sum of G(v) + E(v)
  bool low_ = false;                // below the low-water mark at the last check
  uint64_t low_crossings_ = 0;
  PoolState last_state_ = PoolState::kOk;
  std::function<void(const PoolEvent&)> listener_;
  std::vector<int> hook_pids_;  // low-water hook processes not yet reaped
  // Data blocks shared in the last commit (unshared_cut_: in the commit in flight) that an
  // unmap or copy-on-write since left to a single volume. That volume must not write them in
  // place before the next commit: after a crash the other volume's committed mapping would
  // show its bytes.
  std::unordered_set<uint64_t> unshared_, unshared_cut_;
  // Uncommitted changes a journal cannot carry (volume operations): the next commit is a
  // checkpoint. Mapping changes of requests are journal records instead (records_).
  bool dirty_ = false;
  std::unique_ptr<Journal> journal_;  // null: every commit is a checkpoint (committer only)
  uint64_t journal_batches_ = 0, journal_used_ = 0;  // durable since the checkpoint (mu_)
  std::vector<JournalRecord> records_;               // since the last cut
  // records_[0, safe_records_) need no data sync before they reach the journal (pool.h
  // "Durability"); the record after them does.
  size_t safe_records_ = 0;
  bool records_unsafe_locked() const { return safe_records_ < records_.size(); }
  // When the last commit that synced the data device finished (background_commit).
  std::chrono::steady_clock::time_point last_synced_;
  uint64_t background_commits_ = 0;
  std::chrono::steady_clock::time_point last_checkpoint_;
  Journal::Replayed replayed_;
  uint64_t checkpoints_ = 0, journal_commits_ = 0;
  // The catalog file holds a record newer than the superblock (a commit that failed after
  // writing it): the next commit writes the catalog even if unchanged.
  bool force_catalog_ = false;
  // A commit failed, or an operation failed half way: read-only until reopened (a metadata
  // update that failed half way shows as md_->broken(), see failed_locked()).
  bool failed_ = false;
  bool closing_ = false;  // close() has begun: its checkpoint clears needs_check
  std::mutex mu_;
  std::condition_variable cv_;  // quiesce_ and pending_ changes (under mu_)
  uint64_t epoch_ = 0;
  std::atomic<uint64_t> inflight_[2] = {0, 0};
  unsigned quiesce_ = 0;
  // Holds new requests back while it lives (made and destroyed under mu_).
  class Quiesce {
   public:
    explicit Quiesce(Pool& p) : p_(p) { p_.quiesce_++; }
    ~Quiesce() {
      if (--p_.quiesce_ == 0) p_.cv_.notify_all();
    }
    Quiesce(const Quiesce&) = delete;
    Quiesce& operator=(const Quiesce&) = delete;

   private:
    Pool& p_;
  };
  std::vector<PendingRange> pending_;
  // Bit per data block: known to read as zeros and to stay so after a crash (a hole in the
  // data file that a data sync has made durable). Scanned from the data device per region of
  // kHoleRegionBlocks on first use (the data device is synced at open); cleared when a block
  // is allocated or freed. punched_bits_: punched after being freed, not yet synced; they
  // become hole_bits_ when the data sync of the next commit completes (punched_ lists them).
  static constexpr uint64_t kHoleRegionBlocks = 1 << 14;
  std::vector<uint64_t> hole_bits_, punched_bits_;
  std::vector<uint8_t> hole_scanned_;
  std::vector<uint64_t> punched_;
  // Commits: one at a time; cuts_ counts cuts made (read without commit_mu_ by flush()).
  std::mutex commit_mu_;
  std::atomic<uint64_t> cuts_{0};
  Result<void> last_commit_;  // result of the last commit (under commit_mu_)
  std::unique_ptr<Syncer> syncer_;
};

}  // namespace tp::thin
