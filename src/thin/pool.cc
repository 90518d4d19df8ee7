#include "thin/pool.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>

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

Pool::~Pool() {
  // No commit here (STYLE.md): close() commits. Closing the fd releases the lock.
  if (lock_fd_ >= 0) ::close(lock_fd_);
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
  for (const char* f : {kMetadataFile, kDataFile, kCatalogFile}) {
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
  TP_ASSIGN_OR_RETURN(
      catalog::CatalogFile cf,
      catalog::CatalogFile::create(path_in(dir, kCatalogFile), p->cat_, p->md_->trans_id()));
  p->catfile_ = std::make_unique<catalog::CatalogFile>(std::move(cf));
  return p;
}

Result<std::unique_ptr<Pool>> Pool::open(const std::string& dir) {
  return open(dir, OpenOptions{});
}

Result<std::unique_ptr<Pool>> Pool::open(const std::string& dir, const DeviceWrapper& wrap,
                                         const DeviceWrapper& wrap_data) {
  return open(dir, OpenOptions{wrap, wrap_data});
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
  TP_TRY(p->recompute_all_g_locked());
  return p;
}

Result<void> Pool::close() {
  std::unique_lock lk(mu_);
  if (!failed_locked()) {
    io_done_.wait(lk, [&] { return inflight_ == 0; });
    TP_TRY(commit_locked());
  }
  if (lock_fd_ >= 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
  }
  return {};
}

void Pool::end_io() {
  std::lock_guard lk(mu_);
  if (--inflight_ == 0) io_done_.notify_all();
}

Result<void> Pool::commit_locked() {
  if (failed_locked()) {
    note_state_locked();
    return make_error(Errc::kReadOnly, "pool is read-only after a failed update; reopen it");
  }
  // Data first: every write acknowledged before this flush must be durable before the
  // metadata that maps it.
  if (auto r = data_->flush(); !r.ok()) {
    failed_ = true;
    note_state_locked();
    return r;
  }
  if (!dirty_ && md_->data_sm().nr_pending_free() == 0) {
    unshared_.clear();
    return {};
  }
  uint64_t next = md_->trans_id() + 1;
  // The catalog generation goes first (two generations: see catalog.h), then the
  // metadata transaction with the superblock last.
  if (auto r = catfile_->write(cat_, next); !r.ok()) {
    failed_ = true;
    note_state_locked();
    return r;
  }
  md_->set_trans_id(next);
  if (auto r = md_->commit(); !r.ok()) {
    failed_ = true;
    note_state_locked();
    return r;
  }
  dirty_ = false;
  unshared_.clear();
  // Blocks freed in the transaction are free in the committed state only now: give their
  // space back to the host filesystem. A failure here loses nothing (a new block is always
  // punched or fully overwritten before it is mapped, and given its old content back if
  // that overwrite fails).
  for (uint64_t b : md_->take_freed()) {
    (void)data_->discard(b * block_bytes_, block_bytes_);
  }
  return {};
}

Result<void> Pool::abort_locked(const Error& e) {
  // The in-core state is half changed: refuse further changes until the pool is reopened
  // (which returns it to the last commit).
  failed_ = true;
  note_state_locked();
  return e;
}

Result<void> Pool::flush() {
  std::unique_lock lk(mu_);
  io_done_.wait(lk, [&] { return inflight_ == 0; });
  return commit_locked();
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
  std::lock_guard lk(mu_);
  TP_TRY(live_locked());
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
  return commit_locked();
}

Result<void> Pool::snapshot(const std::string& origin, const std::string& name, bool writable,
                            uint64_t reserve_bytes, SpacePlan* plan) {
  if (!catalog::valid_volume_name(name)) {
    return make_error(Errc::kInvalidArgument, "invalid volume name");
  }
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
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
  // In-flight writes to the origin must land before the tree is shared.
  io_done_.wait(lk, [&] { return inflight_ == 0; });
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
  return commit_change_locked();
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
  return op.finish(dev, kNoDev, "not enough space for the guarantees after the remove", plan);
}

Result<void> Pool::resize(const std::string& name, uint64_t size_bytes, SpacePlan* plan) {
  TP_TRY(validate_size(size_bytes));
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  TP_ASSIGN_OR_RETURN(auto* rec, record_locked(name));
  uint64_t dev = rec->dev_id;
  uint64_t old = rec->size_bytes;
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
    return commit_locked();
  }
  // Shrinking frees the tail's blocks and cuts the guarantee; the kept part of a partial
  // last block is zeroed (so old bytes never come back on regrow), which copies it when it
  // is shared: decided on the state after it, counting that copy.
  TP_TRY(settle_locked(lk));
  Tentative op(*this);
  Result<void> r = unmap_locked(dev, new_blocks, ~uint64_t{0});
  catalog::VolumeRecord* w = cat_.find(name);
  w->size_bytes = size_bytes;
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
  if (tail) {
    uint32_t boff = static_cast<uint32_t>(size_bytes % B);
    auto target = prepare_write_retry(lk, dev, vb, boff, static_cast<uint32_t>(B - boff));
    if (!target.ok()) return abort_locked(target.error());
    if (auto z = data_->write_zeroes(*target * B + boff, B - boff); !z.ok()) return z;
  }
  note_space_locked();
  return commit_locked();
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
  TP_TRY(data_->resize(nr * block_bytes_));
  TP_TRY(md_->resize_data(nr));
  cat_.settings.data_bytes = nr * block_bytes_;
  dirty_ = true;
  return commit_locked();
}

