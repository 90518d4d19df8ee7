#pragma once
// Process, file and temp-dir helpers for tests, plus wrappers around the
// thin-provisioning-tools 0.9.0 binaries used as an oracle (docs/DM_THIN_FORMAT.md §9).
// Test support only: failures of the test's own plumbing (cannot create a temp dir, cannot
// write a file) throw std::runtime_error; nothing here is thread-aware.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "support/thin_xml.h"

namespace tp::testing {

struct CmdResult {
  int rc = 0;       // exit status; 128+signal if killed; 127 if the program could not be run
  std::string out;  // all of stdout
  std::string err;  // all of stderr (or the spawn error when rc == 127 and nothing ran)
};

// Runs argv[0] (looked up in PATH) with argv, stdin = /dev/null, and the current
// environment; reads stdout and stderr to EOF concurrently (poll), then waits.
// REQUIRES: !argv.empty().
CmdResult run_cmd(const std::vector<std::string>& argv);

// True if `name` (or, if it contains '/', that path) is an executable regular file in PATH.
bool have_tool(const std::string& name);

// A fresh directory from mkdtemp under $TMPDIR (or /tmp), never the working directory.
// The destructor removes it recursively, ignoring errors.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name; does not create anything.
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Whole-file read / write (write truncates or creates). Throw on error.
std::string read_file(const std::string& path);
void write_file(const std::string& path, std::string_view contents);

// Runs `thin_check <metadata_file>`. Returns "" when it exits 0, else
// "thin_check rc=N: <stderr>" (stdout appended if stderr is empty), so tests can write
// EXPECT_EQ(thin_check(f), ""). If thin_check is not installed, returns "" and prints a
// one-line skip note to stderr (once per process).
std::string thin_check(const std::string& metadata_file);

// Creates/truncates `out_file` to `bytes` zero bytes, writes to_xml(pool) to a temporary
// file and runs `thin_restore -i <xml> -o <out_file>`. Returns thin_restore's result
// (rc 127 if thin_restore is not installed). See metadata_bytes_for() for a size.
CmdResult thin_restore(const XmlPool& pool, const std::string& out_file, uint64_t bytes);

// Runs `thin_dump <metadata_file>` and parses its stdout; nullopt if thin_dump fails
// or prints something parse_xml rejects.
std::optional<XmlPool> thin_dump(const std::string& metadata_file);

// A metadata file size that comfortably holds `pool` as thin_restore lays it out:
// max(16 MiB, 2 * 48 bytes per mapping + 4 MiB), rounded up to 4 KiB.
uint64_t metadata_bytes_for(const XmlPool& pool);

}  // namespace tp::testing

namespace tp::testing {

// How much work a randomized or exhaustive test should do: TP_LONG=1 (make check-long)
// asks for everything, TP_QUICK=1 (the sanitizer pass of make test) for a smaller slice.
enum class Effort { kQuick, kNormal, kLong };
Effort effort();
// n scaled by effort: quick n/10 (at least 1), normal n, long n*long_factor.
uint64_t scaled(uint64_t n, uint64_t long_factor = 10);

}  // namespace tp::testing
