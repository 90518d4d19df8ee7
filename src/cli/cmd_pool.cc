// Pool-wide commands: init, info, extend, check.

#include <fmt/format.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <optional>

#include "cli/args.h"
#include "cli/command.h"
#include "cli/pool_access.h"
#include "cli/size.h"
#include "cli/views.h"
#include "daemon/serve.h"
#include "pdata/format.h"
#include "thin/repair.h"

extern char** environ;

namespace tp::cli {
namespace {

// --- init -------------------------------------------------------------------------------

class InitCommand final : public Command {
 public:
  const char* name() const override { return "init"; }
  const char* description() const override {
    return "Create a pool in the pool directory (which must not hold one)";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("--size", size_, "Data size, e.g. 64G")->required();
    sub.add_option("--block-size", block_size_, "Data block size: 64K..1G, a multiple of 64K")
        ->capture_default_str();
    sub.add_option("--metadata-size", metadata_size_,
                   "Metadata size (default: sized for the data, as thin_metadata_size)");
  }
  int run(const Context& ctx) override {
    if (ctx.pool_dir.empty()) {
      return ctx.usage(name(), "", "no pool given (use -p DIR or set THINPOOL_POOL)");
    }
    auto size = size_arg(ctx, name(), "--size", size_);
    if (!size) {
      return kExitUsage;
    }
    auto block = size_arg(ctx, name(), "--block-size", block_size_);
    if (!block) {
      return kExitUsage;
    }
    if (*block < thin::kMinBlockBytes || *block > thin::kMaxBlockBytes ||
        *block % thin::kMinBlockBytes != 0) {
      return ctx.usage(name(), "--block-size \"" + block_size_ + "\"",
                       "the block size must be 64 KiB..1 GiB and a multiple of 64 KiB");
    }
    if (*size < *block) {
      return ctx.usage(name(), "--size \"" + size_ + "\"", "the pool must hold at least one block");
    }
    thin::PoolOptions opts;
    opts.data_bytes = *size;
    opts.block_bytes = static_cast<uint32_t>(*block);
    if (!metadata_size_.empty()) {
      auto md = size_arg(ctx, name(), "--metadata-size", metadata_size_);
      if (!md) {
        return kExitUsage;
      }
      opts.metadata_bytes = *md;
    }

    auto created = thin::Pool::create(ctx.pool_dir, opts);
    if (!created.ok()) {
      return ctx.fail(name(), ctx.pool_dir, created.error());
    }
    std::unique_ptr<thin::Pool> pool = std::move(created).value();
    const thin::PoolInfo info = pool->info();
    int st = close_pool(ctx, name(), std::move(pool), kExitOk);
    if (st != kExitOk) {
      return st;
    }
    Report r;
    r.json = pool_info_json(info);
    r.text = fmt::format("created pool {}: {} of data in {} blocks of {}, {} of metadata\n",
                         ctx.pool_dir, format_bytes(info.nr_blocks * info.block_bytes),
                         info.nr_blocks, format_bytes(info.block_bytes),
                         format_bytes(info.metadata_blocks * pdata::kBlockSize));
    return print_report(ctx, name(), r);
  }
  bool through_daemon() const override { return false; }

 private:
  std::string size_;
  std::string block_size_ = "64K";
  std::string metadata_size_;
};

// --- info -------------------------------------------------------------------------------

class InfoCommand final : public Command {
 public:
  const char* name() const override { return "info"; }
  const char* description() const override {
    return "Show the pool: size, blocks used/reserved/unreserved, metadata, state, journal and "
           "whether the metadata file is flagged needs_check";
  }
  void declare(CLI::App&) override {}
  int run(const Context& ctx) override {
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      const thin::PoolInfo info = pool.info();
      r.json = pool_info_json(info);
      r.text = pool_info_text(ctx.pool_dir, info);
      return kExitOk;
    });
  }
};

// --- extend -----------------------------------------------------------------------------

