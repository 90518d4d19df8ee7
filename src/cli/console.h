#pragma once
// What every command shares: the global options, where output goes, and the one place
// that turns an error into a message and an exit status (CLI.md "Exit status").
//
// Messages: exactly one line on stderr, `thinpool: <command>: <subject>: <reason>`, where
// subject is the volume or path concerned. With --json, stdout receives nothing on error.

#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

#include "io/result.h"

namespace tp::daemon {
struct Services;
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

  // A file argument: relative to the client's directory when served.
  std::string path(const std::string& p) const {
    return served && !cwd.empty() && !p.empty() && p[0] != '/' ? cwd + "/" + p : p;
  }

  // Prints the one-line message and returns the status for it.
  int fail(std::string_view command, std::string_view subject, const Error& e) const;
  int fail(std::string_view command, std::string_view subject, std::string_view reason,
           int status) const;
  int usage(std::string_view command, std::string_view subject, std::string_view reason) const {
    return fail(command, subject, reason, kExitUsage);
  }
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
