// Space accounting (docs/SEMANTICS.md "The space invariant"):
//   free       = data blocks with ref count 0
//   reserved   = sum over volumes of R(v) = G(v) + E(v)     always <= free
//   G(v)       = guaranteed virtual blocks of v that are unmapped or shared
//   E(v)       = what is left of v's explicit reservation (catalog reserve_blocks)
// "Shared" is exact (pdata::Mapping::shared: the next write would copy), the same rule the
// write path uses. G is kept up to date by the write path for v's own writes and trims;
// when another volume's change can only make v's blocks *less* shared (remove, merge,
// rollback), G of every guaranteed volume is recomputed by walking its guarantee.
//
// Space decisions (SEMANTICS.md "Operations"): an operation that only takes space
// (create --provision, provision, snapshot, reserve, resize up) is checked before it changes
// anything (decide_locked). One that frees blocks and changes reservations in one step
// (remove, merge, rollback, resize down, unprovision) is made on the in-memory transaction
// and judged on the state after it (Tentative): reserved <= free commits it, anything else
// throws the transaction away (discard_transaction_locked). Either way a refusal carries the
// numbers (Error::space), and a dry run (SpacePlan) stops at the decision.
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>

#include "thin/pool.h"

extern char** environ;

namespace tp::thin {

using catalog::GuaranteeRange;
using catalog::ProvisionClass;
using catalog::VolumeRecord;

uint64_t Pool::unreserved_locked() const {
  uint64_t f = free_locked();
  return f > reserved_ ? f - reserved_ : 0;
}

void Pool::set_g_locked(uint64_t dev, uint64_t g) {
  uint64_t old = g_.count(dev) ? g_[dev] : 0;
  reserved_ = reserved_ - old + g;
  if (g == 0) {
    g_.erase(dev);
  } else {
    g_[dev] = g;
  }
}

Result<uint64_t> Pool::compute_g_locked(const VolumeRecord& rec) {
  uint64_t g = 0;
  for (const GuaranteeRange& r : rec.guarantee) {
    uint64_t exclusive = 0;
    TP_TRY(md_->walk_exact(rec.dev_id, r.begin, r.end - 1,
                           [&](uint64_t, const pdata::Mapping& m) -> Result<bool> {
                             exclusive += !m.shared;
                             return true;
                           }));
    g += (r.end - r.begin) - exclusive;
  }
  return g;
}

Result<ClassSpace> Pool::class_space_locked(const VolumeRecord& rec, ProvisionClass cls) {
  ClassSpace cs;
  for (const GuaranteeRange& r : rec.guarantee) {
    if (r.cls != cls) continue;
    uint64_t exclusive = 0;
    TP_TRY(md_->walk_exact(rec.dev_id, r.begin, r.end - 1,
                           [&](uint64_t, const pdata::Mapping& m) -> Result<bool> {
                             exclusive += !m.shared;
                             return true;
                           }));
    cs.guaranteed_blocks += r.end - r.begin;
    cs.reserved_blocks += (r.end - r.begin) - exclusive;
  }
  return cs;
}

Result<void> Pool::recompute_all_g_locked() {
  g_.clear();
  reserved_ = 0;
  for (auto& [name, rec] : cat_.volumes) {
    reserved_ += rec.reserve_blocks;
    if (rec.guarantee.empty()) continue;
    TP_ASSIGN_OR_RETURN(uint64_t g, compute_g_locked(rec));
    set_g_locked(rec.dev_id, g);
  }
  note_space_locked();
  return {};
}

// Low-water mark: an event once per crossing (counted in info, and the hook command run
// with THINPOOL_EVENT=low in the environment; not waited for).
void Pool::note_space_locked() {
  if (quiet_) return;  // an undecided operation: its states may be thrown away
  uint64_t nr = md_->nr_data_blocks();
  bool low = unreserved_locked() * 100 < uint64_t{cat_.settings.low_water_percent} * nr;
  if (low && !low_) {
    low_crossings_++;
    const std::string& hook = cat_.settings.low_water_hook;
    if (!hook.empty()) {
      std::string ev = "THINPOOL_EVENT=low", pool = "THINPOOL_POOL=" + dir_;
      std::vector<char*> env;
      for (char** e = environ; e && *e; e++) env.push_back(*e);
      env.push_back(ev.data());
      env.push_back(pool.data());
      env.push_back(nullptr);
      const char* argv[] = {"/bin/sh", "-c", hook.c_str(), nullptr};
      pid_t pid;
      if (::posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), env.data()) ==
          0) {
        hook_pids_.push_back(pid);
      }
    }
  }
  low_ = low;
  note_state_locked();
  // Reap finished hooks without waiting.
  std::erase_if(hook_pids_, [](pid_t p) { return ::waitpid(p, nullptr, WNOHANG) == p; });
}

