#pragma once
// Full consistency check of dm-thin metadata, independent of the code that wrote it: walks
// every tree from the superblock, checks node shapes (value sizes, key order within and
// across nodes, parent keys, minimum fill), recomputes every metadata and data block's
// reference count and compares it with the space maps. Damage is data: a list of
// one-line findings, empty when the metadata is consistent.

#include <cstdint>
#include <string>
#include <vector>

#include "pdata/thin_metadata.h"

namespace tp::pdata {

struct CheckReport {
  std::vector<std::string> damage;
  // Harmless inconsistencies that the next commit rewrites (e.g. a space map's
  // nr_allocated hint in the superblock, which thin_restore 0.9 writes off by one).
  std::vector<std::string> warnings;
  uint64_t nodes = 0;     // btree nodes visited
  uint64_t mappings = 0;  // mappings over all devices
  uint64_t data_blocks_in_use = 0;
  bool ok() const { return damage.empty(); }
};

// REQUIRES: md was just opened or committed (the in-core space maps match the trees).
Result<CheckReport> check_metadata(ThinMetadata& md);

}  // namespace tp::pdata