// ---------------------------------------------------------------- I/O path

Result<void> Pool::check_writable_locked(uint64_t dev) {
  TP_TRY(live_locked());
  TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
  if (rec->read_only) return make_error(Errc::kReadOnly, "volume is a read-only snapshot");
  return {};
}

Result<uint64_t> Pool::prepare_write_locked(uint64_t dev, uint64_t vb, uint32_t boff, uint32_t len,
                                            Uninitialised* u) {
  TP_ASSIGN_OR_RETURN(auto m, md_->lookup(dev, vb));
  if (m && !m->shared) {
    if (!unshared_.count(m->data_block)) return m->data_block;  // exclusive: in place
    // Exclusive only since an uncommitted unmap or copy elsewhere: the committed state
    // still shares it. Written in place after the next commit.
    return make_error(Errc::kBusy, kWaitCommit);
  }
  if (md_->nr_free_metadata_blocks() < kMetadataSlice) {
    return metadata_low_locked(dev);
  }
  TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
  DrawnFrom from;
  TP_ASSIGN_OR_RETURN(uint64_t nb, allocate_locked(*rec, vb, &from));
  uint64_t B = block_bytes_;
  if (!(boff == 0 && len == B)) {
    // Partial write: the rest of the block must be the old content (copy-on-write) or
    // zeros, never what the data block held before (stale data).
    Result<void> r = m ? data_->copy(m->data_block * B, nb * B, B) : data_->discard(nb * B, B);
    if (!r.ok()) {
      unallocate_locked(rec->name, nb, from);
      return r.error();
    }
  } else if (u) {
    u->fresh = true;
    u->old_block = m ? m->data_block : kNoOldBlock;
  }
  TP_TRY(md_->insert(dev, vb, nb));
  dirty_ = true;
  if (m) TP_TRY(release_shared_locked(dev, vb, m->data_block));
  return nb;
}

Result<uint64_t> Pool::prepare_write_retry(std::unique_lock<std::mutex>& lk, uint64_t dev,
                                           uint64_t vb, uint32_t boff, uint32_t len) {
  auto t = prepare_write_locked(dev, vb, boff, len);
  if (t.ok()) return t;
  Result<void> err = t.error();
  if (!is_wait_commit(err)) return t;
  io_done_.wait(lk, [&] { return inflight_ == 0; });
  TP_TRY(commit_locked());
  return prepare_write_locked(dev, vb, boff, len);
}

bool Pool::filling_locked(const std::vector<std::pair<uint64_t, uint64_t>>& maps) const {
  if (filling_.empty()) return false;
  for (const auto& m : maps) {
    if (std::find(filling_.begin(), filling_.end(), m.second) != filling_.end()) return true;
  }
  return false;
}

