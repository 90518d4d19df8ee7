#include "support/thin_xml.h"

#include <algorithm>
#include <charconv>
#include <limits>
#include <ostream>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace tp::testing {
namespace {

// ---- writing ----------------------------------------------------------------------------

void append_num(std::string& out, uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, end);
}

void append_attr(std::string& out, const char* name, uint64_t v) {
  out += ' ';
  out += name;
  out += "=\"";
  append_num(out, v);
  out += '"';
}

void append_escaped(std::string& out, std::string_view s) {
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
}

// ---- parsing ----------------------------------------------------------------------------

struct Attr {
  std::string_view name;
  std::string value;
};

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}
bool is_name_char(char c) {
  return is_name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

std::optional<std::string> unescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<') {
      return std::nullopt;
    }
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    size_t semi = s.find(';', i);
    if (semi == std::string_view::npos) {
      return std::nullopt;
    }
    std::string_view ent = s.substr(i + 1, semi - i - 1);
    if (ent == "amp") {
      out += '&';
    } else if (ent == "lt") {
      out += '<';
    } else if (ent == "gt") {
      out += '>';
    } else if (ent == "quot") {
      out += '"';
    } else if (ent == "apos") {
      out += '\'';
    } else {
      return std::nullopt;  // numeric references never appear in thin_dump output
    }
    i = semi;
  }
  return out;
}

class AttrSet {
 public:
  explicit AttrSet(std::vector<Attr> attrs) : attrs_(std::move(attrs)) {}

  const std::string* find(std::string_view name) const {
    for (const Attr& a : attrs_) {
      if (a.name == name) {
        return &a.value;
      }
    }
    return nullptr;
  }

  // Missing or malformed sets ok_ = false; `def` is used only when `required` is false.
  uint64_t num(std::string_view name, uint64_t max = std::numeric_limits<uint64_t>::max(),
               bool required = true, uint64_t def = 0) {
    const std::string* v = find(name);
    if (v == nullptr) {
      if (required) {
        ok_ = false;
      }
      return def;
    }
    uint64_t out = 0;
    const char* b = v->data();
    const char* e = b + v->size();
    auto [p, ec] = std::from_chars(b, e, out);
    if (v->empty() || ec != std::errc() || p != e || out > max) {
      ok_ = false;
      return 0;
    }
    return out;
  }
  uint32_t num32(std::string_view name, bool required = true, uint32_t def = 0) {
    return static_cast<uint32_t>(num(name, std::numeric_limits<uint32_t>::max(), required, def));
  }

  bool ok() const { return ok_; }

 private:
  std::vector<Attr> attrs_;
  bool ok_ = true;
};

