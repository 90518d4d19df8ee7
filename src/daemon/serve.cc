#include "daemon/serve.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <new>

#include "catalog/catalog.h"
#include "daemon/events.h"
#include "daemon/group_commit.h"
#include "daemon/pool_export.h"
#include "nbd/logger.h"
#include "nbd/server.h"
#include "thin/pool.h"

namespace tp::daemon {
namespace {

// The write end of the self-pipe the signal handler pokes (async-signal-safe: one write).
std::atomic<int> g_signal_fd{-1};

extern "C" void on_stop_signal(int) {
  int saved = errno;
  int fd = g_signal_fd.load();
  if (fd >= 0) {
    char b = 1;
    (void)!::write(fd, &b, 1);
  }
  errno = saved;
}

// Installs the SIGINT/SIGTERM handlers for the lifetime of the object; the destructor puts
// the previous ones back (serve() may run inside a longer-lived process, e.g. tests).
class StopSignals {
 public:
  StopSignals() {
    if (::pipe2(fds_, O_CLOEXEC | O_NONBLOCK) != 0) return;
    g_signal_fd.store(fds_[1]);
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    ::sigaction(SIGPIPE, &ign, &old_pipe_);
    installed_ = true;
  }
  ~StopSignals() {
    if (installed_) {
      ::sigaction(SIGINT, &old_int_, nullptr);
      ::sigaction(SIGTERM, &old_term_, nullptr);
      ::sigaction(SIGPIPE, &old_pipe_, nullptr);
    }
    g_signal_fd.store(-1);
    for (int fd : fds_) {
      if (fd >= 0) ::close(fd);
    }
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  bool ok() const { return installed_; }
  // Blocks until SIGINT or SIGTERM arrives.
  void wait() {
    pollfd p{fds_[0], POLLIN, 0};
    while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
  }

 private:
  int fds_[2] = {-1, -1};
  bool installed_ = false;
  struct sigaction old_int_ {
  }, old_term_{}, old_pipe_{};
};

int exit_code_for_open(const Error& e) {
  switch (e.code) {
    case Errc::kCorruption:
    case Errc::kNotFound:
      return 3;  // damaged, or not a pool
    default:
      return 1;
  }
}

int serve_impl(const ServeOptions& opts) {
  nbd::StderrLogger log(opts.debug ? nbd::LogLevel::kDebug : nbd::LogLevel::kInfo);
  if (opts.pool_dir.empty()) {
    log.error("serve: no pool directory given");
    return 2;
  }
  for (const std::string& name : opts.exports) {
    if (!catalog::valid_volume_name(name)) {
      log.error("serve: --export {}: not a valid volume name", name);
      return 2;
    }
  }
  if (!opts.default_export.empty() && !catalog::valid_volume_name(opts.default_export)) {
    log.error("serve: --default {}: not a valid volume name", opts.default_export);
    return 2;
  }
  std::shared_ptr<const nbd::TlsCredentials> tls_credentials;
  if (opts.tls == nbd::TlsMode::kOff) {
    if (!opts.tls_certificates.empty() || !opts.tls_psk.empty()) {
      log.error("serve: TLS credentials given but --tls is off");
      return 2;
    }
  } else {
    if (opts.tls_certificates.empty() == opts.tls_psk.empty()) {
      log.error("serve: --tls {} needs exactly one of --tls-certificates DIR and --tls-psk FILE",
                nbd::tls_mode_name(opts.tls));
      return 2;
    }
    auto creds = opts.tls_psk.empty() ? nbd::TlsCredentials::server_x509(opts.tls_certificates)
                                      : nbd::TlsCredentials::server_psk(opts.tls_psk);
    if (!creds.ok()) {
      log.error("serve: TLS credentials {}: {}",
                opts.tls_psk.empty() ? opts.tls_certificates : opts.tls_psk,
                creds.error().to_string());
      return 1;
    }
    tls_credentials = std::move(*creds);
  }
  if (opts.handshake_timeout.count() <= 0) {
    log.error("serve: the handshake timeout must be positive");
    return 2;
  }
  StopSignals signals;  // before anything slow, so an early SIGTERM is not lost
  if (!signals.ok()) {
    log.error("serve: cannot install signal handlers");
    return 1;
  }

  auto pool_r = thin::Pool::open(opts.pool_dir);
  if (!pool_r.ok()) {
    log.error("serve: cannot open pool {}: {}", opts.pool_dir, pool_r.error().to_string());
    return exit_code_for_open(pool_r.error());
  }
  std::unique_ptr<thin::Pool> pool = std::move(*pool_r);
  for (const std::string& name : opts.exports) {
    if (auto v = pool->dev_id(name); !v.ok()) {
      log.error("serve: no such volume: {}", name);
      (void)pool->close();
      return 1;
    }
  }
  if (!opts.default_export.empty()) {
    bool listed = opts.exports.empty() || std::find(opts.exports.begin(), opts.exports.end(),
                                                    opts.default_export) != opts.exports.end();
    if (!listed || !pool->dev_id(opts.default_export).ok()) {
      log.error("serve: default export {} is not a served volume", opts.default_export);
      (void)pool->close();
      return 1;
    }
  }

  GroupCommit commit([&pool] { return pool->flush(); },
                     [&pool] { return pool->background_commit(); });
  PoolCatalog catalog(*pool, commit, opts.exports, opts.default_export);

  EventBus events;
  pool->set_event_listener([&events, &log](const thin::PoolEvent& e) {
    log.info("serve: pool state {} (was {}; {} of {} blocks unreserved)",
             thin::pool_state_name(e.state), thin::pool_state_name(e.previous), e.unreserved_blocks,
             e.nr_blocks);
    events.publish({{"event", "state"},
                    {"state", thin::pool_state_name(e.state)},
                    {"previous", thin::pool_state_name(e.previous)},
                    {"unreserved_blocks", e.unreserved_blocks},
                    {"nr_blocks", e.nr_blocks}});
  });
  Services services{*pool, commit, catalog};
  const std::string control_path =
      opts.control_path.empty() ? opts.pool_dir + "/control.sock" : opts.control_path;
  ControlServer control(
      control_path, opts.runner ? opts.runner(services) : CommandRunner{}, events, [&] {
        nlohmann::json exports = nlohmann::json::array();
        for (const auto& [name, use] : catalog.uses()) {
          exports.push_back({{"name", name}, {"readers", use.readers}, {"writers", use.writers}});
        }
        return nlohmann::json{{"pid", ::getpid()},
                              {"pool", opts.pool_dir},
                              {"state", thin::pool_state_name(pool->info().state)},
                              {"events_published", events.published()},
                              {"exports", exports}};
      });
  if (auto r = control.start(); !r.ok()) {
    log.error("serve: control socket {}: {}", control_path, r.error().to_string());
    pool->set_event_listener(nullptr);
    (void)pool->close();
    return r.error().code == Errc::kInvalidArgument ? 2 : 1;
  }

  nbd::ServerOptions so;
  so.unix_path = opts.socket_path.empty() ? opts.pool_dir + "/nbd.sock" : opts.socket_path;
  so.tcp_listen = opts.listen;
  so.handshake_timeout = opts.handshake_timeout;
  so.tls = opts.tls;
  so.tls_credentials = tls_credentials;
  nbd::Server server(catalog, log, so);
  if (auto r = server.start(); !r.ok()) {
    log.error("serve: cannot listen: {}", r.error().to_string());
    control.stop();
    pool->set_event_listener(nullptr);
    (void)pool->close();
    return r.error().code == Errc::kInvalidArgument ? 2 : 1;
  }
  commit.start_background(opts.commit_interval, [&log](const Error& e) {
    log.error("serve: background commit failed: {}", e.to_string());
  });

  std::string where = so.unix_path;
  if (!opts.listen.empty()) {
    std::string host = opts.listen.substr(0, opts.listen.rfind(':'));
    where += " and " + host + ":" + std::to_string(server.tcp_port());
  }
  if (opts.tls != nbd::TlsMode::kOff) {
    where += std::string(" (TLS ") + nbd::tls_mode_name(opts.tls) + ")";
  }
  std::fprintf(stderr, "serving %zu exports on %s\n", catalog.list().size(), where.c_str());
  std::fflush(stderr);

  signals.wait();
  log.info("serve: stopping");
  control.stop();  // commands in progress finish first
  server.stop();   // no new requests; those in flight are answered
  commit.stop_background();
  events.close();
  pool->set_event_listener(nullptr);
  int rc = 0;
  if (auto r = pool->close(); !r.ok()) {  // the final commit
    log.error("serve: final commit failed: {}", r.error().to_string());
    rc = 1;
  }
  return rc;
}

}  // namespace

int serve(const ServeOptions& opts) {
  try {
    return serve_impl(opts);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "thinpool: error: serve: out of memory\n");
    return 1;
  }
}

}  // namespace tp::daemon