Result<void> Pool::release_shared_locked(uint64_t dev, uint64_t vb, uint64_t old_block) {
  unshared_.insert(old_block);
  TP_ASSIGN_OR_RETURN(uint32_t left, md_->data_ref_count(old_block));
  if (left == 0 && g_.empty()) return {};
  for (auto& [d, g] : g_) {
    if (d == dev || g == 0) continue;
    const VolumeRecord* v = cat_.find_dev(d);
    if (!v || !catalog::is_covered(v->guarantee, vb)) continue;
    TP_ASSIGN_OR_RETURN(auto m, md_->lookup(d, vb));
    if (m && m->data_block == old_block && !m->shared) {
      g--;
      reserved_--;
    }
  }
  std::erase_if(g_, [](auto& kv) { return kv.second == 0; });
  return {};
}

Result<uint64_t> Pool::new_data_block_locked() {
  auto b = md_->hold_data_block();
  if (!b.ok() && b.error().code == Errc::kNoSpace && md_->data_sm().nr_pending_free() > 0) {
    // Freed blocks become usable after the next commit.
    return make_error(Errc::kBusy, kWaitCommit);
  }
  return b;
}

Result<uint64_t> Pool::allocate_locked(const VolumeRecord& rec, uint64_t vb, DrawnFrom* from) {
  uint64_t dev = rec.dev_id;
  bool guaranteed = catalog::is_covered(rec.guarantee, vb);
  uint64_t g = g_.count(dev) ? g_[dev] : 0;
  if (guaranteed && g > 0) {
    TP_ASSIGN_OR_RETURN(uint64_t b, new_data_block_locked());
    set_g_locked(dev, g - 1);
    *from = DrawnFrom::kGuarantee;
    return b;
  }
  if (rec.reserve_blocks > 0) {
    TP_ASSIGN_OR_RETURN(uint64_t b, new_data_block_locked());
    cat_.find(rec.name)->reserve_blocks--;  // journaled with the mapping (kFromReserve)
    reserved_--;
    *from = DrawnFrom::kReserve;
    return b;
  }
  if (unreserved_locked() == 0) return write_no_space_locked(dev);
  TP_ASSIGN_OR_RETURN(uint64_t b, new_data_block_locked());
  note_space_locked();
  *from = DrawnFrom::kPool;
  return b;
}

void Pool::unallocate_locked(uint64_t dev, uint64_t block, DrawnFrom from) {
  md_->release_held(block);
  switch (from) {
    case DrawnFrom::kGuarantee:
      set_g_locked(dev, (g_.count(dev) ? g_[dev] : 0) + 1);
      break;
    case DrawnFrom::kReserve:
      if (const VolumeRecord* v = cat_.find_dev(dev)) {
        cat_.find(v->name)->reserve_blocks++;
        reserved_++;
      }
      break;
    case DrawnFrom::kPool:
      break;
  }
  note_space_locked();
}

