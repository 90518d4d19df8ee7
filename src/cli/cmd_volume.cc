// Volume commands: list, create, snapshot, remove, resize, delta, and guaranteed space:
// provision, unprovision, reserve, merge, rollback (SEMANTICS.md "Operations").

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <optional>

#include "catalog/catalog.h"
#include "cli/args.h"
#include "cli/command.h"
#include "cli/pool_access.h"
#include "cli/size.h"
#include "cli/views.h"

namespace tp::cli {
namespace {

// A size (or offset, length) checked against the largest volume the engine allows (a usage
// error, exit 2).
std::optional<uint64_t> volume_size_arg(const Context& ctx, std::string_view command,
                                        std::string_view option, const std::string& text) {
  auto size = size_arg(ctx, command, option, text);
  if (size && *size > thin::kMaxVolumeBytes) {
    ctx.usage(command, std::string(option) + " \"" + text + "\"",
              fmt::format("too large for a volume (the limit is {})",
                          format_bytes(thin::kMaxVolumeBytes)));
    return std::nullopt;
  }
  return size;
}
std::optional<uint64_t> volume_size_arg(const Context& ctx, std::string_view command,
                                        const std::string& text) {
  return volume_size_arg(ctx, command, "--size", text);
}

// Looks the volume up and fills the report with it (after create, snapshot, resize).
int report_volume(const Context& ctx, std::string_view command, thin::Pool& pool,
                  const std::string& name, const std::string& text, Report& r) {
  auto v = pool.volume(name);
  if (!v.ok()) {
    return ctx.fail(command, name, v.error());
  }
  r.json = volume_json(*v, pool.block_bytes());
  r.text = text;
  return kExitOk;
}

// --- list -------------------------------------------------------------------------------

class ListCommand final : public Command {
 public:
  const char* name() const override { return "list"; }
  const char* description() const override {
    return "List volumes: name, id, size, origin, mapped, exclusive, guaranteed, reserved";
  }
  void declare(CLI::App&) override {}
  int run(const Context& ctx) override {
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      const auto vols = pool.list();
      const auto exported = exported_volumes(ctx);
      r.json = nlohmann::json::array();
      for (const auto& v : vols) {
        auto it = exported.find(v.name);
        r.json.push_back(volume_json(v, pool.block_bytes()));
        r.json.back()["exported"] = it == exported.end() ? 0u : it->second;
      }
      r.text = volumes_table(vols, pool.block_bytes(), exported);
      return kExitOk;
    });
  }
};

// --- create -----------------------------------------------------------------------------

class CreateCommand final : public Command {
 public:
  const char* name() const override { return "create"; }
  const char* description() const override { return "Create a new, empty volume"; }
  bool plannable() const override { return true; }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume name")->required();
    sub.add_option("--size", size_, "Virtual size, e.g. 10G")->required();
    sub.add_flag("--provision", provision_,
                 "Guarantee the whole volume: map every block now, so its writes never fail "
                 "for lack of space");
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), name_)) {
      return kExitUsage;
    }
    auto size = volume_size_arg(ctx, name(), size_);
    if (!size) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      if (auto c = pool.create_volume(name_, *size, provision_, ctx.plan); !c.ok()) {
        return ctx.fail(name(), name_, c.error());
      }
      if (ctx.plan) {
        return kExitOk;
      }
      return report_volume(
          ctx, name(), pool, name_,
          fmt::format("created {}volume {} ({})\n", provision_ ? "provisioned " : "", name_,
                      format_bytes(*size)),
          r);
    });
  }

 private:
  std::string name_, size_;
  bool provision_ = false;
};

// --- snapshot ---------------------------------------------------------------------------

class SnapshotCommand final : public Command {
 public:
  const char* name() const override { return "snapshot"; }
  const char* description() const override {
    return "Create a snapshot NAME of ORIGIN (read-only unless --writable)";
  }
  bool plannable() const override { return true; }
  void declare(CLI::App& sub) override {
    sub.add_option("ORIGIN", origin_, "Volume or snapshot to snapshot")->required();
    sub.add_option("NAME", name_, "Name of the new snapshot")->required();
    sub.add_flag("--writable", writable_, "Make the snapshot writable");
    sub.add_option("--reserve", reserve_,
                   "Set aside this much space for the snapshot's writes (e.g. the size of "
                   "the next update)");
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), origin_) || !name_arg(ctx, name(), name_)) {
      return kExitUsage;
    }
    uint64_t reserve = 0;
    if (!reserve_.empty()) {
      auto r = volume_size_arg(ctx, name(), "--reserve", reserve_);
      if (!r) {
        return kExitUsage;
      }
      reserve = *r;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      if (auto s = pool.snapshot(origin_, name_, writable_, reserve, ctx.plan); !s.ok()) {
        // The origin is the subject when it is the one missing.
        const bool origin_missing = s.error().code == Errc::kNotFound;
        return ctx.fail(name(), origin_missing ? origin_ : name_, s.error());
      }
      if (ctx.plan) {
        return kExitOk;
      }
      std::string text =
          fmt::format("created {}snapshot {} of {}", writable_ ? "writable " : "", name_, origin_);
      if (reserve > 0) {
        text += fmt::format(" with {} reserved for its writes", format_bytes(reserve));
      }
      return report_volume(ctx, name(), pool, name_, text + "\n", r);
    });
  }

 private:
  std::string origin_, name_, reserve_;
  bool writable_ = false;
};

