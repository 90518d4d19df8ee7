// thinpool: the command-line tool. Everything but the last-resort catch is in tp_cli.

#include <unistd.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <new>

#include "cli/app.h"

int main(int argc, char** argv) {
  try {
    tp::cli::Console con{std::cout, std::cerr, ::isatty(STDERR_FILENO) == 1};
    return tp::cli::run(argc, argv, con);
  } catch (const std::bad_alloc&) {
    std::fputs("thinpool: out of memory\n", stderr);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "thinpool: internal error: %s\n", e.what());
  } catch (...) {
    std::fputs("thinpool: internal error: unknown exception\n", stderr);
  }
  return tp::cli::kExitFailed;
}