class ExtendCommand final : public Command {
 public:
  const char* name() const override { return "extend"; }
  const char* description() const override {
    return "Grow the pool's data device to a new total size";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("--size", size_, "New total data size")->required();
  }
  int run(const Context& ctx) override {
    auto size = size_arg(ctx, name(), "--size", size_);
    if (!size) {
      return kExitUsage;
    }
    return with_pool(ctx, name(), [&](thin::Pool& pool, Report& r) {
      auto ext = pool.extend(*size);
      if (!ext.ok()) {
        return ctx.fail(name(), ctx.pool_dir, ext.error());
      }
      const thin::PoolInfo info = pool.info();
      r.json = pool_info_json(info);
      r.text = fmt::format("extended pool {} to {} ({} blocks)\n", ctx.pool_dir,
                           format_bytes(info.nr_blocks * info.block_bytes), info.nr_blocks);
      return kExitOk;
    });
  }

 private:
  std::string size_;
};

// --- check ------------------------------------------------------------------------------

// The first executable `prog` on PATH, or nullopt.
std::optional<std::string> find_on_path(const std::string& prog) {
  const char* path = std::getenv("PATH");
  std::string_view rest = path ? path : "/usr/local/bin:/usr/bin:/bin";
  while (true) {
    const size_t colon = rest.find(':');
    std::string dir(rest.substr(0, colon));
    if (dir.empty()) {
      dir = ".";
    }
    const std::string candidate = dir + "/" + prog;
    struct stat st;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    if (colon == std::string_view::npos) {
      return std::nullopt;
    }
    rest.remove_prefix(colon + 1);
  }
}

enum class ExternalCheck { kPassed, kFailed, kNotInstalled, kNotRun };

const char* external_check_name(ExternalCheck c) {
  switch (c) {
    case ExternalCheck::kPassed:
      return "passed";
    case ExternalCheck::kFailed:
      return "failed";
    case ExternalCheck::kNotInstalled:
      return "not installed";
    case ExternalCheck::kNotRun:
      return "not run";
  }
  return "not run";
}

// Runs `thin_check -q METADATA` (no shell) with its stdout sent to our stderr, so that
// stdout stays one JSON document. *why is set when it could not be run.
ExternalCheck run_thin_check(const std::string& metadata, std::string* why) {
  auto prog = find_on_path("thin_check");
  if (!prog) {
    return ExternalCheck::kNotInstalled;
  }
  posix_spawn_file_actions_t actions;
  if (int e = posix_spawn_file_actions_init(&actions); e != 0) {
    *why = std::strerror(e);
    return ExternalCheck::kNotRun;
  }
  posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);
  std::string arg0 = "thin_check", arg1 = "-q", arg2 = metadata;
  char* argv[] = {arg0.data(), arg1.data(), arg2.data(), nullptr};
  pid_t pid = -1;
  int e = posix_spawn(&pid, prog->c_str(), &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (e != 0) {
    *why = std::string("cannot run ") + *prog + ": " + std::strerror(e);
    return ExternalCheck::kNotRun;
  }
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0) {
    if (errno != EINTR) {
      *why = std::string("waitpid: ") + std::strerror(errno);
      return ExternalCheck::kNotRun;
    }
  }
  if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) {
    return ExternalCheck::kPassed;
  }
  return ExternalCheck::kFailed;
}

// What `check` found: our own check of metadata, catalog and space, then thin_check.
struct Assessment {
  int status = kExitOk;      // kExitOk: res and ext are filled in
  bool open_failed = false;  // the pool would not open: `damage` says why
  thin::CheckResult res;
  ExternalCheck ext = ExternalCheck::kNotRun;
  std::vector<std::string> warnings;
  bool ok() const { return !open_failed && res.ok() && ext != ExternalCheck::kFailed; }
};

