#include "thin/repair.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include "catalog/catalog.h"
#include "pdata/checker.h"
#include "pdata/thin_metadata.h"
#include "thin/pool.h"

namespace tp::thin {
namespace {

using pdata::ConstBlock;
using pdata::DeviceDetails;
using pdata::NodeView;

constexpr uint64_t kEnd = ~uint64_t{0};
// A B-tree with fan-out >= 84 (max_entries / 3 for 8-byte values) over 64-bit keys is at
// most 10 levels deep; anything deeper is a pointer cycle.
constexpr int kMaxDepth = 16;

// One distinct mapping tree of the damaged metadata (devices that shared a root share it).
struct Tree {
  std::vector<std::pair<uint64_t, uint64_t>> maps;  // (vblock, block_time), in key order
  std::vector<LostRange> lost;
  uint64_t dropped = 0;  // entries read but unusable (beyond the data device, out of order)
  bool root_lost = false;
};

struct SalvagedDev {
  std::optional<DeviceDetails> details;
  std::optional<uint64_t> root;
};

struct Salvage {
  pdata::Superblock sb;
  uint64_t nr_meta = 0;
  uint64_t nr_data = 0;
  uint32_t max_time = 0;
  std::map<uint64_t, SalvagedDev> devs;
  std::map<uint64_t, Tree> trees;  // by old root
  std::vector<LostRange> details_lost, top_lost;
  std::vector<std::string> damage;
};

std::string range_text(uint64_t lo, uint64_t hi) {
  return hi == kEnd ? std::to_string(lo) + ".."
                    : std::to_string(lo) + ".." + std::to_string(hi - 1);
}

bool in_ranges(const std::vector<LostRange>& rs, uint64_t k) {
  return std::any_of(rs.begin(), rs.end(),
                     [&](const LostRange& r) { return k >= r.begin && k < r.end; });
}

// Walks a B-tree tolerantly: unreadable or malformed nodes are skipped and their key range
// recorded as lost; leaf entries outside the range their parents give them are dropped.
class TolerantWalker {
 public:
  using LeafFn = std::function<bool(uint64_t key, const std::byte* value)>;  // false: drop
  TolerantWalker(pdata::BlockManager& bm, uint64_t nr_meta, std::vector<std::string>& damage)
      : bm_(bm), nr_meta_(nr_meta), damage_(damage) {}

  // Returns false when the root itself could not be used.
  bool walk(uint64_t root, uint32_t value_size, const std::string& what, const LeafFn& leaf,
            std::vector<LostRange>& lost, uint64_t& dropped) {
    visited_.clear();
    what_ = &what;
    return node(root, value_size, 0, kEnd, 0, leaf, lost, dropped);
  }

 private:
  void note(const std::string& s) {
    if (damage_.size() < 1000) damage_.push_back(*what_ + ": " + s);
  }

  bool node(uint64_t b, uint32_t value_size, uint64_t lo, uint64_t hi, int depth,
            const LeafFn& leaf, std::vector<LostRange>& lost, uint64_t& dropped) {
    auto lose = [&](const std::string& why) {
      note("node " + std::to_string(b) + " " + why + "; keys " + range_text(lo, hi) + " lost");
      lost.push_back({lo, hi});
      return false;
    };
    if (b == pdata::kSuperblockLocation || b >= nr_meta_) return lose("is outside the metadata");
    if (depth > kMaxDepth) return lose("is too deep (a pointer cycle)");
    if (!visited_.insert(b).second) return lose("is reached twice");
    std::array<std::byte, pdata::kBlockSize> copy;
    {
      auto r = bm_.read_lock(b, pdata::kNodeValidator);
      if (!r.ok()) return lose("unreadable (" + r.error().to_string() + ")");
      std::memcpy(copy.data(), r->data().data(), copy.size());
    }
    NodeView n(copy.data());
    if (n.flags() != pdata::kInternalNode && n.flags() != pdata::kLeafNode) {
      return lose("has bad flags");
    }
    if (auto shape = pdata::check_node_shape(ConstBlock(copy), b, value_size); !shape.ok()) {
      return lose("is malformed (" + shape.error().to_string() + ")");
    }
    const uint32_t nr = n.nr_entries();
    if (n.is_leaf()) {
      for (uint32_t i = 0; i < nr; i++) {
        const uint64_t k = n.key(i);
        if (k < lo || k >= hi) {
          note("leaf " + std::to_string(b) + " key " + std::to_string(k) + " outside its range " +
               range_text(lo, hi) + ", dropped");
          dropped++;
        } else if (!leaf(k, n.value(i))) {
          dropped++;
        }
      }
      return true;
    }
    for (uint32_t i = 0; i < nr; i++) {
      const uint64_t clo = std::max(lo, n.key(i));
      const uint64_t chi = i + 1 < nr ? std::min(hi, n.key(i + 1)) : hi;
      if (clo >= chi) {
        note("internal node " + std::to_string(b) + " entry " + std::to_string(i) +
             " has an empty key range, skipped");
        continue;
      }
      node(n.value64(i), value_size, clo, chi, depth + 1, leaf, lost, dropped);
    }
    return true;
  }

