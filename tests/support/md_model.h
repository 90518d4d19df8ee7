#pragma once
// A model of dm-thin metadata as thin_dump prints it, kept by applying the dm-thin rules by
// hand, and a driver that applies the same random operation to real metadata and model.

#include <algorithm>
#include <random>
#include <stdexcept>
#include <vector>

#include "pdata/thin_metadata.h"
#include "support/thin_xml.h"

namespace tp::testing {

class MdModel {
 public:
  XmlPool pool;

  XmlDevice& dev(uint64_t id) {
    for (auto& d : pool.devices) {
      if (d.dev_id == id) return d;
    }
    throw std::logic_error("no device");
  }
  void create_thin(uint64_t id) {
    XmlDevice d;
    d.dev_id = id;
    d.transaction = pool.transaction;
    d.creation_time = d.snap_time = pool.time;
    add(d);
  }
  void create_snap(uint64_t id, uint64_t origin) {
    pool.time++;
    XmlDevice& o = dev(origin);
    o.snap_time = pool.time;
    XmlDevice d = o;
    d.dev_id = id;
    d.transaction = pool.transaction;
    d.creation_time = d.snap_time = pool.time;
    add(d);
  }
  void remove_dev(uint64_t id) {
    std::erase_if(pool.devices, [&](auto& d) { return d.dev_id == id; });
  }
  void map(uint64_t id, uint64_t vb, uint64_t data) {
    auto& m = dev(id).mappings;
    auto it = std::lower_bound(m.begin(), m.end(), vb,
                               [](const XmlMapping& x, uint64_t k) { return x.origin < k; });
    if (it != m.end() && it->origin == vb) {
      *it = XmlMapping{vb, data, pool.time};
    } else {
      m.insert(it, XmlMapping{vb, data, pool.time});
    }
    dev(id).mapped_blocks = m.size();
  }
  void unmap(uint64_t id, uint64_t vb) {
    auto& m = dev(id).mappings;
    std::erase_if(m, [&](auto& x) { return x.origin == vb; });
    dev(id).mapped_blocks = m.size();
  }

 private:
  void add(XmlDevice d) {
    auto it = std::lower_bound(pool.devices.begin(), pool.devices.end(), d.dev_id,
                               [](const XmlDevice& x, uint64_t k) { return x.dev_id < k; });
    pool.devices.insert(it, std::move(d));
  }
};

// Applies random operations (create, snapshot, delete, map, unmap) to md and model alike.
class RandomMdOps {
 public:
  RandomMdOps(uint64_t seed, uint64_t vspace, size_t max_devices = 12)
      : rng_(seed), vspace_(vspace), max_devices_(max_devices) {}

  // One operation. Returns the first error of md (the model is then not updated).
  Result<void> step(pdata::ThinMetadata& md, MdModel& model) {
    int op = static_cast<int>(rng_() % 1000);
    if (live_.empty() || op < 3) {
      uint64_t id = next_id_++;
      TP_TRY(md.create_thin(id));
      model.create_thin(id);
      live_.push_back(id);
    } else if (op < 8 && live_.size() < max_devices_) {
      uint64_t origin = live_[rng_() % live_.size()];
      uint64_t id = next_id_++;
      TP_TRY(md.create_snap(id, origin));
      model.create_snap(id, origin);
      live_.push_back(id);
    } else if (op < 11 && live_.size() > 2) {
      size_t k = rng_() % live_.size();
      TP_TRY(md.delete_device(live_[k]));
      model.remove_dev(live_[k]);
      live_.erase(live_.begin() + static_cast<long>(k));
    } else if (op < 700) {
      uint64_t id = live_[rng_() % live_.size()];
      uint64_t vb = rng_() % vspace_;
      TP_ASSIGN_OR_RETURN(uint64_t b, md.alloc_data_block());
      TP_TRY(md.insert(id, vb, b));
      model.map(id, vb, b);
    } else {
      uint64_t id = live_[rng_() % live_.size()];
      auto& m = model.dev(id).mappings;
      if (m.empty()) return {};
      uint64_t vb = m[rng_() % m.size()].origin;
      TP_ASSIGN_OR_RETURN(bool removed, md.remove(id, vb));
      if (!removed) return make_error(Errc::kCorruption, "model mapping missing");
      model.unmap(id, vb);
    }
    return {};
  }

 private:
  std::mt19937_64 rng_;
  uint64_t vspace_;
  size_t max_devices_;
  std::vector<uint64_t> live_;
  uint64_t next_id_ = 1;
};

}  // namespace tp::testing