// Opens the pool (or uses the daemon's), checks it, closes it and runs thin_check on the
// metadata. Corruption met by the check is damage in the assessment; a pool that does not
// open because its metadata or catalog is damaged is too with damaged_ok (open_failed), else
// an error (exit 3).
Assessment assess(const Context& ctx, std::string_view command, bool damaged_ok) {
  Assessment a;
  std::string metadata = ctx.pool_dir + "/metadata";
  if (ctx.served) {
    // The daemon keeps committing: thin_check reads a copy of the committed metadata
    // taken at the moment of our own check, under the pool's lock.
    metadata = ctx.pool_dir + "/.check-metadata";
    auto checked = ctx.served->pool.check(metadata);
    if (!checked.ok()) {
      ::unlink(metadata.c_str());
      a.status = ctx.fail(command, ctx.pool_dir, checked.error());
      return a;
    }
    a.res = std::move(checked).value();
  } else {
    if (int st = check_pool_dir(ctx, command); st != kExitOk) {
      a.status = st;
      return a;
    }
    auto opened = thin::Pool::open(ctx.pool_dir);
    if (!opened.ok() && opened.error().code == Errc::kCorruption) {
      if (!damaged_ok) {
        a.status = ctx.fail(command, ctx.pool_dir,
                            "damaged pool: " + opened.error().to_string() + " (see check --repair)",
                            kExitDamaged);
        return a;
      }
      a.open_failed = true;
      a.res.damage.push_back("the pool does not open: " + opened.error().to_string());
    } else {
      std::unique_ptr<thin::Pool> pool;
      if (opened.ok()) {
        pool = std::move(opened).value();
      } else if (int st = open_pool(ctx, command, &pool); st != kExitOk) {
        // open_pool reports the error (it fails the same way again).
        a.status = st;
        return a;
      }
      auto checked = pool->check();
      if (!checked.ok() && checked.error().code == Errc::kCorruption) {
        a.res.damage.push_back("the check stopped: " + checked.error().to_string());
      } else if (!checked.ok()) {
        a.status = close_pool(ctx, command, std::move(pool),
                              ctx.fail(command, ctx.pool_dir, checked.error()));
        return a;
      } else {
        a.res = std::move(checked).value();
      }
      // thin_check reads the metadata file: only after our commit and with the pool closed.
      if (int st = close_pool(ctx, command, std::move(pool), kExitOk); st != kExitOk) {
        a.status = st;
        return a;
      }
    }
  }
  a.warnings = a.res.warnings;
  std::string why;
  a.ext = run_thin_check(metadata, &why);
  if (ctx.served) ::unlink(metadata.c_str());
  if (a.ext == ExternalCheck::kNotRun) {
    a.warnings.push_back("thin_check: " + why);
  }
  return a;
}

nlohmann::json lost_ranges_json(const thin::RepairedDevice& d, uint64_t block_bytes) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : d.lost_ranges) {
    out.push_back({{"offset", r.begin * block_bytes}, {"length", (r.end - r.begin) * block_bytes}});
  }
  return out;
}

// What the metadata journal held when `check` looked: the metadata file lags it until a
// checkpoint (SEMANTICS.md "Durability and isolation").
std::string journal_text(const thin::CheckResult& res) {
  std::string t;
  if (res.journal_replayed_batches > 0) {
    t += fmt::format(
        "journal: {} batches ({} mapping changes) after the last checkpoint were replayed at "
        "open (the pool was not closed cleanly)\n",
        res.journal_replayed_batches, res.journal_replayed_records);
  }
  if (res.journal_pending_batches > 0) {
    t +=
        fmt::format("journal: {} batches since the last checkpoint\n", res.journal_pending_batches);
  }
  if (res.journal_replayed_batches + res.journal_pending_batches > 0) {
    t += "journal: checkpointed before the check: the metadata file holds every mapping\n";
  } else {
    t += "journal: empty: the metadata file holds every mapping\n";
  }
  return t;
}

