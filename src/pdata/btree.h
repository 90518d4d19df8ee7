#pragma once
// Copy-on-write B-tree in dm-thin's node format (kernel persistent-data/dm-btree.c,
// dm-btree-remove.c, dm-btree-internal.h). Keys are le64; values are fixed-size byte
// strings described by a ValueType, whose inc/dec hooks keep reference counts right when a
// shared leaf is copied (shadowed) or a value is overwritten or removed.
//
// Every mutation shadows the path from the root, so it returns the new root: a tree
// reachable from the committed superblock is never modified. A node shared by several
// trees (ref count > 1) is copied on write and its children gain a reference.
//
// Non-root nodes hold at least max_entries/3 entries (what thin_check demands); insert
// splits full nodes on the way down, remove merges or rebalances thin ones on the way down.
//
// REQUIRES: the caller holds the pool's metadata lock exclusively for mutations; lookups
// and walks may share it.

#include <cstdint>
#include <functional>
#include <optional>
#include <span>

#include "pdata/format.h"
#include "pdata/transaction_manager.h"

namespace tp::pdata {

struct ValueType {
  uint32_t size = 8;
  void* ctx = nullptr;
  // Called when a shadowed leaf that was shared now holds its own copy of the value.
  Result<void> (*inc)(void* ctx, const std::byte* value) = nullptr;
  // Called when a value is overwritten by insert or removed.
  Result<void> (*dec)(void* ctx, const std::byte* value) = nullptr;
};

inline constexpr uint32_t kInternalNode = 1;
inline constexpr uint32_t kLeafNode = 2;
inline constexpr size_t kNodeHeaderSize = 32;

inline constexpr uint32_t max_entries_for(uint32_t value_size) {
  return 3 * (((kBlockSize - kNodeHeaderSize) / (8 + value_size)) / 3);
}
static_assert(max_entries_for(4) == 336);
static_assert(max_entries_for(8) == 252);
static_assert(max_entries_for(16) == 168);
static_assert(max_entries_for(24) == 126);

// Field access over one node block (no packed structs).
class NodeView {
 public:
  explicit NodeView(std::byte* p) : p_(p) {}
  uint32_t flags() const { return load_le32(p_ + 4); }
  bool is_leaf() const { return flags() == kLeafNode; }
  uint32_t nr_entries() const { return load_le32(p_ + 16); }
  uint32_t max_entries() const { return load_le32(p_ + 20); }
  uint32_t value_size() const { return load_le32(p_ + 24); }
  uint64_t key(uint32_t i) const { return load_le64(p_ + kNodeHeaderSize + 8 * i); }
  std::byte* value(uint32_t i) const {
    return p_ + kNodeHeaderSize + 8 * max_entries() + size_t{i} * value_size();
  }
  uint64_t value64(uint32_t i) const { return load_le64(value(i)); }

  void set_flags(uint32_t f) { store_le32(p_ + 4, f); }
  void set_nr_entries(uint32_t n) { store_le32(p_ + 16, n); }
  void set_key(uint32_t i, uint64_t k) { store_le64(p_ + kNodeHeaderSize + 8 * i, k); }
  void set_value64(uint32_t i, uint64_t v) { store_le64(value(i), v); }
  // Initialises an empty node.
  void init(uint32_t flags, uint32_t value_size);
  // Index of the last key <= k, or -1.
  int lower_bound(uint64_t k) const;
  // Index of the first key >= k (nr_entries if none).
  uint32_t upper_index(uint64_t k) const;
  // Inserts (k, v) at i, shifting the rest right. REQUIRES: nr < max.
  void insert_at(uint32_t i, uint64_t k, const std::byte* v);
  void erase_at(uint32_t i);

 private:
  std::byte* p_;
};

// Checks the node against the tree's expectations (value size, key order).
Result<void> check_node_shape(ConstBlock b, uint64_t blocknr, uint32_t leaf_value_size);

class Btree {
 public:
  // Creates an empty tree (a single empty leaf) and returns its root.
  static Result<uint64_t> create_empty(TransactionManager& tm, const ValueType& vt);

  // O(log n). Copies the value into out and returns true, or returns false if absent.
  static Result<bool> lookup(TransactionManager& tm, uint64_t root, uint64_t key,
                             const ValueType& vt, std::span<std::byte> out);
  // The same, read-only, straight from a block manager (no transaction needed).
  static Result<bool> lookup(BlockManager& bm, uint64_t root, uint64_t key, const ValueType& vt,
                             std::span<std::byte> out);

  // Inserts or overwrites (dec on the old value). Returns the new root. *inserted tells
  // whether the key was new. O(log n).
  static Result<uint64_t> insert(TransactionManager& tm, uint64_t root, uint64_t key,
                                 const std::byte* value, const ValueType& vt,
                                 bool* inserted = nullptr);

  // Removes key (dec on its value). Returns the new root; *removed tells whether the key
  // was present. O(log n).
  static Result<uint64_t> remove(TransactionManager& tm, uint64_t root, uint64_t key,
                                 const ValueType& vt, bool* removed = nullptr);

  // Calls fn(key, value) in key order for every key in [lo, hi]; fn returns false to stop.
  using Visitor = std::function<Result<bool>(uint64_t key, const std::byte* value)>;
  static Result<void> walk(TransactionManager& tm, uint64_t root, const ValueType& vt, uint64_t lo,
                           uint64_t hi, const Visitor& fn);

  // Drops one reference to the tree rooted at root; nodes whose count reaches zero are
  // freed, and the values of freed leaves are dec'ed. O(size of the unshared part).
  static Result<void> del(TransactionManager& tm, uint64_t root, const ValueType& vt);

  // Number of entries (walks the tree).
  static Result<uint64_t> count(TransactionManager& tm, uint64_t root, const ValueType& vt);
};

}  // namespace tp::pdata

namespace tp::pdata {

// Visits every key whose entry differs between the trees at root_a and root_b (present
// in one only, or with different value bytes), in key order. Subtrees that both trees
// share (the same block) are skipped without being read, so the cost grows with the
// changed part of the trees, not their size. a or b is nullptr where the key is absent.
// Only keys in [lo, hi] are compared: the cost is then the tree height plus the changed
// part of that range. The visitor returns false to stop early.
using DiffVisitor =
    std::function<Result<bool>(uint64_t key, const std::byte* a, const std::byte* b)>;
Result<void> btree_diff(BlockManager& bm, uint64_t root_a, uint64_t root_b, uint32_t value_size,
                        const DiffVisitor& fn, uint64_t lo = 0, uint64_t hi = ~uint64_t{0});

}  // namespace tp::pdata
