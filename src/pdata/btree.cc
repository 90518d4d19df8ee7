#include "pdata/btree.h"

#include <cstring>
#include <vector>

namespace tp::pdata {

void NodeView::init(uint32_t flags, uint32_t value_size) {
  std::memset(p_ + 4, 0, kBlockSize - 4);
  store_le32(p_ + 4, flags);
  store_le32(p_ + 16, 0);
  store_le32(p_ + 20, max_entries_for(value_size));
  store_le32(p_ + 24, value_size);
}

int NodeView::lower_bound(uint64_t k) const {
  int lo = -1, hi = static_cast<int>(nr_entries());
  while (hi - lo > 1) {
    int mid = lo + (hi - lo) / 2;
    if (key(mid) <= k) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

uint32_t NodeView::upper_index(uint64_t k) const {
  int i = lower_bound(k);
  if (i >= 0 && key(i) == k) {
    return static_cast<uint32_t>(i);
  }
  return static_cast<uint32_t>(i + 1);
}

void NodeView::insert_at(uint32_t i, uint64_t k, const std::byte* v) {
  uint32_t n = nr_entries();
  uint32_t vs = value_size();
  std::byte* keys = p_ + kNodeHeaderSize;
  std::memmove(keys + 8 * (i + 1), keys + 8 * i, 8 * (n - i));
  std::memmove(value(i + 1), value(i), size_t{vs} * (n - i));
  set_key(i, k);
  std::memcpy(value(i), v, vs);
  set_nr_entries(n + 1);
}

void NodeView::erase_at(uint32_t i) {
  uint32_t n = nr_entries();
  uint32_t vs = value_size();
  std::byte* keys = p_ + kNodeHeaderSize;
  std::memmove(keys + 8 * i, keys + 8 * (i + 1), 8 * (n - i - 1));
  std::memmove(value(i), value(i + 1), size_t{vs} * (n - i - 1));
  set_nr_entries(n - 1);
}

Result<void> check_node_shape(ConstBlock b, uint64_t blocknr, uint32_t leaf_value_size) {
  NodeView n(const_cast<std::byte*>(b.data()));
  uint32_t want = n.is_leaf() ? leaf_value_size : 8;
  if (n.value_size() != want) {
    return make_error(Errc::kCorruption, "btree node has the wrong value size", blocknr);
  }
  if (n.max_entries() != max_entries_for(want)) {
    return make_error(Errc::kCorruption, "btree node has the wrong max_entries", blocknr);
  }
  for (uint32_t i = 1; i < n.nr_entries(); i++) {
    if (n.key(i - 1) >= n.key(i)) {
      return make_error(Errc::kCorruption, "btree node keys out of order", blocknr);
    }
  }
  return {};
}

namespace {

// Shapes are checked cheaply on every descent (value size); key order by check_node_shape.
Result<void> quick_shape(const NodeView& n, uint64_t b, const ValueType& vt) {
  uint32_t want = n.is_leaf() ? vt.size : 8;
  if (n.value_size() != want || n.max_entries() != max_entries_for(want)) {
    return make_error(Errc::kCorruption, "btree node has the wrong value size", b);
  }
  return {};
}

Result<void> inc_children(TransactionManager& tm, NodeView n, const ValueType& vt) {
  if (!n.is_leaf()) {
    for (uint32_t i = 0; i < n.nr_entries(); i++) {
      TP_TRY(tm.inc(n.value64(i)));
    }
  } else if (vt.inc) {
    for (uint32_t i = 0; i < n.nr_entries(); i++) {
      TP_TRY(vt.inc(vt.ctx, n.value(i)));
    }
  }
  return {};
}

Result<WriteRef> shadow_node(TransactionManager& tm, uint64_t b, const ValueType& vt) {
  TP_ASSIGN_OR_RETURN(auto sh, tm.shadow(b, kNodeValidator));
  NodeView n(sh.first.data().data());
  TP_TRY(quick_shape(n, b, vt));
  if (sh.second) {
    TP_TRY(inc_children(tm, n, vt));
  }
  return std::move(sh.first);
}

uint32_t min_entries(const NodeView& n) {
  return n.max_entries() / 3;
}

// Moves entries [from, nr) of src to the end of dst.
void move_tail(NodeView src, NodeView dst, uint32_t from) {
  uint32_t n = src.nr_entries();
  uint32_t d = dst.nr_entries();
  uint32_t cnt = n - from;
  uint32_t vs = src.value_size();
  for (uint32_t i = 0; i < cnt; i++) {
    dst.set_key(d + i, src.key(from + i));
  }
  std::memcpy(dst.value(d), src.value(from), size_t{vs} * cnt);
  dst.set_nr_entries(d + cnt);
  src.set_nr_entries(from);
}

// Moves the first cnt entries of src to the end of dst.
void move_head(NodeView src, NodeView dst, uint32_t cnt) {
  uint32_t n = src.nr_entries();
  uint32_t d = dst.nr_entries();
  uint32_t vs = src.value_size();
  for (uint32_t i = 0; i < cnt; i++) {
    dst.set_key(d + i, src.key(i));
  }
  std::memcpy(dst.value(d), src.value(0), size_t{vs} * cnt);
  dst.set_nr_entries(d + cnt);
  std::byte* keys = reinterpret_cast<std::byte*>(src.value(0)) - 8 * src.max_entries();
  std::memmove(keys, keys + 8 * cnt, 8 * (n - cnt));
  std::memmove(src.value(0), src.value(cnt), size_t{vs} * (n - cnt));
  src.set_nr_entries(n - cnt);
}

// Moves the last cnt entries of src to the front of dst.
void move_to_front(NodeView src, NodeView dst, uint32_t cnt) {
  uint32_t n = src.nr_entries();
  uint32_t d = dst.nr_entries();
  uint32_t vs = dst.value_size();
  std::byte* dkeys = reinterpret_cast<std::byte*>(dst.value(0)) - 8 * dst.max_entries();
  std::memmove(dkeys + 8 * cnt, dkeys, 8 * d);
  std::memmove(dst.value(cnt), dst.value(0), size_t{vs} * d);
  for (uint32_t i = 0; i < cnt; i++) {
    dst.set_key(i, src.key(n - cnt + i));
  }
  std::memcpy(dst.value(0), src.value(n - cnt), size_t{vs} * cnt);
  dst.set_nr_entries(d + cnt);
  src.set_nr_entries(n - cnt);
}

}  // namespace

Result<uint64_t> Btree::create_empty(TransactionManager& tm, const ValueType& vt) {
  TP_ASSIGN_OR_RETURN(WriteRef w, tm.new_block(kNodeValidator));
  NodeView(w.data().data()).init(kLeafNode, vt.size);
  return w.location();
}

Result<bool> Btree::lookup(TransactionManager& tm, uint64_t root, uint64_t key, const ValueType& vt,
                           std::span<std::byte> out) {
  return lookup(tm.bm(), root, key, vt, out);
}

Result<bool> Btree::lookup(BlockManager& bm, uint64_t root, uint64_t key, const ValueType& vt,
                           std::span<std::byte> out) {
  uint64_t b = root;
  for (int depth = 0; depth < 64; depth++) {
    TP_ASSIGN_OR_RETURN(ReadRef r, bm.read_lock(b, kNodeValidator));
    NodeView n(const_cast<std::byte*>(r.data().data()));
    TP_TRY(quick_shape(n, b, vt));
    int i = n.lower_bound(key);
    if (i < 0) {
      return false;
    }
    if (n.is_leaf()) {
      if (n.key(i) != key) {
        return false;
      }
      std::memcpy(out.data(), n.value(i), vt.size);
      return true;
    }
    b = n.value64(i);
  }
  return make_error(Errc::kCorruption, "btree too deep (a cycle?)", root);
}

Result<uint64_t> Btree::insert(TransactionManager& tm, uint64_t root, uint64_t key,
                               const std::byte* value, const ValueType& vt, bool* inserted) {
  TP_ASSIGN_OR_RETURN(WriteRef cur, shadow_node(tm, root, vt));
  uint64_t new_root = cur.location();
  {
    NodeView n(cur.data().data());
    if (n.nr_entries() == n.max_entries()) {
      // Split beneath the root: two new children take the halves, the root becomes internal.
      TP_ASSIGN_OR_RETURN(WriteRef l, tm.new_block(kNodeValidator));
      TP_ASSIGN_OR_RETURN(WriteRef r, tm.new_block(kNodeValidator));
      NodeView ln(l.data().data()), rn(r.data().data());
      ln.init(n.flags(), n.value_size());
      rn.init(n.flags(), n.value_size());
      uint32_t half = n.nr_entries() / 2;
      move_tail(n, rn, half);
      move_tail(n, ln, 0);
      n.init(kInternalNode, 8);
      std::array<std::byte, 8> v;
      store_le64(v.data(), l.location());
      n.insert_at(0, ln.key(0), v.data());
      store_le64(v.data(), r.location());
      n.insert_at(1, rn.key(0), v.data());
    }
  }
  for (int depth = 0; depth < 64; depth++) {
    NodeView n(cur.data().data());
    if (n.is_leaf()) {
      int i = n.lower_bound(key);
      if (i >= 0 && n.key(i) == key) {
        if (vt.dec && std::memcmp(n.value(i), value, vt.size) != 0) {
          TP_TRY(vt.dec(vt.ctx, n.value(i)));
        }
        std::memcpy(n.value(i), value, vt.size);
        if (inserted) *inserted = false;
      } else {
        n.insert_at(static_cast<uint32_t>(i + 1), key, value);
        if (inserted) *inserted = true;
      }
      return new_root;
    }
    int i = n.lower_bound(key);
    if (i < 0) {
      i = 0;
      n.set_key(0, key);
    }
    TP_ASSIGN_OR_RETURN(WriteRef child, shadow_node(tm, n.value64(i), vt));
    n.set_value64(i, child.location());
    NodeView c(child.data().data());
    if (c.nr_entries() == c.max_entries()) {
      TP_ASSIGN_OR_RETURN(WriteRef sib, tm.new_block(kNodeValidator));
      NodeView s(sib.data().data());
      s.init(c.flags(), c.value_size());
      move_tail(c, s, c.nr_entries() / 2);
      std::array<std::byte, 8> v;
      store_le64(v.data(), sib.location());
      n.insert_at(static_cast<uint32_t>(i + 1), s.key(0), v.data());
      if (key >= s.key(0)) {
        cur = std::move(sib);
        continue;
      }
    }
    cur = std::move(child);
  }
  return make_error(Errc::kCorruption, "btree too deep (a cycle?)", root);
}

Result<uint64_t> Btree::remove(TransactionManager& tm, uint64_t root, uint64_t key,
                               const ValueType& vt, bool* removed) {
  {
    std::array<std::byte, kBlockSize> scratch;
    TP_ASSIGN_OR_RETURN(bool present, lookup(tm, root, key, vt, scratch));
    if (removed) *removed = present;
    if (!present) {
      return root;
    }
  }
  TP_ASSIGN_OR_RETURN(WriteRef cur, shadow_node(tm, root, vt));
  uint64_t new_root = cur.location();
  bool at_root = true;
  for (int depth = 0; depth < 64; depth++) {
    NodeView n(cur.data().data());
    if (n.is_leaf()) {
      int i = n.lower_bound(key);
      if (i < 0 || n.key(i) != key) {
        return make_error(Errc::kCorruption, "btree key vanished during remove", cur.location());
      }
      if (vt.dec) {
        TP_TRY(vt.dec(vt.ctx, n.value(i)));
      }
      n.erase_at(static_cast<uint32_t>(i));
      return new_root;
    }
    if (at_root && n.nr_entries() == 1) {
      // A root with one child: pull the child up into the root.
      TP_ASSIGN_OR_RETURN(WriteRef child, shadow_node(tm, n.value64(0), vt));
      uint64_t loc = child.location();
      std::memcpy(cur.data().data(), child.data().data(), kBlockSize);
      child.release();
      TP_TRY(tm.dec(loc));
      continue;
    }
    at_root = false;
    int i = n.lower_bound(key);
    if (i < 0) {
      return make_error(Errc::kCorruption, "btree key vanished during remove", cur.location());
    }
    TP_ASSIGN_OR_RETURN(WriteRef child, shadow_node(tm, n.value64(i), vt));
    n.set_value64(i, child.location());
    NodeView c(child.data().data());
    if (c.nr_entries() > min_entries(c) || n.nr_entries() < 2) {
      cur = std::move(child);
      continue;
    }
    // Too thin to lose an entry: merge with or borrow from a sibling.
    uint32_t li, ri;
    if (static_cast<uint32_t>(i) + 1 < n.nr_entries()) {
      li = i;
      ri = i + 1;
    } else {
      li = i - 1;
      ri = i;
    }
    TP_ASSIGN_OR_RETURN(WriteRef sib, shadow_node(tm, n.value64(li == uint32_t(i) ? ri : li), vt));
    n.set_value64(li == uint32_t(i) ? ri : li, sib.location());
    WriteRef& lref = (li == uint32_t(i)) ? child : sib;
    WriteRef& rref = (li == uint32_t(i)) ? sib : child;
    NodeView l(lref.data().data()), r(rref.data().data());
    if (l.nr_entries() + r.nr_entries() <= l.max_entries()) {
      move_tail(r, l, 0);
      uint64_t rloc = rref.location();
      n.erase_at(ri);
      rref.release();
      TP_TRY(tm.dec(rloc));
      cur = std::move(lref);
      continue;
    }
    uint32_t total = l.nr_entries() + r.nr_entries();
    uint32_t want_left = total / 2;
    if (l.nr_entries() > want_left) {
      move_to_front(l, r, l.nr_entries() - want_left);
    } else if (l.nr_entries() < want_left) {
      move_head(r, l, want_left - l.nr_entries());
    }
    n.set_key(ri, r.key(0));
    if (key >= r.key(0)) {
      cur = std::move(rref);
    } else {
      cur = std::move(lref);
    }
  }
  return make_error(Errc::kCorruption, "btree too deep (a cycle?)", root);
}

namespace {
Result<bool> walk_node(TransactionManager& tm, uint64_t b, const ValueType& vt, uint64_t lo,
                       uint64_t hi, const Btree::Visitor& fn, int depth) {
  if (depth > 64) {
    return make_error(Errc::kCorruption, "btree too deep (a cycle?)", b);
  }
  TP_ASSIGN_OR_RETURN(ReadRef r, tm.read_lock(b, kNodeValidator));
  NodeView n(const_cast<std::byte*>(r.data().data()));
  TP_TRY(quick_shape(n, b, vt));
  uint32_t nr = n.nr_entries();
  if (n.is_leaf()) {
    for (uint32_t i = n.upper_index(lo); i < nr && n.key(i) <= hi; i++) {
      TP_ASSIGN_OR_RETURN(bool more, fn(n.key(i), n.value(i)));
      if (!more) return false;
    }
    return true;
  }
  int start = n.lower_bound(lo);
  if (start < 0) start = 0;
  std::vector<uint64_t> children;
  for (uint32_t i = static_cast<uint32_t>(start); i < nr && n.key(i) <= hi; i++) {
    children.push_back(n.value64(i));
  }
  r.release();
  for (uint64_t c : children) {
    TP_ASSIGN_OR_RETURN(bool more, walk_node(tm, c, vt, lo, hi, fn, depth + 1));
    if (!more) return false;
  }
  return true;
}
}  // namespace

Result<void> Btree::walk(TransactionManager& tm, uint64_t root, const ValueType& vt, uint64_t lo,
                         uint64_t hi, const Visitor& fn) {
  TP_TRY(walk_node(tm, root, vt, lo, hi, fn, 0));
  return {};
}

Result<void> Btree::del(TransactionManager& tm, uint64_t root, const ValueType& vt) {
  // Explicit stack: (block, depth).
  std::vector<std::pair<uint64_t, int>> stack{{root, 0}};
  while (!stack.empty()) {
    auto [b, depth] = stack.back();
    stack.pop_back();
    if (depth > 64) {
      return make_error(Errc::kCorruption, "btree too deep (a cycle?)", b);
    }
    TP_ASSIGN_OR_RETURN(uint32_t count, tm.ref_count(b));
    if (count > 1) {
      TP_TRY(tm.dec(b));
      continue;
    }
    {
      TP_ASSIGN_OR_RETURN(ReadRef r, tm.read_lock(b, kNodeValidator));
      std::array<std::byte, kBlockSize> copy;
      std::memcpy(copy.data(), r.data().data(), kBlockSize);
      r.release();
      NodeView n(copy.data());
      TP_TRY(quick_shape(n, b, vt));
      if (!n.is_leaf()) {
        for (uint32_t i = 0; i < n.nr_entries(); i++) {
          stack.emplace_back(n.value64(i), depth + 1);
        }
      } else if (vt.dec) {
        for (uint32_t i = 0; i < n.nr_entries(); i++) {
          TP_TRY(vt.dec(vt.ctx, n.value(i)));
        }
      }
    }
    TP_TRY(tm.dec(b));
  }
  return {};
}

Result<uint64_t> Btree::count(TransactionManager& tm, uint64_t root, const ValueType& vt) {
  uint64_t n = 0;
  TP_TRY(walk(tm, root, vt, 0, ~uint64_t{0}, [&](uint64_t, const std::byte*) -> Result<bool> {
    n++;
    return true;
  }));
  return n;
}

}  // namespace tp::pdata
