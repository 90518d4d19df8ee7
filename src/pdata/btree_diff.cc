#include <array>
#include <cstring>
#include <vector>

#include "pdata/btree.h"

namespace tp::pdata {

namespace {

struct Child {
  uint64_t lo, hi;  // key range [lo, hi] the child covers (clipped)
  uint64_t block;
};

class Differ {
 public:
  Differ(BlockManager& bm, uint32_t vs, const DiffVisitor& fn) : bm_(bm), vs_(vs), fn_(fn) {}

  // Both nodes cover at least [lo, hi]; compares the entries inside it.
  Result<bool> diff(uint64_t a, uint64_t b, uint64_t lo, uint64_t hi, int depth) {
    if (a == b) return true;
    if (depth > 128) return make_error(Errc::kCorruption, "btree too deep (a cycle?)", a);
    std::array<std::byte, kBlockSize> ca, cb;
    TP_TRY(read(a, ca));
    TP_TRY(read(b, cb));
    NodeView na(ca.data()), nb(cb.data());
    if (na.is_leaf() && nb.is_leaf()) return diff_leaves(na, nb, lo, hi);
    std::vector<Child> xa = children(na, a, lo, hi), xb = children(nb, b, lo, hi);
    // Refine both partitions of [lo, hi] and recurse on each elementary segment.
    size_t i = 0, j = 0;
    while (i < xa.size() && j < xb.size()) {
      uint64_t seg_lo = std::max(xa[i].lo, xb[j].lo);
      uint64_t seg_hi = std::min(xa[i].hi, xb[j].hi);
      if (seg_lo <= seg_hi) {
        TP_ASSIGN_OR_RETURN(bool more, diff(xa[i].block, xb[j].block, seg_lo, seg_hi, depth + 1));
        if (!more) return false;
      }
      if (xa[i].hi == seg_hi) i++;
      if (xb[j].hi == seg_hi) j++;
    }
    return true;
  }

 private:
  Result<void> read(uint64_t b, std::array<std::byte, kBlockSize>& out) {
    TP_ASSIGN_OR_RETURN(ReadRef r, bm_.read_lock(b, kNodeValidator));
    std::memcpy(out.data(), r.data().data(), kBlockSize);
    NodeView n(out.data());
    uint32_t want = n.is_leaf() ? vs_ : 8;
    if (n.value_size() != want) {
      return make_error(Errc::kCorruption, "btree node has the wrong value size", b);
    }
    return {};
  }

  // The node itself when it is a leaf, else its children, as a partition of [lo, hi].
  std::vector<Child> children(const NodeView& n, uint64_t self, uint64_t lo, uint64_t hi) {
    std::vector<Child> out;
    if (n.is_leaf()) {
      out.push_back({lo, hi, self});
      return out;
    }
    uint32_t nr = n.nr_entries();
    int start = std::max(n.lower_bound(lo), 0);
    for (uint32_t i = static_cast<uint32_t>(start); i < nr; i++) {
      uint64_t c_lo = i == static_cast<uint32_t>(start) ? lo : std::max(lo, n.key(i));
      if (c_lo > hi) break;
      uint64_t c_hi = (i + 1 < nr && n.key(i + 1) > 0) ? std::min(hi, n.key(i + 1) - 1) : hi;
      if (c_lo <= c_hi) out.push_back({c_lo, c_hi, n.value64(i)});
    }
    if (out.empty()) {
      out.push_back({lo, hi, self});  // unreachable for a valid node; keeps the sweep total
    } else {
      out.front().lo = lo;
      out.back().hi = hi;
    }
    return out;
  }

  Result<bool> diff_leaves(const NodeView& a, const NodeView& b, uint64_t lo, uint64_t hi) {
    uint32_t i = a.upper_index(lo), j = b.upper_index(lo);
    uint32_t na = a.nr_entries(), nb = b.nr_entries();
    while (true) {
      bool ea = i < na && a.key(i) <= hi, eb = j < nb && b.key(j) <= hi;
      if (!ea && !eb) return true;
      Result<bool> r = true;
      if (ea && (!eb || a.key(i) < b.key(j))) {
        r = fn_(a.key(i), a.value(i), nullptr);
        i++;
      } else if (eb && (!ea || b.key(j) < a.key(i))) {
        r = fn_(b.key(j), nullptr, b.value(j));
        j++;
      } else {
        if (std::memcmp(a.value(i), b.value(j), vs_) != 0)
          r = fn_(a.key(i), a.value(i), b.value(j));
        i++;
        j++;
      }
      if (!r.ok()) return r.error();
      if (!*r) return false;
    }
  }

  BlockManager& bm_;
  uint32_t vs_;
  const DiffVisitor& fn_;
};

}  // namespace

Result<void> btree_diff(BlockManager& bm, uint64_t root_a, uint64_t root_b, uint32_t value_size,
                        const DiffVisitor& fn, uint64_t lo, uint64_t hi) {
  if (lo > hi) return {};
  Differ d(bm, value_size, fn);
  TP_TRY(d.diff(root_a, root_b, lo, hi, 0));
  return {};
}

}  // namespace tp::pdata
