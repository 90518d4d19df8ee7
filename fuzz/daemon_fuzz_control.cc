// libFuzzer target: the daemon's control socket (daemon/control.h) in front of a real pool
// in a scratch directory, with the CLI as its command runner, as `thinpool serve` sets it up.
//
// The input is split into lines; each line is a request. It goes twice to the server:
// straight to ControlServer::handle, and over a real connection to the started server
// (so its per-connection loop in serve() sees it too). Properties: every reply is one
// JSON object, an error or a result; the server answers every request line on the
// connection (it never dies or hangs); the pool passes its full check afterwards.
//
// "run" requests reach the real CLI on the real pool, but only commands that stay inside
// the pool (list, info, create, snapshot, remove, resize, provision, unprovision, reserve,
// merge, rollback, delta): the file commands (write, read, diff, update) would let fuzz
// bytes name files outside the scratch directory, and check runs thin_check (slow). Every
// few hundred commands the pool is made afresh so it stays small.
// Seeds (fuzz/corpus/daemon_fuzz_control): valid requests of every kind, and malformed JSON,
// wrong types, huge and deeply nested arrays.

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "cli/app.h"
#include "daemon/control.h"
#include "daemon/events.h"
#include "daemon/group_commit.h"
#include "daemon/pool_export.h"
#include "daemon/serve.h"
#include "fuzz_util.h"
#include "thin/pool.h"

namespace {

using namespace tp;
using namespace tp::daemon;

constexpr std::string_view kAllowed[] = {"list",    "info",   "create",    "snapshot",
                                         "remove",  "resize", "provision", "unprovision",
                                         "reserve", "merge",  "rollback",  "delta"};
constexpr std::string_view kDenied[] = {"write", "read", "diff",  "update", "extend",
                                        "check", "init", "serve", "events"};

bool allowed(const ControlRequest& r) {
  for (const std::string& a : r.argv) {
    if (std::find(std::begin(kDenied), std::end(kDenied), a) != std::end(kDenied)) return false;
  }
  // The subcommand is the first word that is not an option (an option's value that comes
  // first is taken for it: that only refuses more).
  for (const std::string& a : r.argv) {
    if (!a.empty() && a[0] == '-') continue;
    return std::find(std::begin(kAllowed), std::end(kAllowed), a) != std::end(kAllowed);
  }
  return true;  // options only: help, usage errors
}

class Daemon {
 public:
  explicit Daemon(int generation) {
    dir_ = fuzz::scratch_dir() + "/pool" + std::to_string(generation);
    thin::PoolOptions o;
    o.data_bytes = 16ull << 20;
    auto p = thin::Pool::create(dir_, o);
    TP_FUZZ_REQUIRE(p.ok());
    pool_ = std::move(*p);
    TP_FUZZ_REQUIRE(pool_->create_volume("vol", 1 << 20).ok());
    TP_FUZZ_REQUIRE(pool_->snapshot("vol", "snap", false).ok());
    commit_ = std::make_unique<GroupCommit>([this] { return pool_->flush(); });
    exports_ = std::make_unique<PoolCatalog>(*pool_, *commit_, std::vector<std::string>{}, "");
    services_ = std::make_unique<Services>(Services{*pool_, *commit_, *exports_});
    server_ = std::make_unique<ControlServer>(
        dir_ + "/control.sock",
        [this](const ControlRequest& r) -> ControlReply {
          if (!allowed(r)) return {2, "", "not run by the fuzzer\n"};
          runs_++;
          return cli::run_served(*services_, r);
        },
        events_,
        [this] {
          nlohmann::json exports = nlohmann::json::array();
          for (const auto& [name, use] : exports_->uses()) {
            exports.push_back({{"name", name}, {"readers", use.readers}});
          }
          return nlohmann::json{{"pool", dir_}, {"exports", exports}};
        });
    TP_FUZZ_REQUIRE(server_->start().ok());
    connect();
  }
  ~Daemon() {
    if (fd_ >= 0) ::close(fd_);
    server_->stop();
    events_.close();
    auto c = pool_->check();
    TP_FUZZ_REQUIRE(c.ok() && c->ok());
    TP_FUZZ_REQUIRE(pool_->close().ok());
    server_.reset();
    pool_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  ControlServer& server() { return *server_; }
  uint64_t runs() const { return runs_; }

  // Sends one line on the connection and returns the reply line.
  std::string call(std::string_view line) {
    TP_FUZZ_REQUIRE(write_line(fd_, line));
    std::string reply;
    bool got = reader_->next(&reply);
    if (!got) {
      std::fprintf(stderr, "control server sent no reply (errno %d)\n", errno);
      std::abort();
    }
    return reply;
  }
  // After an "events" request the connection streams events: start a new one.
  void reconnect() {
    ::close(fd_);
    connect();
  }

 private:
  void connect() {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::string path = dir_ + "/control.sock";
    std::memcpy(a.sun_path, path.data(), path.size());
    TP_FUZZ_REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    timeval tv{30, 0};  // a hang is a bug: fail instead of waiting forever
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    reader_ = std::make_unique<LineReader>(fd_, size_t{1} << 30);
  }

  std::string dir_;
  std::unique_ptr<thin::Pool> pool_;
  std::unique_ptr<GroupCommit> commit_;
  std::unique_ptr<PoolCatalog> exports_;
  std::unique_ptr<Services> services_;
  EventBus events_;
  std::unique_ptr<ControlServer> server_;
  int fd_ = -1;
  std::unique_ptr<LineReader> reader_;
  uint64_t runs_ = 0;
};

std::unique_ptr<Daemon> g_daemon;
int g_generation = 0;

void check_reply(const std::string& reply) {
  auto j = nlohmann::json::parse(reply, nullptr, false);
  TP_FUZZ_REQUIRE(!j.is_discarded() && j.is_object());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!g_daemon) {
    g_daemon = std::make_unique<Daemon>(g_generation++);
    std::atexit([] { g_daemon.reset(); });
  }
  std::string_view in(reinterpret_cast<const char*>(data), size);
  for (size_t pos = 0; pos <= in.size();) {
    size_t nl = in.find('\n', pos);
    std::string_view line = in.substr(pos, nl == std::string_view::npos ? nl : nl - pos);
    pos = nl == std::string_view::npos ? in.size() + 1 : nl + 1;
    std::string direct = g_daemon->server().handle(line);
    check_reply(direct);
    std::string wired = g_daemon->call(line);
    check_reply(wired);
    if (wired == R"({"ok":true})") g_daemon->reconnect();  // now an event stream
  }
  if (g_daemon->runs() > 300) g_daemon = std::make_unique<Daemon>(g_generation++);
  return 0;
}