  pdata::BlockManager& bm_;
  uint64_t nr_meta_;
  std::vector<std::string>& damage_;
  std::set<uint64_t> visited_;
  const std::string* what_ = nullptr;
};

Result<Salvage> salvage(io::BlockDevice& dev) {
  Salvage s;
  pdata::BlockManager bm(dev, 1024);
  {
    auto r = bm.read_lock(pdata::kSuperblockLocation, pdata::kSuperblockValidator);
    if (!r.ok()) {
      return make_error(Errc::kCorruption,
                        "superblock unreadable: the roots of the metadata trees are unknown, "
                        "nothing can be salvaged (restore the metadata from a backup)",
                        0);
    }
    auto sb = pdata::decode_superblock(r->data());
    if (!sb.ok()) {
      return make_error(Errc::kCorruption,
                        "superblock invalid: the roots of the metadata trees are unknown, "
                        "nothing can be salvaged (restore the metadata from a backup)",
                        0);
    }
    s.sb = *sb;
  }
  s.nr_meta = std::min<uint64_t>(dev.size() / pdata::kBlockSize, s.sb.metadata_nr_blocks);
  s.nr_data = s.sb.data_sm_root.nr_blocks;
  if (s.nr_data == 0 || s.nr_data > pdata::kMaxDataBlock) {
    return make_error(Errc::kCorruption, "superblock gives an impossible data device size", 0);
  }
  s.max_time = s.sb.time;
  TolerantWalker w(bm, s.nr_meta, s.damage);
  uint64_t dropped = 0;

  const std::string details_what = "device details tree";
  w.walk(
      s.sb.device_details_root, pdata::kDeviceDetailsSize, details_what,
      [&](uint64_t dev_id, const std::byte* v) {
        if (dev_id > pdata::kMaxDevId) return false;
        DeviceDetails d{pdata::load_le64(v), pdata::load_le64(v + 8), pdata::load_le32(v + 16),
                        pdata::load_le32(v + 20)};
        s.devs[dev_id].details = d;
        s.max_time = std::max({s.max_time, d.creation_time, d.snapshotted_time});
        return true;
      },
      s.details_lost, dropped);

  const std::string top_what = "top-level mapping tree";
  w.walk(
      s.sb.data_mapping_root, 8, top_what,
      [&](uint64_t dev_id, const std::byte* v) {
        const uint64_t root = pdata::load_le64(v);
        if (dev_id > pdata::kMaxDevId) return false;
        s.devs[dev_id].root = root;
        return true;
      },
      s.top_lost, dropped);

  for (auto& [dev_id, d] : s.devs) {
    if (!d.root || s.trees.count(*d.root)) continue;
    Tree& t = s.trees[*d.root];
    const std::string what = "mapping tree of device " + std::to_string(dev_id);
    const bool root_ok = w.walk(
        *d.root, 8, what,
        [&](uint64_t vb, const std::byte* v) {
          const uint64_t bt = pdata::load_le64(v);
          if (pdata::bt_block(bt) >= s.nr_data) {
            if (s.damage.size() < 1000) {
              s.damage.push_back(what + ": block " + std::to_string(vb) + " maps to data block " +
                                 std::to_string(pdata::bt_block(bt)) +
                                 " beyond the data device, dropped");
            }
            return false;
          }
          s.max_time = std::max(s.max_time, pdata::bt_time(bt));
          t.maps.emplace_back(vb, bt);
          return true;
        },
        t.lost, t.dropped);
    t.root_lost = !root_ok;
    // Lost subtrees were skipped in key order, so maps is sorted; keep it so regardless.
    std::sort(t.maps.begin(), t.maps.end());
  }
  return s;
}

std::string utc_stamp() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

bool exists(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0;
}

Result<void> sync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return sys_error("open pool directory");
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return sys_error("sync pool directory");
  return {};
}

// One device as the rebuilt metadata will hold it.
struct Plan {
  uint64_t dev_id = 0;
  uint64_t old_root = 0;
  uint64_t limit = kEnd;  // vblocks at or beyond are dropped (the volume's size)
  DeviceDetails details;
  RepairedDevice* report = nullptr;
};

// Writes the fresh metadata for plans to out (already sized); returns blocks in use.
Result<uint64_t> build(io::BlockDevice& out, const Salvage& s, std::vector<Plan>& plans,
                       uint64_t trans_id) {
  TP_ASSIGN_OR_RETURN(auto md,
                      pdata::ThinMetadata::format(out, s.sb.data_block_size, s.nr_data, 4096));
  md->set_time(s.max_time);
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> built;  // (old root, limit) -> dev
  for (Plan& p : plans) {
    const Tree& t = s.trees.at(p.old_root);
    uint64_t kept = 0;
    for (const auto& m : t.maps) kept += m.first < p.limit;
    p.details.mapped_blocks = kept;
    p.report->mappings = kept;
    p.report->mappings_lost += t.dropped + (t.maps.size() - kept);
    auto key = std::make_pair(p.old_root, p.limit);
    if (auto it = built.find(key); it != built.end()) {
      TP_TRY(md->restore_device(p.dev_id, p.details, it->second));
      continue;
    }
    TP_TRY(md->restore_device(p.dev_id, p.details));
    for (const auto& [vb, bt] : t.maps) {
      if (vb >= p.limit) break;
      // The space map refuses to inc a free block: the first reference sets the count.
      pdata::SpaceMap& dsm = md->data_sm();
      TP_ASSIGN_OR_RETURN(uint32_t count, dsm.get_count(pdata::bt_block(bt)));
      TP_TRY(dsm.set_count(pdata::bt_block(bt), count + 1));
      TP_TRY(md->restore_mapping(p.dev_id, vb, pdata::bt_block(bt), pdata::bt_time(bt)));
    }
    built[key] = p.dev_id;
  }
  md->set_trans_id(trans_id);
  TP_TRY(md->commit());
  // The rebuilt metadata must be consistent before it replaces anything.
  TP_ASSIGN_OR_RETURN(auto rep, pdata::check_metadata(*md));
  if (!rep.ok()) {
    return make_error(Errc::kCorruption, "rebuilt metadata fails its own check (a bug)", 0);
  }
  return md->nr_data_blocks() - md->nr_free_data_blocks();
}

}  // namespace