Result<void> Pool::provision_locked(const std::string& name, uint64_t vb_begin, uint64_t vb_end,
                                    ProvisionClass cls, bool zero_content, SpacePlan* plan) {
  TP_ASSIGN_OR_RETURN(auto* rec, record_locked(name));
  if (rec->read_only) return make_error(Errc::kReadOnly, "volume is a read-only snapshot");
  uint64_t dev = rec->dev_id;
  const uint64_t B = block_bytes_;
  // What the range holds now.
  std::vector<std::pair<uint64_t, pdata::Mapping>> maps;
  TP_TRY(md_->walk_exact(dev, vb_begin, vb_end - 1,
                         [&](uint64_t vb, const pdata::Mapping& m) -> Result<bool> {
                           maps.emplace_back(vb, m);
                           return true;
                         }));
  uint64_t exclusive_new = 0;  // mapped, exclusive, not yet guaranteed: no reservation needed
  for (auto& [vb, m] : maps) {
    exclusive_new += !m.shared && !catalog::is_covered(rec->guarantee, vb);
  }
  uint64_t already = catalog::covered_blocks(rec->guarantee, vb_begin, vb_end);
  uint64_t need = (vb_end - vb_begin) - already - exclusive_new;
  uint64_t unres = unreserved_locked();
  uint64_t from_e = need > unres ? need - unres : 0;
  // The volume's own reservation makes up for what the unreserved space lacks.
  SpaceNeed n = space_need_locked(need, dev, SpaceFor::kGuarantee);
  n.own = rec->reserve_blocks;
  TP_TRY(decide_locked(n, "not enough unreserved space to provision the range", plan));
  if (plan) return {};
  // Take the guarantee first: from now on G(v) holds a block for every unmapped or shared
  // block of the range, and the allocations below draw on it.
  VolumeRecord* w = cat_.find(name);
  w->reserve_blocks -= from_e;
  reserved_ -= from_e;
  w->guarantee = catalog::add_range(w->guarantee, {vb_begin, vb_end, cls});
  uint64_t g = g_.count(dev) ? g_[dev] : 0;
  set_g_locked(dev, g + need);
  dirty_ = true;
  // Map every unmapped block zero-filled and allocated in the data file; make sure mapped
  // exclusive blocks are allocated in the data file too.
  size_t mi = 0;
  for (uint64_t vb = vb_begin; vb < vb_end; vb++) {
    while (mi < maps.size() && maps[mi].first < vb) mi++;
    bool mapped = mi < maps.size() && maps[mi].first == vb;
    if (mapped && !maps[mi].second.shared) {
      uint64_t b = maps[mi].second.data_block;
      TP_TRY(zero_content ? data_->write_zeroes(b * B, B) : data_->provision(b * B, B));
      continue;
    }
    if (mapped && !zero_content) continue;  // shared: its copy is reserved in G(v)
    DrawnFrom from;
    TP_ASSIGN_OR_RETURN(uint64_t nb, allocate_locked(*w, vb, &from));
    set_hole_locked(nb, false);
    if (auto r = data_->write_zeroes(nb * B, B); !r.ok()) {
      unallocate_locked(dev, nb, from);
      return r;
    }
    TP_TRY(md_->insert_held(dev, vb, nb));
    if (mapped) TP_TRY(release_shared_locked(dev, vb, maps[mi].second.data_block));
  }
  note_space_locked();
  return {};
}

// ---------------------------------------------------------------- public operations

Result<void> Pool::set_low_water(uint32_t percent, const std::string& hook) {
  if (percent > 100) return make_error(Errc::kInvalidArgument, "low-water mark is a percentage");
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  cat_.settings.low_water_percent = percent;
  cat_.settings.low_water_hook = hook;
  return commit_change(lk);
}

Result<void> Pool::provision(const std::string& name, uint64_t off, uint64_t len,
                             ProvisionClass cls, SpacePlan* plan) {
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  TP_ASSIGN_OR_RETURN(auto* rec, record_locked(name));
  if (len == 0 || off > rec->size_bytes || len > rec->size_bytes - off) {
    return make_error(Errc::kInvalidArgument, "range is empty or beyond the end of the volume");
  }
  const uint64_t B = block_bytes_;
  const uint64_t size = rec->size_bytes;
  // Freed blocks are usable only after a commit: settle them first so the space the checks
  // below count is space the allocator can hand out.
  TP_TRY(idle_settled_locked(lk));
  TP_ASSIGN_OR_RETURN(rec, record_locked(name));
  if (rec->size_bytes != size) return make_error(Errc::kBusy, "volume changed meanwhile");
  if (auto r = provision_locked(name, off / B, (off + len + B - 1) / B, cls, false, plan);
      !r.ok()) {
    if (r.error().code == Errc::kNoSpace || r.error().code == Errc::kReadOnly) return r;
    return abort_locked(r.error());
  }
  if (plan) return {};
  return commit_after(lk);
}

