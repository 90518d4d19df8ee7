#include "thin/pool.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <random>

#include "pdata/checker.h"

namespace tp::thin {

namespace {

constexpr const char* kMetadataFile = "metadata";
constexpr const char* kDataFile = "data";
constexpr const char* kCatalogFile = "catalog";
constexpr const char* kLockFile = "lock";

std::string path_in(const std::string& dir, const char* name) {
  return dir + "/" + name;
}

bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

// Takes the pool's lock file exclusively, without waiting.
Result<int> take_lock(const std::string& dir) {
  std::string p = path_in(dir, kLockFile);
  int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return sys_error("open lock file");
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    ::close(fd);
    if (e == EWOULDBLOCK) {
      return make_error(Errc::kBusy, "pool is in use by another process");
    }
    errno = e;
    return sys_error("lock pool");
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) == 0) {
    (void)!::pwrite(fd, pid.data(), pid.size(), 0);
  }
  return fd;
}

// A pool's id (catalog settings.pool_id): random, 0 < id < 2^53.
uint64_t new_pool_id() {
  std::random_device rd;
  uint64_t id = 0;
  while (id == 0) {
    id = ((uint64_t{rd()} << 32) | rd()) & ((uint64_t{1} << 53) - 1);
  }
  return id;
}

Result<void> validate_size(uint64_t size_bytes) {
  if (size_bytes == 0) return make_error(Errc::kInvalidArgument, "volume size must be > 0");
  if (size_bytes % 512 != 0) {
    return make_error(Errc::kInvalidArgument, "volume size must be a multiple of 512 bytes");
  }
  if (size_bytes > kMaxVolumeBytes) {
    return make_error(Errc::kInvalidArgument, "volume size exceeds the 1 EiB limit");
  }
  return {};
}

}  // namespace

uint64_t default_metadata_bytes(uint64_t data_bytes, uint32_t block_bytes) {
  uint64_t blocks = data_bytes / block_bytes;
  uint64_t bytes = 96 * blocks + (4 << 20);
  bytes = (bytes + pdata::kBlockSize - 1) / pdata::kBlockSize * pdata::kBlockSize;
  return std::min<uint64_t>(bytes, pdata::kMaxMetadataBlocks * pdata::kBlockSize);
}

Result<int> lock_pool_dir(const std::string& dir) {
  return take_lock(dir);
}

const char* pool_state_name(PoolState s) {
  switch (s) {
    case PoolState::kOk:
      return "ok";
    case PoolState::kLow:
      return "low";
    case PoolState::kFull:
      return "full";
    case PoolState::kReadOnly:
      return "read-only";
  }
  return "?";
}

Result<std::unique_ptr<Pool>> Pool::create(const std::string& dir, const PoolOptions& opts) {
  uint32_t bb = opts.block_bytes;
  if (bb < kMinBlockBytes || bb > kMaxBlockBytes || bb % kMinBlockBytes != 0) {
    return make_error(Errc::kInvalidArgument,
                      "block size must be 64 KiB to 1 GiB and a multiple of 64 KiB");
  }
  uint64_t nr_blocks = opts.data_bytes / bb;
  if (nr_blocks == 0) {
    return make_error(Errc::kInvalidArgument, "pool size must hold at least one block");
  }
  if (nr_blocks > pdata::kMaxDataBlock) {
    return make_error(Errc::kInvalidArgument, "pool size exceeds the format's limit");
  }
  uint64_t meta_bytes =
      opts.metadata_bytes ? opts.metadata_bytes : default_metadata_bytes(nr_blocks * bb, bb);
  if (meta_bytes < (1 << 20)) {
    return make_error(Errc::kInvalidArgument, "metadata size must be at least 1 MiB");
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return sys_error("create pool directory");
  }
  for (const char* f : {kMetadataFile, kDataFile, kCatalogFile, Journal::kFileName}) {
    if (exists(path_in(dir, f))) {
      return make_error(Errc::kExists, "directory already holds a pool");
    }
  }
  std::unique_ptr<Pool> p(new Pool());
  p->dir_ = dir;
  TP_ASSIGN_OR_RETURN(p->lock_fd_, take_lock(dir));
  p->block_bytes_ = bb;
  TP_ASSIGN_OR_RETURN(p->data_, io::create_file(path_in(dir, kDataFile), nr_blocks * bb));
  TP_ASSIGN_OR_RETURN(p->meta_dev_, io::create_file(path_in(dir, kMetadataFile), meta_bytes));
  TP_ASSIGN_OR_RETURN(p->md_, pdata::ThinMetadata::format(*p->meta_dev_, bb / 512, nr_blocks));
  p->cat_.settings.block_bytes = bb;
  p->cat_.settings.data_bytes = nr_blocks * bb;
  p->cat_.settings.pool_id = new_pool_id();
  TP_ASSIGN_OR_RETURN(
      catalog::CatalogFile cf,
      catalog::CatalogFile::create(path_in(dir, kCatalogFile), p->cat_, p->md_->trans_id()));
  p->catfile_ = std::make_unique<catalog::CatalogFile>(std::move(cf));
  TP_TRY(
      Journal::create_file(path_in(dir, Journal::kFileName), Journal::default_bytes(meta_bytes)));
  TP_TRY(p->open_journal(nullptr));
  TP_TRY(p->start());
  return p;
}

Result<std::unique_ptr<Pool>> Pool::open(const std::string& dir) {
  return open(dir, OpenOptions{});
}

Result<std::unique_ptr<Pool>> Pool::open(const std::string& dir, const DeviceWrapper& wrap,
                                         const DeviceWrapper& wrap_data) {
  OpenOptions o;
  o.wrap_metadata = wrap;
  o.wrap_data = wrap_data;
  return open(dir, o);
}