class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  std::optional<XmlPool> run() {
    enum class State { kTop, kInSuperblock, kInDevice, kDone } state = State::kTop;
    XmlPool pool;
    while (true) {
      skip_space();
      if (i_ == s_.size()) {
        break;
      }
      if (s_[i_] != '<') {
        return std::nullopt;  // character data: thin_dump never emits any
      }
      if (starts_with("<?")) {
        if (state != State::kTop || !skip_past("?>")) {
          return std::nullopt;
        }
        continue;
      }
      if (starts_with("<!--")) {
        if (!skip_past("-->")) {
          return std::nullopt;
        }
        continue;
      }
      if (starts_with("</")) {
        i_ += 2;
        std::string_view name = read_name();
        skip_space();
        if (!consume('>')) {
          return std::nullopt;
        }
        if (state == State::kInDevice && name == "device") {
          state = State::kInSuperblock;
        } else if (state == State::kInSuperblock && name == "superblock") {
          state = State::kDone;
        } else {
          return std::nullopt;
        }
        continue;
      }
      ++i_;
      std::string_view name = read_name();
      bool self_closing = false;
      std::optional<std::vector<Attr>> attrs = read_attrs(&self_closing);
      if (name.empty() || !attrs) {
        return std::nullopt;
      }
      AttrSet a(std::move(*attrs));
      if (name == "superblock" && state == State::kTop) {
        const std::string* uuid = a.find("uuid");
        if (uuid == nullptr) {
          return std::nullopt;
        }
        pool.uuid = *uuid;
        pool.time = a.num32("time");
        pool.transaction = a.num("transaction");
        pool.flags = a.num32("flags", false, 0);
        pool.version = a.num32("version", false, 1);  // thin_restore's default
        pool.data_block_size = a.num32("data_block_size");
        pool.nr_data_blocks = a.num("nr_data_blocks");
        state = self_closing ? State::kDone : State::kInSuperblock;
      } else if (name == "device" && state == State::kInSuperblock) {
        XmlDevice dev;
        dev.dev_id = a.num("dev_id");
        dev.mapped_blocks = a.num("mapped_blocks");
        dev.transaction = a.num("transaction");
        dev.creation_time = a.num32("creation_time");
        dev.snap_time = a.num32("snap_time");
        pool.devices.push_back(std::move(dev));
        if (!self_closing) {
          state = State::kInDevice;
        }
      } else if (name == "range_mapping" && state == State::kInDevice && self_closing) {
        uint64_t origin = a.num("origin_begin");
        uint64_t data = a.num("data_begin");
        uint64_t len = a.num("length");
        uint32_t time = a.num32("time");
        constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
        if (len == 0 || origin > kMax - (len - 1) || data > kMax - (len - 1)) {
          return std::nullopt;
        }
        auto& maps = pool.devices.back().mappings;
        for (uint64_t k = 0; k < len && a.ok(); ++k) {
          maps.push_back(XmlMapping{origin + k, data + k, time});
        }
      } else if (name == "single_mapping" && state == State::kInDevice && self_closing) {
        XmlMapping m;
        m.origin = a.num("origin_block");
        m.data = a.num("data_block");
        m.time = a.num32("time");
        pool.devices.back().mappings.push_back(m);
      } else {
        return std::nullopt;
      }
      if (!a.ok()) {
        return std::nullopt;
      }
    }
    if (state != State::kDone) {
      return std::nullopt;
    }
    return pool;
  }

 private:
  bool starts_with(std::string_view p) const { return s_.substr(i_).starts_with(p); }
  void skip_space() {
    while (i_ < s_.size() && is_space(s_[i_])) {
      ++i_;
    }
  }
  bool skip_past(std::string_view end) {
    size_t p = s_.find(end, i_);
    if (p == std::string_view::npos) {
      return false;
    }
    i_ = p + end.size();
    return true;
  }
  bool consume(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  std::string_view read_name() {
    size_t b = i_;
    if (i_ < s_.size() && is_name_start(s_[i_])) {
      ++i_;
      while (i_ < s_.size() && is_name_char(s_[i_])) {
        ++i_;
      }
    }
    return s_.substr(b, i_ - b);
  }
  // After the element name: attributes, then "/>" or ">".
  std::optional<std::vector<Attr>> read_attrs(bool* self_closing) {
    std::vector<Attr> attrs;
    while (true) {
      size_t before = i_;
      skip_space();
      if (consume('>')) {
        *self_closing = false;
        return attrs;
      }
      if (starts_with("/>")) {
        i_ += 2;
        *self_closing = true;
        return attrs;
      }
      if (i_ == before) {
        return std::nullopt;  // attributes must be separated by whitespace
      }
      std::string_view name = read_name();
      skip_space();
      if (name.empty() || !consume('=')) {
        return std::nullopt;
      }
      skip_space();
      if (i_ >= s_.size() || (s_[i_] != '"' && s_[i_] != '\'')) {
        return std::nullopt;
      }
      char quote = s_[i_++];
      size_t end = s_.find(quote, i_);
      if (end == std::string_view::npos) {
        return std::nullopt;
      }
      std::optional<std::string> value = unescape(s_.substr(i_, end - i_));
      i_ = end + 1;
      if (!value) {
        return std::nullopt;
      }
      for (const Attr& a : attrs) {
        if (a.name == name) {
          return std::nullopt;  // duplicate attribute: not well-formed XML
        }
      }
      attrs.push_back(Attr{name, std::move(*value)});
    }
  }

  std::string_view s_;
  size_t i_ = 0;
};

// ---- random pools -----------------------------------------------------------------------

// splitmix64: tiny, good enough, and identical on every compiler and standard library
// (std::uniform_int_distribution is not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform-ish in [0, n); REQUIRES n > 0.
  uint64_t below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }
  // Inclusive.
  uint64_t range(uint64_t lo, uint64_t hi) {
    return hi - lo == std::numeric_limits<uint64_t>::max() ? next() : lo + below(hi - lo + 1);
  }
  bool chance(double p) { return static_cast<double>(next() >> 11) * 0x1.0p-53 < p; }

 private:
  uint64_t s_;
};

