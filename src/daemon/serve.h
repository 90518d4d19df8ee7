#pragma once
// `thinpool serve`: one process owns a pool and serves its volumes over NBD until SIGINT or
// SIGTERM (docs/CLI.md "serve"). The CLI parses arguments into ServeOptions and calls
// serve(); everything else (opening the pool, the exports, the server, group commit, the
// final commit) happens here.

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "daemon/control.h"
#include "nbd/tls.h"

namespace tp::thin {
class Pool;
}

namespace tp::daemon {

class GroupCommit;
class PoolCatalog;

// What a command run through the control socket may use: the daemon's open pool, its group
// commit (a command's changes are committed before it answers), and the exports (remove,
// merge and rollback refuse volumes that clients have open).
struct Services {
  thin::Pool& pool;
  GroupCommit& commit;
  PoolCatalog& exports;
};

struct ServeOptions {
  std::string pool_dir;
  std::string socket_path;           // "" means pool_dir + "/nbd.sock"
  std::string listen;                // "" for none, else "127.0.0.1:PORT" (TCP as well)
  std::vector<std::string> exports;  // volume names to serve; empty: every volume, live
  std::string default_export;        // what the empty export name opens; "" means the only
                                     // export when there is exactly one
  bool debug = false;                // log every connection and refused request
  // TLS (docs/CLI.md "serve"): off, on (the client may upgrade with STARTTLS) or require
  // (nothing but STARTTLS and ABORT before TLS). Credentials: exactly one of a directory
  // with server-cert.pem and server-key.pem, or a psktool file (username:hexkey lines).
  nbd::TlsMode tls = nbd::TlsMode::kOff;
  std::string tls_certificates;
  std::string tls_psk;
  // A client must finish the NBD handshake (TLS handshake included) in this time.
  std::chrono::milliseconds handshake_timeout{10000};
  // When no client flushes, the mapping changes of writes reach the journal this often
  // (thin::Pool::background_commit; DESIGN.md "The I/O path and commits").
  std::chrono::milliseconds commit_interval{1000};
  // The control socket ("" means pool_dir + "/control.sock") and what runs its "run"
  // requests (the CLI passes its own commands; none: "run" is refused).
  std::string control_path;
  std::function<CommandRunner(Services&)> runner;
};

// Serves until SIGINT/SIGTERM, then stops accepting, finishes requests in flight, commits
// and closes the pool. Pool state changes (ok, low, full, read-only) go to the control
// socket's event stream and to the log. When ready it prints one line to stderr:
//   serving N exports on SOCKET
// Returns the exit status (docs/CLI.md): 0 after a clean stop; 1 when the pool is busy, the
// socket is taken, a named export does not exist, the TLS credentials cannot be loaded, or
// the final commit fails; 2 for a bad option (listen address, TLS without credentials or
// with both kinds, an export name that is no valid volume name); 3 when the pool is damaged
// or not a pool.
// Installs SIGINT/SIGTERM handlers for its duration (restored before it returns).
int serve(const ServeOptions& opts);

}  // namespace tp::daemon