Result<std::unique_ptr<Pool>> Pool::open(const std::string& dir, const OpenOptions& opts) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return make_error(Errc::kCorruption, "not a pool: no such directory");
  }
  if (!exists(path_in(dir, kMetadataFile)) || !exists(path_in(dir, kCatalogFile)) ||
      !exists(path_in(dir, kDataFile))) {
    return make_error(Errc::kCorruption, "not a pool: metadata, data or catalog file missing");
  }
  std::unique_ptr<Pool> p(new Pool());
  p->dir_ = dir;
  TP_ASSIGN_OR_RETURN(p->lock_fd_, take_lock(dir));
  TP_ASSIGN_OR_RETURN(p->meta_dev_, io::open_file(path_in(dir, kMetadataFile)));
  if (opts.wrap_metadata) p->meta_dev_ = opts.wrap_metadata(std::move(p->meta_dev_));
  p->md_cache_blocks_ = opts.metadata_cache_blocks;
  TP_ASSIGN_OR_RETURN(p->md_, pdata::ThinMetadata::open(*p->meta_dev_, opts.metadata_cache_blocks));
  TP_ASSIGN_OR_RETURN(catalog::CatalogFile cf,
                      catalog::CatalogFile::open(path_in(dir, kCatalogFile), p->md_->trans_id()));
  p->catfile_ = std::make_unique<catalog::CatalogFile>(std::move(cf));
  p->cat_ = p->catfile_->current();
  p->block_bytes_ = p->md_->data_block_sectors() * 512;
  if (p->cat_.settings.block_bytes != p->block_bytes_) {
    return make_error(Errc::kCorruption, "catalog and metadata disagree on the block size");
  }
  TP_ASSIGN_OR_RETURN(p->data_, io::open_file(path_in(dir, kDataFile)));
  if (opts.wrap_data) p->data_ = opts.wrap_data(std::move(p->data_));
  if (p->data_->size() < p->md_->nr_data_blocks() * p->block_bytes_) {
    return make_error(Errc::kCorruption, "data file is shorter than the pool");
  }
  for (auto& [name, v] : p->cat_.volumes) {
    if (!p->md_->device_exists(v.dev_id)) {
      return make_error(Errc::kCorruption, "catalog names a volume the metadata does not have",
                        v.dev_id);
    }
  }
  for (uint64_t dev : p->md_->devices()) {
    if (!p->cat_.find_dev(dev)) {
      return make_error(Errc::kCorruption, "metadata has a device the catalog does not name", dev);
    }
  }
  p->low_ = true;  // a pool opened below the mark reports no new crossing
  p->force_catalog_ = p->catfile_->has_newer();
  // A pool from before journals had ids: it gets one, written by a checkpoint before any
  // journal batch can carry it (below).
  const bool new_id = p->cat_.settings.pool_id == 0;
  if (new_id) {
    p->cat_.settings.pool_id = new_pool_id();
    p->force_catalog_ = true;
  }
  // Mapping changes flushed after the last checkpoint (a pool that was not closed cleanly).
  TP_TRY(p->open_journal(opts.wrap_journal));
  TP_TRY(p->recompute_all_g_locked());
  TP_TRY(p->start());
  // A replayed journal stays: later batches follow it, the next checkpoint folds it in (open
  // writes nothing, but for a pool that just got its id).
  if (new_id) TP_TRY(p->checkpoint());
  return p;
}

uint64_t Pool::commit_id() {
  std::lock_guard lk(mu_);
  return (md_->trans_id() << 24) + journal_batches_;
}

uint64_t Pool::metadata_writes() {
  return md_->bm().stats().writes;
}

Result<const catalog::VolumeRecord*> Pool::record_locked(const std::string& name) {
  const catalog::VolumeRecord* v = cat_.find(name);
  if (!v) return make_error(Errc::kNotFound, "no such volume");
  return v;
}

Result<const catalog::VolumeRecord*> Pool::record_by_dev_locked(uint64_t dev) {
  const catalog::VolumeRecord* v = cat_.find_dev(dev);
  if (!v) return make_error(Errc::kNotFound, "no such volume", dev);
  return v;
}

Result<uint64_t> Pool::dev_id(const std::string& name) {
  std::lock_guard lk(mu_);
  TP_ASSIGN_OR_RETURN(auto* v, record_locked(name));
  return v->dev_id;
}

Result<uint64_t> Pool::size_of(uint64_t dev) {
  std::lock_guard lk(mu_);
  TP_ASSIGN_OR_RETURN(auto* v, record_by_dev_locked(dev));
  return v->size_bytes;
}

PoolInfo Pool::info() {
  std::lock_guard lk(mu_);
  PoolInfo i;
  i.block_bytes = block_bytes_;
  i.nr_blocks = md_->nr_data_blocks();
  i.free_blocks = md_->nr_free_data_blocks();
  i.used_blocks = i.nr_blocks - i.free_blocks;
  i.reserved_blocks = reserved_;
  i.unreserved_blocks = unreserved_locked();
  i.low_water_crossings = low_crossings_;
  for (auto& [name, rec] : cat_.volumes) {
    i.explicit_reserved_blocks += rec.reserve_blocks;
    for (auto cls : {catalog::ProvisionClass::kData, catalog::ProvisionClass::kMeta}) {
      auto cs = class_space_locked(rec, cls);
      if (!cs.ok()) continue;
      ClassSpace& t = cls == catalog::ProvisionClass::kData ? i.data_class : i.meta_class;
      t.guaranteed_blocks += cs->guaranteed_blocks;
      t.reserved_blocks += cs->reserved_blocks;
    }
  }
  i.metadata_blocks = md_->nr_metadata_blocks();
  i.metadata_used_blocks = md_->nr_metadata_blocks() - md_->nr_free_metadata_blocks();
  i.trans_id = md_->trans_id();
  i.low_water_percent = cat_.settings.low_water_percent;
  i.volumes = cat_.volumes.size();
  i.data_file_allocated_bytes = data_->allocated_bytes();
  i.state = state_locked();
  if (journal_) i.journal_bytes = journal_->capacity_bytes();
  i.journal_used_bytes = journal_used_;
  i.journal_batches = journal_batches_;
  i.journal_replayed_batches = replayed_.batches;
  i.journal_replayed_records = replayed_.records;
  i.checkpoints = checkpoints_;
  i.journal_commits = journal_commits_;
  i.background_commits = background_commits_;
  i.needs_check = md_->needs_check();
  return i;
}

PoolState Pool::state_locked() const {
  if (failed_locked() || md_->nr_free_metadata_blocks() < kMetadataSlice) {
    return PoolState::kReadOnly;  // a failed update, or metadata space exhausted
  }
  const uint64_t unreserved = unreserved_locked();
  if (unreserved == 0) return PoolState::kFull;
  if (unreserved * 100 < uint64_t{cat_.settings.low_water_percent} * md_->nr_data_blocks()) {
    return PoolState::kLow;
  }
  return PoolState::kOk;
}

void Pool::note_state_locked() {
  const PoolState now = state_locked();
  if (now == last_state_) return;
  PoolEvent ev{now, last_state_, unreserved_locked(), md_->nr_data_blocks()};
  last_state_ = now;
  if (listener_) listener_(ev);
}

void Pool::set_event_listener(std::function<void(const PoolEvent&)> listener) {
  std::lock_guard lk(mu_);
  listener_ = std::move(listener);
  last_state_ = state_locked();
}

