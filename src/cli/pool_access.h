#pragma once
// Opening and closing the pool on behalf of a command, with the error reporting and exit
// statuses of CLI.md. Later this is where a command is sent to the daemon's control socket
// when `thinpool serve` holds the pool.

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

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
// own error line and returns its status.
int with_pool(const Context& ctx, std::string_view command,
              const std::function<int(thin::Pool&, Report&)>& body);

}  // namespace tp::cli