// Free data blocks as disjoint [begin, end) intervals keyed by begin.
class DataAllocator {
 public:
  explicit DataAllocator(uint64_t nr_blocks) : nr_(nr_blocks) { free_[0] = nr_blocks; }

  // Allocates a run of *len consecutive free blocks at a random place; halves *len until
  // a run fits. Throws if the space is completely full.
  uint64_t alloc(Rng& rng, uint64_t* len) {
    while (true) {
      auto it = free_.upper_bound(rng.below(nr_));
      if (it != free_.begin()) {
        --it;
      }
      for (size_t n = 0; n < free_.size(); ++n, ++it) {
        if (it == free_.end()) {
          it = free_.begin();
        }
        auto [b, e] = *it;
        if (e - b < *len) {
          continue;
        }
        uint64_t start = b + rng.below(e - b - *len + 1);
        free_.erase(it);
        if (start > b) {
          free_[b] = start;
        }
        if (start + *len < e) {
          free_[start + *len] = e;
        }
        return start;
      }
      if (*len == 1) {
        throw std::runtime_error("random_pool: data space full");
      }
      *len = std::max<uint64_t>(1, *len / 2);
    }
  }

 private:
  uint64_t nr_;
  std::map<uint64_t, uint64_t> free_;
};

struct Extent {
  uint64_t data = 0;
  uint64_t len = 0;
  uint32_t time = 0;
  uint64_t split = 0;  // blocks [split, len) get time2; 0 = no split
  uint32_t time2 = 0;
};

}  // namespace

std::string to_xml(const XmlPool& pool) {
  std::string out;
  out.reserve(256 + 80 * total_mappings(pool));
  out += "<superblock uuid=\"";
  append_escaped(out, pool.uuid);
  out += '"';
  append_attr(out, "time", pool.time);
  append_attr(out, "transaction", pool.transaction);
  append_attr(out, "flags", pool.flags);
  append_attr(out, "version", pool.version);
  append_attr(out, "data_block_size", pool.data_block_size);
  append_attr(out, "nr_data_blocks", pool.nr_data_blocks);
  out += ">\n";
  for (const XmlDevice& dev : pool.devices) {
    out += "  <device";
    append_attr(out, "dev_id", dev.dev_id);
    append_attr(out, "mapped_blocks", dev.mapped_blocks);
    append_attr(out, "transaction", dev.transaction);
    append_attr(out, "creation_time", dev.creation_time);
    append_attr(out, "snap_time", dev.snap_time);
    out += ">\n";
    const auto& maps = dev.mappings;
    for (size_t i = 0; i < maps.size();) {
      size_t j = i + 1;
      while (j < maps.size() && maps[j].origin == maps[j - 1].origin + 1 &&
             maps[j].data == maps[j - 1].data + 1 && maps[j].time == maps[i].time) {
        ++j;
      }
      if (j - i >= 2) {
        out += "    <range_mapping";
        append_attr(out, "origin_begin", maps[i].origin);
        append_attr(out, "data_begin", maps[i].data);
        append_attr(out, "length", j - i);
        append_attr(out, "time", maps[i].time);
      } else {
        out += "    <single_mapping";
        append_attr(out, "origin_block", maps[i].origin);
        append_attr(out, "data_block", maps[i].data);
        append_attr(out, "time", maps[i].time);
      }
      out += "/>\n";
      i = j;
    }
    out += "  </device>\n";
  }
  out += "</superblock>\n";
  return out;
}

std::optional<XmlPool> parse_xml(std::string_view text) {
  return Parser(text).run();
}

