// Commits, the journal, requests in flight and known holes (pool.h "Durability" and
// "Thread-safety").
//
// A commit runs in the thread that asked for it (flush, a volume operation, close), one at
// a time (commit_mu_), in one of two forms.
//
// A journal commit (requests changed mappings, nothing else changed):
//   1. the cut, under mu_: the journal records since the last cut are taken, with the data
//      blocks freed meanwhile; the request epoch turns; writers go on;
//   2. with no lock: the data device's fdatasync on the syncer thread and, in parallel, the
//      batch appended to the journal and synced. When a record depends on data that must be
//      durable first (a copy-on-write, a block not known to be a durable hole), the batch is
//      written after the data sync instead;
//   3. requests of the epochs before the cut drain; freed blocks are punched;
//   4. under mu_: freed blocks the last checkpoint does not reference become allocatable.
// A checkpoint (volume operations, a journal full or older than kCheckpointInterval,
// close, check, blocks that only a checkpoint releases):
//   1. the cut, under mu_: the metadata transaction is sealed (ThinMetadata::begin_commit:
//      space maps flushed, dirty blocks pinned, superblock encoded), the catalog is copied
//      if it changed, pending journal records are dropped (the checkpoint holds them), the
//      request epoch turns;
//   2. with no lock: the data device's fdatasync on the syncer thread while this thread
//      appends the catalog generation (only if it changed; synced) and writes the metadata
//      nodes and syncs them; when both are done, the superblock and a sync;
//   3. and 4. as above, and the space maps learn the cut state is durable; the journal
//      starts over after the new checkpoint.
// The data sync covers every write that completed before the cut; the metadata of the cut
// maps only blocks whose data was written before it (pool.h), so the superblock never
// names data that is not durable; the journal does so only for blocks that read as zeros
// if their data is lost, the content they had before.
#include <algorithm>
#include <thread>

#include "thin/pool.h"

namespace tp::thin {

// Runs the data device's fdatasync on its own thread, so that it overlaps the metadata
// writes of the same commit. One request at a time (the committer's).
class Pool::Syncer {
 public:
  explicit Syncer(io::BlockDevice& dev) : dev_(dev), thread_([this] { run(); }) {}
  ~Syncer() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Syncer(const Syncer&) = delete;
  Syncer& operator=(const Syncer&) = delete;

  void start() {
    std::lock_guard lk(mu_);
    requested_ = true;
    done_ = false;
    cv_.notify_all();
  }
  Result<void> wait() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return done_; });
    return result_;
  }

 private:
  void run() {
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || requested_; });
      if (stop_) return;
      requested_ = false;
      lk.unlock();
      Result<void> r = dev_.flush();
      lk.lock();
      result_ = r;
      done_ = true;
      cv_.notify_all();
    }
  }

  io::BlockDevice& dev_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false, requested_ = false, done_ = true;
  Result<void> result_;
  std::thread thread_;  // last: starts after the members it uses
};

Pool::Pool() = default;

