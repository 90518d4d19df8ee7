#include "daemon/pool_export.h"

#include <algorithm>
#include <cstring>

#include "catalog/catalog.h"
#include "nbd/protocol.h"

namespace tp::daemon {

// ------------------------------------------------------------------ PoolCatalog

PoolCatalog::PoolCatalog(thin::Pool& pool, GroupCommit& commit, std::vector<std::string> exports,
                         std::string default_export)
    : pool_(pool),
      commit_(commit),
      exports_(std::move(exports)),
      default_(std::move(default_export)) {}

bool PoolCatalog::exported(const std::string& name) const {
  return exports_.empty() || std::find(exports_.begin(), exports_.end(), name) != exports_.end();
}

std::vector<nbd::ExportEntry> PoolCatalog::list() {
  std::vector<nbd::ExportEntry> out;
  for (const thin::VolumeInfo& v : pool_.list(/*counts=*/false)) {
    if (!exported(v.name)) continue;
    std::string d = "thinpool volume";
    if (!v.origin.empty()) d = "thinpool snapshot of " + v.origin;
    if (v.read_only) d += " (read-only)";
    out.push_back({v.name, std::move(d)});
  }
  return out;
}

std::string PoolCatalog::default_export() {
  if (!default_.empty()) return default_;
  std::vector<nbd::ExportEntry> all = list();
  return all.size() == 1 ? all[0].name : "";
}

Result<std::unique_ptr<nbd::BlockTarget>> PoolCatalog::open(const std::string& name) {
  // The name comes from the network: anything that could not name a volume (a path, an
  // overlong or empty name) stops here, before any lookup.
  if (!catalog::valid_volume_name(name)) {
    return make_error(Errc::kNotFound, "not a valid volume name");
  }
  if (!exported(name)) return make_error(Errc::kNotFound, "not exported");
  std::lock_guard lk(mu_);
  TP_ASSIGN_OR_RETURN(thin::VolumeInfo v, pool_.volume(name, /*counts=*/false));
  ExportUse& u = uses_[name];
  (v.read_only ? u.readers : u.writers)++;
  return std::unique_ptr<nbd::BlockTarget>(std::make_unique<PoolTarget>(pool_, commit_, v, this));
}

void PoolCatalog::closed(const std::string& name, bool writer) {
  std::lock_guard lk(mu_);
  auto it = uses_.find(name);
  if (it == uses_.end()) return;
  (writer ? it->second.writers : it->second.readers)--;
  if (it->second.readers == 0 && it->second.writers == 0) uses_.erase(it);
}

std::map<std::string, ExportUse> PoolCatalog::uses() {
  std::lock_guard lk(mu_);
  return uses_;
}

Result<void> PoolCatalog::unless_open(const std::vector<std::string>& gone,
                                      const std::vector<std::string>& rewritten,
                                      const std::function<Result<void>()>& op) {
  std::lock_guard lk(mu_);
  for (const std::string& n : gone) {
    if (uses_.count(n)) {
      return make_error(Errc::kBusy, "volume is exported: an NBD client has it open");
    }
  }
  for (const std::string& n : rewritten) {
    auto it = uses_.find(n);
    if (it != uses_.end() && it->second.writers > 0) {
      return make_error(Errc::kBusy,
                        "volume is exported writable: an NBD client has it open (--force)");
    }
  }
  return op();
}

// ------------------------------------------------------------------ PoolTarget

PoolTarget::PoolTarget(thin::Pool& pool, GroupCommit& commit, const thin::VolumeInfo& v,
                       PoolCatalog* owner)
    : pool_(pool),
      commit_(commit),
      owner_(owner),
      name_(v.name),
      dev_(v.dev_id),
      size_(v.size_bytes),
      read_only_(v.read_only) {}

PoolTarget::~PoolTarget() {
  if (owner_) owner_->closed(name_, !read_only_);
}

Result<void> PoolTarget::wrote(Result<void> r) {
  if (r.ok()) commit_.note_write();
  return r;
}

Result<void> PoolTarget::read(uint64_t off, std::span<std::byte> buf) {
  return pool_.read(dev_, off, buf);
}

Result<void> PoolTarget::write(uint64_t off, std::span<const std::byte> buf, bool fua) {
  TP_TRY(wrote(pool_.write(dev_, off, buf)));
  if (fua) return commit_.flush();
  return {};
}

Result<void> PoolTarget::flush() {
  return commit_.flush();
}

Result<void> PoolTarget::trim(uint64_t off, uint64_t len) {
  return wrote(pool_.trim(dev_, off, len));
}

Result<void> PoolTarget::zero(uint64_t off, uint64_t len, bool no_hole) {
  if (no_hole) return wrote(pool_.provision_zero(dev_, off, len));
  return wrote(pool_.write_zeroes(dev_, off, len));
}

namespace {
void to_status(const std::vector<thin::Extent>& ext, std::vector<nbd::StatusExtent>& out) {
  out.clear();
  for (const thin::Extent& e : ext) {
    // An unmapped block reads as zeros (SEMANTICS.md "No stale data").
    out.push_back({e.length, e.mapped ? 0u : nbd::kStateHole | nbd::kStateZero});
  }
}
}  // namespace

Result<std::vector<nbd::StatusExtent>> PoolTarget::block_status(uint64_t off, uint64_t len) {
  TP_ASSIGN_OR_RETURN(std::vector<thin::Extent> ext, pool_.extents(dev_, off, len));
  std::vector<nbd::StatusExtent> out;
  to_status(ext, out);
  return out;
}

Result<void> PoolTarget::read_sparse(uint64_t off, std::span<std::byte> buf,
                                     std::vector<nbd::StatusExtent>& extents) {
  // One walk finds the mappings, reads the mapped runs and zero-fills the holes.
  thread_local std::vector<thin::Extent> ext;
  extents.clear();
  TP_TRY(pool_.read(dev_, off, buf, &ext));
  to_status(ext, extents);
  return {};
}

Result<uint64_t> PoolTarget::start_read(uint64_t off, std::span<std::byte> buf,
                                        std::vector<nbd::StatusExtent>* extents,
                                        std::vector<FileRead>& parts, bool may_wait) {
  const int fd = pool_.data_device().read_fd();
  if (fd < 0) return make_error(Errc::kUnsupported, "the data device has no descriptor");
  thread_local std::vector<thin::Extent> ext;
  thread_local std::vector<thin::Pool::ReadPart> pp;
  pp.clear();
  TP_ASSIGN_OR_RETURN(unsigned ticket,
                      pool_.start_read(dev_, off, buf, extents ? &ext : nullptr, pp, may_wait));
  if (extents) to_status(ext, *extents);
  for (const thin::Pool::ReadPart& p : pp) {
    parts.push_back({fd, p.data_offset, p.buf_offset, p.length});
  }
  return ticket;
}

void PoolTarget::finish_read(uint64_t ticket) {
  pool_.finish_read(static_cast<unsigned>(ticket));
}

std::vector<std::string> PoolTarget::delta_bases() {
  std::vector<std::string> out;
  for (const thin::VolumeInfo& v : pool_.list(/*counts=*/false)) {
    if (v.name != name_) out.push_back(v.name);
  }
  return out;
}

Result<std::vector<nbd::StatusExtent>> PoolTarget::delta_status(const std::string& base,
                                                                uint64_t off, uint64_t len) {
  // Only the requested range is compared, and a reply holds at most kMaxStatusDescriptors
  // extents: the cost is bounded by the request, not by the volume.
  constexpr size_t kMaxRanges = nbd::kMaxStatusDescriptors / 2;
  TP_ASSIGN_OR_RETURN(std::vector<thin::DeltaRange> d,
                      pool_.delta(base, name_, off, len, kMaxRanges));
  std::vector<nbd::StatusExtent> out;
  uint64_t end = off + len;
  // Possibly cut short: the reply ends with the last range found (a shorter reply is
  // allowed; the client asks again from there).
  if (d.size() == kMaxRanges) end = std::min(end, d.back().offset + d.back().length);
  uint64_t pos = off;
  auto add = [&](uint64_t a, uint64_t b, uint32_t flags) {
    if (a >= b) return;
    if (!out.empty() && out.back().flags == flags) {
      out.back().length += b - a;
    } else {
      out.push_back({b - a, flags});
    }
  };
  for (const thin::DeltaRange& r : d) {
    uint64_t a = std::max(r.offset, pos), b = std::min(r.offset + r.length, end);
    if (a >= b) {
      if (r.offset >= end) break;
      continue;
    }
    add(pos, a, 0);
    add(a, b, nbd::kStateChanged);
    pos = b;
  }
  add(pos, end, 0);
  return out;
}

}  // namespace tp::daemon
