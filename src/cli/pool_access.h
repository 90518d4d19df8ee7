#pragma once
// Opening and closing the pool on behalf of a command, with the error reporting and exit
// statuses of CLI.md; or, when the daemon runs the command for a control-socket client,
// using the daemon's open pool (app.cc sends commands there when `thinpool serve` runs).

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "cli/console.h"
#include "thin/pool.h"

namespace tp::cli {

// What a command prints when it succeeds: `json` with --json, `text` otherwise. Held back
// until the pool has closed cleanly, so a failed commit never prints a success.
struct Report {
  nlohmann::json json;
  std::string text;
};

// Prints the report (JSON document or text) on stdout. Returns kExitOk, or 1 after a
// message when stdout could not be written (a full disk, a closed pipe).
int print_report(const Context& ctx, std::string_view command, const Report& report);

// Checks ctx.pool_dir is set (usage error 2 otherwise) and looks like a pool: a directory
// holding a `metadata` file (3 "not a pool" otherwise, without touching the directory).
// Returns kExitOk or the status, after printing the message.
int check_pool_dir(const Context& ctx, std::string_view command);

// Opens the pool (check_pool_dir first). Returns kExitOk and sets *pool, or prints the
// message and returns 1 (e.g. locked by another process) or 3 (damaged, not a pool).
int open_pool(const Context& ctx, std::string_view command, std::unique_ptr<thin::Pool>* pool);

// Closes the pool (which commits). When `status` is kExitOk a close error is reported and
// its status returned; otherwise the command already reported its error and `status` is
// returned whatever close says (one message per failure).
int close_pool(const Context& ctx, std::string_view command, std::unique_ptr<thin::Pool> pool,
               int status);

// open_pool, body, close_pool, then print_report if everything succeeded. body prints its
// own error line and returns its status. When the daemon runs the command (ctx.served),
// body gets the daemon's pool and its changes are committed before the report.
int with_pool(const Context& ctx, std::string_view command,
              const std::function<int(thin::Pool&, Report&)>& body);

// Runs op, unless the daemon runs this command and an NBD client has one of `gone` open, or
// (without force) one of `rewritten` open writable: kBusy then (SEMANTICS.md: remove refuses
// exported volumes; merge and rollback refuse an origin exported writable unless --force).
Result<void> unless_exported(const Context& ctx, const std::vector<std::string>& gone,
                             const std::vector<std::string>& rewritten, bool force,
                             const std::function<Result<void>()>& op);

// Open NBD connections per volume when the daemon runs this command (empty offline).
std::map<std::string, unsigned> exported_volumes(const Context& ctx);

}  // namespace tp::cli
