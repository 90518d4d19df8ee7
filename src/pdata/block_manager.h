#pragma once
// Block manager (kernel persistent-data/dm-block-manager.c): 4 KiB metadata blocks over an
// io::BlockDevice, a bounded LRU cache, read/write lock handles, and validation of every
// block read from the device (checksum, own block number, structure-specific checks).
//
// The block manager never decides *when* a block may be written: the transaction manager
// hands out write locks only for blocks allocated in the current transaction, and writes
// the superblock last. Dirty blocks may be written back early when the cache evicts them;
// that is safe precisely because they are never blocks the committed superblock reaches.
//
// Thread-safety: read_lock may be called from several threads at once (the cache is
// protected by a mutex). Write locks and flushes require the caller to exclude all other
// users (the pool's metadata lock, held exclusively).

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "io/block_device.h"
#include "pdata/format.h"

namespace tp::pdata {

struct Validator {
  const char* name;
  // Checks a block just read from the device (REQUIRES: checksum and block number).
  Result<void> (*check)(ConstBlock b, uint64_t blocknr);
  // Seals a block before it goes to the device (blocknr + checksum).
  void (*prepare)(Block b, uint64_t blocknr);
};

extern const Validator kSuperblockValidator;
extern const Validator kNodeValidator;
extern const Validator kBitmapValidator;
extern const Validator kIndexValidator;

class BlockManager;

namespace detail {
struct CacheEntry {
  uint64_t nr = 0;
  const Validator* validator = nullptr;
  int readers = 0;
  bool writer = false;
  bool dirty = false;
  std::list<CacheEntry*>::iterator lru;  // valid while unpinned
  bool in_lru = false;
  alignas(64) std::array<std::byte, kBlockSize> data;
};
}  // namespace detail

// A pinned, read-locked block. Move-only; unlocks in its destructor.
class ReadRef {
 public:
  ReadRef() = default;
  ReadRef(ReadRef&& o) noexcept : bm_(o.bm_), e_(o.e_) { o.e_ = nullptr; }
  ReadRef& operator=(ReadRef&& o) noexcept;
  ReadRef(const ReadRef&) = delete;
  ReadRef& operator=(const ReadRef&) = delete;
  ~ReadRef() { release(); }
  void release();
  uint64_t location() const { return e_->nr; }
  ConstBlock data() const { return ConstBlock(e_->data); }

 private:
  friend class BlockManager;
  ReadRef(BlockManager* bm, detail::CacheEntry* e) : bm_(bm), e_(e) {}
  BlockManager* bm_ = nullptr;
  detail::CacheEntry* e_ = nullptr;
};

// A pinned, write-locked block; marked dirty. Move-only; unlocks in its destructor (never
// writes there: write-back happens at flush or eviction).
class WriteRef {
 public:
  WriteRef() = default;
  WriteRef(WriteRef&& o) noexcept : bm_(o.bm_), e_(o.e_) { o.e_ = nullptr; }
  WriteRef& operator=(WriteRef&& o) noexcept;
  WriteRef(const WriteRef&) = delete;
  WriteRef& operator=(const WriteRef&) = delete;
  ~WriteRef() { release(); }
  void release();
  uint64_t location() const { return e_->nr; }
  Block data() { return Block(e_->data); }
  ConstBlock data() const { return ConstBlock(e_->data); }
  explicit operator bool() const { return e_ != nullptr; }

 private:
  friend class BlockManager;
  WriteRef(BlockManager* bm, detail::CacheEntry* e) : bm_(bm), e_(e) {}
  BlockManager* bm_ = nullptr;
  detail::CacheEntry* e_ = nullptr;
};

struct BlockManagerStats {
  uint64_t reads = 0;   // blocks read from the device
  uint64_t writes = 0;  // blocks written to the device
  uint64_t hits = 0;
};

class BlockManager {
 public:
  // Borrows dev. cache_blocks bounds the number of unpinned cached blocks (0: none, every
  // block is read from the device each time it is locked; for tests).
  BlockManager(io::BlockDevice& dev, size_t cache_blocks = 4096);
  ~BlockManager();
  BlockManager(const BlockManager&) = delete;
  BlockManager& operator=(const BlockManager&) = delete;

  uint64_t nr_blocks() const { return dev_.size() / kBlockSize; }
  io::BlockDevice& device() { return dev_; }

  // Reads (from cache or device) and validates. Errc::kCorruption names the block.
  // A block already write-locked cannot be read-locked (kBusy: a bug in the caller).
  Result<ReadRef> read_lock(uint64_t b, const Validator& v);
  // Read-modify-write lock of an existing block.
  Result<WriteRef> write_lock(uint64_t b, const Validator& v);
  // Write lock of a block whose old content does not matter: zero-filled, not read.
  Result<WriteRef> write_lock_zero(uint64_t b, const Validator& v);

  // Writes every dirty block except `except` (kNoAddr: all), sealing each. No sync.
  Result<void> flush_dirty(uint64_t except = kNoAddr);

  // A commit that overlaps the next transaction (TransactionManager::begin_commit): the
  // dirty blocks are sealed and pinned at the cut, so they keep their content (nothing may
  // write-lock them: the next transaction shadows them) and stay in the cache (readers see
  // them, eviction cannot drop them before they reach the device); write_pinned() writes
  // them without any lock of the caller; unpin() lets them go.
  class Pinned {
   public:
    Pinned() = default;
    Pinned(Pinned&&) noexcept = default;
    Pinned& operator=(Pinned&&) noexcept = default;
    Pinned(const Pinned&) = delete;
    Pinned& operator=(const Pinned&) = delete;
    size_t size() const { return entries_.size(); }
    bool empty() const { return entries_.empty(); }

   private:
    friend class BlockManager;
    std::vector<detail::CacheEntry*> entries_;  // by block number
  };
  // Seals and pins every dirty block in [first, last] (block numbers) and marks it clean.
  // REQUIRES: the caller excludes writers (the pool's metadata lock).
  Pinned pin_dirty(uint64_t first = 0, uint64_t last = kNoAddr);
  // Writes pinned blocks, consecutive ones in one device write. Thread-safe against
  // readers and against other transactions' writers.
  Result<void> write_pinned(const Pinned& p);
  // Writes a sealed block straight to the device (not through the cache: never written
  // early by an eviction); a cached copy takes the new content.
  Result<void> write_through(uint64_t b, std::span<const std::byte> sealed);
  // Releases the pins (the blocks become evictable). written=false: the write failed, so
  // they are dirty again (the cache must not drop the only copy of their content).
  void unpin(Pinned& p, bool written);
  // Writes one block if dirty.
  Result<void> flush_block(uint64_t b);
  Result<void> sync() { return dev_.flush(); }

  // Forgets every cached block (after a failed commit the cache may not match the disk).
  // REQUIRES: nothing pinned.
  void invalidate();

  BlockManagerStats stats() const;

 private:
  friend class ReadRef;
  friend class WriteRef;
  Result<detail::CacheEntry*> get(uint64_t b, const Validator& v, bool read, bool zero);
  void unpin(detail::CacheEntry* e, bool writer);
  Result<void> write_back(detail::CacheEntry* e);
  Result<void> evict_locked();

  io::BlockDevice& dev_;
  size_t capacity_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::unique_ptr<detail::CacheEntry>> cache_;
  std::list<detail::CacheEntry*> lru_;  // unpinned entries, least recent first
  BlockManagerStats stats_;
};

}  // namespace tp::pdata
