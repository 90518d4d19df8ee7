// The in-core catalog: JSON encoding and validation, volume names, guarantee range sets.
// The record framing and the two-generation file live in catalog_file.cc.

#include "catalog/catalog.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tp::catalog {
namespace {

using Json = nlohmann::json;
// Output keeps the documented field order, so a record is easy to read in a dump.
using OrderedJson = nlohmann::ordered_json;

constexpr uint64_t kFormat = 1;
constexpr uint64_t kMaxDevId = uint64_t{1} << 24;  // dm-thin device ids are 24 bits
constexpr uint64_t kMinBlockBytes = 64 * 1024;
constexpr uint64_t kMaxBlockBytes = uint64_t{1} << 30;
constexpr size_t kMaxNameBytes = 128;
// Our documents nest 4 deep (root, volumes, volume, guarantee, range). Anything much deeper is
// garbage; refusing it before parsing keeps hostile input from costing stack or memory.
constexpr int kMaxNesting = 16;

Error corrupt(const char* what) {
  return make_error(Errc::kCorruption, what);
}

const char* class_name(ProvisionClass c) {
  return c == ProvisionClass::kMeta ? "meta" : "data";
}

bool nesting_ok(std::string_view text) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char ch : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (ch == '\\') {
        escaped = true;
      } else if (ch == '"') {
        in_string = false;
      }
      continue;
    }
    if (ch == '"') {
      in_string = true;
    } else if (ch == '[' || ch == '{') {
      if (++depth > kMaxNesting) return false;
    } else if ((ch == ']' || ch == '}') && depth > 0) {
      depth--;
    }
  }
  return true;
}