class CheckCommand final : public Command {
 public:
  const char* name() const override { return "check"; }
  const char* description() const override {
    return "Check metadata, space maps, catalog and the space invariant after replaying the "
           "journal (and say what it replayed); also runs thin_check when installed. --repair "
           "rebuilds damaged metadata";
  }
  void declare(CLI::App& sub) override {
    sub.add_flag("--repair", repair_,
                 "Rebuild damaged metadata from what can still be read (the pool must not be "
                 "served); the old metadata is kept as metadata.damaged-TIME");
    sub.add_flag("--force", force_, "With --repair: rebuild even when the check finds nothing");
  }
  int run(const Context& ctx) override {
    if (force_ && !repair_) {
      return ctx.usage(name(), "--force", "only goes with --repair");
    }
    if (repair_) {
      return run_repair(ctx);
    }
    Assessment a = assess(ctx, name(), false);
    if (a.status != kExitOk) {
      return a.status;
    }
    const thin::CheckResult& res = a.res;
    const bool ok = a.ok();
    Report r;
    r.json["ok"] = ok;
    r.json["damage"] = res.damage;
    r.json["warnings"] = a.warnings;
    r.json["thin_check"] = external_check_name(a.ext);
    r.json["nodes"] = res.nodes;
    r.json["mappings"] = res.mappings;
    r.json["journal_replayed_batches"] = res.journal_replayed_batches;
    r.json["journal_replayed_records"] = res.journal_replayed_records;
    r.json["journal_pending_batches"] = res.journal_pending_batches;
    std::string& t = r.text;
    for (const auto& d : res.damage) {
      t += "damage: " + d + "\n";
    }
    for (const auto& w : a.warnings) {
      t += "warning: " + w + "\n";
    }
    t += journal_text(res);
    t += fmt::format("metadata: {} nodes, {} mappings: {}\n", res.nodes, res.mappings,
                     res.ok() ? "clean" : "DAMAGED");
    t += fmt::format("thin_check: {}\n", external_check_name(a.ext));
    if (int st = print_report(ctx, name(), r); st != kExitOk) {
      return st;
    }
    if (!ok) {
      return ctx.fail(name(), ctx.pool_dir, damaged_reason(res), kExitDamaged);
    }
    return kExitOk;
  }

 private:
  static std::string damaged_reason(const thin::CheckResult& res) {
    if (res.ok()) return "damaged pool: thin_check failed (see check --repair)";
    return fmt::format("damaged pool: {} problem{} found (see check --repair)", res.damage.size(),
                       res.damage.size() == 1 ? "" : "s");
  }