// --- remove -----------------------------------------------------------------------------

class RemoveCommand final : public Command {
 public:
  const char* name() const override { return "remove"; }
  const char* description() const override {
    return "Delete a volume or snapshot (with --recursive, its snapshots too)";
  }
  bool plannable() const override { return true; }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume or snapshot")->required();
    sub.add_flag("-r,--recursive", recursive_, "Also remove its snapshots");
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), name_)) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      const auto all = pool.list(/*counts=*/false);
      std::vector<std::string> before;
      for (const auto& v : all) {
        before.push_back(v.name);
      }
      // What the remove takes away: NAME and, recursively, its snapshots.
      std::vector<std::string> gone{name_};
      for (size_t i = 0; recursive_ && i < gone.size(); i++) {
        for (const auto& v : all) {
          if (v.origin == gone[i]) gone.push_back(v.name);
        }
      }
      auto rm = unless_exported(ctx, gone, {}, false,
                                [&] { return pool.remove(name_, recursive_, ctx.plan); });
      if (!rm.ok()) {
        return ctx.fail(name(), name_, rm.error());
      }
      if (ctx.plan) {
        return kExitOk;
      }
      std::vector<std::string> after;
      for (const auto& v : pool.list(/*counts=*/false)) {
        after.push_back(v.name);
      }
      std::vector<std::string> removed;
      for (const auto& n : before) {
        if (std::find(after.begin(), after.end(), n) == after.end()) {
          removed.push_back(n);
        }
      }
      r.json["removed"] = removed;
      for (const auto& n : removed) {
        r.text += "removed " + n + "\n";
      }
      return kExitOk;
    });
  }

 private:
  std::string name_;
  bool recursive_ = false;
};

// --- resize -----------------------------------------------------------------------------

class ResizeCommand final : public Command {
 public:
  const char* name() const override { return "resize"; }
  const char* description() const override {
    return "Grow or shrink a volume (shrinking discards the tail)";
  }
  bool plannable() const override { return true; }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume")->required();
    sub.add_option("--size", size_, "New virtual size")->required();
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), name_)) {
      return kExitUsage;
    }
    auto size = volume_size_arg(ctx, name(), size_);
    if (!size) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      // A client would not see the new size (NBD has no resize notice): stop it first.
      auto rs = unless_exported(ctx, {name_}, {}, false,
                                [&] { return pool.resize(name_, *size, ctx.plan); });
      if (!rs.ok()) {
        return ctx.fail(name(), name_, rs.error());
      }
      if (ctx.plan) {
        return kExitOk;
      }
      return report_volume(ctx, name(), pool, name_,
                           fmt::format("resized {} to {}\n", name_, format_bytes(*size)), r);
    });
  }

 private:
  std::string name_, size_;
};

// --- delta ------------------------------------------------------------------------------

class DeltaCommand final : public Command {
 public:
  const char* name() const override { return "delta"; }
  const char* description() const override {
    return "Byte ranges where volumes A and B differ: offset length kind "
           "(changed|added|removed)";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("A", a_, "Old volume")->required();
    sub.add_option("B", b_, "New volume")->required();
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), a_) || !name_arg(ctx, name(), b_)) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      // The engine names neither volume in its error: say which one is missing.
      for (const std::string* n : {&a_, &b_}) {
        if (auto v = pool.dev_id(*n); !v.ok()) {
          return ctx.fail(name(), *n, v.error());
        }
      }
      auto d = pool.delta(a_, b_);
      if (!d.ok()) {
        return ctx.fail(name(), a_ + " " + b_, d.error());
      }
      r.json = nlohmann::json::array();
      for (const auto& range : *d) {
        r.json.push_back(
            {{"offset", range.offset}, {"length", range.length}, {"kind", range.kind}});
        r.text += fmt::format("{} {} {}\n", range.offset, range.length, range.kind);
      }
      return kExitOk;
    });
  }

 private:
  std::string a_, b_;
};