// Field readers: false when the field is missing or has the wrong type/range. None throws:
// find() on an object and get<>() of the checked type are exception-free.
const Json* field(const Json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

bool read_u64(const Json& obj, const char* key, uint64_t* out) {
  const Json* v = field(obj, key);
  if (v == nullptr || !v->is_number_unsigned()) return false;
  *out = v->get<uint64_t>();
  return true;
}

bool read_u32(const Json& obj, const char* key, uint32_t* out) {
  uint64_t v = 0;
  if (!read_u64(obj, key, &v) || v > std::numeric_limits<uint32_t>::max()) return false;
  *out = static_cast<uint32_t>(v);
  return true;
}

bool read_i64(const Json& obj, const char* key, int64_t* out) {
  const Json* v = field(obj, key);
  if (v == nullptr) return false;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (!v->is_number_integer()) return false;
  *out = v->get<int64_t>();
  return true;
}

bool read_bool(const Json& obj, const char* key, bool* out) {
  const Json* v = field(obj, key);
  if (v == nullptr || !v->is_boolean()) return false;
  *out = v->get<bool>();
  return true;
}

bool read_string(const Json& obj, const char* key, std::string* out) {
  const Json* v = field(obj, key);
  if (v == nullptr || !v->is_string()) return false;
  *out = v->get_ref<const std::string&>();
  return true;
}

// nullptr on success, else why the range is unreadable.
const char* parse_range(const Json& j, GuaranteeRange* r) {
  if (!j.is_object()) return "catalog guarantee range is not an object";
  if (!read_u64(j, "begin", &r->begin) || !read_u64(j, "end", &r->end)) {
    return "catalog guarantee range has a bad begin or end";
  }
  std::string cls;
  if (!read_string(j, "class", &cls)) return "catalog guarantee range has a bad class";
  if (cls == "data") {
    r->cls = ProvisionClass::kData;
  } else if (cls == "meta") {
    r->cls = ProvisionClass::kMeta;
  } else {
    return "catalog guarantee range has an unknown class";
  }
  return nullptr;
}

const char* parse_volume(const Json& j, VolumeRecord* v) {
  if (!j.is_object()) return "catalog volume is not an object";
  if (!read_string(j, "name", &v->name)) return "catalog volume has a bad name field";
  if (!read_u64(j, "dev_id", &v->dev_id)) return "catalog volume has a bad dev_id";
  if (!read_u64(j, "size_bytes", &v->size_bytes)) return "catalog volume has a bad size_bytes";
  if (!read_bool(j, "read_only", &v->read_only)) return "catalog volume has a bad read_only";
  if (!read_string(j, "origin", &v->origin)) return "catalog volume has a bad origin";
  if (!read_u64(j, "origin_dev_id", &v->origin_dev_id)) {
    return "catalog volume has a bad origin_dev_id";
  }
  if (!read_i64(j, "created_unix", &v->created_unix)) {
    return "catalog volume has a bad created_unix";
  }
  if (!read_u64(j, "reserve_blocks", &v->reserve_blocks)) {
    return "catalog volume has a bad reserve_blocks";
  }
  const Json* g = field(j, "guarantee");
  if (g == nullptr || !g->is_array()) return "catalog volume has a bad guarantee";
  v->guarantee.reserve(g->size());
  for (const Json& rj : *g) {
    GuaranteeRange r;
    if (const char* why = parse_range(rj, &r)) return why;
    v->guarantee.push_back(r);
  }
  return nullptr;
}

const char* parse_settings(const Json& j, PoolSettings* s) {
  if (!j.is_object()) return "catalog settings is not an object";
  if (!read_u32(j, "block_bytes", &s->block_bytes)) return "catalog settings has a bad block_bytes";
  if (!read_u64(j, "data_bytes", &s->data_bytes)) return "catalog settings has a bad data_bytes";
  if (!read_u32(j, "low_water_percent", &s->low_water_percent)) {
    return "catalog settings has a bad low_water_percent";
  }
  if (!read_string(j, "low_water_hook", &s->low_water_hook)) {
    return "catalog settings has a bad low_water_hook";
  }
  // Optional: absent in catalogs written before it existed.
  if (field(j, "pool_id") != nullptr &&
      (!read_u64(j, "pool_id", &s->pool_id) || s->pool_id >= (uint64_t{1} << 53))) {
    return "catalog settings has a bad pool_id";
  }
  return nullptr;
}

// The document -> Catalog, without the cross-field checks validate() does.
const char* parse_catalog(const Json& j, Catalog* c) {
  if (!j.is_object()) return "catalog is not a JSON object";
  uint64_t format = 0;
  if (!read_u64(j, "format", &format)) return "catalog has no format";
  if (format != kFormat) return "catalog format is not supported";
  const Json* s = field(j, "settings");
  if (s == nullptr) return "catalog has no settings";
  if (const char* why = parse_settings(*s, &c->settings)) return why;
  if (!read_u64(j, "next_dev_id", &c->next_dev_id)) return "catalog has a bad next_dev_id";
  const Json* vols = field(j, "volumes");
  if (vols == nullptr || !vols->is_array()) return "catalog has a bad volumes list";
  for (const Json& vj : *vols) {
    VolumeRecord v;
    if (const char* why = parse_volume(vj, &v)) return why;
    std::string key = v.name;
    if (!c->volumes.emplace(std::move(key), std::move(v)).second) {
      return "catalog has a duplicate volume name";
    }
  }
  return nullptr;
}

// nullptr when the catalog is well formed, else why not.
const char* check_catalog(const Catalog& c) {
  const PoolSettings& s = c.settings;
  if (s.block_bytes < kMinBlockBytes || s.block_bytes > kMaxBlockBytes ||
      s.block_bytes % kMinBlockBytes != 0) {
    return "catalog block size is not a multiple of 64 KiB in 64 KiB..1 GiB";
  }
  if (s.low_water_percent > 100) return "catalog low-water percentage is above 100";
  if (c.next_dev_id > kMaxDevId) return "catalog next_dev_id does not fit in 24 bits";
  std::set<uint64_t> dev_ids;
  for (const auto& [key, v] : c.volumes) {
    if (key != v.name) return "catalog volume is filed under another name";
    if (!valid_volume_name(v.name)) return "catalog has an invalid volume name";
    if (v.dev_id >= kMaxDevId) return "catalog volume dev_id does not fit in 24 bits";
    if (!dev_ids.insert(v.dev_id).second) return "catalog has a duplicate dev_id";
    if (!v.origin.empty() && !valid_volume_name(v.origin)) {
      return "catalog volume has an invalid origin name";
    }
    if (v.origin_dev_id >= kMaxDevId) return "catalog origin_dev_id does not fit in 24 bits";
    for (size_t i = 0; i < v.guarantee.size(); i++) {
      const GuaranteeRange& r = v.guarantee[i];
      if (r.begin >= r.end) return "catalog guarantee range is empty or reversed";
      if (r.cls != ProvisionClass::kData && r.cls != ProvisionClass::kMeta) {
        return "catalog guarantee range has an unknown class";
      }
      if (i > 0 && v.guarantee[i - 1].end > r.begin) {
        return "catalog guarantee ranges overlap or are not sorted";
      }
    }
  }
  return nullptr;
}

// First range whose end is after `block`. Ends are sorted because the ranges are sorted and
// do not overlap.
std::vector<GuaranteeRange>::const_iterator first_ending_after(
    const std::vector<GuaranteeRange>& set, uint64_t block) {
  return std::partition_point(set.begin(), set.end(),
                              [block](const GuaranteeRange& r) { return r.end <= block; });
}

}  // namespace

VolumeRecord* Catalog::find(const std::string& name) {
  auto it = volumes.find(name);
  return it == volumes.end() ? nullptr : &it->second;
}

const VolumeRecord* Catalog::find(const std::string& name) const {
  auto it = volumes.find(name);
  return it == volumes.end() ? nullptr : &it->second;
}

const VolumeRecord* Catalog::find_dev(uint64_t dev_id) const {
  for (const auto& [name, v] : volumes) {
    if (v.dev_id == dev_id) return &v;
  }
  return nullptr;
}

