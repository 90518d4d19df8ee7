#include "cli/app.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iterator>
#include <map>
#include <string_view>

#include "cli/command.h"

namespace tp::cli {
namespace {

// The order of --help: the everyday commands first. A command missing here goes last.
constexpr std::string_view kHelpOrder[] = {
    "init",   "info",      "list",        "create",  "snapshot", "remove",   "resize",
    "extend", "provision", "unprovision", "reserve", "merge",    "rollback", "delta",
    "diff",   "update",    "write",       "read",    "check",
};

size_t help_rank(std::string_view name) {
  return static_cast<size_t>(std::find(std::begin(kHelpOrder), std::end(kHelpOrder), name) -
                             std::begin(kHelpOrder));
}

}  // namespace

int run(int argc, const char* const* argv, Console& con) {
  CLI::App app{"thinpool: thin-provisioned volumes and snapshots in a directory", "thinpool"};
  // Global options may also come after the subcommand: `thinpool list --json`.
  app.fallthrough();
  app.require_subcommand(1);
  std::string pool_dir;
  bool json = false;
  app.add_option("-p,--pool", pool_dir, "Pool directory")->envname("THINPOOL_POOL");
  app.add_flag("--json", json, "Print one JSON document instead of text");

  CommandList commands;
  add_pool_commands(commands);
  add_volume_commands(commands);
  add_io_commands(commands);
  add_serve_commands(commands);
  std::stable_sort(commands.begin(), commands.end(), [](const auto& a, const auto& b) {
    return help_rank(a->name()) < help_rank(b->name());
  });
  std::map<const CLI::App*, Command*> by_sub;
  for (auto& cmd : commands) {
    CLI::App* sub = app.add_subcommand(cmd->name(), cmd->description());
    cmd->declare(*sub);
    by_sub[sub] = cmd.get();
  }

  Context ctx{con, "", false};
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --help-all, --version
    return app.exit(e, con.out, con.err);
  } catch (const CLI::ParseError& e) {
    if (app.get_subcommands().empty()) {
      // CLI11 reports a missing subcommand before a word it did not know: name the word.
      const auto rest = app.remaining();
      if (!rest.empty() && !rest.front().empty()) {
        const bool option = rest.front()[0] == '-';
        return ctx.fail("", "",
                        std::string(option ? "unknown option" : "unknown command") + " \"" +
                            rest.front() + "\" (see --help)",
                        kExitUsage);
      }
      return ctx.fail("", "", std::string(e.what()) + " (see --help)", kExitUsage);
    }
    return ctx.fail(app.get_subcommands().front()->get_name(), "",
                    std::string(e.what()) + " (see --help)", kExitUsage);
  }
  ctx.pool_dir = pool_dir;
  ctx.json = json;
  for (const CLI::App* sub : app.get_subcommands()) {
    auto it = by_sub.find(sub);
    if (it != by_sub.end()) {
      return it->second->run(ctx);
    }
  }
  return ctx.fail("", "", "no command given (see --help)", kExitUsage);
}

}  // namespace tp::cli