Pool::~Pool() {
  // No commit here (STYLE.md): close() commits. Closing the fd releases the lock.
  syncer_.reset();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Result<void> Pool::start() {
  // Whatever the data file holds now (e.g. punches of a process that died) is durable from
  // here on: the holes the scan finds are holes after a crash too.
  TP_TRY(data_->flush());
  syncer_ = std::make_unique<Syncer>(*data_);
  hole_bits_.assign((md_->nr_data_blocks() + 63) / 64, 0);
  punched_bits_.assign(hole_bits_.size(), 0);
  hole_scanned_.assign((md_->nr_data_blocks() + kHoleRegionBlocks - 1) / kHoleRegionBlocks, 0);
  last_checkpoint_ = last_synced_ = std::chrono::steady_clock::now();
  return {};
}

// ------------------------------------------------------------------ requests in flight

void Pool::wait_drained(unsigned slot) {
  for (uint64_t v; (v = inflight_[slot].load(std::memory_order_acquire)) != 0;) {
    inflight_[slot].wait(v, std::memory_order_acquire);
  }
}

void Pool::wait_idle_locked(std::unique_lock<std::mutex>& lk) {
  quiesce_++;
  while (inflight_[0].load(std::memory_order_acquire) != 0 ||
         inflight_[1].load(std::memory_order_acquire) != 0) {
    lk.unlock();
    wait_drained(0);
    wait_drained(1);
    lk.lock();
  }
  quiesce_--;
  // Requests held back may go on once the caller releases mu_.
  if (quiesce_ == 0) cv_.notify_all();
}

bool Pool::pending_overlaps_locked(uint64_t dev, uint64_t begin, uint64_t end) const {
  for (const PendingRange& p : pending_) {
    if (p.dev == dev && p.begin < end && begin < p.end) return true;
  }
  return false;
}

void Pool::pending_remove_locked(uint64_t dev, uint64_t begin) {
  for (size_t i = 0; i < pending_.size(); i++) {
    if (pending_[i].dev == dev && pending_[i].begin == begin) {
      pending_[i] = pending_.back();
      pending_.pop_back();
      break;
    }
  }
  cv_.notify_all();
}

// ------------------------------------------------------------------ known holes

bool Pool::known_hole_locked(uint64_t block) {
  const uint64_t region = block / kHoleRegionBlocks;
  if (region >= hole_scanned_.size()) return false;
  if (!hole_scanned_[region]) {
    // First use of this region since open: ask the data device which of its free blocks are
    // holes. Mapped blocks are never asked about, so marking them too is harmless.
    hole_scanned_[region] = 1;
    const uint64_t B = block_bytes_;
    const uint64_t first = region * kHoleRegionBlocks;
    const uint64_t last = std::min(first + kHoleRegionBlocks, md_->nr_data_blocks());
    uint64_t pos = first * B;
    const uint64_t end = last * B;
    while (pos < end) {
      auto data = data_->next_data(pos, end);
      if (!data.ok()) break;  // unknown: nothing is a known hole
      // [pos, *data) is a hole: the whole blocks inside it read as zeros.
      for (uint64_t b = (pos + B - 1) / B; (b + 1) * B <= *data; b++) {
        // A block punched by this process and not yet synced is not a durable hole yet.
        if (!bit(punched_bits_, b)) set_hole_locked(b, true);
      }
      if (*data >= end) break;
      auto hole = data_->next_hole(*data, end);
      if (!hole.ok()) break;
      pos = *hole;
    }
  }
  return bit(hole_bits_, block);
}

void Pool::set_hole_locked(uint64_t block, bool hole) {
  set_bit(hole_bits_, block, hole);
}

// ------------------------------------------------------------------ commits

namespace {
// A journal older than this is checkpointed at the next commit, so that the metadata file
// alone is never far behind (and a replay stays short).
constexpr std::chrono::seconds kCheckpointInterval{5};
// background_commit: the longest a completed write waits for a data sync when no client
// flushes (the kernel writes dirty pages back after 30 s: dirty_expire_centisecs), and how
// many mapping changes may wait for one.
constexpr std::chrono::seconds kSyncInterval{30};
constexpr size_t kMaxWaitingRecords = 1 << 16;
}  // namespace

Result<void> Pool::flush() {
  return commit(false);
}

Result<void> Pool::checkpoint() {
  return commit(true);
}

Result<void> Pool::commit(bool checkpoint) {
  // Any cut made after this point covers the caller's completed writes.
  const uint64_t seen = cuts_.load(std::memory_order_acquire);
  std::lock_guard clk(commit_mu_);
  if (!checkpoint && cuts_.load(std::memory_order_acquire) > seen) {
    // A commit cut after we arrived and has finished (we hold commit_mu_): it covers us. Its
    // result speaks for ours (a pool whose commit failed stays failed).
    return last_commit_;
  }
  last_commit_ = commit_run(checkpoint);
  return last_commit_;
}

Result<void> Pool::commit_run(bool checkpoint) {
  pdata::ThinMetadata::CommitTicket ticket;
  std::optional<catalog::Catalog> catalog;
  thread_local std::vector<JournalRecord> batch;
  batch.clear();
  std::vector<uint64_t> freed, promote;
  unsigned old_slot = 0;
  enum { kDataOnly, kJournal, kCheckpoint } kind = kDataOnly;
  bool after_data = false;
  {
    std::unique_lock lk(mu_);
    cuts_.fetch_add(1, std::memory_order_acq_rel);
    if (failed_locked()) {
      note_state_locked();
      return make_error(Errc::kReadOnly, "pool is read-only after a failed update; reopen it");
    }
    const bool records = !records_.empty();
    // Anything a checkpoint would change on disk (not just a data sync)?
    const bool changed = dirty_ || force_catalog_ || records || journal_batches_ > 0 ||
                         md_->has_freed() || md_->data_sm().nr_pending_free() > 0 ||
                         !unshared_.empty() || (closing_ && md_->needs_check());
    // The superblock carries needs_check while the journal may hold changes it lacks: a
    // checkpoint in place of a journal batch sets it (the journal takes none before it),
    // later checkpoints keep it, the one at close clears it. thin_dump and a kernel so see
    // that the metadata file alone is not the pool (DESIGN.md "The I/O path and commits").
    bool instead_of_journal = false;
    if ((checkpoint && changed) || dirty_ || force_catalog_ || (!journal_ && changed)) {
      kind = kCheckpoint;
    } else if (records) {
      const bool old = std::chrono::steady_clock::now() - last_checkpoint_ > kCheckpointInterval;
      instead_of_journal = old || !journal_takes_locked(records_.size());
      kind = instead_of_journal ? kCheckpoint : kJournal;
    } else if (md_->has_freed() || !unshared_.empty()) {
      kind = kJournal;  // releases frees, settles unshared blocks: nothing to append
    }
    if (kind == kCheckpoint) {
      md_->set_needs_check(journal_ && !closing_ && (md_->needs_check() || instead_of_journal));
      const uint64_t next = md_->trans_id() + 1;
      md_->set_trans_id(next);
      if (force_catalog_ || !(cat_ == catfile_->current())) catalog = cat_;
      auto t = md_->begin_commit();
      if (!t.ok()) {
        failed_ = true;
        note_state_locked();
        return t.error();
      }
      ticket = std::move(*t);
      records_.clear();  // the checkpoint holds them
      safe_records_ = 0;
      dirty_ = false;
    } else if (kind == kJournal) {
      after_data = records_unsafe_locked();
      batch.swap(records_);
      safe_records_ = 0;
      freed = md_->take_freed();
    }
    if (kind != kDataOnly) {
      old_slot = static_cast<unsigned>(epoch_ & 1);
      epoch_++;
      unshared_cut_ = std::move(unshared_);
      unshared_.clear();
    }
    promote.swap(punched_);
  }
  // Data first: every write acknowledged before the cut must be durable before the metadata
  // that maps it. The sync runs on the syncer thread, overlapping the journal, catalog and
  // metadata node writes; with nothing to overlap it runs here (no thread handoff).
  const bool overlap = kind == kCheckpoint || (kind == kJournal && !after_data && !batch.empty());
  if (overlap) syncer_->start();
  auto data_sync = [&] { return overlap ? syncer_->wait() : data_->flush(); };
  Result<void> r;
  if (kind == kCheckpoint) {
    if (catalog) r = catfile_->write(*catalog, ticket.trans_id);
    if (r.ok()) r = md_->write_blocks(ticket);
    Result<void> data = data_sync();
    if (r.ok()) r = data;
    if (r.ok()) r = md_->write_superblock(ticket);
  } else if (overlap) {
    Result<void> j = journal_->append(batch);
    Result<void> data = data_sync();
    r = j.ok() ? data : j;
  } else {
    r = data_sync();
    if (r.ok() && !batch.empty()) r = journal_->append(batch);
  }
  if (!r.ok()) {
    std::lock_guard lk(mu_);
    if (kind == kCheckpoint) md_->end_commit(ticket, false);
    failed_ = true;
    note_state_locked();
    return r;
  }
  if (kind == kCheckpoint) freed = ticket.freed;
  // Durable. Blocks freed before the cut: once no request that could still touch them is in
  // flight, punch them (a failure loses nothing: such a block is just not a known hole),
  // then let the allocator have them.
  if (kind != kDataOnly) wait_drained(old_slot);
  thread_local std::vector<uint8_t> punched;
  punched.assign(freed.size(), 0);
  for (size_t i = 0; i < freed.size(); i++) {
    punched[i] = data_->discard(freed[i] * block_bytes_, block_bytes_).ok();
  }
  std::lock_guard lk(mu_);
  last_synced_ = std::chrono::steady_clock::now();
  if (kind == kCheckpoint) {
    md_->end_commit(ticket, true);
    if (journal_) journal_->reset(journal_base_locked());
    journal_batches_ = journal_used_ = 0;
    last_checkpoint_ = std::chrono::steady_clock::now();
    checkpoints_++;
    if (catalog) force_catalog_ = false;
  } else if (kind == kJournal) {
    journal_commits_++;
    journal_batches_ = journal_->batches();  // (no other commit runs: we hold commit_mu_)
    journal_used_ = journal_->used_bytes();
  }
  // Punched before this commit's data sync began: durable holes now (unless handed out
  // since, which cleared the punched bit).
  for (uint64_t b : promote) {
    if (bit(punched_bits_, b) && md_->data_block_idle(b)) set_hole_locked(b, true);
    set_bit(punched_bits_, b, false);
  }
  for (size_t i = 0; i < freed.size(); i++) {
    set_hole_locked(freed[i], false);
    if (punched[i]) {
      set_bit(punched_bits_, freed[i], true);
      punched_.push_back(freed[i]);
    }
  }
  md_->release_freed(freed);
  unshared_cut_.clear();
  note_state_locked();
  cv_.notify_all();
  return {};
}

Result<bool> Pool::background_commit() {
  std::lock_guard clk(commit_mu_);
  thread_local std::vector<JournalRecord> batch;
  batch.clear();
  bool full = false;
  {
    std::lock_guard lk(mu_);
    const size_t waiting = records_.size() - safe_records_;  // for a data sync
    const bool pending = mappings_pending_locked();
    const bool due = std::chrono::steady_clock::now() - last_synced_ > kSyncInterval;
    if (dirty_ || force_catalog_ || !journal_ || failed_locked() || waiting > kMaxWaitingRecords ||
        (due && pending)) {
      full = true;
    } else if (safe_records_ == 0) {
      return pending;  // what is left waits for a FLUSH or kSyncInterval
    } else if (!journal_takes_locked(safe_records_)) {
      full = true;  // a checkpoint makes room, or flags the superblock first
    } else {
      // Not a cut: no epoch turns, nothing freed is released, no flush() counts on it.
      const auto n = static_cast<ptrdiff_t>(safe_records_);
      batch.assign(records_.begin(), records_.begin() + n);
      records_.erase(records_.begin(), records_.begin() + n);
      safe_records_ = 0;
    }
  }
  if (full) {
    last_commit_ = commit_run(false);
    TP_TRY(last_commit_);
    return false;
  }
  Result<void> r = journal_->append(batch);
  std::lock_guard lk(mu_);
  if (!r.ok()) {
    failed_ = true;
    note_state_locked();
    return r.error();
  }
  background_commits_++;
  journal_batches_ = journal_->batches();
  journal_used_ = journal_->used_bytes();
  return mappings_pending_locked();
}

Result<void> Pool::open_journal(const DeviceWrapper& wrap) {
  const std::string path = dir_ + "/" + Journal::kFileName;
  auto dev = io::open_file(path);
  if (!dev.ok() && dev.error().code == Errc::kNotFound) {
    // A pool made before the journal existed (or whose journal was removed): start one.
    if (Journal::create_file(path, Journal::default_bytes(meta_dev_->size())).ok()) {
      dev = io::open_file(path);
    }
  }
  if (!dev.ok()) {
    if (dev.error().code == Errc::kNotFound) return {};  // no journal: every commit checkpoints
    return dev.error();
  }
  std::unique_ptr<io::BlockDevice> d = std::move(*dev);
  if (wrap) d = wrap(std::move(d));
  if (d->size() < Journal::kAlign) return {};  // unusable: no journal
  journal_ = std::make_unique<Journal>(std::move(d));
  auto apply = [&](const JournalRecord& r) -> Result<void> {
    const catalog::VolumeRecord* v = cat_.find_dev(r.dev);
    if (!v || !md_->device_exists(r.dev)) {
      return make_error(Errc::kCorruption, "the journal names a thin device the pool does not have",
                        r.dev);
    }
    if (r.kind == JournalRecord::kMap) {
      TP_TRY(md_->insert_free(r.dev, r.vb, r.block));
      if (r.flags & JournalRecord::kFromReserve) {
        catalog::VolumeRecord* w = cat_.find(v->name);
        if (w->reserve_blocks == 0) {
          return make_error(Errc::kCorruption,
                            "the journal draws on a reservation the catalog does not hold", r.dev);
        }
        w->reserve_blocks--;
      }
      return {};
    }
    TP_ASSIGN_OR_RETURN(bool removed, md_->remove(r.dev, r.vb));
    if (!removed) {
      return make_error(Errc::kCorruption, "the journal unmaps a block that is not mapped", r.vb);
    }
    return {};
  };
  TP_ASSIGN_OR_RETURN(replayed_, journal_->replay(journal_base_locked(), apply));
  journal_batches_ = journal_->batches();
  journal_used_ = journal_->used_bytes();
  return {};
}

Result<void> Pool::abort_locked(const Error& e) {
  // The in-core state is half changed: refuse further changes until the pool is reopened
  // (which returns it to the last commit).
  failed_ = true;
  note_state_locked();
  return e;
}

Result<void> Pool::close() {
  {
    std::unique_lock lk(mu_);
    wait_idle_locked(lk);
  }
  Result<void> r;
  bool failed;
  {
    std::lock_guard lk(mu_);
    failed = failed_locked();
  }
  if (!failed) {
    {
      std::lock_guard lk(mu_);
      closing_ = true;
    }
    r = checkpoint();  // the journal is empty after a clean close, needs_check cleared
  }
  syncer_.reset();
  if (lock_fd_ >= 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
  }
  return r;
}

}  // namespace tp::thin