XmlPool random_pool(uint64_t seed, const RandomPoolParams& params) {
  if (params.devices < 0 || params.nr_data_blocks == 0 || params.max_time >= (1u << 24)) {
    throw std::invalid_argument("random_pool: bad params");
  }
  Rng rng(seed ^ 0x7468696e706f6f6cULL);  // "thinpool"
  const size_t n = static_cast<size_t>(params.devices);
  const uint64_t max_maps = params.max_mappings_per_device;

  XmlPool pool;
  pool.time = params.max_time;
  pool.transaction = rng.range(1, 1000);
  pool.nr_data_blocks = params.nr_data_blocks;

  std::vector<uint64_t> ids;
  while (ids.size() < n) {
    uint64_t id = rng.below(uint64_t{1} << 24);
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) {
      ids.push_back(id);
    }
  }

  // Each device's own loop consumes at most its target in data blocks (shared extents are
  // allocated once), so scaling targets to half the data space guarantees allocation.
  std::vector<uint64_t> targets(n);
  unsigned __int128 sum = 0;
  for (auto& t : targets) {
    t = rng.range(0, max_maps);
    sum += t;
  }
  const uint64_t limit = params.nr_data_blocks / 2;
  if (sum > limit) {
    for (auto& t : targets) {
      t = static_cast<uint64_t>(t * static_cast<unsigned __int128>(limit) / sum);
    }
  }

  auto random_time = [&] { return static_cast<uint32_t>(rng.range(0, params.max_time)); };
  auto make_extent = [&](uint64_t data, uint64_t len) {
    Extent e{data, len, random_time(), 0, 0};
    if (len >= 2 && params.max_time > 0 && rng.chance(0.1)) {
      e.split = rng.range(1, len - 1);
      e.time2 = static_cast<uint32_t>((e.time + rng.range(1, params.max_time)) %
                                      (uint64_t{params.max_time} + 1));
    }
    return e;
  };

  DataAllocator alloc(params.nr_data_blocks);
  std::vector<std::vector<Extent>> extents(n);
  std::vector<uint64_t> counts(n, 0);
  for (size_t d = 0; d < n; ++d) {
    while (counts[d] < targets[d]) {
      const uint64_t remaining = targets[d] - counts[d];
      if (n >= 2 && rng.chance(params.share_fraction)) {
        uint64_t len = rng.range(1, std::min<uint64_t>(16, remaining));
        size_t want = static_cast<size_t>(rng.range(2, std::min<uint64_t>(4, n))) - 1;
        std::vector<size_t> others;
        for (size_t e = 0; e < n; ++e) {
          if (e != d) {
            others.push_back(e);
          }
        }
        for (size_t k = others.size(); k > 1; --k) {
          std::swap(others[k - 1], others[rng.below(k)]);
        }
        std::vector<size_t> members{d};
        for (size_t e : others) {
          if (members.size() > want) {
            break;
          }
          if (counts[e] + len <= max_maps) {
            members.push_back(e);
          }
        }
        if (members.size() >= 2) {
          uint64_t data = alloc.alloc(rng, &len);
          for (size_t m : members) {
            extents[m].push_back(make_extent(data, len));
            counts[m] += len;
          }
          continue;
        }
      }
      uint64_t len =
          (remaining >= 2 && rng.chance(0.5)) ? rng.range(2, std::min<uint64_t>(64, remaining)) : 1;
      uint64_t data = alloc.alloc(rng, &len);
      extents[d].push_back(make_extent(data, len));
      counts[d] += len;
    }
  }

  for (size_t d = 0; d < n; ++d) {
    XmlDevice dev;
    dev.dev_id = ids[d];
    dev.transaction = rng.range(0, pool.transaction);
    dev.creation_time = random_time();
    dev.snap_time = static_cast<uint32_t>(rng.range(dev.creation_time, params.max_time));
    auto& ext = extents[d];
    for (size_t k = ext.size(); k > 1; --k) {
      std::swap(ext[k - 1], ext[rng.below(k)]);
    }
    uint64_t cursor = rng.below(10000);
    for (const Extent& e : ext) {
      uint64_t gap = 0;
      if (rng.chance(0.02)) {
        gap = rng.range(1, uint64_t{1} << 32);  // far-apart origins: sparse, tall trees
      } else if (!rng.chance(0.3)) {
        gap = rng.range(1, 500);
      }
      uint64_t origin = cursor + gap;
      for (uint64_t k = 0; k < e.len; ++k) {
        uint32_t t = (e.split != 0 && k >= e.split) ? e.time2 : e.time;
        dev.mappings.push_back(XmlMapping{origin + k, e.data + k, t});
      }
      cursor = origin + e.len;
    }
    dev.mapped_blocks = dev.mappings.size();
    pool.devices.push_back(std::move(dev));
  }
  std::sort(pool.devices.begin(), pool.devices.end(),
            [](const XmlDevice& a, const XmlDevice& b) { return a.dev_id < b.dev_id; });
  return pool;
}

