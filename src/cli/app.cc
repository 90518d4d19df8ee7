#include "cli/app.h"

#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iterator>
#include <map>
#include <new>
#include <optional>
#include <sstream>
#include <string_view>

#include "cli/command.h"
#include "daemon/serve.h"
#include "thin/pool.h"

namespace tp::cli {
namespace {

// The order of --help: the everyday commands first. A command missing here goes last.
constexpr std::string_view kHelpOrder[] = {
    "init",      "info",        "list",    "create", "snapshot", "remove", "resize", "extend",
    "provision", "unprovision", "reserve", "merge",  "rollback", "plan",   "delta",  "diff",
    "update",    "write",       "read",    "check",  "serve",    "events",
};

size_t help_rank(std::string_view name) {
  return static_cast<size_t>(std::find(std::begin(kHelpOrder), std::end(kHelpOrder), name) -
                             std::begin(kHelpOrder));
}

// Sends the command line to the daemon serving the pool, if one does, and relays its output.
// nullopt: no daemon (the command runs here, on the pool it opens itself).
std::optional<int> run_in_daemon(const Context& ctx, std::string_view command, int argc,
                                 const char* const* argv) {
  if (ctx.pool_dir.empty()) return std::nullopt;
  const std::string sock = ctx.pool_dir + "/control.sock";
  struct stat st;
  if (::lstat(sock.c_str(), &st) != 0) return std::nullopt;
  auto client = daemon::ControlClient::connect(sock);
  if (!client.ok()) {
    if (client.error().code == Errc::kNotFound) return std::nullopt;  // a stale socket
    return ctx.fail(command, sock, client.error());
  }
  nlohmann::json req{{"op", "run"}, {"argv", nlohmann::json::array()}};
  for (int i = 1; i < argc; i++) req["argv"].push_back(argv[i]);
  if (char* cwd = ::getcwd(nullptr, 0)) {
    req["cwd"] = cwd;
    std::free(cwd);
  }
  auto reply = (*client)->call(req);
  if (!reply.ok()) return ctx.fail(command, sock, reply.error());
  if (auto e = reply->find("error"); e != reply->end()) {
    return ctx.fail(command, sock, "daemon: " + e->dump(), kExitFailed);
  }
  auto status = reply->find("status");
  if (status == reply->end() || !status->is_number_integer()) {
    return ctx.fail(command, sock, "daemon: malformed reply", kExitFailed);
  }
  ctx.con.out << reply->value("stdout", "") << std::flush;
  ctx.con.err << reply->value("stderr", "") << std::flush;
  return status->get<int>();
}

}  // namespace

daemon::ControlReply run_served(const daemon::Services& services,
                                const daemon::ControlRequest& request) {
  std::ostringstream out, err;
  Console con{out, err, false};
  std::vector<const char*> argv{"thinpool"};
  for (const std::string& a : request.argv) argv.push_back(a.c_str());
  int status;
  try {
    status = run(static_cast<int>(argv.size()), argv.data(), con, &services, request.cwd);
  } catch (const std::bad_alloc&) {
    err << "thinpool: out of memory\n";
    status = kExitFailed;
  } catch (const std::exception& e) {
    err << "thinpool: internal error: " << e.what() << "\n";
    status = kExitFailed;
  }
  return {status, out.str(), err.str()};
}

int run(int argc, const char* const* argv, Console& con, const daemon::Services* served,
        const std::string& cwd) {
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
  // plan OP ARGS...: the plannable commands once more (each with its own options), run as
  // a dry run.
  CommandList plannable;
  add_volume_commands(plannable);
  std::erase_if(plannable, [](const auto& c) { return !c->plannable(); });
  CLI::App* plan_sub = app.add_subcommand(
      "plan",
      "Would an operation fit, and by how much: runs OP (create, snapshot, remove, resize, "
      "provision, unprovision, reserve, merge, rollback) as a dry run; changes nothing");
  plan_sub->require_subcommand(1);
  plan_sub->fallthrough();
  std::map<const CLI::App*, Command*> by_plan_sub;
  for (auto& cmd : plannable) {
    CLI::App* sub = plan_sub->add_subcommand(cmd->name(), cmd->description());
    cmd->declare(*sub);
    by_plan_sub[sub] = cmd.get();
  }

  Context ctx{con, "", false, nullptr, "", nullptr, {}, false};
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
  ctx.served = served;
  ctx.cwd = cwd;
  thin::SpacePlan plan;
  for (const CLI::App* sub : app.get_subcommands()) {
    auto it = by_sub.find(sub);
    if (sub == plan_sub) {
      it = by_plan_sub.find(plan_sub->get_subcommands().front());
      if (it == by_plan_sub.end()) continue;
      ctx.plan = &plan;
    } else if (it == by_sub.end()) {
      continue;
    }
    Command& cmd = *it->second;
    if (served) {
      if (!cmd.through_daemon()) {
        return ctx.fail(cmd.name(), "", "not available through the control socket", kExitUsage);
      }
      ctx.pool_dir = served->pool.dir();
    } else if (cmd.through_daemon()) {
      if (auto st = run_in_daemon(ctx, cmd.name(), argc, argv)) return *st;
    }
    return cmd.run(ctx);
  }
  return ctx.fail("", "", "no command given (see --help)", kExitUsage);
}

}  // namespace tp::cli
