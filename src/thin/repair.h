#pragma once
// Metadata repair (`thinpool check --repair`), thin-provisioning-tools' thin_repair done in
// process: salvage what can still be read from damaged metadata, rebuild a fresh metadata
// file from it, reconcile the catalog, and swap the new file in.
//
// Salvage walks the superblock, the device-details tree, the top-level mapping tree and
// every device's mapping tree *tolerantly*: a node that fails its checksum, its block
// number, its shape (value size, max entries, key order) or whose keys fall outside the
// range its parent gives it is skipped, and the key range it covered is recorded as lost.
// Mappings to data blocks beyond the data device are dropped (and counted). The space maps
// of the damaged metadata are never read: the rebuilt ones are computed from the surviving
// trees (a data block's count is the number of leaf entries that map it). A whole tree
// that devices share in the damaged metadata is rebuilt once and shared again; subtrees
// shared below the root are rebuilt per device (more metadata, same mappings).
//
// What survives (docs/CLI.md, `check --repair`):
//   - a device whose mapping root cannot be read, or whose top-level entry is lost, is
//     lost; its volume leaves the catalog (reported);
//   - a device whose tree is partly readable keeps what was read; the lost ranges read as
//     zeros afterwards (reported as virtual block ranges);
//   - a device whose details were lost but whose mappings survive gets details rebuilt
//     (mapped_blocks recounted, times from the superblock clock);
//   - a device the catalog does not name becomes a read-only volume `recovered-<dev id>`
//     sized to its highest mapped block; mappings beyond a volume's size are dropped.
// The superblock itself must be readable (its checksum and magic valid): without it the
// roots of the trees are unknown (thin_repair cannot repair that either): kCorruption.
//
// Swap, in the order of the durability protocol (SEMANTICS.md): the new metadata is written
// to DIR/metadata.repaired with transaction id T+1 and synced; the reconciled catalog is
// appended for T+1 and synced; the old metadata is hard-linked as
// DIR/metadata.damaged-<UTC time>; metadata.repaired is renamed over DIR/metadata; the
// directory is synced. A crash at any point leaves either the old pair (T) or the new
// one (T+1).

#include <cstdint>
#include <string>
#include <vector>

#include "io/result.h"

namespace tp::thin {

// A run of virtual blocks [begin, end) whose mappings were lost (end = 2^64-1: "to the end").
struct LostRange {
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct RepairedDevice {
  uint64_t dev_id = 0;
  std::string volume;                  // name in the catalog after repair
  uint64_t size_bytes = 0;             // the volume's size
  uint64_t mappings = 0;               // recovered
  uint64_t mappings_lost = 0;          // known lost (details count minus recovered, dropped)
  std::vector<LostRange> lost_ranges;  // unreadable subtrees, clipped to the volume's size
  bool details_rebuilt = false;        // its device details were lost
  bool added_to_catalog = false;       // named recovered-<dev> by the repair
};

struct LostDevice {
  uint64_t dev_id = 0;
  std::string volume;          // "" when the catalog did not name it
  uint64_t mappings_lost = 0;  // from its details, when they survived
  std::string why;
};

struct RepairReport {
  uint32_t block_bytes = 0;
  uint64_t old_trans_id = 0;
  uint64_t new_trans_id = 0;
  std::vector<RepairedDevice> devices;
  std::vector<LostDevice> lost;
  std::vector<std::string> damage;  // what the tolerant walk skipped, one line each
  std::vector<std::string> notes;   // catalog changes and other decisions
  uint64_t mappings = 0;            // recovered over all devices
  uint64_t mappings_lost = 0;       // known lost over all devices
  uint64_t data_blocks_in_use = 0;  // in the rebuilt data space map
  std::string damaged_metadata;     // where the old metadata was kept
};

// Repairs the pool in dir (see the file comment). REQUIRES: no process has the pool open;
// the pool's lock is taken for the duration (kBusy otherwise). O(mappings) time, memory
// for every surviving mapping of the distinct trees (16 bytes each).
Result<RepairReport> repair_pool(const std::string& dir);

}  // namespace tp::thin
