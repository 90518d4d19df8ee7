#pragma once
// A subcommand of `thinpool`. Each one is a small class that owns its options, declares
// them on its CLI11 subcommand, and runs after a successful parse. Commands are grouped by
// concern, one file per group; a new command is a class in its group's file plus one line
// in that group's add_* function (see app.cc for the order they appear in --help).
//
//   cmd_pool.cc    init info extend check (--repair)
//   cmd_volume.cc  list create snapshot remove resize delta provision unprovision reserve
//                  merge rollback
//   cmd_io.cc      write read diff update
//   cmd_serve.cc   serve
//
// `plan OP ARGS...` (app.cc) runs the plannable commands (create snapshot remove resize
// provision unprovision reserve merge rollback) as a dry run.

#include <memory>
#include <vector>

#include "cli/console.h"

namespace CLI {
class App;
}

namespace tp::cli {

class Command {
 public:
  Command() = default;
  Command(const Command&) = delete;
  Command& operator=(const Command&) = delete;
  virtual ~Command() = default;

  virtual const char* name() const = 0;
  virtual const char* description() const = 0;
  // Declares positional arguments and options on the subcommand CLI11 made for name().
  virtual void declare(CLI::App& sub) = 0;
  // Runs the command after a successful parse; prints its output or one error line and
  // returns the exit status.
  virtual int run(const Context& ctx) = 0;
  // Whether the command goes to the daemon when one serves the pool (init, serve and
  // events do not).
  virtual bool through_daemon() const { return true; }
  // Whether `plan NAME ...` can run it as a dry run (it passes ctx.plan to the pool and
  // stops after the operation when ctx.plan is set).
  virtual bool plannable() const { return false; }
};

using CommandList = std::vector<std::unique_ptr<Command>>;

void add_pool_commands(CommandList& list);  // init info extend check
// list create snapshot remove resize delta provision unprovision reserve merge rollback
void add_volume_commands(CommandList& list);
void add_io_commands(CommandList& list);     // write read diff update
void add_serve_commands(CommandList& list);  // serve

}  // namespace tp::cli
