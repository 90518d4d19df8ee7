#include "pdata/block_manager.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace tp::pdata {

namespace {

Result<void> check_sb(ConstBlock b, uint64_t nr) {
  return verify_block(b, nr, kSuperblockSalt, "bad checksum in superblock",
                      "bad block number in superblock");
}
void prepare_sb(Block b, uint64_t nr) {
  seal_block(b, nr, kSuperblockSalt);
}

Result<void> check_node(ConstBlock b, uint64_t nr) {
  TP_TRY(verify_block(b, nr, kBtreeNodeSalt, "bad checksum in btree node",
                      "bad block number in btree node"));
  uint32_t flags = load_le32(b.data() + 4);
  uint32_t nr_entries = load_le32(b.data() + 16);
  uint32_t max_entries = load_le32(b.data() + 20);
  uint32_t value_size = load_le32(b.data() + 24);
  if (flags != 1 && flags != 2) {
    return make_error(Errc::kCorruption, "btree node is neither internal nor leaf", nr);
  }
  if (value_size == 0 || value_size > kBlockSize ||
      32 + uint64_t{8 + value_size} * max_entries > kBlockSize) {
    return make_error(Errc::kCorruption, "btree node max_entries too large", nr);
  }
  if (max_entries % 3 != 0 || max_entries == 0) {
    return make_error(Errc::kCorruption, "btree node max_entries not divisible by 3", nr);
  }
  if (nr_entries > max_entries) {
    return make_error(Errc::kCorruption, "btree node nr_entries > max_entries", nr);
  }
  if (flags == 1 && value_size != 8) {
    return make_error(Errc::kCorruption, "internal btree node with value size != 8", nr);
  }
  return {};
}
void prepare_node(Block b, uint64_t nr) {
  seal_block(b, nr, kBtreeNodeSalt);
}

Result<void> check_bitmap(ConstBlock b, uint64_t nr) {
  return verify_block(b, nr, kBitmapSalt, "bad checksum in space map bitmap",
                      "bad block number in space map bitmap");
}
void prepare_bitmap(Block b, uint64_t nr) {
  seal_block(b, nr, kBitmapSalt);
}

Result<void> check_index(ConstBlock b, uint64_t nr) {
  return verify_block(b, nr, kIndexSalt, "bad checksum in metadata space map index",
                      "bad block number in metadata space map index");
}
void prepare_index(Block b, uint64_t nr) {
  seal_block(b, nr, kIndexSalt);
}

}  // namespace

const Validator kSuperblockValidator{"superblock", check_sb, prepare_sb};
const Validator kNodeValidator{"btree node", check_node, prepare_node};
const Validator kBitmapValidator{"bitmap", check_bitmap, prepare_bitmap};
const Validator kIndexValidator{"index", check_index, prepare_index};

ReadRef& ReadRef::operator=(ReadRef&& o) noexcept {
  if (this != &o) {
    release();
    bm_ = o.bm_;
    e_ = o.e_;
    o.e_ = nullptr;
  }
  return *this;
}
void ReadRef::release() {
  if (e_) {
    bm_->unpin(e_, false);
    e_ = nullptr;
  }
}
WriteRef& WriteRef::operator=(WriteRef&& o) noexcept {
  if (this != &o) {
    release();
    bm_ = o.bm_;
    e_ = o.e_;
    o.e_ = nullptr;
  }
  return *this;
}
void WriteRef::release() {
  if (e_) {
    bm_->unpin(e_, true);
    e_ = nullptr;
  }
}

BlockManager::BlockManager(io::BlockDevice& dev, size_t cache_blocks)
    : dev_(dev), capacity_(cache_blocks) {}

BlockManager::~BlockManager() = default;

BlockManagerStats BlockManager::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

Result<void> BlockManager::write_back(detail::CacheEntry* e) {
  e->validator->prepare(Block(e->data), e->nr);
  TP_TRY(dev_.write(e->nr * kBlockSize, e->data));
  stats_.writes++;
  e->dirty = false;
  return {};
}

Result<void> BlockManager::evict_locked() {
  while (lru_.size() > capacity_) {
    detail::CacheEntry* e = lru_.front();
    if (e->dirty) {
      TP_TRY(write_back(e));
    }
    lru_.pop_front();
    cache_.erase(e->nr);
  }
  return {};
}

Result<detail::CacheEntry*> BlockManager::get(uint64_t b, const Validator& v, bool read,
                                              bool zero) {
  if (b >= nr_blocks()) {
    return make_error(Errc::kCorruption, "block number beyond the metadata device", b);
  }
  std::lock_guard lk(mu_);
  auto it = cache_.find(b);
  detail::CacheEntry* e;
  if (it != cache_.end()) {
    e = it->second.get();
    stats_.hits++;
    if (e->writer || (!read && e->readers > 0)) {
      return make_error(Errc::kBusy, "metadata block is locked", b);
    }
    if (zero) {
      std::memset(e->data.data(), 0, kBlockSize);
      e->validator = &v;
    } else if (e->validator != &v) {
      // A block reached as two different kinds of structure: a bad pointer on disk.
      return make_error(Errc::kCorruption, "metadata block referenced as two kinds", b);
    }
  } else {
    auto owned = std::make_unique<detail::CacheEntry>();
    e = owned.get();
    e->nr = b;
    e->validator = &v;
    if (zero) {
      std::memset(e->data.data(), 0, kBlockSize);
    } else {
      TP_TRY(dev_.read(b * kBlockSize, e->data));
      stats_.reads++;
      TP_TRY(v.check(ConstBlock(e->data), b));
    }
    cache_.emplace(b, std::move(owned));
  }
  if (e->in_lru) {
    lru_.erase(e->lru);
    e->in_lru = false;
  }
  if (read) {
    e->readers++;
  } else {
    e->writer = true;
    e->dirty = true;
  }
  return e;
}

