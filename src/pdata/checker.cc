#include "pdata/checker.h"

#include <cstring>
#include <functional>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace tp::pdata {

namespace {

class Walker {
 public:
  Walker(ThinMetadata& md, CheckReport& rep) : md_(md), rep_(rep) {}

  void damage(std::string s) {
    if (rep_.damage.size() < 1000) rep_.damage.push_back(std::move(s));
  }

  // Counts one reference to a non-tree block.
  void ref(uint64_t b) { meta_counts_[b]++; }

  // Counts one reference to the tree at root and, the first time it is seen, walks it.
  // leaf_fn is called once per leaf entry of a first-visited leaf.
  void tree(uint64_t root, uint32_t value_size, bool is_root,
            const std::function<void(uint64_t, const std::byte*)>& leaf_fn, uint64_t lo_bound = 0,
            bool have_lo = false) {
    meta_counts_[root]++;
    if (!visited_.insert(root).second) return;
    rep_.nodes++;
    std::array<std::byte, kBlockSize> copy;
    {
      auto r = md_.bm().read_lock(root, kNodeValidator);
      if (!r.ok()) {
        damage("btree node " + std::to_string(root) + ": " + r.error().to_string());
        return;
      }
      std::memcpy(copy.data(), r->data().data(), kBlockSize);
    }
    auto shape = check_node_shape(ConstBlock(copy), root, value_size);
    if (!shape.ok()) {
      damage(shape.error().to_string());
      return;
    }
    NodeView n(copy.data());
    if (!is_root && n.nr_entries() < n.max_entries() / 3) {
      damage("btree node " + std::to_string(root) +
             " has too few entries: " + std::to_string(n.nr_entries()));
    }
    if (have_lo && n.nr_entries() > 0 && n.key(0) < lo_bound) {
      damage("btree node " + std::to_string(root) + " first key below its parent key");
    }
    for (uint32_t i = 0; i < n.nr_entries(); i++) {
      if (n.is_leaf()) {
        if (have_last_ && n.key(i) <= last_leaf_key_ && cur_tree_ == tree_id_) {
          damage("btree leaf " + std::to_string(root) + " keys not increasing across leaves");
        }
        have_last_ = true;
        last_leaf_key_ = n.key(i);
        leaf_fn(n.key(i), n.value(i));
      } else {
        tree(n.value64(i), value_size, false, leaf_fn, n.key(i), true);
      }
    }
  }

  void begin_tree() {
    have_last_ = false;
    tree_id_++;
    cur_tree_ = tree_id_;
  }

  std::unordered_map<uint64_t, uint32_t> meta_counts_;
  std::unordered_map<uint64_t, uint32_t> data_counts_;

 private:
  ThinMetadata& md_;
  CheckReport& rep_;
  std::unordered_set<uint64_t> visited_;
  bool have_last_ = false;
  uint64_t last_leaf_key_ = 0;
  uint64_t tree_id_ = 0, cur_tree_ = 0;
};

}  // namespace