std::vector<VolumeInfo> Pool::list(bool counts) {
  std::vector<std::string> names;
  {
    std::lock_guard lk(mu_);
    for (auto& [name, v] : cat_.volumes) names.push_back(name);
  }
  std::vector<VolumeInfo> out;
  for (auto& n : names) {
    auto v = volume(n, counts);
    if (v.ok()) out.push_back(*v);
  }
  return out;
}

Result<VolumeInfo> Pool::volume(const std::string& name, bool counts) {
  std::lock_guard lk(mu_);
  TP_ASSIGN_OR_RETURN(auto* rec, record_locked(name));
  VolumeInfo vi;
  vi.name = rec->name;
  vi.dev_id = rec->dev_id;
  vi.size_bytes = rec->size_bytes;
  vi.origin = rec->origin;
  vi.read_only = rec->read_only;
  vi.created_unix = rec->created_unix;
  if (!counts) return vi;
  TP_ASSIGN_OR_RETURN(auto det, md_->details(rec->dev_id));
  vi.mapped_blocks = det.mapped_blocks;
  uint64_t excl = 0;
  TP_TRY(md_->walk_exact(rec->dev_id, 0, ~uint64_t{0},
                         [&](uint64_t, const pdata::Mapping& m) -> Result<bool> {
                           excl += !m.shared;
                           return true;
                         }));
  vi.exclusive_blocks = excl;
  TP_ASSIGN_OR_RETURN(vi.data_class, class_space_locked(*rec, catalog::ProvisionClass::kData));
  TP_ASSIGN_OR_RETURN(vi.meta_class, class_space_locked(*rec, catalog::ProvisionClass::kMeta));
  vi.guaranteed_blocks = vi.data_class.guaranteed_blocks + vi.meta_class.guaranteed_blocks;
  vi.explicit_reserve_blocks = rec->reserve_blocks;
  vi.reserved_blocks = (g_.count(rec->dev_id) ? g_.at(rec->dev_id) : 0) + rec->reserve_blocks;
  return vi;
}

// ---------------------------------------------------------------- volume operations

Result<void> Pool::create_volume(const std::string& name, uint64_t size_bytes, bool provision,
                                 SpacePlan* plan) {
  if (!catalog::valid_volume_name(name)) {
    return make_error(Errc::kInvalidArgument, "invalid volume name");
  }
  TP_TRY(validate_size(size_bytes));
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  // Blocks freed by earlier changes are allocatable only after a commit: settle them first,
  // so the space counted below is space the allocator can hand out.
  if (provision) TP_TRY(idle_settled_locked(lk));
  if (cat_.find(name)) return make_error(Errc::kExists, "volume already exists");
  uint64_t dev = cat_.next_dev_id;
  if (dev > pdata::kMaxDevId) return make_error(Errc::kNoSpace, "no thin device ids left");
  uint64_t nr_vblocks = (size_bytes + block_bytes_ - 1) / block_bytes_;
  // Frees nothing: --provision needs every block of the volume unreserved.
  TP_TRY(decide_locked(space_need_locked(provision ? nr_vblocks : 0, kNoDev, SpaceFor::kGuarantee),
                       "not enough unreserved space to provision the volume", plan));
  if (plan) return {};
  TP_TRY(md_->create_thin(dev));
  cat_.next_dev_id++;
  catalog::VolumeRecord rec;
  rec.name = name;
  rec.dev_id = dev;
  rec.size_bytes = size_bytes;
  rec.created_unix = static_cast<int64_t>(::time(nullptr));
  cat_.volumes[name] = rec;
  dirty_ = true;
  if (provision) {
    if (auto r = provision_locked(name, 0, nr_vblocks, catalog::ProvisionClass::kData, false);
        !r.ok()) {
      return abort_locked(r.error());
    }
  }
  return commit_after(lk);
}

Result<void> Pool::snapshot(const std::string& origin, const std::string& name, bool writable,
                            uint64_t reserve_bytes, SpacePlan* plan) {
  if (!catalog::valid_volume_name(name)) {
    return make_error(Errc::kInvalidArgument, "invalid volume name");
  }
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  // In-flight writes to the origin must land before the tree is shared (and the space
  // counted below must not change meanwhile).
  wait_idle_locked(lk);
  TP_ASSIGN_OR_RETURN(auto* o, record_locked(origin));
  if (cat_.find(name)) return make_error(Errc::kExists, "volume already exists");
  uint64_t dev = cat_.next_dev_id;
  if (dev > pdata::kMaxDevId) return make_error(Errc::kNoSpace, "no thin device ids left");
  // Every guaranteed block of the origin that is mapped and exclusive becomes shared: the
  // origin's G grows to its whole guarantee. Plus the snapshot's own budget.
  uint64_t o_guaranteed = catalog::covered_blocks(o->guarantee, 0, ~uint64_t{0});
  uint64_t o_g = g_.count(o->dev_id) ? g_[o->dev_id] : 0;
  uint64_t reserve_blocks = (reserve_bytes + block_bytes_ - 1) / block_bytes_;
  // Frees nothing: decided up front. The space is for the origin's guarantee when it grows,
  // else for the snapshot's reservation (the snapshot has no device id yet: kNoDev).
  const uint64_t grows = o_guaranteed - o_g;
  SpaceNeed n = grows ? space_need_locked(grows + reserve_blocks, o->dev_id, SpaceFor::kGuarantee)
                      : space_need_locked(reserve_blocks, kNoDev, SpaceFor::kReservation);
  TP_TRY(decide_locked(
      n, "not enough unreserved space for the snapshot's guarantees and reservation", plan));
  if (plan) return {};
  TP_TRY(md_->create_snap(dev, o->dev_id));
  set_g_locked(o->dev_id, o_guaranteed);
  cat_.next_dev_id++;
  catalog::VolumeRecord rec;
  rec.name = name;
  rec.dev_id = dev;
  rec.size_bytes = o->size_bytes;
  rec.read_only = !writable;
  rec.origin = o->name;
  rec.origin_dev_id = o->dev_id;
  rec.created_unix = static_cast<int64_t>(::time(nullptr));
  rec.reserve_blocks = reserve_blocks;
  reserved_ += reserve_blocks;
  cat_.volumes[name] = rec;
  return commit_change(lk);
}

Result<void> Pool::remove_locked(const std::string& name) {
  TP_ASSIGN_OR_RETURN(auto* rec, record_locked(name));
  TP_TRY(md_->delete_device(rec->dev_id));
  set_g_locked(rec->dev_id, 0);
  reserved_ -= rec->reserve_blocks;
  cat_.volumes.erase(name);
  dirty_ = true;
  return {};
}

