// `thinpool serve` hands the pool to the daemon layer (src/daemon/serve.h) with this CLI as
// the runner of its control socket; `thinpool events` follows the daemon's event stream.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <ctime>
#include <ostream>

#include "cli/app.h"
#include "cli/command.h"
#include "daemon/control.h"
#include "daemon/serve.h"

namespace tp::cli {
namespace {

class ServeCommand final : public Command {
 public:
  const char* name() const override { return "serve"; }
  const char* description() const override {
    return "Serve the pool's volumes over NBD until SIGINT/SIGTERM";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("--socket", opts_.socket_path, "Unix socket (default: POOL/nbd.sock)");
    sub.add_option("--listen", opts_.listen, "Also listen on TCP, e.g. 127.0.0.1:10809");
    sub.add_option("--export", opts_.exports, "Volumes to serve (default: all)");
    sub.add_option("--default", opts_.default_export, "Volume for the empty export name");
    sub.add_flag("--debug", opts_.debug, "Log every connection and refused request");
    sub.add_option("--tls", tls_, "TLS for NBD: off, on (client's choice) or require")
        ->check(CLI::IsMember({"off", "on", "require"}));
    sub.add_option("--tls-certificates", opts_.tls_certificates,
                   "Directory with server-cert.pem and server-key.pem");
    sub.add_option("--tls-psk", opts_.tls_psk, "Pre-shared keys file (username:hexkey lines)");
    sub.add_option("--handshake-timeout", handshake_timeout_,
                   "Seconds a client may take to finish the handshake (default 10)")
        ->check(CLI::Range(0.001, 3600.0));
  }
  int run(const Context& ctx) override {
    if (ctx.pool_dir.empty()) {
      return ctx.usage(name(), "-p", "no pool given (-p DIR or THINPOOL_POOL)");
    }
    opts_.pool_dir = ctx.pool_dir;
    opts_.tls = *nbd::parse_tls_mode(tls_);  // CLI11 let only the three names through
    opts_.handshake_timeout = std::chrono::milliseconds(
        std::max<int64_t>(1, static_cast<int64_t>(handshake_timeout_ * 1000)));
    // Every command of the CLI works through the control socket, run in the daemon.
    opts_.runner = [](daemon::Services& s) -> daemon::CommandRunner {
      return [&s](const daemon::ControlRequest& req) { return run_served(s, req); };
    };
    return daemon::serve(opts_);
  }
  bool through_daemon() const override { return false; }

 private:
  daemon::ServeOptions opts_;
  std::string tls_ = "off";
  double handshake_timeout_ = 10;
};

// One line per event: "2026-11-25 11:40:02 pool state full (was low): 0 of 512 blocks
// unreserved", or the event's JSON object with --json.
std::string event_text(const nlohmann::json& ev) {
  const std::time_t t = ev.value("time", int64_t{0});
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char when[32];
  std::strftime(when, sizeof(when), "%F %T", &tm);
  std::string line = fmt::format("{} {}", when, ev.value("event", "?"));
  if (ev.value("event", "") == "state") {
    line += fmt::format(" {} (was {}): {} of {} blocks unreserved", ev.value("state", "?"),
                        ev.value("previous", "?"), ev.value("unreserved_blocks", uint64_t{0}),
                        ev.value("nr_blocks", uint64_t{0}));
  }
  if (ev.contains("dropped"))
    line += fmt::format(" ({} earlier events dropped)", ev["dropped"].dump());
  return line;
}

class EventsCommand final : public Command {
 public:
  const char* name() const override { return "events"; }
  const char* description() const override {
    return "Follow the serving daemon's events (pool state: ok, low, full, read-only)";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("--count", count_, "Stop after this many events (0: never)");
    sub.add_option("--timeout", timeout_, "Stop after this many seconds (0: never)");
  }
  int run(const Context& ctx) override {
    if (ctx.pool_dir.empty()) {
      return ctx.usage(name(), "-p", "no pool given (-p DIR or THINPOOL_POOL)");
    }
    const std::string sock = ctx.pool_dir + "/control.sock";
    auto client = daemon::ControlClient::connect(sock);
    if (!client.ok()) {
      if (client.error().code == Errc::kNotFound) {
        return ctx.fail(name(), ctx.pool_dir, "no daemon serves this pool (thinpool serve)",
                        kExitFailed);
      }
      return ctx.fail(name(), sock, client.error());
    }
    auto ok = (*client)->call({{"op", "events"}});
    if (!ok.ok()) return ctx.fail(name(), sock, ok.error());
    if (ok->contains("error")) {
      return ctx.fail(name(), sock, "daemon: " + (*ok)["error"].dump(), kExitFailed);
    }
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::chrono::seconds(timeout_);
    for (unsigned seen = 0; count_ == 0 || seen < count_; seen++) {
      if (timeout_ > 0) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) break;
        (*client)->set_timeout(left);
      }
      auto ev = (*client)->read();
      if (!ev.ok()) {
        if (ev.error().code == Errc::kBusy) break;  // the timeout
        return ctx.fail(name(), sock, ev.error());
      }
      ctx.con.out << (ctx.json ? ev->dump() : event_text(*ev)) << '\n' << std::flush;
    }
    return kExitOk;
  }
  bool through_daemon() const override { return false; }

 private:
  unsigned count_ = 0;
  unsigned timeout_ = 0;
};

}  // namespace

void add_serve_commands(CommandList& list) {
  list.push_back(std::make_unique<ServeCommand>());
  list.push_back(std::make_unique<EventsCommand>());
}

}  // namespace tp::cli
