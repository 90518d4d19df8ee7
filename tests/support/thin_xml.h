#pragma once
// In-core model of the thin_dump XML (thin-provisioning-tools 0.9.0), used by tests to
// describe expected pool contents and to talk to the upstream tools as an oracle.
// Format: docs/DM_THIN_FORMAT.md section 9; the upstream writer/reader is
// thin-provisioning/xml_format.cc in jthornber/thin-provisioning-tools (C++ era).
//
//   <superblock uuid="" time="1" transaction="5" flags="0" version="2"
//               data_block_size="128" nr_data_blocks="1000">
//     <device dev_id="1" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
//       <range_mapping origin_begin="0" data_begin="10" length="4" time="0"/>
//       <single_mapping origin_block="100" data_block="20" time="0"/>
//     </device>
//   </superblock>
//
// Test support only: not product code, not thread-aware, may throw on misuse.

#include <cstdint>
#include <iosfwd>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tp::testing {

// One mapped block. Ranges in the XML are expanded into one XmlMapping per block.
struct XmlMapping {
  uint64_t origin = 0;  // thin (virtual) block
  uint64_t data = 0;    // data (physical) block
  uint32_t time = 0;    // thin_restore keeps only the low 24 bits

  bool operator==(const XmlMapping&) const = default;
};

struct XmlDevice {
  uint64_t dev_id = 0;
  uint64_t mapped_blocks = 0;  // thin_restore ignores this and recomputes it
  uint64_t transaction = 0;
  uint32_t creation_time = 0;
  uint32_t snap_time = 0;
  std::vector<XmlMapping> mappings;  // sorted by origin, origins distinct

  bool operator==(const XmlDevice&) const = default;
};

struct XmlPool {
  std::string uuid;  // thin_dump 0.9.0 always prints ""
  uint32_t time = 0;
  uint64_t transaction = 0;
  uint32_t flags = 0;
  uint32_t version = 2;
  uint32_t data_block_size = 128;  // sectors
  uint64_t nr_data_blocks = 0;
  std::vector<XmlDevice> devices;  // sorted by dev_id, ids distinct

  bool operator==(const XmlPool&) const = default;
};

// Renders `pool` exactly as thin_dump 0.9.0 prints it (two-space indent, attributes in
// thin_dump's order, trailing newline). Within a device, a maximal run of mappings with
// consecutive origins, consecutive data blocks and equal time becomes one range_mapping
// (length >= 2); anything else is a single_mapping. Prints fields as given (mapped_blocks
// is not recomputed). Cost: O(total mappings).
std::string to_xml(const XmlPool& pool);

// Parses thin_dump output (or to_xml output). Accepts attributes in any order, ignores
// unknown attributes, an optional <?xml ...?> declaration and comments; expands ranges.
// Devices and mappings are kept in document order (thin_dump emits them sorted).
// Required attributes follow thin_restore: all of them except superblock flags (default 0)
// and version (default 1, as thin_restore does). Returns nullopt on any syntax error,
// missing/non-numeric/out-of-range attribute, zero-length range, misplaced element, or
// trailing garbage.
std::optional<XmlPool> parse_xml(std::string_view text);

struct RandomPoolParams {
  int devices = 4;
  uint64_t max_mappings_per_device = 3000;
  uint64_t nr_data_blocks = 100000;
  double share_fraction = 0.2;  // rough fraction of extents whose data is shared
  uint32_t max_time = 5;        // REQUIRES: < 2^24 (thin_restore masks time to 24 bits)
};

// A random pool that thin_restore accepts and thin_check passes. Deterministic per
// (seed, params) on every platform (own PRNG, no <random> distributions).
// Promises: `params.devices` devices with distinct ids < 2^24, sorted by id; each device
// has 0..max_mappings_per_device mappings sorted by origin, made of runs (consecutive data
// blocks, sometimes split by a time change) and single blocks, with origins sometimes
// adjacent across extents; mapped_blocks == mappings.size(); every data block is
// < nr_data_blocks; a data block is either private to one mapping or shared by the same
// number of mappings in 2..4 distinct devices (never twice within one device); times,
// creation_time and snap_time (>= creation_time) are <= pool.time == max_time; uuid is "".
// Device transaction ids are <= the pool's. If the requested mappings would exceed half
// the data space, per-device targets are scaled down.
// REQUIRES: devices >= 0, nr_data_blocks >= 1.
XmlPool random_pool(uint64_t seed, const RandomPoolParams& params = {});

// data block -> number of mappings (over all devices) pointing at it. For trees without
// shared btree nodes (what thin_restore builds) this equals the data space map count.
std::map<uint64_t, uint32_t> data_ref_counts(const XmlPool& pool);

// Total mappings over all devices.
uint64_t total_mappings(const XmlPool& pool);

// What thin_dump would print for a pool restored from `pool`: uuid "" and each
// mapped_blocks recomputed as mappings.size().
XmlPool normalized_for_dump(XmlPool pool);

// "" if equal, else a one-line description of the first difference
// (e.g. "dev 7 mapping[12]: origin 40 vs 41"). Use as EXPECT_EQ(first_difference(a, b), "")
// to avoid gtest printing two whole pools.
std::string first_difference(const XmlPool& expected, const XmlPool& actual);

// gtest printers: a summary line, plus the XML when the pool is small.
void PrintTo(const XmlPool& pool, std::ostream* os);
void PrintTo(const XmlDevice& dev, std::ostream* os);
void PrintTo(const XmlMapping& m, std::ostream* os);

}  // namespace tp::testing