Result<void> Pool::provision_zero(uint64_t dev, uint64_t off, uint64_t len) {
  if (len == 0) return {};
  const uint64_t B = block_bytes_;
  const uint64_t end = off + len;
  std::string name;
  uint64_t edges_first = 0, edges_last = 0;  // whole blocks, zero-provisioned
  {
    std::unique_lock lk(mu_);
    wait_io_allowed_locked(lk);
    TP_TRY(check_writable_locked(dev));
    TP_ASSIGN_OR_RETURN(auto* rec, record_by_dev_locked(dev));
    if (off > rec->size_bytes || len > rec->size_bytes - off) {
      return make_error(Errc::kInvalidArgument, "range beyond the end of the volume", off);
    }
    name = rec->name;
    const uint64_t size = rec->size_bytes;
    // Zeroing in place a block in unshared_ needs a commit first, as a write does.
    TP_TRY(idle_settled_locked(lk, /*clear_unshared=*/true));
    TP_TRY(check_writable_locked(dev));
    TP_ASSIGN_OR_RETURN(rec, record_by_dev_locked(dev));
    if (rec->name != name || rec->size_bytes != size) {
      return make_error(Errc::kBusy, "volume changed meanwhile");
    }
    // Whole blocks: provisioned with zero content. Partial blocks at the edges: provisioned
    // here, and only the requested bytes zeroed below.
    uint64_t first = (off + B - 1) / B, last = end / B;
    if (end == rec->size_bytes) last = (end + B - 1) / B;
    if (first < last) {
      if (auto r = provision_locked(name, first, last, ProvisionClass::kData, true); !r.ok()) {
        if (r.error().code == Errc::kNoSpace) return r;
        return abort_locked(r.error());
      }
    }
    for (uint64_t vb : {off / B, (end - 1) / B}) {
      if (vb >= first && vb < last) continue;
      if (auto r = provision_locked(name, vb, vb + 1, ProvisionClass::kData, false); !r.ok()) {
        if (r.error().code == Errc::kNoSpace) return r;
        return abort_locked(r.error());
      }
    }
    dirty_ = true;
    edges_first = first;
    edges_last = last;
  }
  // The partial edges: zeros over the requested bytes, through the write path (a shared
  // block is copied, with a block its guarantee holds).
  for (uint64_t vb : {off / B, (end - 1) / B}) {
    if (vb >= edges_first && vb < edges_last) continue;
    uint64_t b_begin = std::max(off, vb * B), b_end = std::min(end, (vb + 1) * B);
    TP_TRY(write_zero_bytes(dev, b_begin, b_end - b_begin));
    if (off / B == (end - 1) / B) break;
  }
  return {};
}

Result<void> Pool::unprovision(const std::string& name, uint64_t off, uint64_t len,
                               SpacePlan* plan) {
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  TP_TRY(settle_locked(lk));
  TP_ASSIGN_OR_RETURN(auto* rec, record_locked(name));
  if (len == 0 || off > rec->size_bytes || len > rec->size_bytes - off) {
    return make_error(Errc::kInvalidArgument, "range is empty or beyond the end of the volume");
  }
  const uint64_t B = block_bytes_;
  // Inward rounding: a block only partly in the range keeps its guarantee.
  uint64_t vb_begin = (off + B - 1) / B, vb_end = (off + len) / B;
  if (off + len == rec->size_bytes) vb_end = ~uint64_t{0};
  // Releases what the guarantee reserved for the range: never needs space.
  Tentative op(*this);
  if (vb_begin < vb_end) {
    VolumeRecord* w = cat_.find(name);
    w->guarantee = catalog::remove_range(w->guarantee, vb_begin, vb_end);
    auto g = compute_g_locked(*w);
    if (!g.ok()) return abort_locked(g.error());
    set_g_locked(w->dev_id, *g);
    dirty_ = true;
  }
  return op.finish(lk, rec->dev_id, kNoDev, "not enough space for the guarantees after unprovision",
                   plan);
}