std::map<uint64_t, uint32_t> data_ref_counts(const XmlPool& pool) {
  std::map<uint64_t, uint32_t> counts;
  for (const XmlDevice& dev : pool.devices) {
    for (const XmlMapping& m : dev.mappings) {
      ++counts[m.data];
    }
  }
  return counts;
}

uint64_t total_mappings(const XmlPool& pool) {
  uint64_t n = 0;
  for (const XmlDevice& dev : pool.devices) {
    n += dev.mappings.size();
  }
  return n;
}

XmlPool normalized_for_dump(XmlPool pool) {
  pool.uuid.clear();
  for (XmlDevice& dev : pool.devices) {
    dev.mapped_blocks = dev.mappings.size();
  }
  return pool;
}

std::string first_difference(const XmlPool& a, const XmlPool& b) {
  std::string out;
  // Records the mismatch and returns false if x != y.
  auto same = [&out](const std::string& what, const auto& x, const auto& y) {
    if (x == y) {
      return true;
    }
    if constexpr (std::is_same_v<std::decay_t<decltype(x)>, std::string>) {
      out = what + ": \"" + x + "\" vs \"" + y + "\"";
    } else {
      out = what + ": " + std::to_string(x) + " vs " + std::to_string(y);
    }
    return false;
  };
  if (!(same("uuid", a.uuid, b.uuid) && same("time", a.time, b.time) &&
        same("transaction", a.transaction, b.transaction) && same("flags", a.flags, b.flags) &&
        same("version", a.version, b.version) &&
        same("data_block_size", a.data_block_size, b.data_block_size) &&
        same("nr_data_blocks", a.nr_data_blocks, b.nr_data_blocks))) {
    return out;
  }
  for (size_t i = 0; i < std::min(a.devices.size(), b.devices.size()); ++i) {
    const XmlDevice& x = a.devices[i];
    const XmlDevice& y = b.devices[i];
    const std::string at = "dev " + std::to_string(x.dev_id);
    if (!(same("device[" + std::to_string(i) + "] dev_id", x.dev_id, y.dev_id) &&
          same(at + " mapped_blocks", x.mapped_blocks, y.mapped_blocks) &&
          same(at + " transaction", x.transaction, y.transaction) &&
          same(at + " creation_time", x.creation_time, y.creation_time) &&
          same(at + " snap_time", x.snap_time, y.snap_time))) {
      return out;
    }
    for (size_t k = 0; k < std::min(x.mappings.size(), y.mappings.size()); ++k) {
      const XmlMapping& p = x.mappings[k];
      const XmlMapping& q = y.mappings[k];
      if (p == q) {
        continue;
      }
      const std::string mk = at + " mapping[" + std::to_string(k) + "]";
      const std::string mko = mk + " (origin " + std::to_string(p.origin) + ")";
      if (!(same(mk + " origin", p.origin, q.origin) && same(mko + " data", p.data, q.data) &&
            same(mko + " time", p.time, q.time))) {
        return out;
      }
    }
    if (!same(at + " number of mappings", x.mappings.size(), y.mappings.size())) {
      return out;
    }
  }
  same("number of devices", a.devices.size(), b.devices.size());
  return out;
}

void PrintTo(const XmlMapping& m, std::ostream* os) {
  *os << "{origin=" << m.origin << " data=" << m.data << " time=" << m.time << "}";
}

void PrintTo(const XmlDevice& dev, std::ostream* os) {
  *os << "XmlDevice{dev_id=" << dev.dev_id << " mapped_blocks=" << dev.mapped_blocks
      << " transaction=" << dev.transaction << " creation_time=" << dev.creation_time
      << " snap_time=" << dev.snap_time << " mappings=" << dev.mappings.size() << "}";
}

void PrintTo(const XmlPool& pool, std::ostream* os) {
  uint64_t n = total_mappings(pool);
  *os << "XmlPool{devices=" << pool.devices.size() << " mappings=" << n << "}";
  if (n <= 64) {
    *os << "\n" << to_xml(pool);
  }
}

}  // namespace tp::testing