  int run_repair(const Context& ctx) {
    if (ctx.served) {
      // The daemon has the metadata open and keeps committing: a repair needs it stopped.
      return ctx.fail(name(), ctx.pool_dir,
                      "the pool is being served (thinpool serve): stop the daemon to repair",
                      kExitFailed);
    }
    if (int st = check_pool_dir(ctx, name()); st != kExitOk) {
      return st;
    }
    std::vector<std::string> found;
    if (!force_) {
      Assessment before = assess(ctx, name(), true);
      if (before.status != kExitOk) {
        return before.status;
      }
      if (before.ok()) {
        Report r;
        r.json = {{"ok", true},
                  {"repaired", false},
                  {"thin_check", external_check_name(before.ext)},
                  {"warnings", before.warnings}};
        r.text = "nothing to repair: the metadata is clean (use --force to rebuild anyway)\n";
        return print_report(ctx, name(), r);
      }
      found = before.res.damage;
      if (before.ext == ExternalCheck::kFailed) found.push_back("thin_check failed");
    }
    auto repaired = thin::repair_pool(ctx.pool_dir);
    if (!repaired.ok()) {
      return ctx.fail(name(), ctx.pool_dir, repaired.error());
    }
    const thin::RepairReport& rep = *repaired;
    Assessment after = assess(ctx, name(), true);
    if (after.status != kExitOk) {
      return after.status;
    }
    const uint64_t B = rep.block_bytes;

    Report r;
    nlohmann::json devices = nlohmann::json::array(), lost = nlohmann::json::array();
    nlohmann::json volumes_lost = nlohmann::json::array(), volumes_added = nlohmann::json::array();
    std::string& t = r.text;
    for (const auto& d : found) t += "found: " + d + "\n";
    for (const auto& d : rep.damage) t += "skipped: " + d + "\n";
    for (const auto& d : rep.devices) {
      devices.push_back({{"dev_id", d.dev_id},
                         {"volume", d.volume},
                         {"size_bytes", d.size_bytes},
                         {"mappings", d.mappings},
                         {"mappings_lost", d.mappings_lost},
                         {"lost_ranges", lost_ranges_json(d, B)},
                         {"details_rebuilt", d.details_rebuilt},
                         {"added_to_catalog", d.added_to_catalog}});
      if (d.added_to_catalog) volumes_added.push_back(d.volume);
      t += fmt::format("device {} ({}): {} mappings recovered", d.dev_id, d.volume, d.mappings);
      if (d.mappings_lost > 0 || !d.lost_ranges.empty()) {
        t += fmt::format(", {} lost", d.mappings_lost);
        for (const auto& lr : d.lost_ranges) {
          t += fmt::format(" [{}, +{})", format_bytes(lr.begin * B),
                           format_bytes((lr.end - lr.begin) * B));
        }
      }
      t += "\n";
    }
    for (const auto& l : rep.lost) {
      lost.push_back({{"dev_id", l.dev_id},
                      {"volume", l.volume},
                      {"mappings_lost", l.mappings_lost},
                      {"why", l.why}});
      if (!l.volume.empty()) volumes_lost.push_back(l.volume);
      t += fmt::format("device {} ({}): LOST, {}\n", l.dev_id,
                       l.volume.empty() ? std::string("no volume") : "volume " + l.volume, l.why);
    }
    for (const auto& n : rep.notes) t += "note: " + n + "\n";
    for (const auto& w : after.warnings) t += "warning: " + w + "\n";
    t += fmt::format(
        "repaired: {} device{} recovered ({} mappings), {} device{} lost, {} mappings lost; "
        "transaction {} -> {}\n",
        rep.devices.size(), rep.devices.size() == 1 ? "" : "s", rep.mappings, rep.lost.size(),
        rep.lost.size() == 1 ? "" : "s", rep.mappings_lost, rep.old_trans_id, rep.new_trans_id);
    t += "damaged metadata kept as " + rep.damaged_metadata + "\n";
    t += fmt::format("check after repair: {}; thin_check: {}\n",
                     after.res.ok() ? "clean" : "DAMAGED", external_check_name(after.ext));
    for (const auto& d : after.res.damage) t += "damage: " + d + "\n";
    r.json = {{"ok", after.ok()},
              {"repaired", true},
              {"found", found},
              {"skipped", rep.damage},
              {"devices_recovered", rep.devices.size()},
              {"mappings_recovered", rep.mappings},
              {"devices_lost", rep.lost.size()},
              {"mappings_lost", rep.mappings_lost},
              {"devices", devices},
              {"lost_devices", lost},
              {"volumes_lost", volumes_lost},
              {"volumes_added", volumes_added},
              {"notes", rep.notes},
              {"old_transaction_id", rep.old_trans_id},
              {"transaction_id", rep.new_trans_id},
              {"data_blocks_in_use", rep.data_blocks_in_use},
              {"damaged_metadata", rep.damaged_metadata},
              {"damage", after.res.damage},
              {"warnings", after.warnings},
              {"thin_check", external_check_name(after.ext)}};
    if (int st = print_report(ctx, name(), r); st != kExitOk) {
      return st;
    }
    if (!after.ok()) {
      return ctx.fail(name(), ctx.pool_dir, "the repaired pool still fails its check",
                      kExitDamaged);
    }
    return kExitOk;
  }

  bool repair_ = false;
  bool force_ = false;
};

}  // namespace

void add_pool_commands(CommandList& list) {
  list.push_back(std::make_unique<InitCommand>());
  list.push_back(std::make_unique<InfoCommand>());
  list.push_back(std::make_unique<ExtendCommand>());
  list.push_back(std::make_unique<CheckCommand>());
}

}  // namespace tp::cli