Result<void> Pool::remove(const std::string& name, bool recursive, SpacePlan* plan) {
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  TP_TRY(settle_locked(lk));
  TP_ASSIGN_OR_RETURN(auto* rec, record_locked(name));
  const uint64_t dev = rec->dev_id;
  // Descendants, deepest first.
  std::vector<std::string> order;
  std::vector<std::string> frontier{name};
  while (!frontier.empty()) {
    std::string cur = frontier.back();
    frontier.pop_back();
    order.push_back(cur);
    for (auto& [n, v] : cat_.volumes) {
      if (v.origin == cur) frontier.push_back(n);
    }
  }
  if (order.size() > 1 && !recursive) {
    return make_error(Errc::kBusy, "volume has snapshots (remove them or use --recursive)");
  }
  // Frees blocks and releases reservations; decided on the state after it like the others.
  Tentative op(*this);
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    if (auto r = remove_locked(*it); !r.ok()) return abort_locked(r.error());
  }
  // Blocks the removed volumes shared may now be exclusive to a guaranteed volume.
  if (auto r = recompute_all_g_locked(); !r.ok()) return abort_locked(r.error());
  return op.finish(lk, dev, kNoDev, "not enough space for the guarantees after the remove", plan);
}

Result<void> Pool::resize(const std::string& name, uint64_t size_bytes, SpacePlan* plan) {
  TP_TRY(validate_size(size_bytes));
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  TP_ASSIGN_OR_RETURN(auto* rec, record_locked(name));
  const uint64_t dev = rec->dev_id;
  const uint64_t old = rec->size_bytes;
  const uint64_t B = block_bytes_;
  const uint64_t old_blocks = (old + B - 1) / B;
  const uint64_t new_blocks = (size_bytes + B - 1) / B;
  // A volume guaranteed to its end keeps that promise when it grows: the new tail is
  // provisioned (and must fit); a shrink cuts the guarantee.
  bool whole = !rec->guarantee.empty() &&
               catalog::covered_blocks(rec->guarantee, 0, old_blocks) == old_blocks;
  if (size_bytes >= old) {
    // Growing frees nothing: decided up front (the new tail is unmapped: one block each).
    const uint64_t grow = whole && new_blocks > old_blocks ? new_blocks - old_blocks : 0;
    if (grow) {
      TP_TRY(idle_settled_locked(lk));  // freed blocks usable: the space counted is real
      TP_ASSIGN_OR_RETURN(rec, record_locked(name));
      if (rec->dev_id != dev || rec->size_bytes != old) {
        return make_error(Errc::kBusy, "volume changed while it was being resized");
      }
    }
    TP_TRY(decide_locked(space_need_locked(grow, dev, SpaceFor::kGuarantee),
                         "not enough unreserved space to grow the guarantee", plan));
    if (plan) return {};
    catalog::VolumeRecord* w = cat_.find(name);
    w->size_bytes = size_bytes;
    dirty_ = true;
    if (grow) {
      auto cls = w->guarantee.back().cls;
      if (auto r = provision_locked(name, old_blocks, new_blocks, cls, false); !r.ok()) {
        return abort_locked(r.error());
      }
    }
    return commit_after(lk);
  }
  // Shrinking frees the tail's blocks and cuts the guarantee; the kept part of a partial
  // last block is zeroed (so old bytes never come back on regrow), which copies it when it
  // is shared: decided on the state after it, counting that copy.
  TP_TRY(settle_locked(lk));
  TP_ASSIGN_OR_RETURN(rec, record_locked(name));
  if (rec->dev_id != dev || rec->size_bytes != old) {
    return make_error(Errc::kBusy, "volume changed while it was being resized");
  }
  Tentative op(*this);
  Result<void> r = unmap_locked(dev, new_blocks, ~uint64_t{0});
  catalog::VolumeRecord* w = cat_.find(name);
  w->guarantee = catalog::remove_range(w->guarantee, new_blocks, ~uint64_t{0});
  dirty_ = true;
  if (r.ok()) {
    auto g = compute_g_locked(*w);
    if (g.ok()) set_g_locked(dev, *g);
    r = g.ok() ? Result<void>() : Result<void>(g.error());
  }
  const uint64_t vb = size_bytes / B;
  std::optional<pdata::Mapping> tail;
  if (r.ok() && size_bytes % B != 0) {
    auto m = md_->lookup(dev, vb);
    if (m.ok()) tail = *m;
    r = m.ok() ? Result<void>() : Result<void>(m.error());
  }
  if (!r.ok()) return abort_locked(r.error());
  // The copy draws on the guarantee's block or the volume's reservation when it has one
  // (allocate_locked's rule), else on unreserved space.
  uint64_t extra = 0;
  if (tail && tail->shared) {
    bool from_g = catalog::is_covered(w->guarantee, vb) && g_.count(dev) && g_[dev] > 0;
    extra = from_g || w->reserve_blocks > 0 ? 0 : 1;
  }
  TP_TRY(
      op.decide(dev, kNoDev, "not enough space for the guarantees after the shrink", plan, extra));
  if (plan) return {};
  note_space_locked();
  if (tail) {
    // The tail is unmapped in a commit first (with the old size: as a trim of it), so that
    // the blocks it frees can pay for the copy; then the kept block's rest is zeroed through
    // the write path; then the size changes. A crash in between leaves the volume at its old
    // size with its tail trimmed (and maybe the block's rest zeroed).
    TP_TRY(commit_after(lk));
    TP_TRY(write_zero_bytes(dev, size_bytes, std::min(old, (vb + 1) * B) - size_bytes));
    lk.lock();
    TP_TRY(live_locked());
    w = cat_.find(name);
    if (!w || w->dev_id != dev || w->size_bytes != old) {
      return make_error(Errc::kBusy, "volume changed while it was being resized");
    }
  }
  w->size_bytes = size_bytes;
  dirty_ = true;
  return commit_after(lk);
}

