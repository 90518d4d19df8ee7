#pragma once
// The `thinpool` command line: global options, subcommands, exit statuses (CLI.md).

#include <string>

#include "cli/console.h"
#include "daemon/control.h"

namespace tp::cli {

// Parses argv and runs the chosen subcommand; returns the exit status. Help goes to
// con.out (status 0); a parse error is one line on con.err (status 2). Exceptions other
// than CLI11's parse errors (bad_alloc) propagate to the caller (main).
//
// When pool_dir holds a live daemon's control socket, a command that works on the pool is
// sent there and runs in the daemon (the output and status are the daemon's). The daemon
// itself calls run() with served set (its pool and exports) and the client's cwd.
int run(int argc, const char* const* argv, Console& con, const daemon::Services* served = nullptr,
        const std::string& cwd = "");

// The control socket's runner for `thinpool serve`: runs a client's command line in the
// daemon, capturing its output.
daemon::ControlReply run_served(const daemon::Services& services,
                                const daemon::ControlRequest& request);

}  // namespace tp::cli
