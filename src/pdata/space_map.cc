#include "pdata/space_map.h"

#include <algorithm>
#include <cstring>

#include "pdata/btree.h"
#include "pdata/transaction_manager.h"

namespace tp::pdata {

namespace {

// Ref-count tree values: le32 counts, not reference counted themselves.
const ValueType kCountValue{4, nullptr, nullptr, nullptr};
// Data space-map index tree values: index entries.
const ValueType kIndexValue{16, nullptr, nullptr, nullptr};

uint64_t nr_chunks_for(uint64_t nr_blocks) {
  return (nr_blocks + kEntriesPerBitmap - 1) / kEntriesPerBitmap;
}

}  // namespace

SpaceMap::SpaceMap(Kind kind, uint64_t nr_blocks) : kind_(kind), nr_blocks_(nr_blocks) {}

uint32_t SpaceMap::chunk_entries(uint64_t k) const {
  uint64_t begin = k * kEntriesPerBitmap;
  return static_cast<uint32_t>(std::min<uint64_t>(kEntriesPerBitmap, nr_blocks_ - begin));
}

std::unique_ptr<SpaceMap> SpaceMap::create(Kind kind, uint64_t nr_blocks) {
  std::unique_ptr<SpaceMap> sm(new SpaceMap(kind, 0));
  (void)sm->extend(nr_blocks);  // cannot fail: no I/O for an empty map
  return sm;
}

Result<std::unique_ptr<SpaceMap>> SpaceMap::open(Kind kind, BlockManager& bm, const SmRoot& root) {
  std::unique_ptr<SpaceMap> sm(new SpaceMap(kind, root.nr_blocks));
  sm->bm_ = &bm;
  sm->nr_allocated_ = root.nr_allocated;
  sm->ref_count_root_ = root.ref_count_root;
  sm->index_root_ = root.bitmap_root;
  uint64_t n = nr_chunks_for(root.nr_blocks);
  if (kind == Kind::kMetadata) {
    if (n > kMaxMetadataBitmaps) {
      return make_error(Errc::kCorruption, "metadata space map too large", root.bitmap_root);
    }
    TP_ASSIGN_OR_RETURN(ReadRef r, bm.read_lock(root.bitmap_root, kIndexValidator));
    for (uint64_t k = 0; k < n; k++) {
      sm->index_.push_back(
          decode_index_entry(r.data().data() + kMetadataIndexHeader + k * kIndexEntrySize));
    }
  } else {
    // The index tree is read without a transaction manager: walk it directly.
    std::vector<uint64_t> stack{root.bitmap_root};
    std::vector<std::pair<uint64_t, IndexEntry>> found;
    while (!stack.empty()) {
      uint64_t b = stack.back();
      stack.pop_back();
      TP_ASSIGN_OR_RETURN(ReadRef r, bm.read_lock(b, kNodeValidator));
      std::array<std::byte, kBlockSize> copy;
      std::memcpy(copy.data(), r.data().data(), kBlockSize);
      NodeView node(copy.data());
      if (!node.is_leaf()) {
        for (uint32_t i = 0; i < node.nr_entries(); i++) {
          stack.push_back(node.value64(i));
        }
      } else {
        if (node.value_size() != kIndexEntrySize) {
          return make_error(Errc::kCorruption, "data space map index has wrong value size", b);
        }
        for (uint32_t i = 0; i < node.nr_entries(); i++) {
          found.emplace_back(node.key(i), decode_index_entry(node.value(i)));
        }
      }
      if (found.size() > n * 2 + 16 || stack.size() > 100000) {
        return make_error(Errc::kCorruption, "data space map index too large", b);
      }
    }
    std::sort(found.begin(), found.end(), [](auto& a, auto& b) { return a.first < b.first; });
    if (found.size() != n) {
      return make_error(Errc::kCorruption, "data space map index has wrong number of bitmaps",
                        root.bitmap_root);
    }
    for (uint64_t k = 0; k < n; k++) {
      if (found[k].first != k) {
        return make_error(Errc::kCorruption, "data space map index has a gap", root.bitmap_root);
      }
      sm->index_.push_back(found[k].second);
    }
  }
  for (uint64_t k = 0; k < n; k++) {
    if (sm->index_[k].blocknr == 0 || sm->index_[k].blocknr >= bm.nr_blocks()) {
      return make_error(Errc::kCorruption, "space map index points outside the metadata",
                        root.bitmap_root);
    }
  }
  sm->index_disk_ = sm->index_;
  sm->chunks_.resize(n);
  if (kind == Kind::kMetadata) {
    // At most 255 bitmaps: load them all and count, rather than trust nr_allocated
    // (thin_restore 0.9 writes it off by one).
    uint64_t allocated = 0;
    for (uint64_t k = 0; k < n; k++) {
      TP_ASSIGN_OR_RETURN(Chunk * c, sm->chunk(k));
      allocated += c->counts.size() - c->nr_free;
    }
    sm->nr_allocated_ = allocated;
  }
  return sm;
}

Result<SpaceMap::Chunk*> SpaceMap::chunk(uint64_t k) {
  Chunk& c = chunks_[k];
  if (c.loaded) {
    return &c;
  }
  uint32_t n = chunk_entries(k);
  c.counts.assign(n, 0);
  if (index_[k].blocknr != 0) {
    BlockManager& bm = tm_ ? tm_->bm() : *bm_;
    TP_ASSIGN_OR_RETURN(ReadRef r, bm.read_lock(index_[k].blocknr, kBitmapValidator));
    std::array<std::byte, kBlockSize> copy;
    std::memcpy(copy.data(), r.data().data(), kBlockSize);
    r.release();
    for (uint32_t i = 0; i < n; i++) {
      uint32_t v = bitmap_get(ConstBlock(copy), i);
      if (v == 3) {
        if (ref_count_root_ == 0) {
          return make_error(Errc::kCorruption, "space map overflow without a ref-count tree",
                            index_[k].blocknr);
        }
        std::array<std::byte, 4> cv;
        TP_ASSIGN_OR_RETURN(bool found, Btree::lookup(bm, ref_count_root_,
                                                      k * kEntriesPerBitmap + i, kCountValue, cv));
        if (!found || load_le32(cv.data()) < 3) {
          return make_error(Errc::kCorruption, "space map count 3 missing from ref-count tree",
                            index_[k].blocknr);
        }
        v = load_le32(cv.data());
      }
      c.counts[i] = v;
    }
  }
  c.flushed = c.counts;
  c.flags.assign(n, 0);
  c.nr_free = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (c.counts[i] != 0) c.flags[i] = kCommitted;
    c.nr_free += c.counts[i] == 0;
  }
  c.loaded = true;
  return &c;
}

