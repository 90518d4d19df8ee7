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
    return "Show the pool: size, blocks used/reserved/unreserved, metadata, state";
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

class CheckCommand final : public Command {
 public:
  const char* name() const override { return "check"; }
  const char* description() const override {
    return "Check metadata, space maps, catalog and the space invariant; also runs "
           "thin_check when installed";
  }
  void declare(CLI::App&) override {}
  int run(const Context& ctx) override {
    thin::CheckResult res;
    std::string metadata = ctx.pool_dir + "/metadata";
    if (ctx.served) {
      // The daemon keeps committing: thin_check reads a copy of the committed metadata
      // taken at the moment of our own check, under the pool's lock.
      metadata = ctx.pool_dir + "/.check-metadata";
      auto checked = ctx.served->pool.check(metadata);
      if (!checked.ok()) {
        ::unlink(metadata.c_str());
        return ctx.fail(name(), ctx.pool_dir, checked.error());
      }
      res = std::move(checked).value();
    } else {
      std::unique_ptr<thin::Pool> pool;
      if (int st = open_pool(ctx, name(), &pool); st != kExitOk) {
        return st;
      }
      auto checked = pool->check();
      if (!checked.ok()) {
        return close_pool(ctx, name(), std::move(pool),
                          ctx.fail(name(), ctx.pool_dir, checked.error()));
      }
      res = std::move(checked).value();
      // thin_check reads the metadata file: only after our commit and with the pool closed.
      if (int st = close_pool(ctx, name(), std::move(pool), kExitOk); st != kExitOk) {
        return st;
      }
    }
    std::vector<std::string> warnings = res.warnings;
    std::string why;
    const ExternalCheck ext = run_thin_check(metadata, &why);
    if (ctx.served) ::unlink(metadata.c_str());
    if (ext == ExternalCheck::kNotRun) {
      warnings.push_back("thin_check: " + why);
    }
    const bool ok = res.ok() && ext != ExternalCheck::kFailed;

    Report r;
    r.json["ok"] = ok;
    r.json["damage"] = res.damage;
    r.json["warnings"] = warnings;
    r.json["thin_check"] = external_check_name(ext);
    r.json["nodes"] = res.nodes;
    r.json["mappings"] = res.mappings;
    std::string& t = r.text;
    for (const auto& d : res.damage) {
      t += "damage: " + d + "\n";
    }
    for (const auto& w : warnings) {
      t += "warning: " + w + "\n";
    }
    t += fmt::format("metadata: {} nodes, {} mappings: {}\n", res.nodes, res.mappings,
                     res.ok() ? "clean" : "DAMAGED");
    t += fmt::format("thin_check: {}\n", external_check_name(ext));
    if (int st = print_report(ctx, name(), r); st != kExitOk) {
      return st;
    }
    if (!ok) {
      std::string reason = res.ok()
                               ? std::string("damaged pool: thin_check failed")
                               : fmt::format("damaged pool: {} problem{} found", res.damage.size(),
                                             res.damage.size() == 1 ? "" : "s");
      return ctx.fail(name(), ctx.pool_dir, reason, kExitDamaged);
    }
    return kExitOk;
  }
};

}  // namespace

void add_pool_commands(CommandList& list) {
  list.push_back(std::make_unique<InitCommand>());
  list.push_back(std::make_unique<InfoCommand>());
  list.push_back(std::make_unique<ExtendCommand>());
  list.push_back(std::make_unique<CheckCommand>());
}

}  // namespace tp::cli