void BlockManager::unpin(detail::CacheEntry* e, bool writer) {
  std::lock_guard lk(mu_);
  if (writer) {
    e->writer = false;
  } else {
    e->readers--;
  }
  if (!e->writer && e->readers == 0) {
    e->lru = lru_.insert(lru_.end(), e);
    e->in_lru = true;
    // Eviction may need to write back; an error here is not lost: the block stays dirty
    // in the cache and the next flush reports it.
    (void)evict_locked();
  }
}

Result<ReadRef> BlockManager::read_lock(uint64_t b, const Validator& v) {
  TP_ASSIGN_OR_RETURN(auto* e, get(b, v, true, false));
  return ReadRef(this, e);
}

Result<WriteRef> BlockManager::write_lock(uint64_t b, const Validator& v) {
  TP_ASSIGN_OR_RETURN(auto* e, get(b, v, false, false));
  return WriteRef(this, e);
}

Result<WriteRef> BlockManager::write_lock_zero(uint64_t b, const Validator& v) {
  TP_ASSIGN_OR_RETURN(auto* e, get(b, v, false, true));
  return WriteRef(this, e);
}

Result<void> BlockManager::flush_dirty(uint64_t except) {
  std::lock_guard lk(mu_);
  std::vector<detail::CacheEntry*> dirty;
  for (auto& [nr, e] : cache_) {
    if (e->dirty && nr != except) {
      dirty.push_back(e.get());
    }
  }
  std::sort(dirty.begin(), dirty.end(), [](auto* a, auto* b) { return a->nr < b->nr; });
  for (auto* e : dirty) {
    TP_TRY(write_back(e));
  }
  return {};
}

Result<void> BlockManager::flush_block(uint64_t b) {
  std::lock_guard lk(mu_);
  auto it = cache_.find(b);
  if (it != cache_.end() && it->second->dirty) {
    TP_TRY(write_back(it->second.get()));
  }
  return {};
}

BlockManager::Pinned BlockManager::pin_dirty(uint64_t first, uint64_t last) {
  std::lock_guard lk(mu_);
  Pinned p;
  for (auto& [nr, e] : cache_) {
    if (!e->dirty || nr < first || nr > last) continue;
    e->validator->prepare(Block(e->data), e->nr);
    e->dirty = false;
    if (e->in_lru) {
      lru_.erase(e->lru);
      e->in_lru = false;
    }
    e->readers++;
    p.entries_.push_back(e.get());
  }
  std::sort(p.entries_.begin(), p.entries_.end(), [](auto* a, auto* b) { return a->nr < b->nr; });
  return p;
}

Result<void> BlockManager::write_pinned(const Pinned& p) {
  // Runs of consecutive blocks go out as one write through a staging buffer (the cache
  // entries are not contiguous in memory).
  constexpr size_t kMaxRun = 64;
  thread_local std::vector<std::byte> staging;
  size_t i = 0;
  uint64_t writes = 0;
  while (i < p.entries_.size()) {
    size_t j = i + 1;
    while (j < p.entries_.size() && j - i < kMaxRun &&
           p.entries_[j]->nr == p.entries_[j - 1]->nr + 1) {
      j++;
    }
    const uint64_t off = p.entries_[i]->nr * kBlockSize;
    if (j - i == 1) {
      TP_TRY(dev_.write(off, p.entries_[i]->data));
    } else {
      staging.resize((j - i) * kBlockSize);
      for (size_t k = i; k < j; k++) {
        std::memcpy(staging.data() + (k - i) * kBlockSize, p.entries_[k]->data.data(), kBlockSize);
      }
      TP_TRY(dev_.write(off, staging));
    }
    writes += j - i;
    i = j;
  }
  std::lock_guard lk(mu_);
  stats_.writes += writes;
  return {};
}

Result<void> BlockManager::write_through(uint64_t b, std::span<const std::byte> sealed) {
  TP_TRY(dev_.write(b * kBlockSize, sealed.first(kBlockSize)));
  std::lock_guard lk(mu_);
  stats_.writes++;
  auto it = cache_.find(b);
  if (it != cache_.end() && !it->second->writer) {
    std::memcpy(it->second->data.data(), sealed.data(), kBlockSize);
    it->second->dirty = false;
  }
  return {};
}

void BlockManager::unpin(Pinned& p, bool written) {
  if (!written) {
    std::lock_guard lk(mu_);
    for (detail::CacheEntry* e : p.entries_) e->dirty = true;
  }
  for (detail::CacheEntry* e : p.entries_) unpin(e, false);
  p.entries_.clear();
}

void BlockManager::invalidate() {
  std::lock_guard lk(mu_);
  lru_.clear();
  cache_.clear();
}

}  // namespace tp::pdata