void SpaceMap::change(Chunk& c, uint64_t /*k*/, uint32_t i, uint32_t new_count) {
  uint32_t old = c.counts[i];
  if (old == new_count) {
    return;
  }
  if (old == 0) {
    if (pending(c, i)) pending_free_--;
    nr_allocated_++;
    c.nr_free--;
  } else if (new_count == 0) {
    nr_allocated_--;
    c.nr_free++;
    // A freed data block waits for release_freed(); any block still referenced by the last
    // commit or by the one in flight waits for on_commit().
    if (kind_ == Kind::kData) c.flags[i] |= kFreed;
  }
  c.counts[i] = new_count;
  if (new_count == 0) {
    if (pending(c, i)) {
      pending_free_++;
    } else {
      // Referenced by no durable state: reusable at once, so the allocator looks here again.
      c.scan_hint = std::min(c.scan_hint, i);
    }
  }
  c.dirty = true;
  c.touched = true;
}

Result<uint32_t> SpaceMap::get_count(uint64_t b) {
  if (b >= nr_blocks_) {
    return make_error(Errc::kCorruption, "block beyond the space map", b);
  }
  TP_ASSIGN_OR_RETURN(Chunk * c, chunk(b / kEntriesPerBitmap));
  return c->counts[b % kEntriesPerBitmap];
}

Result<void> SpaceMap::set_count(uint64_t b, uint32_t count) {
  if (b >= nr_blocks_) {
    return make_error(Errc::kCorruption, "block beyond the space map", b);
  }
  uint64_t k = b / kEntriesPerBitmap;
  TP_ASSIGN_OR_RETURN(Chunk * c, chunk(k));
  change(*c, k, b % kEntriesPerBitmap, count);
  return {};
}