Result<void> Pool::extend(uint64_t data_bytes) {
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  uint64_t nr = data_bytes / block_bytes_;
  if (nr <= md_->nr_data_blocks()) {
    return make_error(Errc::kInvalidArgument, "new pool size must be larger than the current one");
  }
  if (nr > pdata::kMaxDataBlock) {
    return make_error(Errc::kInvalidArgument, "pool size exceeds the format's limit");
  }
  const uint64_t old_nr = md_->nr_data_blocks();
  TP_TRY(data_->resize(nr * block_bytes_));
  TP_TRY(md_->resize_data(nr));
  // The new blocks of the last region are holes the region's earlier scan did not see.
  if (old_nr / kHoleRegionBlocks < hole_scanned_.size())
    hole_scanned_[old_nr / kHoleRegionBlocks] = 0;
  cat_.settings.data_bytes = nr * block_bytes_;
  hole_bits_.resize((nr + 63) / 64, 0);
  hole_scanned_.resize((nr + kHoleRegionBlocks - 1) / kHoleRegionBlocks, 0);
  dirty_ = true;
  return commit_after(lk);
}

// ---------------------------------------------------------------- I/O path

Result<void> Pool::check_writable_locked(uint64_t dev) {
  TP_TRY(live_locked());
  TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
  if (rec->read_only) return make_error(Errc::kReadOnly, "volume is a read-only snapshot");
  return {};
}

Result<void> Pool::idle_settled_locked(std::unique_lock<std::mutex>& lk, bool clear_unshared) {
  Quiesce quiesce(*this);  // requests wait until the caller releases mu_
  for (int round = 0;; round++) {
    wait_idle_locked(lk);
    bool need = md_->data_sm().nr_pending_free() > 0 ||
                (clear_unshared && (!unshared_.empty() || !unshared_cut_.empty()));
    // Volume operations of other threads could keep freeing blocks: a few rounds and go on
    // (an allocation that still meets only pending blocks then fails cleanly).
    if (!need || round == 4) return {};
    lk.unlock();
    // Blocks the last checkpoint still references are released by a checkpoint only.
    Result<void> r = checkpoint();
    lk.lock();
    TP_TRY(r);
    TP_TRY(live_locked());
  }
}

namespace {
// Reused per thread: block-sized buffers for copy-on-write and zero padding, and the
// per-request lists (no allocation per request once warm).
thread_local std::vector<std::byte> t_block;
// Blocks larger than this are not assembled in memory (copy_file_range and punch instead).
constexpr uint64_t kMaxAssembleBytes = 1 << 20;
}  // namespace

Result<void> Pool::read(uint64_t dev, uint64_t off, std::span<std::byte> buf) {
  return read(dev, off, buf, nullptr);
}

Result<void> Pool::read(uint64_t dev, uint64_t off, std::span<std::byte> buf,
                        std::vector<Extent>* extents) {
  if (buf.empty()) {
    if (extents) extents->clear();
    return {};
  }
  thread_local std::vector<ReadPart> parts;
  parts.clear();
  TP_ASSIGN_OR_RETURN(unsigned ticket, start_read(dev, off, buf, extents, parts));
  Result<void> res;
  for (const ReadPart& p : parts) {
    res = data_->read(p.data_offset, buf.subspan(p.buf_offset, p.length));
    if (!res.ok()) break;
  }
  finish_read(ticket);
  return res;
}

Result<unsigned> Pool::start_read(uint64_t dev, uint64_t off, std::span<std::byte> buf,
                                  std::vector<Extent>* extents, std::vector<ReadPart>& parts,
                                  bool may_wait) {
  if (extents) extents->clear();
  const uint64_t B = block_bytes_;
  thread_local std::vector<std::pair<uint64_t, uint64_t>> maps;  // (vb, data block)
  maps.clear();
  unsigned slot;
  {
    std::unique_lock lk(mu_);
    if (!may_wait && quiesce_ > 0) return make_error(Errc::kBusy, "requests are held back");
    wait_io_allowed_locked(lk);
    TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
    if (off > rec->size_bytes || buf.size() > rec->size_bytes - off) {
      return make_error(Errc::kInvalidArgument, "read beyond the end of the volume", off);
    }
    if (!buf.empty()) {
      const uint64_t vb0 = off / B, vb1 = (off + buf.size() - 1) / B;
      TP_TRY(md_->walk(dev, vb0, vb1, [&](uint64_t vb, const pdata::Mapping& m) -> Result<bool> {
        maps.emplace_back(vb, m.data_block);
        return true;
      }));
    }
    slot = begin_io_locked();
  }
  const uint64_t end = off + buf.size();
  uint64_t pos = off;  // bytes before pos are planned
  auto run = [&](uint64_t a, uint64_t b, bool mapped) {
    if (!extents || a >= b) return;
    if (!extents->empty() && extents->back().mapped == mapped) {
      extents->back().length += b - a;
    } else {
      extents->push_back({a, b - a, mapped});
    }
  };
  auto hole = [&](uint64_t a, uint64_t b) {
    if (a >= b) return;
    std::memset(buf.data() + (a - off), 0, b - a);
    run(a, b, false);
  };
  for (size_t i = 0; i < maps.size();) {
    // Runs of consecutive virtual blocks on consecutive data blocks are one part.
    size_t j = i + 1;
    while (j < maps.size() && maps[j].first == maps[j - 1].first + 1 &&
           maps[j].second == maps[j - 1].second + 1) {
      j++;
    }
    uint64_t v_begin = std::max(off, maps[i].first * B);
    uint64_t v_end = std::min(end, (maps[j - 1].first + 1) * B);
    hole(pos, v_begin);
    parts.push_back(
        {maps[i].second * B + (v_begin - maps[i].first * B), v_begin - off, v_end - v_begin});
    run(v_begin, v_end, true);
    pos = v_end;
    i = j;
  }
  hole(pos, end);
  return slot;
}

Result<void> Pool::write(uint64_t dev, uint64_t off, std::span<const std::byte> buf) {
  return write_impl(dev, off, buf, false);
}

