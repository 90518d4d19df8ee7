#pragma once
// The NBD server: listens on a Unix socket (and optionally on TCP), runs each connection on
// its own thread (handshake, then run_session with its worker threads), and stops
// gracefully: no new connections, requests in flight finished and answered, then close.
//
// A stalled client never blocks others: the handshake has a deadline, each connection has
// its own threads, and a client that stops reading its replies is dropped after
// SessionOptions::send_timeout.
//
// Thread-safety: start() and stop() from one controlling thread; adopt() and connections()
// from any thread.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "nbd/logger.h"
#include "nbd/session.h"
#include "nbd/target.h"
#include "nbd/tls.h"

namespace tp::nbd {

struct ServerOptions {
  std::string unix_path;   // "" for none; a stale socket file there is replaced; created
                           // with mode 0600 (owner only) whatever the umask
  std::string tcp_listen;  // "" for none, else "ADDR:PORT" (IPv4 literal or "localhost";
                           // PORT 0 picks a free port, see tcp_port())
  // The whole handshake (options and, with STARTTLS, the TLS handshake) must finish in
  // this time, or the connection is dropped.
  std::chrono::milliseconds handshake_timeout{10000};
  TlsMode tls = TlsMode::kOff;
  // Shared by every connection (and by whoever loaded them). REQUIRES: set unless tls is kOff.
  std::shared_ptr<const TlsCredentials> tls_credentials;
  unsigned max_connections = 256;  // more are accepted and closed at once
  SessionOptions session;
};

class Server {
 public:
  Server(ExportCatalog& catalog, Logger& log, ServerOptions opts);
  ~Server();  // stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens, then accepts on a background thread. kBusy if a live server already
  // owns unix_path; kInvalidArgument for a bad address or TLS without credentials; kIo for
  // socket errors.
  Result<void> start();
  // Serves an already-connected stream socket as a new connection (tests use socketpairs).
  // Takes ownership of fd. After stop() the fd is closed at once.
  void adopt(int fd, const std::string& peer);
  // Graceful stop; idempotent. Returns when every connection thread has ended.
  void stop();

  uint16_t tcp_port() const { return tcp_port_; }
  // Connections currently open (handshake or transmission).
  size_t connections();

 private:
  struct Conn;
  void accept_loop();
  void serve(Conn& c);
  void reap_locked(bool all);  // joins finished connection threads (all: every thread)

  ExportCatalog& catalog_;
  Logger& log_;
  ServerOptions opts_;
  int unix_fd_ = -1;
  int tcp_fd_ = -1;
  uint16_t tcp_port_ = 0;
  int wake_[2] = {-1, -1};  // self-pipe that ends accept_loop
  std::thread acceptor_;
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;
  std::mutex mu_;
  std::list<std::unique_ptr<Conn>> conns_;
};

}  // namespace tp::nbd