Result<void> SpaceMap::inc(uint64_t b) {
  TP_ASSIGN_OR_RETURN(uint32_t v, get_count(b));
  if (v == 0) {
    return make_error(Errc::kCorruption, "incrementing a free block", b);
  }
  if (v == UINT32_MAX) {
    return make_error(Errc::kNoSpace, "reference count overflow", b);
  }
  return set_count(b, v + 1);
}

Result<uint32_t> SpaceMap::dec(uint64_t b) {
  TP_ASSIGN_OR_RETURN(uint32_t v, get_count(b));
  if (v == 0) {
    return make_error(Errc::kCorruption, "decrementing a free block", b);
  }
  TP_TRY(set_count(b, v - 1));
  return v - 1;
}

Result<uint64_t> SpaceMap::new_block() {
  TP_ASSIGN_OR_RETURN(uint64_t b, find_free());
  Chunk& c = chunks_[b / kEntriesPerBitmap];
  change(c, b / kEntriesPerBitmap, static_cast<uint32_t>(b % kEntriesPerBitmap), 1);
  return b;
}

Result<uint64_t> SpaceMap::hold() {
  TP_ASSIGN_OR_RETURN(uint64_t b, find_free());
  chunks_[b / kEntriesPerBitmap].flags[b % kEntriesPerBitmap] |= kHeld;
  nr_held_++;
  return b;
}

Result<void> SpaceMap::commit_held(uint64_t b) {
  if (b >= nr_blocks_) return make_error(Errc::kCorruption, "block beyond the space map", b);
  uint64_t k = b / kEntriesPerBitmap;
  uint32_t i = static_cast<uint32_t>(b % kEntriesPerBitmap);
  TP_ASSIGN_OR_RETURN(Chunk * c, chunk(k));
  if (!(c->flags[i] & kHeld) || c->counts[i] != 0) {
    return make_error(Errc::kCorruption, "committing a block that is not held", b);
  }
  c->flags[i] &= static_cast<uint8_t>(~kHeld);
  nr_held_--;
  change(*c, k, i, 1);
  return {};
}

void SpaceMap::release_held(uint64_t b) {
  Chunk& c = chunks_[b / kEntriesPerBitmap];
  uint32_t i = static_cast<uint32_t>(b % kEntriesPerBitmap);
  if (!c.loaded || !(c.flags[i] & kHeld)) return;
  c.flags[i] &= static_cast<uint8_t>(~kHeld);
  nr_held_--;
  c.scan_hint = std::min(c.scan_hint, i);
}

void SpaceMap::release_freed(uint64_t b) {
  if (b >= nr_blocks_) return;
  Chunk& c = chunks_[b / kEntriesPerBitmap];
  uint32_t i = static_cast<uint32_t>(b % kEntriesPerBitmap);
  if (!c.loaded || !(c.flags[i] & kFreed)) return;
  bool was = pending(c, i);
  c.flags[i] &= static_cast<uint8_t>(~kFreed);
  if (was && !pending(c, i)) pending_free_--;
  if (allocatable(c, i)) c.scan_hint = std::min(c.scan_hint, i);
}