Result<void> Pool::reserve(const std::string& name, uint64_t bytes, SpacePlan* plan) {
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  TP_ASSIGN_OR_RETURN(auto* rec, record_locked(name));
  uint64_t want = (bytes + block_bytes_ - 1) / block_bytes_;
  // Frees nothing: only the increase needs unreserved blocks; a decrease gives them back.
  uint64_t e = rec->reserve_blocks;
  SpaceNeed n = space_need_locked(want > e ? want - e : 0, rec->dev_id, SpaceFor::kReservation);
  TP_TRY(decide_locked(n, "not enough unreserved space for the reservation", plan,
                       e > want ? e - want : 0));
  if (plan) return {};
  reserved_ = reserved_ - rec->reserve_blocks + want;
  cat_.find(name)->reserve_blocks = want;
  return commit_change(lk);
}

Result<void> Pool::merge(const std::string& snapshot, bool take_size, SpacePlan* plan) {
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  TP_TRY(settle_locked(lk));
  TP_ASSIGN_OR_RETURN(auto* snap, record_locked(snapshot));
  if (snap->origin.empty()) {
    return make_error(Errc::kInvalidArgument, "volume is not a snapshot: nothing to merge into");
  }
  const VolumeRecord* origin = cat_.find(snap->origin);
  if (!origin || origin->dev_id != snap->origin_dev_id) {
    return make_error(Errc::kNotFound, "the snapshot's origin no longer exists");
  }
  for (auto& [n, v] : cat_.volumes) {
    if (v.origin == snapshot) {
      return make_error(Errc::kBusy, "snapshot has snapshots of its own: remove them first");
    }
  }
  std::string origin_name = origin->name;
  uint64_t odev = origin->dev_id, sdev = snap->dev_id;
  Tentative op(*this);
  uint64_t osize = take_size ? snap->size_bytes : origin->size_bytes;
  const uint64_t B = block_bytes_;
  uint64_t old_blocks = (origin->size_bytes + B - 1) / B, new_blocks = (osize + B - 1) / B;
  bool whole = !origin->guarantee.empty() &&
               catalog::covered_blocks(origin->guarantee, 0, old_blocks) == old_blocks;
  // One transaction: the origin takes the snapshot's tree, the snapshot goes. A crash
  // leaves either the old or the new content (both live in one metadata commit).
  Result<void> r = md_->clone_tree_into(odev, sdev);
  if (r.ok()) r = remove_locked(snapshot);
  // The origin keeps its size: anything the snapshot mapped beyond it goes.
  if (r.ok()) {
    uint64_t nr_vblocks = (osize + block_bytes_ - 1) / block_bytes_;
    r = unmap_locked(odev, nr_vblocks, ~uint64_t{0});
  }
  if (r.ok() && take_size) {
    VolumeRecord* o = cat_.find(origin_name);
    o->size_bytes = osize;
    if (new_blocks < old_blocks) {
      o->guarantee = catalog::remove_range(o->guarantee, new_blocks, ~uint64_t{0});
    } else if (whole && new_blocks > old_blocks) {
      o->guarantee =
          catalog::add_range(o->guarantee, {old_blocks, new_blocks, o->guarantee.back().cls});
    }
  }
  if (r.ok()) r = recompute_all_g_locked();
  if (r.ok() && reserved_ > free_locked() && whole && new_blocks > old_blocks) {
    // The grown guarantee does not fit: keep the promise at the old size only.
    VolumeRecord* o = cat_.find(origin_name);
    o->guarantee = catalog::remove_range(o->guarantee, old_blocks, ~uint64_t{0});
    r = recompute_all_g_locked();
  }
  if (!r.ok()) return abort_locked(r.error());
  dirty_ = true;
  return op.finish(lk, odev, kNoDev, "not enough space for the guarantees after the merge", plan);
}

