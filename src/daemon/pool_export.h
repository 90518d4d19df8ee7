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

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/group_commit.h"
#include "nbd/target.h"
#include "thin/pool.h"

namespace tp::daemon {

// How many connections have a volume open.
struct ExportUse {
  unsigned readers = 0;  // read-only exports
  unsigned writers = 0;  // writable exports
};

class PoolCatalog : public nbd::ExportCatalog {
 public:
  // exports: the volumes to serve (empty: all of them, as they are at each call).
  // default_export: "" means the only export when there is exactly one.
  PoolCatalog(thin::Pool& pool, GroupCommit& commit, std::vector<std::string> exports,
              std::string default_export);

  std::vector<nbd::ExportEntry> list() override;
  std::string default_export() override;
  Result<std::unique_ptr<nbd::BlockTarget>> open(const std::string& name) override;

  // Open connections per volume (volumes with none are absent).
  std::map<std::string, ExportUse> uses();
  // Runs op unless a client has one of `gone` open, or one of `rewritten` open through a
  // writable export: kBusy then. No connection can open a volume while op runs (remove,
  // merge and rollback change what an export would see).
  Result<void> unless_open(const std::vector<std::string>& gone,
                           const std::vector<std::string>& rewritten,
                           const std::function<Result<void>()>& op);

 private:
  friend class PoolTarget;
  bool exported(const std::string& name) const;
  void closed(const std::string& name, bool writer);

  thin::Pool& pool_;
  GroupCommit& commit_;
  std::vector<std::string> exports_;
  std::string default_;
  std::mutex mu_;  // uses_; held across unless_open's op
  std::map<std::string, ExportUse> uses_;
};

// One export of one volume (exposed for tests; PoolCatalog::open makes them).
class PoolTarget : public nbd::BlockTarget {
 public:
  // owner: the catalog counting this export's connection (none in tests).
  PoolTarget(thin::Pool& pool, GroupCommit& commit, const thin::VolumeInfo& v,
             PoolCatalog* owner = nullptr);
  ~PoolTarget() override;

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
  // Pool::extents, then Pool::read unless the range is all unmapped (zeros).
  Result<void> read_sparse(uint64_t off, std::span<std::byte> buf,
                           std::vector<nbd::StatusExtent>& extents) override;
  // Pool::start_read on the data file's descriptor (kUnsupported when the data device has
  // none: memory, fault injection).
  Result<uint64_t> start_read(uint64_t off, std::span<std::byte> buf,
                              std::vector<nbd::StatusExtent>* extents, std::vector<FileRead>& parts,
                              bool may_wait) override;
  void finish_read(uint64_t ticket) override;
  std::vector<std::string> delta_bases() override;
  Result<std::vector<nbd::StatusExtent>> delta_status(const std::string& base, uint64_t off,
                                                      uint64_t len) override;

 private:
  Result<void> wrote(Result<void> r);

  thin::Pool& pool_;
  GroupCommit& commit_;
  PoolCatalog* owner_;
  std::string name_;
  uint64_t dev_;
  uint64_t size_;
  bool read_only_;
};

}  // namespace tp::daemon