Result<void> Pool::write_impl(uint64_t dev, uint64_t off, std::span<const std::byte> buf,
                              bool internal) {
  const uint64_t B = block_bytes_;
  const uint64_t end = off + buf.size();
  thread_local std::vector<Target> targets;
  targets.clear();
  bool allocating = false;
  int commits = 0;          // commits this request asked for to make progress
  Result<void> tail_error;  // the part after the targets could not be prepared
  unsigned slot;
  uint64_t vb0 = 0, vb1 = 0;
  for (;;) {
    std::unique_lock lk(mu_);
    wait_io_allowed_locked(lk);
    TP_TRY(internal ? live_locked() : check_writable_locked(dev));
    TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
    if (off > rec->size_bytes || buf.size() > rec->size_bytes - off) {
      return make_error(Errc::kInvalidArgument, "write beyond the end of the volume", off);
    }
    if (buf.empty()) return {};
    vb0 = off / B;
    vb1 = (end - 1) / B + 1;
    // Blocks a write in flight is giving new data blocks: wait until it has mapped them.
    if (pending_overlaps_locked(dev, vb0, vb1)) {
      cv_.wait(lk);
      continue;
    }
    targets.clear();
    allocating = false;
    Result<void> stop;      // why planning stopped early
    bool unshared = false;  // ... at a block that stops being shared at the next commit
    for (uint64_t vb = vb0; vb < vb1; vb++) {
      auto m = md_->lookup(dev, vb);
      if (!m.ok()) {
        stop = m.error();
        break;
      }
      if (*m && !(*m)->shared) {
        if (unshared_locked((*m)->data_block)) {
          // Exclusive only since an uncommitted unmap or copy elsewhere: the committed state
          // still shares it. Written in place after the next commit.
          stop = make_error(Errc::kBusy, kWaitCommit);
          unshared = true;
          break;
        }
        targets.push_back({vb, (*m)->data_block, Fill::kInPlace, kNoBlock, 0, true});
        continue;
      }
      if (md_->nr_free_metadata_blocks() < kMetadataSlice) {
        stop = metadata_low_locked(dev);
        break;
      }
      DrawnFrom from;
      auto nb = allocate_locked(*rec, vb, &from);
      if (!nb.ok()) {
        stop = nb.error();
        break;
      }
      const uint64_t b_begin = std::max(off, vb * B), b_end = std::min(end, (vb + 1) * B);
      Fill fill;
      if (b_begin == vb * B && b_end == (vb + 1) * B) {
        fill = Fill::kWhole;  // the old content, if any, is overwritten: no copy
      } else if (*m) {
        fill = Fill::kCopy;
      } else {
        fill = known_hole_locked(*nb) ? Fill::kHole : Fill::kZeroPad;
      }
      const bool durable_hole =
          fill == Fill::kHole || (fill == Fill::kWhole && known_hole_locked(*nb));
      set_hole_locked(*nb, false);
      set_bit(punched_bits_, *nb, false);
      targets.push_back({vb, *nb, fill, *m ? (*m)->data_block : kNoBlock,
                         static_cast<uint8_t>(from), durable_hole && !*m});
      allocating = true;
    }
    if (!stop.ok() && stop.error().code == Errc::kNoSpace && !targets.empty()) {
      // Out of space part way: the blocks that could be prepared are written (the pool fills
      // up as far as it can), then the request fails.
      tail_error = stop;
      stop = {};
      vb1 = targets.back().vb + 1;
    }
    if (stop.ok()) {
      if (allocating) pending_.push_back({dev, vb0, vb1});
      slot = begin_io_locked();
      break;
    }
    // Nothing was done yet: give back what was held, then fail or commit and try again.
    for (const Target& t : targets) {
      if (t.fill != Fill::kInPlace)
        unallocate_locked(dev, t.block, static_cast<DrawnFrom>(t.drawn));
    }
    targets.clear();
    if (!is_wait_commit(stop)) {
      note_state_locked();  // read-only if a metadata update failed half way
      return stop;
    }
    // Only blocks waiting for a commit stand in the way (freed ones, or a block that stops
    // being shared at the next commit): commit, then they are usable. One commit releases
    // every freed block; a block unshared by a change made meanwhile may need another.
    if (!unshared && commits > 0) return write_no_space_locked(dev);
    if (commits >= 8) return make_error(Errc::kBusy, "block keeps waiting for a commit");
    lk.unlock();
    // Freed blocks the last checkpoint still references come back with a checkpoint only; a
    // block unshared since is settled by any commit.
    TP_TRY(unshared ? flush() : checkpoint());
    commits++;
  }

  Result<void> res = write_targets(targets, off, buf);

  if (!allocating) {
    end_io(slot);
    return res.ok() ? tail_error : res;
  }
  Result<void> ins;
  {
    std::lock_guard lk(mu_);
    for (const Target& t : targets) {
      if (t.fill == Fill::kInPlace) continue;
      if (res.ok() && ins.ok()) {
        ins = md_->insert_held(dev, t.vb, t.block);
        if (ins.ok() && t.old_block != kNoBlock)
          ins = release_shared_locked(dev, t.vb, t.old_block);
        if (ins.ok()) {
          const auto from = static_cast<DrawnFrom>(t.drawn);
          journal_locked({JournalRecord::kMap,
                          from == DrawnFrom::kReserve ? JournalRecord::kFromReserve : uint8_t{0},
                          static_cast<uint32_t>(dev), t.vb, t.block},
                         t.safe);
          continue;
        }
        if (!md_->broken()) {
          // Refused before anything changed (cannot happen for a held block; be safe).
          unallocate_locked(dev, t.block, static_cast<DrawnFrom>(t.drawn));
        }
        continue;
      }
      // The write failed (or an earlier insert did): the block never gets mapped, the old
      // content stays. Give the space back where it came from.
      if (!md_->broken()) unallocate_locked(dev, t.block, static_cast<DrawnFrom>(t.drawn));
    }
    pending_remove_locked(dev, vb0);
    if (!ins.ok()) note_state_locked();  // read-only: a metadata update failed half way
  }
  end_io(slot);
  if (!res.ok()) return res;
  return ins.ok() ? tail_error : ins;
}

Result<void> Pool::write_targets(const std::vector<Target>& targets, uint64_t off,
                                 std::span<const std::byte> buf) {
  const uint64_t B = block_bytes_;
  const uint64_t end = off + buf.size();
  // Fills whose bytes on the device are exactly the request's bytes for that block.
  auto direct = [](Fill f) { return f == Fill::kInPlace || f == Fill::kWhole || f == Fill::kHole; };
  for (size_t i = 0; i < targets.size();) {
    const Target& t = targets[i];
    const uint64_t b_begin = std::max(off, t.vb * B), b_end = std::min(end, (t.vb + 1) * B);
    const uint64_t boff = b_begin - t.vb * B;
    if (direct(t.fill)) {
      // Merge runs of consecutive data blocks into one write.
      size_t j = i + 1;
      while (j < targets.size() && direct(targets[j].fill) &&
             targets[j].block == targets[j - 1].block + 1) {
        j++;
      }
      uint64_t v_end = std::min(end, (targets[j - 1].vb + 1) * B);
      TP_TRY(data_->write(t.block * B + boff, buf.subspan(b_begin - off, v_end - b_begin)));
      i = j;
      continue;
    }
    auto data = buf.subspan(b_begin - off, b_end - b_begin);
    if (B <= kMaxAssembleBytes) {
      // One block-sized write: the old bytes (copy-on-write) or zeros around the new ones.
      t_block.resize(B);
      if (t.fill == Fill::kCopy) {
        // The bytes the write replaces are not read: only the head and the tail of the block.
        if (boff > 0) TP_TRY(data_->read(t.old_block * B, std::span(t_block).first(boff)));
        if (boff + data.size() < B) {
          TP_TRY(data_->read(t.old_block * B + boff + data.size(),
                             std::span(t_block).subspan(boff + data.size())));
        }
      } else {
        std::memset(t_block.data(), 0, boff);
        std::memset(t_block.data() + boff + data.size(), 0, B - boff - data.size());
      }
      std::memcpy(t_block.data() + boff, data.data(), data.size());
      TP_TRY(data_->write(t.block * B, t_block));
    } else if (t.fill == Fill::kCopy) {
      if (boff > 0) TP_TRY(data_->copy(t.old_block * B, t.block * B, boff));
      const uint64_t tail = boff + data.size();
      if (tail < B) TP_TRY(data_->copy(t.old_block * B + tail, t.block * B + tail, B - tail));
      TP_TRY(data_->write(t.block * B + boff, data));
    } else {
      TP_TRY(data_->discard(t.block * B, B));
      TP_TRY(data_->write(t.block * B + boff, data));
    }
    i++;
  }
  return {};
}