Result<RepairReport> repair_pool(const std::string& dir) {
  const std::string meta_path = dir + "/metadata";
  const std::string out_path = dir + "/metadata.repaired";
  const std::string cat_path = dir + "/catalog";
  TP_ASSIGN_OR_RETURN(int lock_fd, lock_pool_dir(dir));
  struct Unlock {
    int fd;
    ~Unlock() { ::close(fd); }
  } unlock{lock_fd};

  RepairReport rep;
  TP_ASSIGN_OR_RETURN(auto old_dev, io::open_file(meta_path, /*read_only=*/true));
  TP_ASSIGN_OR_RETURN(Salvage s, salvage(*old_dev));
  rep.damage = s.damage;
  rep.old_trans_id = s.sb.trans_id;
  rep.new_trans_id = s.sb.trans_id + 1;

  TP_ASSIGN_OR_RETURN(catalog::CatalogFile cf, catalog::CatalogFile::open(cat_path, s.sb.trans_id));
  catalog::Catalog cat = cf.current();
  const uint64_t B = uint64_t{s.sb.data_block_size} * 512;
  rep.block_bytes = s.sb.data_block_size * 512;

  // Which devices survive.
  std::map<uint64_t, std::string> why_lost;
  for (auto& [dev_id, d] : s.devs) {
    if (!d.root) {
      why_lost[dev_id] = in_ranges(s.top_lost, dev_id)
                             ? "its entry in the top-level mapping tree was lost"
                             : "it has details but no mapping tree";
    } else if (s.trees.at(*d.root).root_lost) {
      why_lost[dev_id] = "the root of its mapping tree is unreadable";
    }
  }
  for (auto& [name, v] : cat.volumes) {
    if (!s.devs.count(v.dev_id)) {
      why_lost[v.dev_id] = in_ranges(s.top_lost, v.dev_id) || in_ranges(s.details_lost, v.dev_id)
                               ? "its entries in the device trees were lost"
                               : "the metadata has no such device";
    }
  }
  for (auto& [dev_id, why] : why_lost) {
    LostDevice l;
    l.dev_id = dev_id;
    l.why = why;
    if (auto it = s.devs.find(dev_id); it != s.devs.end() && it->second.details) {
      l.mappings_lost = it->second.details->mapped_blocks;
    }
    if (const auto* v = cat.find_dev(dev_id)) {
      l.volume = v->name;
      rep.notes.push_back("volume " + l.volume + " removed from the catalog: thin device " +
                          std::to_string(dev_id) + " is lost (" + why + ")");
      cat.volumes.erase(l.volume);
    }
    rep.mappings_lost += l.mappings_lost;
    rep.lost.push_back(std::move(l));
  }

  std::vector<Plan> plans;
  rep.devices.reserve(s.devs.size());
  for (auto& [dev_id, d] : s.devs) {
    if (why_lost.count(dev_id)) continue;
    const Tree& t = s.trees.at(*d.root);
    RepairedDevice& rd = rep.devices.emplace_back();
    rd.dev_id = dev_id;
    rd.lost_ranges = t.lost;
    Plan p;
    p.dev_id = dev_id;
    p.old_root = *d.root;
    p.report = &rd;
    if (d.details) {
      p.details = *d.details;
      if (d.details->mapped_blocks > t.maps.size() + t.dropped) {
        rd.mappings_lost += d.details->mapped_blocks - t.maps.size() - t.dropped;
      }
    } else {
      rd.details_rebuilt = true;
      p.details = DeviceDetails{0, s.sb.trans_id, s.max_time, s.max_time};
      rep.notes.push_back("thin device " + std::to_string(dev_id) +
                          ": details lost, rebuilt from its mapping tree");
    }
    if (const auto* v = cat.find_dev(dev_id)) {
      rd.volume = v->name;
      p.limit = (v->size_bytes + B - 1) / B;
      if (t.maps.size() > 0 && t.maps.back().first >= p.limit) {
        rep.notes.push_back("volume " + v->name + ": mappings beyond its size dropped");
      }
    } else {
      // A device nobody named: keep its data under a name, read-only, sized to its mappings.
      catalog::VolumeRecord nv;
      nv.name = "recovered-" + std::to_string(dev_id);
      for (int i = 1; cat.find(nv.name); i++) {
        nv.name = "recovered-" + std::to_string(dev_id) + "-" + std::to_string(i);
      }
      nv.dev_id = dev_id;
      const uint64_t top = t.maps.empty() ? 1 : t.maps.back().first + 1;
      nv.size_bytes = std::min(top * B, kMaxVolumeBytes / B * B);
      nv.read_only = true;
      p.limit = nv.size_bytes / B;
      nv.created_unix = static_cast<int64_t>(std::time(nullptr));
      rd.volume = nv.name;
      rd.added_to_catalog = true;
      rep.notes.push_back("thin device " + std::to_string(dev_id) +
                          " was not in the catalog: added as read-only volume " + nv.name);
      cat.volumes[nv.name] = nv;
    }
    rd.size_bytes = cat.find(rd.volume)->size_bytes;
    std::vector<LostRange> clipped;
    for (LostRange r : rd.lost_ranges) {
      r.end = std::min(r.end, p.limit);
      if (r.begin < r.end) clipped.push_back(r);
    }
    rd.lost_ranges = std::move(clipped);
    cat.next_dev_id = std::max(cat.next_dev_id, dev_id + 1);
    plans.push_back(p);
  }

  // Build the new metadata beside the old one.
  ::unlink(out_path.c_str());
  {
    TP_ASSIGN_OR_RETURN(auto out, io::create_file(out_path, old_dev->size()));
    auto built = build(*out, s, plans, rep.new_trans_id);
    if (!built.ok()) {
      out.reset();
      ::unlink(out_path.c_str());
      if (built.error().code == Errc::kNoSpace) {
        return make_error(Errc::kNoSpace,
                          "the salvaged trees do not fit in a metadata file of the same size");
      }
      return built.error();
    }
    rep.data_blocks_in_use = *built;
  }
  for (const RepairedDevice& d : rep.devices) {
    rep.mappings += d.mappings;
    rep.mappings_lost += d.mappings_lost;
  }
  // Catalog first (for T+1), then the metadata swap: see the durability protocol.
  if (auto w = cf.write(cat, rep.new_trans_id); !w.ok()) {
    ::unlink(out_path.c_str());
    return w.error();
  }
  std::string damaged = meta_path + ".damaged-" + utc_stamp();
  for (int i = 1; exists(damaged); i++) {
    damaged = meta_path + ".damaged-" + utc_stamp() + "-" + std::to_string(i);
  }
  if (::link(meta_path.c_str(), damaged.c_str()) != 0) {
    Error e = sys_error("keep the damaged metadata");
    ::unlink(out_path.c_str());
    return e;
  }
  if (::rename(out_path.c_str(), meta_path.c_str()) != 0) {
    Error e = sys_error("move the repaired metadata into place");
    ::unlink(damaged.c_str());
    ::unlink(out_path.c_str());
    return e;
  }
  TP_TRY(sync_dir(dir));
  rep.damaged_metadata = damaged;
  return rep;
}

}  // namespace tp::thin