// --- provision / unprovision -----------------------------------------------------------

// --offset/--length of provision and unprovision. Both optional: the offset defaults to 0
// and the length to the rest of the volume, so neither means the whole volume.
class RangeOptions {
 public:
  void declare(CLI::App& sub) {
    sub.add_option("--offset", offset_, "Start of the range (default 0)");
    sub.add_option("--length", length_, "Length of the range (default: to the end)");
  }
  // Parses the options (usage error 2 on a bad value) before the pool is opened.
  bool parse(const Context& ctx, std::string_view command) {
    if (!offset_.empty()) {
      auto o = volume_size_arg(ctx, command, "--offset", offset_);
      if (!o) {
        return false;
      }
      off_ = *o;
    }
    if (!length_.empty()) {
      auto l = volume_size_arg(ctx, command, "--length", length_);
      if (!l) {
        return false;
      }
      if (*l == 0) {
        ctx.usage(command, "--length \"" + length_ + "\"", "the range must not be empty");
        return false;
      }
      len_ = *l;
    }
    return true;
  }
  uint64_t offset() const { return off_; }
  // The length for a volume of size_bytes: as given, else up to its end (0 when the offset
  // is at or past the end: the engine refuses the empty range and names the volume).
  uint64_t length(uint64_t size_bytes) const {
    if (len_) {
      return *len_;
    }
    return size_bytes > off_ ? size_bytes - off_ : 0;
  }
  bool whole() const { return offset_.empty() && length_.empty(); }

 private:
  std::string offset_, length_;
  uint64_t off_ = 0;
  std::optional<uint64_t> len_;
};

// "base: guaranteed 16.00 MiB, reserved 0 B" after a change of its guarantee.
std::string space_summary(thin::Pool& pool, const std::string& vol) {
  auto v = pool.volume(vol);
  if (!v.ok()) {
    return vol;
  }
  const uint64_t bb = pool.block_bytes();
  return fmt::format("{}: guaranteed {}, reserved {}", vol, format_bytes(v->guaranteed_blocks * bb),
                     format_bytes(v->reserved_blocks * bb));
}

class ProvisionCommand final : public Command {
 public:
  const char* name() const override { return "provision"; }
  const char* description() const override {
    return "Guarantee a range of a volume (default: all of it): map its blocks now so its "
           "writes never fail for lack of space";
  }
  bool plannable() const override { return true; }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume")->required();
    range_.declare(sub);
    sub.add_option("--class", class_, "Provisioning class: data or meta")
        ->check(CLI::IsMember({"data", "meta"}))
        ->capture_default_str();
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), name_) || !range_.parse(ctx, name())) {
      return kExitUsage;
    }
    const auto cls =
        class_ == "meta" ? catalog::ProvisionClass::kMeta : catalog::ProvisionClass::kData;
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      auto vol = pool.volume(name_);
      if (!vol.ok()) {
        return ctx.fail(name(), name_, vol.error());
      }
      const uint64_t len = range_.length(vol->size_bytes);
      if (auto p = pool.provision(name_, range_.offset(), len, cls, ctx.plan); !p.ok()) {
        return ctx.fail(name(), name_, p.error());
      }
      if (ctx.plan) {
        return kExitOk;
      }
      return report_volume(
          ctx, name(), pool, name_,
          fmt::format("provisioned {} of {} at offset {} (class {}); {}\n", format_bytes(len),
                      name_, range_.offset(), class_, space_summary(pool, name_)),
          r);
    });
  }

 private:
  std::string name_, class_ = "data";
  RangeOptions range_;
};

class UnprovisionCommand final : public Command {
 public:
  const char* name() const override { return "unprovision"; }
  const char* description() const override {
    return "Remove a range of a volume (default: all of it) from its guarantee; the data stays";
  }
  bool plannable() const override { return true; }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume")->required();
    range_.declare(sub);
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), name_) || !range_.parse(ctx, name())) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      auto vol = pool.volume(name_);
      if (!vol.ok()) {
        return ctx.fail(name(), name_, vol.error());
      }
      const uint64_t len = range_.length(vol->size_bytes);
      if (auto u = pool.unprovision(name_, range_.offset(), len, ctx.plan); !u.ok()) {
        return ctx.fail(name(), name_, u.error());
      }
      if (ctx.plan) {
        return kExitOk;
      }
      return report_volume(
          ctx, name(), pool, name_,
          fmt::format("unprovisioned {} of {} at offset {}; {}\n", format_bytes(len), name_,
                      range_.offset(), space_summary(pool, name_)),
          r);
    });
  }

 private:
  std::string name_;
  RangeOptions range_;
};

// --- reserve ----------------------------------------------------------------------------

