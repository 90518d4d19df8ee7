// Volume commands: list, create, snapshot, remove, resize, delta.

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>

#include "cli/args.h"
#include "cli/command.h"
#include "cli/pool_access.h"
#include "cli/size.h"
#include "cli/views.h"

namespace tp::cli {
namespace {

// A size checked against the largest volume the engine allows (a usage error, exit 2).
std::optional<uint64_t> volume_size_arg(const Context& ctx, std::string_view command,
                                        const std::string& text) {
  auto size = size_arg(ctx, command, "--size", text);
  if (size && *size > thin::kMaxVolumeBytes) {
    ctx.usage(command, "--size \"" + text + "\"",
              fmt::format("too large for a volume (the limit is {})",
                          format_bytes(thin::kMaxVolumeBytes)));
    return std::nullopt;
  }
  return size;
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
      r.json = nlohmann::json::array();
      for (const auto& v : vols) {
        r.json.push_back(volume_json(v, pool.block_bytes()));
      }
      r.text = volumes_table(vols, pool.block_bytes());
      return kExitOk;
    });
  }
};

// --- create -----------------------------------------------------------------------------

class CreateCommand final : public Command {
 public:
  const char* name() const override { return "create"; }
  const char* description() const override { return "Create a new, empty volume"; }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume name")->required();
    sub.add_option("--size", size_, "Virtual size, e.g. 10G")->required();
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
      if (auto c = pool.create_volume(name_, *size); !c.ok()) {
        return ctx.fail(name(), name_, c.error());
      }
      return report_volume(ctx, name(), pool, name_,
                           fmt::format("created volume {} ({})\n", name_, format_bytes(*size)), r);
    });
  }

 private:
  std::string name_, size_;
};

// --- snapshot ---------------------------------------------------------------------------

class SnapshotCommand final : public Command {
 public:
  const char* name() const override { return "snapshot"; }
  const char* description() const override {
    return "Create a snapshot NAME of ORIGIN (read-only unless --writable)";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("ORIGIN", origin_, "Volume or snapshot to snapshot")->required();
    sub.add_option("NAME", name_, "Name of the new snapshot")->required();
    sub.add_flag("--writable", writable_, "Make the snapshot writable");
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), origin_) || !name_arg(ctx, name(), name_)) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      if (auto s = pool.snapshot(origin_, name_, writable_); !s.ok()) {
        // The origin is the subject when it is the one missing.
        const bool origin_missing = s.error().code == Errc::kNotFound;
        return ctx.fail(name(), origin_missing ? origin_ : name_, s.error());
      }
      return report_volume(ctx, name(), pool, name_,
                           fmt::format("created {}snapshot {} of {}\n",
                                       writable_ ? "writable " : "", name_, origin_),
                           r);
    });
  }

 private:
  std::string origin_, name_;
  bool writable_ = false;
};

// --- remove -----------------------------------------------------------------------------

class RemoveCommand final : public Command {
 public:
  const char* name() const override { return "remove"; }
  const char* description() const override {
    return "Delete a volume or snapshot (with --recursive, its snapshots too)";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("NAME", name_, "Volume or snapshot")->required();
    sub.add_flag("-r,--recursive", recursive_, "Also remove its snapshots");
  }
  int run(const Context& ctx) override {
    if (!name_arg(ctx, name(), name_)) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      std::vector<std::string> before;
      for (const auto& v : pool.list()) {
        before.push_back(v.name);
      }
      if (auto rm = pool.remove(name_, recursive_); !rm.ok()) {
        return ctx.fail(name(), name_, rm.error());
      }
      std::vector<std::string> after;
      for (const auto& v : pool.list()) {
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
      if (auto rs = pool.resize(name_, *size); !rs.ok()) {
        return ctx.fail(name(), name_, rs.error());
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

}  // namespace

void add_volume_commands(CommandList& list) {
  list.push_back(std::make_unique<ListCommand>());
  list.push_back(std::make_unique<CreateCommand>());
  list.push_back(std::make_unique<SnapshotCommand>());
  list.push_back(std::make_unique<RemoveCommand>());
  list.push_back(std::make_unique<ResizeCommand>());
  list.push_back(std::make_unique<DeltaCommand>());
}

}  // namespace tp::cli