Result<uint64_t> SpaceMap::find_free() {
  uint64_t n = chunks_.size();
  if (n == 0) {
    return make_error(Errc::kNoSpace, "space map is empty");
  }
  uint64_t start_k = (alloc_cursor_ / kEntriesPerBitmap) % n;
  for (uint64_t step = 0; step <= n; step++) {
    uint64_t k = (start_k + step) % n;
    Chunk& cc = chunks_[k];
    uint32_t free_hint = cc.loaded ? cc.nr_free : index_[k].nr_free;
    if (!cc.loaded && index_[k].blocknr == 0) {
      free_hint = chunk_entries(k);
    }
    if (free_hint == 0) {
      continue;
    }
    TP_ASSIGN_OR_RETURN(Chunk * c, chunk(k));
    uint32_t entries = chunk_entries(k);
    uint32_t from = c->scan_hint;
    if (step == 0 && alloc_cursor_ / kEntriesPerBitmap == k) {
      from = std::max<uint32_t>(from, alloc_cursor_ % kEntriesPerBitmap);
    }
    for (int pass = 0; pass < 2; pass++) {
      for (uint32_t i = from; i < entries; i++) {
        if (allocatable(*c, i)) {
          if (from == c->scan_hint) {
            c->scan_hint = i + 1;
          }
          uint64_t b = k * kEntriesPerBitmap + i;
          alloc_cursor_ = (b + 1) % nr_blocks_;
          return b;
        }
      }
      if (from == c->scan_hint) {
        c->scan_hint = entries;
        break;
      }
      from = c->scan_hint;  // second pass: the part before the cursor
    }
  }
  return make_error(Errc::kNoSpace,
                    kind_ == Kind::kData ? "no free data blocks" : "no free metadata blocks");
}

Result<void> SpaceMap::extend(uint64_t nr_blocks) {
  if (nr_blocks < nr_blocks_) {
    return make_error(Errc::kInvalidArgument, "space map cannot shrink");
  }
  uint64_t old_chunks = chunks_.size();
  uint64_t new_chunks = nr_chunks_for(nr_blocks);
  if (kind_ == Kind::kMetadata && new_chunks > kMaxMetadataBitmaps) {
    return make_error(Errc::kInvalidArgument, "metadata device larger than the format allows");
  }
  // The last old chunk may grow: load it first so its new entries start free.
  if (old_chunks > 0 && nr_blocks_ % kEntriesPerBitmap != 0) {
    TP_ASSIGN_OR_RETURN(Chunk * c, chunk(old_chunks - 1));
    uint64_t old_n = c->counts.size();
    nr_blocks_ = nr_blocks;
    uint32_t n = chunk_entries(old_chunks - 1);
    c->counts.resize(n, 0);
    c->flushed.resize(n, 0);
    c->flags.resize(n, 0);
    c->nr_free += static_cast<uint32_t>(n - old_n);
    c->dirty = c->touched = true;
  }
  nr_blocks_ = nr_blocks;
  chunks_.resize(new_chunks);
  index_.resize(new_chunks);
  index_disk_.resize(new_chunks);
  for (uint64_t k = old_chunks; k < new_chunks; k++) {
    Chunk& c = chunks_[k];
    uint32_t n = chunk_entries(k);
    c.loaded = true;
    c.counts.assign(n, 0);
    c.flushed.assign(n, 0);
    c.flags.assign(n, 0);
    c.nr_free = n;
    c.dirty = c.touched = true;
  }
  return {};
}

Result<void> SpaceMap::flush_chunk(uint64_t k) {
  TransactionManager& tm = *tm_;
  Chunk& c = chunks_[k];
  c.dirty = false;
  WriteRef w;
  if (index_[k].blocknr == 0) {
    TP_ASSIGN_OR_RETURN(w, tm.new_block(kBitmapValidator));
  } else {
    TP_ASSIGN_OR_RETURN(auto sh, tm.shadow(index_[k].blocknr, kBitmapValidator));
    w = std::move(sh.first);
  }
  index_[k].blocknr = w.location();
  // Overflow tree first: it may allocate (and so change this very chunk).
  uint32_t n = chunk_entries(k);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t now = c.counts[i], before = c.flushed[i];
    // Recorded before the tree changes: a count the tree update itself changes makes the
    // chunk dirty again and is handled by the next round.
    c.flushed[i] = now;
    if (now == before || (now < 3 && before < 3)) {
      continue;
    }
    uint64_t b = k * kEntriesPerBitmap + i;
    if (ref_count_root_ == 0) {
      TP_ASSIGN_OR_RETURN(ref_count_root_, Btree::create_empty(tm, kCountValue));
    }
    if (now >= 3) {
      std::array<std::byte, 4> v;
      store_le32(v.data(), now);
      TP_ASSIGN_OR_RETURN(ref_count_root_,
                          Btree::insert(tm, ref_count_root_, b, v.data(), kCountValue));
    } else {
      TP_ASSIGN_OR_RETURN(ref_count_root_, Btree::remove(tm, ref_count_root_, b, kCountValue));
    }
  }
  // The counts as they are now (including what the lines above allocated).
  Block data = w.data();
  std::memset(data.data() + kBitmapHeader, 0, kBlockSize - kBitmapHeader);
  uint32_t nr_free = 0, first_free = n;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t v = c.counts[i];
    if (v != 0) {
      bitmap_set(data, i, std::min<uint32_t>(v, 3));
    } else {
      nr_free++;
      first_free = std::min(first_free, i);
    }
  }
  index_[k].nr_free = nr_free;
  index_[k].none_free_before = first_free;
  return {};
}