Result<void> Pool::rollback(const std::string& name, const std::string& snapshot, SpacePlan* plan) {
  std::unique_lock lk(mu_);
  TP_TRY(live_locked());
  TP_TRY(settle_locked(lk));
  TP_ASSIGN_OR_RETURN(auto* vol, record_locked(name));
  TP_ASSIGN_OR_RETURN(auto* snap, record_locked(snapshot));
  if (vol == snap) return make_error(Errc::kInvalidArgument, "cannot roll a volume back to itself");
  if (vol->read_only) return make_error(Errc::kReadOnly, "volume is a read-only snapshot");
  // Like a snapshot of SNAP under the volume's name: the volume's guaranteed blocks become
  // unmapped or shared with SNAP (and SNAP's guaranteed blocks shared with the volume), so
  // guarantees grow; the volume's old blocks are freed. Decided on the state after it.
  Tentative op(*this);
  uint64_t dev = vol->dev_id, sdev = snap->dev_id;
  uint64_t nr_vblocks = (vol->size_bytes + block_bytes_ - 1) / block_bytes_;
  Result<void> r = md_->clone_tree_into(dev, sdev);
  if (r.ok()) r = unmap_locked(dev, nr_vblocks, ~uint64_t{0});
  if (r.ok()) r = recompute_all_g_locked();
  if (!r.ok()) return abort_locked(r.error());
  dirty_ = true;
  return op.finish(lk, dev, sdev, "not enough space for the guarantees after the rollback", plan);
}

// ---------------------------------------------------------------- space decisions

namespace {

// A thin device id as SpaceNeed holds it (kNoDev for none).
uint32_t dev32(uint64_t dev) {
  return dev > pdata::kMaxDevId ? kNoDev : static_cast<uint32_t>(dev);
}

}  // namespace

SpaceNeed Pool::space_need_locked(uint64_t need, uint64_t dev, SpaceFor f) const {
  SpaceNeed n;
  n.need = need;
  n.unreserved = unreserved_locked();
  n.unit_bytes = block_bytes_;
  n.dev = dev32(dev);
  n.what_for = f;
  return n;
}

Error Pool::write_no_space_locked(uint64_t dev) const {
  const VolumeRecord* rec = cat_.find_dev(dev);
  SpaceNeed n = space_need_locked(1, dev, SpaceFor::kWrite);
  n.own = rec ? rec->reserve_blocks : 0;
  return space_error("pool is full (no unreserved blocks)", n);
}

Error Pool::metadata_low_locked(uint64_t dev) const {
  SpaceNeed n;
  n.need = kMetadataSlice;
  n.unreserved = md_->nr_free_metadata_blocks();
  n.unit_bytes = pdata::kBlockSize;
  n.dev = dev32(dev);
  n.what_for = SpaceFor::kMetadata;
  return space_error("metadata space is low: only trim, remove and merge work", n);
}

namespace {

void fill_plan(SpacePlan* plan, const SpaceNeed& n, uint64_t released) {
  if (!plan) return;
  plan->decided = true;
  plan->need = n;
  const uint64_t have = n.unreserved + n.freed;  // own is not unreserved space
  plan->unreserved_after = n.fits() ? have - std::min(have, n.need) + released : 0;
}

}  // namespace

Result<void> Pool::decide_locked(const SpaceNeed& n, const char* what, SpacePlan* plan,
                                 uint64_t released) {
  fill_plan(plan, n, released);
  if (!n.fits()) return space_error(what, n);
  return {};
}

Result<void> Pool::settle_locked(std::unique_lock<std::mutex>& lk) {
  Quiesce quiesce(*this);  // requests wait until the caller releases mu_
  for (int round = 0;; round++) {
    wait_idle_locked(lk);
    const bool uncommitted = dirty_ || force_catalog_ || !records_.empty() ||
                             journal_batches_ > 0 || md_->has_freed() ||
                             md_->data_sm().nr_pending_free() > 0 || !unshared_.empty();
    if (!uncommitted) return {};
    // Only requests that were in flight when we began can change the pool meanwhile (new ones
    // wait), and other volume operations: a few rounds at most.
    if (round == 8) return make_error(Errc::kBusy, "the pool keeps changing: try again");
    lk.unlock();
    Result<void> r = checkpoint();
    lk.lock();
    TP_TRY(r);
    TP_TRY(live_locked());
  }
}