Result<void> Catalog::validate() const {
  if (const char* why = check_catalog(*this)) return make_error(Errc::kInvalidArgument, why);
  return ok_result();
}

std::string Catalog::to_json() const {
  OrderedJson j;
  j["format"] = kFormat;
  OrderedJson s;
  s["block_bytes"] = settings.block_bytes;
  s["data_bytes"] = settings.data_bytes;
  s["low_water_percent"] = settings.low_water_percent;
  s["low_water_hook"] = settings.low_water_hook;
  if (settings.pool_id != 0) s["pool_id"] = settings.pool_id;
  j["settings"] = std::move(s);
  j["next_dev_id"] = next_dev_id;
  OrderedJson vols = OrderedJson::array();
  for (const auto& [name, v] : volumes) {
    OrderedJson vj;
    vj["name"] = v.name;
    vj["dev_id"] = v.dev_id;
    vj["size_bytes"] = v.size_bytes;
    vj["read_only"] = v.read_only;
    vj["origin"] = v.origin;
    vj["origin_dev_id"] = v.origin_dev_id;
    vj["created_unix"] = v.created_unix;
    OrderedJson g = OrderedJson::array();
    for (const GuaranteeRange& r : v.guarantee) {
      OrderedJson rj;
      rj["begin"] = r.begin;
      rj["end"] = r.end;
      rj["class"] = class_name(r.cls);
      g.push_back(std::move(rj));
    }
    vj["guarantee"] = std::move(g);
    vj["reserve_blocks"] = v.reserve_blocks;
    vols.push_back(std::move(vj));
  }
  j["volumes"] = std::move(vols);
  // Strings from the CLI (the hook command) need not be UTF-8; the default handler would
  // throw. Replacement keeps the record writable; from_json only ever sees valid UTF-8.
  return j.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
}

Result<Catalog> Catalog::from_json(std::string_view text) {
  if (!nesting_ok(text)) return corrupt("catalog JSON is nested too deeply");
  try {
    Json j = Json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return corrupt("catalog is not valid JSON");
    Catalog c;
    if (const char* why = parse_catalog(j, &c)) return corrupt(why);
    if (const char* why = check_catalog(c)) return corrupt(why);
    return c;
  } catch (const Json::exception&) {
    // Not expected (parsing runs with exceptions off and every get<> is type-checked), but a
    // library exception must not leave the layer.
    return corrupt("catalog JSON could not be read");
  }
}

bool valid_volume_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes) return false;
  if (name.front() == '.' || name.front() == '-') return false;
  for (char ch : name) {
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '+' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

std::vector<GuaranteeRange> add_range(std::vector<GuaranteeRange> set, GuaranteeRange r) {
  if (r.begin >= r.end) return set;
  // Whatever was there (of either class) gives way to the new range; then the new range
  // absorbs same-class neighbours it touches.
  set = remove_range(std::move(set), r.begin, r.end);
  auto it = std::lower_bound(set.begin(), set.end(), r.begin,
                             [](const GuaranteeRange& x, uint64_t b) { return x.begin < b; });
  it = set.insert(it, r);
  if (auto next = it + 1; next != set.end() && next->begin == it->end && next->cls == it->cls) {
    it->end = next->end;
    set.erase(next);
  }
  if (it != set.begin()) {
    auto prev = it - 1;
    if (prev->end == it->begin && prev->cls == it->cls) {
      prev->end = it->end;
      set.erase(it);
    }
  }
  return set;
}

std::vector<GuaranteeRange> remove_range(std::vector<GuaranteeRange> set, uint64_t begin,
                                         uint64_t end) {
  if (begin >= end) return set;
  auto first = first_ending_after(set, begin);
  if (first == set.end() || first->begin >= end) return set;  // nothing overlaps
  std::vector<GuaranteeRange> out(set.cbegin(), first);
  out.reserve(set.size() + 1);
  auto it = first;
  for (; it != set.cend() && it->begin < end; ++it) {
    if (it->begin < begin) out.push_back(GuaranteeRange{it->begin, begin, it->cls});
    if (it->end > end) out.push_back(GuaranteeRange{end, it->end, it->cls});
  }
  out.insert(out.end(), it, set.cend());
  return out;
}

uint64_t covered_blocks(const std::vector<GuaranteeRange>& set, uint64_t begin, uint64_t end) {
  uint64_t n = 0;
  if (begin >= end) return 0;
  for (auto it = first_ending_after(set, begin); it != set.end() && it->begin < end; ++it) {
    n += std::min(it->end, end) - std::max(it->begin, begin);
  }
  return n;
}

bool is_covered(const std::vector<GuaranteeRange>& set, uint64_t block) {
  auto it = first_ending_after(set, block);
  return it != set.end() && it->begin <= block;
}

}  // namespace tp::catalog