Result<void> Pool::write_zero_bytes(uint64_t dev, uint64_t off, uint64_t len) {
  static const std::vector<std::byte> zeros(64 << 10);
  const uint64_t B = block_bytes_;
  for (uint64_t pos = off; pos < off + len;) {
    const uint64_t vb = pos / B;
    const uint64_t n = std::min({off + len - pos, (vb + 1) * B - pos, uint64_t{zeros.size()}});
    bool mapped;
    {
      std::lock_guard lk(mu_);
      TP_ASSIGN_OR_RETURN(auto m, md_->lookup(dev, vb));
      mapped = m.has_value();
    }
    // An unmapped block already reads as zeros.
    if (mapped) TP_TRY(write_impl(dev, pos, std::span(zeros).first(n), true));
    pos += n;
  }
  return {};
}

Result<void> Pool::unmap_locked(uint64_t dev, uint64_t vb_begin, uint64_t vb_end) {
  if (vb_begin >= vb_end) return {};
  TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
  struct Gone {
    uint64_t vb, block;
    bool shared, guaranteed;
  };
  std::vector<Gone> vbs;
  TP_TRY(md_->walk_exact(
      dev, vb_begin, vb_end - 1, [&](uint64_t vb, const pdata::Mapping& m) -> Result<bool> {
        vbs.push_back({vb, m.data_block, m.shared, catalog::is_covered(rec->guarantee, vb)});
        return true;
      }));
  uint64_t back_to_g = 0;
  for (const Gone& x : vbs) {
    TP_TRY(md_->remove(dev, x.vb));
    back_to_g += !x.shared && x.guaranteed;
    journal_locked({JournalRecord::kUnmap, 0, static_cast<uint32_t>(dev), x.vb, 0}, true);
    if (x.shared) TP_TRY(release_shared_locked(dev, x.vb, x.block));
  }
  // A guaranteed block stays guaranteed: its freed block returns to R(v).
  if (back_to_g) set_g_locked(dev, (g_.count(dev) ? g_[dev] : 0) + back_to_g);
  note_space_locked();
  return {};
}

Result<void> Pool::trim(uint64_t dev, uint64_t off, uint64_t len) {
  if (len == 0) return {};
  std::unique_lock lk(mu_);
  const uint64_t B = block_bytes_;
  for (;;) {
    wait_io_allowed_locked(lk);
    TP_TRY(check_writable_locked(dev));
    TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
    if (off > rec->size_bytes || len > rec->size_bytes - off) {
      return make_error(Errc::kInvalidArgument, "trim beyond the end of the volume", off);
    }
    uint64_t first = (off + B - 1) / B;
    uint64_t last = (off + len) / B;  // exclusive
    // The tail of the volume counts as a whole block when the range reaches the end.
    if (off + len == rec->size_bytes) last = (rec->size_bytes + B - 1) / B;
    if (first >= last) return {};
    // A write in flight is mapping some of these blocks: let it finish first.
    if (pending_overlaps_locked(dev, first, last)) {
      cv_.wait(lk);
      continue;
    }
    return unmap_locked(dev, first, last);
  }
}

Result<void> Pool::write_zeroes(uint64_t dev, uint64_t off, uint64_t len) {
  if (len == 0) return {};
  const uint64_t B = block_bytes_;
  const uint64_t end = off + len;
  {
    std::unique_lock lk(mu_);
    for (;;) {
      wait_io_allowed_locked(lk);
      TP_TRY(check_writable_locked(dev));
      TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
      if (off > rec->size_bytes || len > rec->size_bytes - off) {
        return make_error(Errc::kInvalidArgument, "write_zeroes beyond the end of the volume", off);
      }
      uint64_t first = (off + B - 1) / B, last = end / B;
      if (end == rec->size_bytes) last = (end + B - 1) / B;
      if (first < last && pending_overlaps_locked(dev, first, last)) {
        cv_.wait(lk);
        continue;
      }
      TP_TRY(unmap_locked(dev, first, std::max(first, last)));
      break;
    }
  }
  // Partial blocks at either end: zeros where the block is mapped (unmapped reads zeros).
  const uint64_t vb_h = off / B, vb_t = (end - 1) / B;
  auto partial = [&](uint64_t a, uint64_t b) -> Result<void> {  // [a, b) inside one block
    if (a % B == 0 && b - a == B) return {};                    // whole: unmapped above
    return write_zero_bytes(dev, a, b - a);
  };
  TP_TRY(partial(off, std::min(end, (vb_h + 1) * B)));
  if (vb_t != vb_h) TP_TRY(partial(vb_t * B, end));
  return {};
}

Result<std::vector<Extent>> Pool::extents(uint64_t dev, uint64_t off, uint64_t len) {
  std::vector<Extent> out;
  if (len == 0) return out;
  const uint64_t B = block_bytes_;
  std::lock_guard lk(mu_);
  TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
  if (off > rec->size_bytes || len > rec->size_bytes - off) {
    return make_error(Errc::kInvalidArgument, "range beyond the end of the volume", off);
  }
  uint64_t end = off + len;
  uint64_t pos = off;
  auto add = [&](uint64_t a, uint64_t b, bool mapped) {
    if (a >= b) return;
    if (!out.empty() && out.back().mapped == mapped && out.back().offset + out.back().length == a) {
      out.back().length += b - a;
    } else {
      out.push_back({a, b - a, mapped});
    }
  };
  TP_TRY(md_->walk(dev, off / B, (end - 1) / B,
                   [&](uint64_t vb, const pdata::Mapping&) -> Result<bool> {
                     uint64_t a = std::max(off, vb * B), b = std::min(end, (vb + 1) * B);
                     add(pos, a, false);
                     add(a, b, true);
                     pos = b;
                     return true;
                   }));
  add(pos, end, false);
  return out;
}