Result<void> SpaceMap::write_index() {
  TransactionManager& tm = *tm_;
  if (kind_ == Kind::kMetadata) {
    WriteRef w;
    if (index_root_ == 0) {
      TP_ASSIGN_OR_RETURN(w, tm.new_block(kIndexValidator));
    } else {
      TP_ASSIGN_OR_RETURN(auto sh, tm.shadow(index_root_, kIndexValidator));
      w = std::move(sh.first);
    }
    index_root_ = w.location();
    Block data = w.data();
    std::memset(data.data() + kMetadataIndexHeader, 0, kBlockSize - kMetadataIndexHeader);
    for (size_t k = 0; k < index_.size(); k++) {
      encode_index_entry(index_[k], data.data() + kMetadataIndexHeader + k * kIndexEntrySize);
    }
    index_disk_ = index_;
    return {};
  }
  if (index_root_ == 0) {
    TP_ASSIGN_OR_RETURN(index_root_, Btree::create_empty(tm, kIndexValue));
  }
  for (size_t k = 0; k < index_.size(); k++) {
    if (index_[k] == index_disk_[k] && index_disk_[k].blocknr != 0) {
      continue;
    }
    std::array<std::byte, kIndexEntrySize> v;
    encode_index_entry(index_[k], v.data());
    TP_ASSIGN_OR_RETURN(index_root_, Btree::insert(tm, index_root_, k, v.data(), kIndexValue));
    index_disk_[k] = index_[k];
  }
  return {};
}

Result<void> SpaceMap::flush() {
  if (ref_count_root_ == 0) {
    TP_ASSIGN_OR_RETURN(ref_count_root_, Btree::create_empty(*tm_, kCountValue));
  }
  // Writing the structures allocates and frees metadata blocks; for the metadata space map
  // that changes the map itself, so repeat until a round changes nothing. Shadowing a block
  // already shadowed in this transaction allocates nothing, so this ends after a few rounds.
  for (int round = 0; round < 64; round++) {
    bool any = false;
    for (uint64_t k = 0; k < chunks_.size(); k++) {
      if (chunks_[k].loaded && chunks_[k].dirty) {
        any = true;
        TP_TRY(flush_chunk(k));
      }
    }
    bool index_changed = index_ != index_disk_ || index_root_ == 0;
    if (index_changed) {
      any = true;
      TP_TRY(write_index());
    }
    if (!any) {
      // The cut: what changed before it is settled by the on_commit() of this commit.
      for (Chunk& c : chunks_) {
        c.cut_touched = c.cut_touched || c.touched;
        c.touched = false;
      }
      return {};
    }
  }
  return make_error(Errc::kCorruption, "space map flush does not converge");
}

SmRoot SpaceMap::root() const {
  return SmRoot{nr_blocks_, nr_allocated_, index_root_, ref_count_root_};
}

void SpaceMap::on_commit() {
  for (auto& c : chunks_) {
    if (!c.cut_touched) {
      continue;
    }
    c.cut_touched = false;
    for (uint32_t i = 0; i < c.counts.size(); i++) {
      bool was = pending(c, i);
      if (c.flushed[i] != 0) {
        c.flags[i] |= kCommitted;
      } else {
        c.flags[i] &= static_cast<uint8_t>(~kCommitted);
      }
      bool now = pending(c, i);
      if (was && !now) pending_free_--;
      if (!was && now) pending_free_++;
    }
    c.scan_hint = 0;
  }
}

}  // namespace tp::pdata
