#pragma once
// The control socket (DIR/control.sock): how the `thinpool` command talks to the daemon
// that owns the pool (docs/CLI.md "The control socket"). Newline-delimited JSON, one
// request and one reply per line:
//
//   {"op":"run","argv":["snapshot","base","pre"],"cwd":"/home/u"}
//       -> {"status":0,"stdout":"...","stderr":"..."}      a CLI command, run in the daemon
//   {"op":"status"} -> {"pid":...,"pool":"...","exports":[{"name","readers","writers"}]}
//   {"op":"events"} -> {"ok":true}, then one line per event until the client hangs up
//   anything else   -> {"error":"..."}
//
// The socket is created owner-only (0600) and a peer whose uid is neither the daemon's nor
// root's is refused (SO_PEERCRED), so only the pool's owner can change it. A request line is
// capped (kMaxRequest), so are the connections (kMaxConnections); a client that sends
// nothing for kIdleTimeout is dropped. "run"
// requests are serialised: one command at a time, while NBD I/O goes on.
//
// Thread-safety: start()/stop() from one thread; handle() from any thread.

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "daemon/events.h"
#include "io/result.h"

namespace tp::daemon {

struct ControlRequest {
  std::vector<std::string> argv;  // the command line after the program name
  std::string cwd;                // the client's working directory (relative paths)
};
struct ControlReply {
  int status = 0;
  std::string out, err;
};
using CommandRunner = std::function<ControlReply(const ControlRequest&)>;

class ControlServer {
 public:
  static constexpr size_t kMaxRequest = 1 << 20;
  static constexpr size_t kMaxArgs = 256;
  static constexpr size_t kMaxConnections = 64;  // more are told so and closed
  static constexpr std::chrono::seconds kIdleTimeout{60};

  // run: executes "run" requests (none: they are refused); status: the "status" reply.
  ControlServer(std::string path, CommandRunner run, EventBus& events,
                std::function<nlohmann::json()> status);
  ~ControlServer();  // stop()
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Binds path (replacing a stale socket; kBusy if a live daemon answers there) with mode
  // 0600 and accepts on a background thread.
  Result<void> start();
  // Stops accepting, ends event streams, waits for commands in progress and the threads.
  void stop();

  // One request line (without the newline) -> one reply line (without the newline).
  // "events" is answered {"ok":true} here; the streaming happens on the connection.
  std::string handle(std::string_view line) { return handle(line, nullptr); }

 private:
  struct Conn;
  void accept_loop();
  void serve(Conn& c);
  void stream_events(int fd);
  // handle(); *stream (when given) is set when the request was an accepted "events".
  std::string handle(std::string_view line, bool* stream);

  std::string path_;
  CommandRunner run_;
  EventBus& events_;
  std::function<nlohmann::json()> status_;
  std::mutex run_mu_;  // one command at a time
  int fd_ = -1;
  int wake_[2] = {-1, -1};
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::list<std::unique_ptr<Conn>> conns_;
};

// Reads newline-terminated lines from a socket, keeping what follows a line for the next.
class LineReader {
 public:
  LineReader(int fd, size_t max) : fd_(fd), max_(max) {}
  // The next line without its newline: false on EOF, error, timeout or a line over max.
  bool next(std::string* line);
  // After next() returned false: whether it was for a line over max.
  bool overlong() const { return buf_.size() > max_; }

 private:
  int fd_;
  size_t max_;
  std::string buf_;
};
// Writes all of s plus a newline; false on error.
bool write_line(int fd, std::string_view s);

// The client side of the control socket.
class ControlClient {
 public:
  // kNotFound when no daemon listens at path (no socket, or a stale one).
  static Result<std::unique_ptr<ControlClient>> connect(const std::string& path);
  ~ControlClient();
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // Sends one request and returns the reply.
  Result<nlohmann::json> call(const nlohmann::json& request);
  // The next line the daemon sends (an event after {"op":"events"}); kIo when it hangs up,
  // kBusy when nothing came within the timeout.
  Result<nlohmann::json> read();
  // Bounds every later read (0: no bound).
  void set_timeout(std::chrono::milliseconds timeout);

 private:
  explicit ControlClient(int fd) : fd_(fd), reader_(fd, size_t{1} << 30) {}
  int fd_;
  LineReader reader_;
};

}  // namespace tp::daemon
