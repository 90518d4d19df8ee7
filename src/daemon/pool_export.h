#pragma once
// Adapts thin::Pool to the NBD server's interfaces: every volume (or the chosen ones) is an
// export named after it; a read-only snapshot is a read-only export; base:allocation comes
// from Pool::extents (unmapped = hole, reads as zeros); thinpool:delta:<volume> from
// Pool::delta; WRITE_ZEROES with NO_HOLE is Pool::provision_zero (the range is mapped and
// guaranteed, SEMANTICS.md), without it Pool::write_zeroes (whole blocks unmapped); FLUSH and
// FUA go through one GroupCommit shared by all exports (CAN_MULTI_CONN holds: the pool has no
// per-connection cache).
//
// Thread-safety: as thin::Pool (every method from any thread).

#include <memory>
#include <string>
#include <vector>

#include "daemon/group_commit.h"
#include "nbd/target.h"
#include "thin/pool.h"

namespace tp::daemon {

class PoolCatalog : public nbd::ExportCatalog {
 public:
  // exports: the volumes to serve (empty: all of them, as they are at each call).
  // default_export: "" means the only export when there is exactly one.
  PoolCatalog(thin::Pool& pool, GroupCommit& commit, std::vector<std::string> exports,
              std::string default_export);

  std::vector<nbd::ExportEntry> list() override;
  std::string default_export() override;
  Result<std::unique_ptr<nbd::BlockTarget>> open(const std::string& name) override;

 private:
  bool exported(const std::string& name) const;

  thin::Pool& pool_;
  GroupCommit& commit_;
  std::vector<std::string> exports_;
  std::string default_;
};

// One export of one volume (exposed for tests; PoolCatalog::open makes them).
class PoolTarget : public nbd::BlockTarget {
 public:
  PoolTarget(thin::Pool& pool, GroupCommit& commit, const thin::VolumeInfo& v);

  uint64_t size() const override { return size_; }
  bool read_only() const override { return read_only_; }
  bool can_multi_conn() const override { return true; }
  uint32_t preferred_block_size() const override { return pool_.block_bytes(); }

  Result<void> read(uint64_t off, std::span<std::byte> buf) override;
  Result<void> write(uint64_t off, std::span<const std::byte> buf, bool fua) override;
  Result<void> flush() override;
  Result<void> trim(uint64_t off, uint64_t len) override;
  Result<void> zero(uint64_t off, uint64_t len, bool no_hole) override;
  Result<std::vector<nbd::StatusExtent>> block_status(uint64_t off, uint64_t len) override;
  std::vector<std::string> delta_bases() override;
  Result<std::vector<nbd::StatusExtent>> delta_status(const std::string& base, uint64_t off,
                                                      uint64_t len) override;

 private:
  Result<void> wrote(Result<void> r);

  thin::Pool& pool_;
  GroupCommit& commit_;
  std::string name_;
  uint64_t dev_;
  uint64_t size_;
  bool read_only_;
};

}  // namespace tp::daemon