// ---------------------------------------------------------------- delta and check

Result<std::vector<DeltaRange>> Pool::delta(const std::string& a, const std::string& b,
                                            uint64_t off, uint64_t len, size_t max_ranges) {
  std::lock_guard lk(mu_);
  TP_ASSIGN_OR_RETURN(auto* ra, record_locked(a));
  TP_ASSIGN_OR_RETURN(auto* rb, record_locked(b));
  TP_ASSIGN_OR_RETURN(uint64_t root_a, md_->device_root(ra->dev_id));
  TP_ASSIGN_OR_RETURN(uint64_t root_b, md_->device_root(rb->dev_id));
  std::vector<DeltaRange> out;
  const uint64_t B = block_bytes_;
  if (len == 0 || max_ranges == 0) return out;
  const uint64_t lo = off / B;
  const uint64_t hi = len > ~uint64_t{0} - off ? ~uint64_t{0} : (off + len - 1) / B;
  TP_TRY(pdata::btree_diff(
      md_->bm(), root_a, root_b, 8,
      [&](uint64_t vb, const std::byte* va, const std::byte* vb_) -> Result<bool> {
        const char* kind;
        if (va && vb_) {
          // Same data block (a shadowed copy of a shared leaf): not a change.
          if (pdata::bt_block(pdata::load_le64(va)) == pdata::bt_block(pdata::load_le64(vb_))) {
            return true;
          }
          kind = "changed";
        } else {
          kind = va ? "removed" : "added";
        }
        if (!out.empty() && std::strcmp(out.back().kind, kind) == 0 &&
            out.back().offset + out.back().length == vb * B) {
          out.back().length += B;
          return true;
        }
        if (out.size() == max_ranges) return false;
        out.push_back({vb * B, B, kind});
        return true;
      },
      lo, hi));
  return out;
}

Result<CheckResult> Pool::check(const std::string& metadata_copy) {
  // What is checked is committed (the metadata copy is the file as the last commit left it):
  // no commit in flight while we look, requests held back, everything committed first.
  std::lock_guard clk(commit_mu_);
  std::unique_lock lk(mu_);
  Quiesce quiesce(*this);  // requests wait until the caller releases mu_
  wait_idle_locked(lk);
  CheckResult res;
  res.journal_replayed_batches = replayed_.batches;
  res.journal_replayed_records = replayed_.records;
  res.journal_pending_batches = journal_batches_;
  // A checkpoint always: the metadata file then holds everything and the journal is empty.
  lk.unlock();
  last_commit_ = commit_run(true);
  lk.lock();
  TP_TRY(last_commit_);
  TP_ASSIGN_OR_RETURN(auto rep, pdata::check_metadata(*md_));
  res.damage = std::move(rep.damage);
  res.warnings = std::move(rep.warnings);
  res.nodes = rep.nodes;
  res.mappings = rep.mappings;
  for (auto& [name, v] : cat_.volumes) {
    if (!md_->device_exists(v.dev_id)) {
      res.damage.push_back("volume " + name + ": thin device " + std::to_string(v.dev_id) +
                           " is missing from the metadata");
      continue;
    }
    uint64_t nr_vblocks = (v.size_bytes + block_bytes_ - 1) / block_bytes_;
    bool beyond = false;
    TP_TRY(md_->walk(v.dev_id, nr_vblocks, ~uint64_t{0},
                     [&](uint64_t, const pdata::Mapping&) -> Result<bool> {
                       beyond = true;
                       return false;
                     }));
    if (beyond) res.damage.push_back("volume " + name + " maps blocks beyond its size");
    if (!v.origin.empty() && !cat_.find(v.origin)) {
      res.warnings.push_back("volume " + name + ": origin " + v.origin + " no longer exists");
    }
  }
  for (uint64_t dev : md_->devices()) {
    if (!cat_.find_dev(dev)) {
      res.damage.push_back("thin device " + std::to_string(dev) + " has no volume in the catalog");
    }
  }
  // The space invariant, and every volume's reservation against its guarantee.
  uint64_t reserved = 0;
  for (auto& [name, v] : cat_.volumes) {
    TP_ASSIGN_OR_RETURN(uint64_t g, compute_g_locked(v));
    uint64_t have = g_.count(v.dev_id) ? g_.at(v.dev_id) : 0;
    if (have < g) {
      res.damage.push_back("volume " + name + " reserves " + std::to_string(have) +
                           " blocks for its guarantee, which needs " + std::to_string(g));
    } else if (have > g) {
      res.warnings.push_back("volume " + name + " reserves " + std::to_string(have - g) +
                             " blocks more than its guarantee needs (until the next recount)");
    }
    reserved += g + v.reserve_blocks;
    uint64_t nr_vblocks = (v.size_bytes + block_bytes_ - 1) / block_bytes_;
    if (!v.guarantee.empty() && v.guarantee.back().end > nr_vblocks) {
      res.damage.push_back("volume " + name + " has a guarantee beyond its size");
    }
  }
  if (reserved > free_locked()) {
    res.damage.push_back("space invariant broken: " + std::to_string(reserved) +
                         " blocks reserved, " + std::to_string(free_locked()) + " free");
  }
  if (!metadata_copy.empty()) TP_TRY(copy_metadata_locked(metadata_copy));
  return res;
}

// The committed metadata, byte for byte (nothing is dirty: check() committed first).
Result<void> Pool::copy_metadata_locked(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return sys_error("cannot create the metadata copy");
  std::vector<std::byte> buf(1 << 20);
  Result<void> r;
  for (uint64_t off = 0; r.ok() && off < meta_dev_->size(); off += buf.size()) {
    auto chunk = std::span(buf).first(std::min<uint64_t>(buf.size(), meta_dev_->size() - off));
    r = meta_dev_->read(off, chunk);
    if (r.ok() && ::pwrite(fd, chunk.data(), chunk.size(), static_cast<off_t>(off)) !=
                      static_cast<ssize_t>(chunk.size())) {
      r = sys_error("cannot write the metadata copy", off);
    }
  }
  ::close(fd);
  return r;
}

}  // namespace tp::thin