void Pool::filled_locked(uint64_t block) {
  auto it = std::find(filling_.begin(), filling_.end(), block);
  if (it != filling_.end()) {
    *it = filling_.back();
    filling_.pop_back();
  }
}

Result<void> Pool::read(uint64_t dev, uint64_t off, std::span<std::byte> buf) {
  if (buf.empty()) return {};
  const uint64_t B = block_bytes_;
  thread_local std::vector<std::pair<uint64_t, uint64_t>> maps;  // (vb, data block)
  maps.clear();
  {
    std::unique_lock lk(mu_);
    const uint64_t vb0 = off / B, vb1 = (off + buf.size() - 1) / B;
    for (;;) {
      TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));  // (again after a wait)
      if (off > rec->size_bytes || buf.size() > rec->size_bytes - off) {
        return make_error(Errc::kInvalidArgument, "read beyond the end of the volume", off);
      }
      TP_TRY(md_->walk(dev, vb0, vb1, [&](uint64_t vb, const pdata::Mapping& m) -> Result<bool> {
        maps.emplace_back(vb, m.data_block);
        return true;
      }));
      if (!filling_locked(maps)) break;
      filled_.wait(lk);  // a whole-block write into one of them is in flight
      maps.clear();
    }
    begin_io_locked();
  }
  std::memset(buf.data(), 0, buf.size());
  Result<void> res;
  for (size_t i = 0; i < maps.size() && res.ok();) {
    // Merge runs of consecutive virtual blocks on consecutive data blocks into one read.
    size_t j = i + 1;
    while (j < maps.size() && maps[j].first == maps[j - 1].first + 1 &&
           maps[j].second == maps[j - 1].second + 1) {
      j++;
    }
    uint64_t v_begin = std::max(off, maps[i].first * B);
    uint64_t v_end = std::min(off + buf.size(), (maps[j - 1].first + 1) * B);
    uint64_t d = maps[i].second * B + (v_begin - maps[i].first * B);
    res = data_->read(d, buf.subspan(v_begin - off, v_end - v_begin));
    i = j;
  }
  end_io();
  return res;
}

