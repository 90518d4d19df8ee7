#pragma once
// The `thinpool` command line: global options, subcommands, exit statuses (CLI.md).

#include "cli/console.h"

namespace tp::cli {

// Parses argv and runs the chosen subcommand; returns the exit status. Help goes to
// con.out (status 0); a parse error is one line on con.err (status 2). Exceptions other
// than CLI11's parse errors (bad_alloc) propagate to the caller (main).
int run(int argc, const char* const* argv, Console& con);

}  // namespace tp::cli
