#pragma once
// How pools and volumes look on the command line: JSON objects with stable field names
// in bytes (CLI.md: scripts never parse human units) and human tables.

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "thin/pool.h"

namespace tp::cli {

// {block_bytes, size_bytes, used_bytes, free_bytes, reserved_bytes, unreserved_bytes,
//  metadata_bytes, metadata_used_bytes, transaction_id, state, low_water_percent, volumes,
//  guaranteed_data_bytes, guaranteed_meta_bytes, reserved_data_bytes, reserved_meta_bytes,
//  explicit_reserved_bytes, low_water_crossings, and the same counts in blocks:
//  nr_blocks, used_blocks, ...}
nlohmann::json pool_info_json(const thin::PoolInfo& info);
// "key  value" lines, sizes in human units and exact numbers, then a SPACE GUARANTEED
// RESERVED table (data, meta, explicit).
std::string pool_info_text(const std::string& dir, const thin::PoolInfo& info);

// {name, dev_id, size_bytes, origin, mapped_blocks, mapped_bytes, exclusive_blocks,
//  exclusive_bytes, guaranteed_blocks, guaranteed_bytes, reserved_blocks, reserved_bytes,
//  guaranteed_data_bytes, guaranteed_meta_bytes, reserved_data_bytes, reserved_meta_bytes,
//  explicit_reserved_bytes, writable, read_only, created_unix}; origin is null for a volume
//  that is not a snapshot. reserved_bytes = R(v) = G(v) + E(v).
nlohmann::json volume_json(const thin::VolumeInfo& v, uint32_t block_bytes);
// NAME ID SIZE ORIGIN MAPPED EXCLUSIVE GUARANTEED RESERVED WRITABLE EXPORTED; exported:
// open NBD connections per volume (absent: none).
std::string volumes_table(const std::vector<thin::VolumeInfo>& vols, uint32_t block_bytes,
                          const std::map<std::string, unsigned>& exported = {});

// Names a volume by its thin device id ("" when there is none).
using VolumeNamer = std::function<std::string(uint64_t dev)>;

// The numbers of a space refusal (Error::space) or of a plan, in words, bytes and blocks:
// "needs 52.00 MiB (832 blocks) more reserved for the guarantee of base (shared with pre),
// 52.00 MiB (832 blocks) available (0 B unreserved + 52.00 MiB (832 blocks) freed by the
// rollback)". command: what frees the blocks; fallback: the volume named when the numbers
// point at none (a volume the operation would create).
std::string space_text(const SpaceNeed& n, const VolumeNamer& name, std::string_view command,
                       std::string_view fallback);
// The same as JSON fields, added to j: needed_bytes/_blocks, available_*, unreserved_*,
// freed_*, own_reserved_*, short_* (what is missing, 0 when it fits), unit_bytes, "for"
// (guarantee, reservation, write, metadata), volume, shared_with (names or null).
void add_space_json(const SpaceNeed& n, const VolumeNamer& name, std::string_view fallback,
                    nlohmann::json& j);

}  // namespace tp::cli