Result<void> Pool::write(uint64_t dev, uint64_t off, std::span<const std::byte> buf) {
  const uint64_t B = block_bytes_;
  struct Target {
    uint64_t vb, block;
    Uninitialised u;
  };
  thread_local std::vector<Target> targets;
  uint64_t end = off + buf.size();
  uint64_t pos = off;
  bool committed_for_space = false;  // at most one commit per stretch of progress
  while (pos < end || buf.empty()) {
    targets.clear();
    Result<void> prep;
    {
      std::unique_lock lk(mu_);
      TP_TRY(check_writable_locked(dev));
      TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
      if (off > rec->size_bytes || buf.size() > rec->size_bytes - off) {
        return make_error(Errc::kInvalidArgument, "write beyond the end of the volume", off);
      }
      if (buf.empty()) return {};
      for (uint64_t vb = pos / B; vb * B < end; vb++) {
        uint64_t b_begin = std::max(pos, vb * B), b_end = std::min(end, (vb + 1) * B);
        Uninitialised u;
        auto t = prepare_write_locked(dev, vb, static_cast<uint32_t>(b_begin - vb * B),
                                      static_cast<uint32_t>(b_end - b_begin), &u);
        if (!t.ok()) {
          prep = t.error();
          break;
        }
        targets.push_back({vb, *t, u});
      }
      if (targets.empty()) {
        if (!is_wait_commit(prep)) {
          note_state_locked();  // read-only if a metadata update failed half way
          return prep;
        }
        if (committed_for_space) {
          return write_no_space_locked(dev);
        }
        // Only blocks freed in this transaction are left: commit, then they are usable.
        io_done_.wait(lk, [&] { return inflight_ == 0; });
        TP_TRY(commit_locked());
        committed_for_space = true;
        continue;
      }
      committed_for_space = false;
      for (const Target& t : targets) {
        if (t.u.fresh) filling_.push_back(t.block);
      }
      begin_io_locked();
    }
    // Ends this round's I/O: the fresh blocks hold their content now, readers may map them.
    auto finish = [&] {
      std::lock_guard lk(mu_);
      bool any = false;
      for (const Target& t : targets) {
        if (t.u.fresh) {
          filled_locked(t.block);
          any = true;
        }
      }
      if (any) filled_.notify_all();
      if (--inflight_ == 0) io_done_.notify_all();
    };
    Result<void> res;
    for (size_t i = 0; i < targets.size() && res.ok();) {
      size_t j = i + 1;
      while (j < targets.size() && targets[j].block == targets[j - 1].block + 1) j++;
      uint64_t v_begin = std::max(pos, targets[i].vb * B);
      uint64_t v_end = std::min(end, (targets[j - 1].vb + 1) * B);
      uint64_t d = targets[i].block * B + (v_begin - targets[i].vb * B);
      res = data_->write(d, buf.subspan(v_begin - off, v_end - v_begin));
      i = j;
    }
    if (!res.ok()) {
      // The new blocks this write was to fill are already mapped: give them the content
      // they replace (a failed write leaves the old data, never some other volume's). Still
      // in flight, so no commit can free and reuse an old block meanwhile. If even that
      // fails, the mappings must never be committed: the pool turns read-only.
      Result<void> fix;
      for (const Target& t : targets) {
        if (!t.u.fresh) continue;
        fix = t.u.old_block != kNoOldBlock ? data_->copy(t.u.old_block * B, t.block * B, B)
                                           : data_->discard(t.block * B, B);
        if (!fix.ok()) break;
      }
      finish();
      if (!fix.ok()) {
        std::lock_guard lk(mu_);
        (void)abort_locked(fix.error());
      }
      return res;
    }
    finish();
    pos = std::min(end, (targets.back().vb + 1) * B);
    if (!prep.ok() && !is_wait_commit(prep)) return prep;
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
    dirty_ = true;
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
  TP_TRY(check_writable_locked(dev));
  TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
  if (off > rec->size_bytes || len > rec->size_bytes - off) {
    return make_error(Errc::kInvalidArgument, "trim beyond the end of the volume", off);
  }
  const uint64_t B = block_bytes_;
  uint64_t first = (off + B - 1) / B;
  uint64_t last = (off + len) / B;  // exclusive
  // The tail of the volume counts as a whole block when the range reaches the end.
  if (off + len == rec->size_bytes) last = (rec->size_bytes + B - 1) / B;
  return unmap_locked(dev, first, last);
}

Result<void> Pool::write_zeroes(uint64_t dev, uint64_t off, uint64_t len) {
  if (len == 0) return {};
  const uint64_t B = block_bytes_;
  uint64_t end = off + len;
  {
    std::unique_lock lk(mu_);
    TP_TRY(check_writable_locked(dev));
    TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
    if (off > rec->size_bytes || len > rec->size_bytes - off) {
      return make_error(Errc::kInvalidArgument, "write_zeroes beyond the end of the volume", off);
    }
    uint64_t first = (off + B - 1) / B, last = end / B;
    if (end == rec->size_bytes) last = (end + B - 1) / B;
    TP_TRY(unmap_locked(dev, first, std::max(first, last)));
  }
  // Partial blocks at either end: zeros where the block is mapped (unmapped reads zeros).
  for (uint64_t vb : {off / B, (end - 1) / B}) {
    uint64_t b_begin = std::max(off, vb * B), b_end = std::min(end, (vb + 1) * B);
    if (b_begin == vb * B && b_end == (vb + 1) * B) continue;  // whole: unmapped above
    std::unique_lock lk(mu_);
    TP_ASSIGN_OR_RETURN(auto m, md_->lookup(dev, vb));
    if (!m) continue;
    uint32_t boff = static_cast<uint32_t>(b_begin - vb * B);
    TP_ASSIGN_OR_RETURN(
        uint64_t target,
        prepare_write_retry(lk, dev, vb, boff, static_cast<uint32_t>(b_end - b_begin)));
    TP_TRY(data_->write_zeroes(target * B + boff, b_end - b_begin));
    if (off / B == (end - 1) / B) break;  // one block: done
  }
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
  std::unique_lock lk(mu_);
  io_done_.wait(lk, [&] { return inflight_ == 0; });
  if (dirty_) TP_TRY(commit_locked());
  CheckResult res;
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
