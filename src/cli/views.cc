#include "cli/views.h"

#include <fmt/format.h>

#include <sstream>

#include "cli/console.h"
#include "cli/size.h"
#include "pdata/format.h"

namespace tp::cli {
namespace {

// "1.50 GiB (1610612736 bytes)"
std::string both(uint64_t bytes) {
  return fmt::format("{} ({} bytes)", format_bytes(bytes), bytes);
}

std::string named(uint32_t dev, const VolumeNamer& name, std::string_view fallback) {
  std::string v = dev != kNoDev && name ? name(dev) : "";
  return v.empty() ? std::string(fallback) : v;
}

}  // namespace

std::string space_text(const SpaceNeed& n, const VolumeNamer& name, std::string_view command,
                       std::string_view fallback) {
  // "52.00 MiB (832 blocks)", "512.00 KiB (128 metadata blocks)"
  auto amount = [&](uint64_t units) {
    return fmt::format("{} ({} {}block{})", format_bytes(units * n.unit_bytes), units,
                       n.what_for == SpaceFor::kMetadata ? "metadata " : "", units == 1 ? "" : "s");
  };
  auto volume = [&](uint32_t dev) { return named(dev, name, ""); };
  return describe_space(n, amount, volume, fallback, command);
}

void add_space_json(const SpaceNeed& n, const VolumeNamer& name, std::string_view fallback,
                    nlohmann::json& j) {
  const uint64_t u = n.unit_bytes;
  auto both_units = [&](const char* key, uint64_t units) {
    j[fmt::format("{}_bytes", key)] = units * u;
    j[fmt::format("{}_blocks", key)] = units;
  };
  both_units("needed", n.need);
  both_units("available", n.available());
  both_units("unreserved", n.unreserved);
  both_units("freed", n.freed);
  both_units("own_reserved", n.own);
  both_units("short", n.fits() ? 0 : n.need - n.available());
  j["unit_bytes"] = u;
  j["for"] = space_for_name(n.what_for);
  const std::string vol = named(n.dev, name, fallback);
  j["volume"] = vol.empty() ? nlohmann::json(nullptr) : nlohmann::json(vol);
  const std::string with = named(n.shared_with, name, "");
  j["shared_with"] = with.empty() ? nlohmann::json(nullptr) : nlohmann::json(with);
}

nlohmann::json pool_info_json(const thin::PoolInfo& info) {
  const uint64_t bb = info.block_bytes;
  const uint64_t mb = pdata::kBlockSize;
  nlohmann::json j;
  j["block_bytes"] = bb;
  j["size_bytes"] = info.nr_blocks * bb;
  j["used_bytes"] = info.used_blocks * bb;
  j["free_bytes"] = info.free_blocks * bb;
  j["reserved_bytes"] = info.reserved_blocks * bb;
  j["unreserved_bytes"] = info.unreserved_blocks * bb;
  j["metadata_bytes"] = info.metadata_blocks * mb;
  j["metadata_used_bytes"] = info.metadata_used_blocks * mb;
  j["nr_blocks"] = info.nr_blocks;
  j["used_blocks"] = info.used_blocks;
  j["free_blocks"] = info.free_blocks;
  j["reserved_blocks"] = info.reserved_blocks;
  j["unreserved_blocks"] = info.unreserved_blocks;
  j["metadata_block_bytes"] = mb;
  j["metadata_blocks"] = info.metadata_blocks;
  j["metadata_used_blocks"] = info.metadata_used_blocks;
  j["data_file_allocated_bytes"] = info.data_file_allocated_bytes;
  j["transaction_id"] = info.trans_id;
  j["state"] = thin::pool_state_name(info.state);
  j["low_water_percent"] = info.low_water_percent;
  j["volumes"] = info.volumes;
  // Guaranteed space per provisioning class (SEMANTICS.md): what the guarantees cover, and
  // of that what the pool holds back for them (unmapped or shared blocks); the explicit
  // reservations (reserve, snapshot --reserve) are counted separately.
  j["guaranteed_data_bytes"] = info.data_class.guaranteed_blocks * bb;
  j["guaranteed_meta_bytes"] = info.meta_class.guaranteed_blocks * bb;
  j["reserved_data_bytes"] = info.data_class.reserved_blocks * bb;
  j["reserved_meta_bytes"] = info.meta_class.reserved_blocks * bb;
  j["explicit_reserved_bytes"] = info.explicit_reserved_blocks * bb;
  j["low_water_crossings"] = info.low_water_crossings;
  // The metadata journal (DESIGN.md "The I/O path and commits"): its size, what it holds
  // since the last checkpoint, what the last open replayed; commits since open.
  j["journal_bytes"] = info.journal_bytes;
  j["journal_used_bytes"] = info.journal_used_bytes;
  j["journal_batches"] = info.journal_batches;
  j["journal_replayed_batches"] = info.journal_replayed_batches;
  j["journal_replayed_records"] = info.journal_replayed_records;
  j["checkpoints"] = info.checkpoints;
  j["journal_commits"] = info.journal_commits;
  j["background_commits"] = info.background_commits;
  j["needs_check"] = info.needs_check;
  return j;
}

std::string pool_info_text(const std::string& dir, const thin::PoolInfo& info) {
  const uint64_t bb = info.block_bytes;
  const uint64_t mb = pdata::kBlockSize;
  auto blocks = [&](uint64_t n) {
    return fmt::format("{} ({} bytes, {} blocks)", format_bytes(n * bb), n * bb, n);
  };
  Table t({"", ""}, {false, false});
  t.add({"pool", dir});
  t.add({"block size", both(bb)});
  t.add({"size", blocks(info.nr_blocks)});
  t.add({"used", blocks(info.used_blocks)});
  t.add({"free", blocks(info.free_blocks)});
  t.add({"reserved", blocks(info.reserved_blocks)});
  t.add({"unreserved", blocks(info.unreserved_blocks)});
  t.add(
      {"metadata", fmt::format("{} ({} bytes, {} blocks)", format_bytes(info.metadata_blocks * mb),
                               info.metadata_blocks * mb, info.metadata_blocks)});
  t.add({"metadata used",
         fmt::format("{} ({} bytes, {} blocks)", format_bytes(info.metadata_used_blocks * mb),
                     info.metadata_used_blocks * mb, info.metadata_used_blocks)});
  t.add({"data file", both(info.data_file_allocated_bytes) + " allocated"});
  t.add({"state", thin::pool_state_name(info.state)});
  t.add({"low water", fmt::format("{} %", info.low_water_percent)});
  t.add({"transaction id", std::to_string(info.trans_id)});
  t.add({"volumes", std::to_string(info.volumes)});
  t.add({"low-water crossings", std::to_string(info.low_water_crossings)});
  t.add({"journal", fmt::format("{} used of {}, {} batches since the last checkpoint",
                                format_bytes(info.journal_used_bytes),
                                format_bytes(info.journal_bytes), info.journal_batches)});
  t.add({"metadata file", info.needs_check ? "needs_check: the journal may hold changes it lacks"
                                           : "complete (needs_check clear)"});
  if (info.journal_replayed_batches > 0) {
    t.add({"journal replayed",
           fmt::format("{} batches ({} mapping changes) at open", info.journal_replayed_batches,
                       info.journal_replayed_records)});
  }
  t.add({"commits",
         fmt::format("{} checkpoints, {} journal commits, {} background commits since open",
                     info.checkpoints, info.journal_commits, info.background_commits)});
  std::ostringstream os;
  t.print(os);
  // The header row of a key/value table is empty: drop it.
  std::string s = os.str();
  s = s.substr(s.find('\n') + 1);

  // Where the reserved blocks go: guarantees by class, then explicit reservations.
  Table space({"SPACE", "GUARANTEED", "RESERVED"}, {false, true, true});
  space.add({"data", format_bytes(info.data_class.guaranteed_blocks * bb),
             format_bytes(info.data_class.reserved_blocks * bb)});
  space.add({"meta", format_bytes(info.meta_class.guaranteed_blocks * bb),
             format_bytes(info.meta_class.reserved_blocks * bb)});
  space.add({"explicit", "-", format_bytes(info.explicit_reserved_blocks * bb)});
  std::ostringstream os2;
  space.print(os2);
  return s + "\n" + os2.str();
}

nlohmann::json volume_json(const thin::VolumeInfo& v, uint32_t block_bytes) {
  const uint64_t bb = block_bytes;
  nlohmann::json j;
  j["name"] = v.name;
  j["dev_id"] = v.dev_id;
  j["size_bytes"] = v.size_bytes;
  j["origin"] = v.origin.empty() ? nlohmann::json(nullptr) : nlohmann::json(v.origin);
  j["mapped_blocks"] = v.mapped_blocks;
  j["mapped_bytes"] = v.mapped_blocks * bb;
  j["exclusive_blocks"] = v.exclusive_blocks;
  j["exclusive_bytes"] = v.exclusive_blocks * bb;
  j["guaranteed_blocks"] = v.guaranteed_blocks;
  j["guaranteed_bytes"] = v.guaranteed_blocks * bb;
  j["reserved_blocks"] = v.reserved_blocks;
  j["reserved_bytes"] = v.reserved_blocks * bb;
  j["guaranteed_data_bytes"] = v.data_class.guaranteed_blocks * bb;
  j["guaranteed_meta_bytes"] = v.meta_class.guaranteed_blocks * bb;
  j["reserved_data_bytes"] = v.data_class.reserved_blocks * bb;
  j["reserved_meta_bytes"] = v.meta_class.reserved_blocks * bb;
  j["explicit_reserved_bytes"] = v.explicit_reserve_blocks * bb;
  j["writable"] = !v.read_only;
  j["read_only"] = v.read_only;
  j["created_unix"] = v.created_unix;
  return j;
}

std::string volumes_table(const std::vector<thin::VolumeInfo>& vols, uint32_t block_bytes,
                          const std::map<std::string, unsigned>& exported) {
  const uint64_t bb = block_bytes;
  Table t({"NAME", "ID", "SIZE", "ORIGIN", "MAPPED", "EXCLUSIVE", "GUARANTEED", "RESERVED",
           "WRITABLE", "EXPORTED"},
          {false, true, true, false, true, true, true, true, false, true});
  for (const auto& v : vols) {
    auto it = exported.find(v.name);
    t.add({v.name, std::to_string(v.dev_id), format_bytes(v.size_bytes),
           v.origin.empty() ? "-" : v.origin, format_bytes(v.mapped_blocks * bb),
           format_bytes(v.exclusive_blocks * bb), format_bytes(v.guaranteed_blocks * bb),
           format_bytes(v.reserved_blocks * bb), v.read_only ? "no" : "yes",
           it == exported.end() ? "-" : std::to_string(it->second)});
  }
  std::ostringstream os;
  t.print(os);
  return os.str();
}

}  // namespace tp::cli
