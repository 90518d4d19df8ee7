// Commits, requests in flight and known holes (pool.h "Durability" and "Thread-safety").
//
// A commit runs in the thread that asked for it (flush, a volume operation, close), one at
// a time (commit_mu_):
//   1. the cut, under mu_: the metadata transaction is sealed (ThinMetadata::begin_commit:
//      space maps flushed, dirty blocks pinned, superblock encoded), the catalog is copied
//      if it changed, the request epoch turns; writers go on into the next transaction;
//   2. with no lock: the data device's fdatasync runs on the syncer thread while this
//      thread appends the catalog generation (only if it changed; synced) and writes the
//      metadata nodes and syncs them; when both are done, the superblock and a sync;
//   3. requests of the epochs before the cut drain; the data blocks freed before the cut
//      are punched (a hole reads as zeros, and gives the space back to the host filesystem);
//   4. under mu_: the space maps learn the cut state is durable, the punched blocks become
//      allocatable (and known holes), unshared_cut_ is forgotten.
// The data sync covers every write that completed before the cut; the metadata of the cut
// maps only blocks whose data was written before it (pool.h), so the superblock never
// names data that is not durable.
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

void Pool::start() {
  syncer_ = std::make_unique<Syncer>(*data_);
  hole_bits_.assign((md_->nr_data_blocks() + 63) / 64, 0);
  hole_scanned_.assign((md_->nr_data_blocks() + kHoleRegionBlocks - 1) / kHoleRegionBlocks, 0);
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
      for (uint64_t b = (pos + B - 1) / B; (b + 1) * B <= *data; b++) set_hole_locked(b, true);
      if (*data >= end) break;
      auto hole = data_->next_hole(*data, end);
      if (!hole.ok()) break;
      pos = *hole;
    }
  }
  return (hole_bits_[block / 64] >> (block % 64)) & 1;
}

void Pool::set_hole_locked(uint64_t block, bool hole) {
  if (block / 64 >= hole_bits_.size()) return;
  if (hole) {
    hole_bits_[block / 64] |= uint64_t{1} << (block % 64);
  } else {
    hole_bits_[block / 64] &= ~(uint64_t{1} << (block % 64));
  }
}

// ------------------------------------------------------------------ commits

Result<void> Pool::flush() {
  // Any cut made after this point covers the caller's completed writes.
  const uint64_t seen = cuts_.load(std::memory_order_acquire);
  std::lock_guard clk(commit_mu_);
  if (cuts_.load(std::memory_order_acquire) > seen) {
    // A commit cut after we arrived and has finished (we hold commit_mu_): it covers us. Its
    // result speaks for ours (a pool whose commit failed stays failed).
    return last_commit_;
  }
  last_commit_ = commit_run();
  return last_commit_;
}

Result<void> Pool::commit_run() {
  pdata::ThinMetadata::CommitTicket ticket;
  std::optional<catalog::Catalog> catalog;
  unsigned old_slot = 0;
  bool metadata = false;
  {
    std::unique_lock lk(mu_);
    cuts_.fetch_add(1, std::memory_order_acq_rel);
    if (failed_locked()) {
      note_state_locked();
      return make_error(Errc::kReadOnly, "pool is read-only after a failed update; reopen it");
    }
    metadata = dirty_ || force_catalog_ || md_->data_sm().nr_pending_free() > 0 ||
               !unshared_.empty();
    if (metadata) {
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
      old_slot = static_cast<unsigned>(epoch_ & 1);
      epoch_++;
      unshared_cut_ = std::move(unshared_);
      unshared_.clear();
      dirty_ = false;
    }
  }
  // Data first: every write acknowledged before the cut must be durable before the metadata
  // that maps it. The sync overlaps the catalog and metadata node writes.
  syncer_->start();
  Result<void> r;
  if (metadata) {
    if (catalog) r = catfile_->write(*catalog, ticket.trans_id);
    if (r.ok()) r = md_->write_blocks(ticket);
  }
  Result<void> data = syncer_->wait();
  if (r.ok()) r = data;
  if (metadata && r.ok()) r = md_->write_superblock(ticket);
  if (!r.ok()) {
    std::lock_guard lk(mu_);
    if (metadata) md_->end_commit(ticket, false);
    failed_ = true;
    note_state_locked();
    return r;
  }
  if (!metadata) return {};
  // Durable. Blocks freed before the cut: once no request that could still touch them is in
  // flight, punch them (a failure loses nothing: such a block is just not a known hole),
  // then let the allocator have them.
  wait_drained(old_slot);
  thread_local std::vector<uint8_t> punched;
  punched.assign(ticket.freed.size(), 0);
  for (size_t i = 0; i < ticket.freed.size(); i++) {
    punched[i] = data_->discard(ticket.freed[i] * block_bytes_, block_bytes_).ok();
  }
  std::lock_guard lk(mu_);
  md_->end_commit(ticket, true);
  for (size_t i = 0; i < ticket.freed.size(); i++) set_hole_locked(ticket.freed[i], punched[i]);
  md_->release_freed(ticket);
  if (catalog) force_catalog_ = false;
  unshared_cut_.clear();
  note_state_locked();
  cv_.notify_all();
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
  if (!failed) r = flush();
  syncer_.reset();
  if (lock_fd_ >= 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
  }
  return r;
}

}  // namespace tp::thin