Result<void> Pool::discard_transaction_locked() {
  // Open the committed state before letting go of the old one: if it cannot be read, the
  // pool keeps its (consistent, uncommitted) in-core state and turns read-only.
  auto md = pdata::ThinMetadata::open(*meta_dev_, md_cache_blocks_);
  if (!md.ok()) return abort_locked(md.error());
  md_ = std::move(md).value();
  cat_ = catfile_->current();
  unshared_.clear();
  records_.clear();  // the operation's own unmaps
  safe_records_ = 0;
  dirty_ = false;
  if (auto r = recompute_all_g_locked(); !r.ok()) return abort_locked(r.error());
  return {};
}

Pool::Tentative::Tentative(Pool& p) : p_(p) {
  p_.quiet_ = true;
  free_ = p_.free_locked();
  reserved_ = p_.reserved_;
  g_ = p_.g_;
  for (auto& [name, rec] : p_.cat_.volumes) e_[rec.dev_id] = rec.reserve_blocks;
}

Pool::Tentative::~Tentative() {
  // After decide() the caller may have released mu_ (to commit): touch nothing then.
  if (decided_) return;
  // The operation stopped before its decision (an error; mu_ still held): report the state
  // it left (read-only after a failed update).
  p_.quiet_ = false;
  p_.note_space_locked();
}

Result<void> Pool::Tentative::decide(uint64_t dev, uint64_t other, const char* what,
                                     SpacePlan* plan, uint64_t extra) {
  decided_ = true;
  p_.quiet_ = false;
  const uint64_t free = p_.free_locked(), reserved = p_.reserved_;
  // The volume whose R(v) = G(v) + E(v) grew most is the one the space is for.
  auto at = [](const std::map<uint64_t, uint64_t>& m, uint64_t d) {
    auto it = m.find(d);
    return it == m.end() ? uint64_t{0} : it->second;
  };
  uint64_t blame = dev, most = 0;
  SpaceFor what_for = SpaceFor::kGuarantee;
  for (auto& [name, rec] : p_.cat_.volumes) {
    uint64_t g = at(p_.g_, rec.dev_id), g0 = at(g_, rec.dev_id);
    uint64_t e = rec.reserve_blocks, e0 = at(e_, rec.dev_id);
    if (g + e > g0 + e0 && g + e - (g0 + e0) > most) {
      most = g + e - (g0 + e0);
      blame = rec.dev_id;
      what_for = g > g0 ? SpaceFor::kGuarantee : SpaceFor::kReservation;
    }
  }
  // need = growth of reserved + blocks allocated; freed blocks count as available.
  const uint64_t freed = free > free_ ? free - free_ : 0;
  const uint64_t taken = (free_ > free ? free_ - free : 0) + extra;
  const uint64_t grown = reserved + taken, shrunk = reserved_;
  // Nothing reserves more: what is missing is the operation's own allocation (a write).
  if (most == 0 && extra > 0) what_for = SpaceFor::kWrite;
  SpaceNeed n = p_.space_need_locked(grown > shrunk ? grown - shrunk : 0, blame, what_for);
  n.unreserved = free_ > reserved_ ? free_ - reserved_ : 0;
  n.freed = freed;
  n.shared_with = dev32(blame == dev ? other : blame == other ? dev : kNoDev);
  fill_plan(plan, n, shrunk > grown ? shrunk - grown : 0);
  if (plan || !n.fits()) {
    TP_TRY(p_.discard_transaction_locked());
    if (!n.fits()) return space_error(what, n);
  }
  return {};
}

Result<void> Pool::Tentative::finish(std::unique_lock<std::mutex>& lk, uint64_t dev, uint64_t other,
                                     const char* what, SpacePlan* plan) {
  TP_TRY(decide(dev, other, what, plan));
  if (plan) return {};
  p_.note_space_locked();
  return p_.commit_after(lk);  // (nothing to commit when the operation changed nothing)
}

}  // namespace tp::thin