class ReserveCommand final : public Command {
 public:
  const char* name() const override { return "reserve"; }
  const char* description() const override {
    return "Set a volume's explicit reservation: space set aside for its writes (0 releases)";
  }
  bool plannable() const override { return true; }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume")->required();
    sub.add_option("SIZE", size_, "Reservation, e.g. 64M (rounded up to whole blocks)")->required();
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), name_)) {
      return kExitUsage;
    }
    auto size = volume_size_arg(ctx, name(), "SIZE", size_);
    if (!size) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      if (auto rs = pool.reserve(name_, *size, ctx.plan); !rs.ok()) {
        return ctx.fail(name(), name_, rs.error());
      }
      if (ctx.plan) {
        return kExitOk;
      }
      auto v = pool.volume(name_);
      const uint64_t e = v.ok() ? v->explicit_reserve_blocks * pool.block_bytes() : 0;
      const std::string text = *size == 0 ? fmt::format("released the reservation of {}\n", name_)
                                          : fmt::format("reserved {} for {}; {}\n", format_bytes(e),
                                                        name_, space_summary(pool, name_));
      return report_volume(ctx, name(), pool, name_, text, r);
    });
  }

 private:
  std::string name_, size_;
};

// --- merge ------------------------------------------------------------------------------

class MergeCommand final : public Command {
 public:
  const char* name() const override { return "merge"; }
  const char* description() const override {
    return "The origin of snapshot SNAP takes its content; SNAP is removed";
  }
  bool plannable() const override { return true; }
  void declare(CLI::App& sub) override {
    sub.add_option("SNAP", snap_, "Snapshot to merge into its origin")->required();
    sub.add_flag("--force", force_,
                 "Merge even while the origin is exported writable (clients see the new "
                 "content at their next request)");
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), snap_)) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      auto snap = pool.volume(snap_);
      if (!snap.ok()) {
        return ctx.fail(name(), snap_, snap.error());
      }
      const std::string origin = snap->origin;
      auto m = unless_exported(ctx, {snap_}, {origin}, force_,
                               [&] { return pool.merge(snap_, false, ctx.plan); });
      if (!m.ok()) {
        return ctx.fail(name(), snap_, m.error());
      }
      if (ctx.plan) {
        return kExitOk;
      }
      return report_volume(ctx, name(), pool, origin,
                           fmt::format("merged {} into {} ({} removed)\n", snap_, origin, snap_),
                           r);
    });
  }

 private:
  std::string snap_;
  bool force_ = false;
};

// --- rollback ---------------------------------------------------------------------------

class RollbackCommand final : public Command {
 public:
  const char* name() const override { return "rollback"; }
  const char* description() const override {
    return "Volume NAME takes a copy of snapshot SNAP's content; SNAP is kept";
  }
  bool plannable() const override { return true; }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume to roll back")->required();
    sub.add_option("--to", snap_, "Snapshot whose content NAME takes")->required();
    sub.add_flag("--force", force_,
                 "Roll back even while NAME is exported writable (clients see the snapshot's "
                 "content at their next request)");
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), name_) || !name_arg(ctx, name(), snap_)) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      // The engine names neither volume in its error: say which one is missing.
      for (const std::string* n : {&name_, &snap_}) {
        if (auto v = pool.dev_id(*n); !v.ok()) {
          return ctx.fail(name(), *n, v.error());
        }
      }
      auto rb = unless_exported(ctx, {}, {name_}, force_,
                                [&] { return pool.rollback(name_, snap_, ctx.plan); });
      if (!rb.ok()) {
        return ctx.fail(name(), name_, rb.error());
      }
      if (ctx.plan) {
        return kExitOk;
      }
      return report_volume(ctx, name(), pool, name_,
                           fmt::format("rolled {} back to {} ({} kept)\n", name_, snap_, snap_), r);
    });
  }

 private:
  std::string name_, snap_;
  bool force_ = false;
};

}  // namespace

void add_volume_commands(CommandList& list) {
  list.push_back(std::make_unique<ListCommand>());
  list.push_back(std::make_unique<CreateCommand>());
  list.push_back(std::make_unique<SnapshotCommand>());
  list.push_back(std::make_unique<RemoveCommand>());
  list.push_back(std::make_unique<ResizeCommand>());
  list.push_back(std::make_unique<DeltaCommand>());
  list.push_back(std::make_unique<ProvisionCommand>());
  list.push_back(std::make_unique<UnprovisionCommand>());
  list.push_back(std::make_unique<ReserveCommand>());
  list.push_back(std::make_unique<MergeCommand>());
  list.push_back(std::make_unique<RollbackCommand>());
}

}  // namespace tp::cli
