#pragma once
// What every command shares: the global options, where output goes, and the one place
// that turns an error into a message and an exit status (CLI.md "Exit status").
//
// Messages: exactly one line on stderr, `thinpool: <command>: <subject>: <reason>`, where
// subject is the volume or path concerned. A space refusal adds what was needed and what
// was available, in bytes and blocks, naming the volumes. With --json, stdout also gets one
// JSON document, {"error": {command, subject, code, message, exit_status, and for a space
// refusal the fields of add_space_json}}, unless the command printed its report already.

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "io/result.h"

namespace tp::daemon {
struct Services;
}
namespace tp::thin {
struct SpacePlan;
}

namespace tp::cli {

// Exit statuses (CLI.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;   // the operation failed (no space, no such volume...)
inline constexpr int kExitUsage = 2;    // bad arguments, found before the pool is touched
inline constexpr int kExitDamaged = 3;  // the pool is damaged or not a pool

// The exit status for an error from the engine: kCorruption and kUnsupported (a pool this
// build cannot use) mean 3, everything else 1.
int exit_status_for(const Error& e);

struct Console {
  std::ostream& out;
  std::ostream& err;
  bool err_is_tty = false;  // progress bars only on a terminal
};

struct Context {
  Console& con;
  std::string pool_dir;  // -p/--pool or THINPOOL_POOL
  bool json = false;
  // Set when the daemon runs the command for a client of its control socket: the daemon's
  // pool and exports are used instead of opening the pool, and relative paths are the
  // client's (cwd).
  const daemon::Services* served = nullptr;
  std::string cwd;
  // `plan OP ...`: the command runs as a dry run into this plan, and with_pool reports the
  // plan instead of the command's own report (CLI.md "plan").
  thin::SpacePlan* plan = nullptr;
  // While with_pool has the pool open: the name of the volume with a thin device id ("" for
  // none), to name the volumes in a space refusal.
  mutable std::function<std::string(uint64_t dev)> volume_name;
  // Something was printed on stdout: no JSON error document after it (one document a run).
  mutable bool reported = false;

  // A file argument: relative to the client's directory when served.
  std::string path(const std::string& p) const {
    return served && !cwd.empty() && !p.empty() && p[0] != '/' ? cwd + "/" + p : p;
  }

  // Prints the one-line message and returns the status for it (exit_status_for(e), or
  // status).
  int fail(std::string_view command, std::string_view subject, const Error& e) const;
  // unnamed: the volume a space refusal is for when its numbers name none (one the
  // operation would create); subject when empty.
  int fail(std::string_view command, std::string_view subject, const Error& e, int status,
           std::string_view unnamed = {}) const;
  int fail(std::string_view command, std::string_view subject, std::string_view reason,
           int status) const;
  int usage(std::string_view command, std::string_view subject, std::string_view reason) const {
    return fail(command, subject, reason, kExitUsage);
  }

 private:
  // The message line, and with --json (document) the error document with detail's fields.
  int report_failure(std::string_view command, std::string_view subject, std::string_view reason,
                     int status, nlohmann::json detail, bool document) const;
};

// A text table with aligned columns; `right` marks the columns aligned right (numbers).
class Table {
 public:
  Table(std::vector<std::string> header, std::vector<bool> right);
  void add(std::vector<std::string> row);
  void print(std::ostream& os) const;

 private:
  std::vector<std::vector<std::string>> rows_;  // rows_[0] is the header
  std::vector<bool> right_;
};

}  // namespace tp::cli