Result<CheckReport> check_metadata(ThinMetadata& md) {
  CheckReport rep;
  Walker w(md, rep);
  const Superblock& sb = md.superblock();
  w.ref(kSuperblockLocation);

  // Device details.
  std::unordered_map<uint64_t, DeviceDetails> details;
  w.begin_tree();
  w.tree(sb.device_details_root, kDeviceDetailsSize, true, [&](uint64_t k, const std::byte* v) {
    details[k] =
        DeviceDetails{load_le64(v), load_le64(v + 8), load_le32(v + 16), load_le32(v + 20)};
  });

  // Mapping tree: top level then each device's tree.
  std::vector<std::pair<uint64_t, uint64_t>> dev_roots;
  w.begin_tree();
  w.tree(sb.data_mapping_root, 8, true,
         [&](uint64_t k, const std::byte* v) { dev_roots.emplace_back(k, load_le64(v)); });
  uint64_t nr_data = md.nr_data_blocks();
  for (auto [dev, root] : dev_roots) {
    if (!details.count(dev)) {
      w.damage("device " + std::to_string(dev) + " has mappings but no details");
    }
    uint64_t mapped = 0;
    w.begin_tree();
    // Count this device's mappings even through shared subtrees: walk via the pdata API.
    auto r = Btree::count(md.tm(), root, md.mapping_vt());
    if (r.ok()) mapped = *r;
    w.tree(root, 8, true, [&](uint64_t, const std::byte* v) {
      uint64_t b = bt_block(load_le64(v));
      if (b >= nr_data) {
        w.damage("mapping to data block " + std::to_string(b) + " beyond the data device");
      }
      w.data_counts_[b]++;
    });
    rep.mappings += mapped;
    auto it = details.find(dev);
    if (it != details.end() && it->second.mapped_blocks != mapped) {
      w.damage("device " + std::to_string(dev) + " details say " +
               std::to_string(it->second.mapped_blocks) + " mapped blocks, tree has " +
               std::to_string(mapped));
    }
  }
  if (details.size() != dev_roots.size()) {
    w.damage("device details tree and mapping tree list different devices");
  }

  // Space map structures.
  auto sm_structures = [&](const SmRoot& root, bool metadata) {
    w.begin_tree();
    w.tree(root.ref_count_root, 4, true, [&](uint64_t, const std::byte*) {});
    std::vector<uint64_t> bitmaps;
    if (metadata) {
      w.ref(root.bitmap_root);
      auto r = md.bm().read_lock(root.bitmap_root, kIndexValidator);
      if (!r.ok()) {
        w.damage("metadata space map index: " + r.error().to_string());
        return;
      }
      uint64_t n = (root.nr_blocks + kEntriesPerBitmap - 1) / kEntriesPerBitmap;
      for (uint64_t k = 0; k < n && k < kMaxMetadataBitmaps; k++) {
        bitmaps.push_back(load_le64(r->data().data() + kMetadataIndexHeader + k * 16));
      }
    } else {
      w.begin_tree();
      w.tree(root.bitmap_root, 16, true,
             [&](uint64_t, const std::byte* v) { bitmaps.push_back(load_le64(v)); });
    }
    for (uint64_t b : bitmaps) {
      w.ref(b);
      auto r = md.bm().read_lock(b, kBitmapValidator);
      if (!r.ok()) w.damage("space map bitmap: " + r.error().to_string());
    }
  };
  sm_structures(sb.data_sm_root, false);
  sm_structures(sb.metadata_sm_root, true);

  // Compare counts.
  SpaceMap& msm = md.metadata_sm();
  uint64_t allocated = 0;
  for (uint64_t b = 0; b < msm.nr_blocks(); b++) {
    TP_ASSIGN_OR_RETURN(uint32_t have, msm.get_count(b));
    auto it = w.meta_counts_.find(b);
    uint32_t want = it == w.meta_counts_.end() ? 0 : it->second;
    allocated += have != 0;
    if (have != want) {
      w.damage("metadata block " + std::to_string(b) + " ref count " + std::to_string(have) +
               ", expected " + std::to_string(want));
    }
  }
  if (allocated != sb.metadata_sm_root.nr_allocated) {
    rep.warnings.push_back("superblock metadata space map nr_allocated " +
                           std::to_string(sb.metadata_sm_root.nr_allocated) + ", bitmaps count " +
                           std::to_string(allocated));
  }
  SpaceMap& dsm = md.data_sm();
  allocated = 0;
  for (uint64_t b = 0; b < dsm.nr_blocks(); b++) {
    TP_ASSIGN_OR_RETURN(uint32_t have, dsm.get_count(b));
    auto it = w.data_counts_.find(b);
    uint32_t want = it == w.data_counts_.end() ? 0 : it->second;
    allocated += have != 0;
    if (have != want) {
      w.damage("data block " + std::to_string(b) + " ref count " + std::to_string(have) +
               ", expected " + std::to_string(want));
    }
  }
  if (allocated != dsm.nr_allocated()) {
    w.damage("data space map nr_allocated disagrees with its bitmaps");
  }
  rep.data_blocks_in_use = allocated;
  return rep;
}

}  // namespace tp::pdata
