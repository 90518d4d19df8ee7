#pragma once
// The NBD server: listens on a Unix socket (and optionally on TCP), runs each connection on
// its own thread (handshake, then run_session with its worker threads), and stops
// gracefully: no new connections, requests in flight finished and answered, then close.
//
// A stalled client never blocks others: the handshake has a deadline, each connection has
// its own threads, and a client that stops reading its replies is dropped after
// SessionOptions::send_timeout. No client can exhaust the server: connections are capped
// (max_connections), unfinished handshakes per TCP address too (so one address cannot hold
// every slot for handshake_timeout), and READ/WRITE buffers are bounded per connection
// (SessionOptions::max_inflight_bytes) and for all connections together
// (max_inflight_bytes_total, nbd/budget.h): past it, readers wait, requests do not fail.
//
// Thread-safety: start() and stop() from one controlling thread; adopt() and connections()
// from any thread.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "nbd/budget.h"
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
  // TCP connections from one IP address still in their handshake; more from that address
  // are accepted and closed at once (0: no cap). Unix-socket peers are not counted: the
  // socket is owner-only (mode 0600), so they all are the server's own user, who could
  // stop the server anyway, and they have no address to tell them apart.
  unsigned max_handshakes_per_address = 16;
  // READ/WRITE buffer bytes in flight over all connections (each connection also keeps to
  // session.max_inflight_bytes). 1 GiB: 16 connections with a full 64 MiB pipeline each,
  // far more than a disk needs to stay busy, and a fixed ceiling instead of 256 x 64 MiB
  // = 16 GiB. One request is always allowed when nothing else is in flight, so a limit
  // below kMaxPayload only serialises large requests.
  uint64_t max_inflight_bytes_total = 1ull << 30;
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
  // TCP connections still in their handshake, over all addresses.
  size_t handshakes_in_progress();
  // The shared budget of READ/WRITE bytes in flight (for tests and statistics).
  ByteBudget& budget() { return budget_; }

 private:
  struct Conn;
  void accept_loop();
  void admit(int fd, const std::string& peer, const std::string& addr);
  void serve(Conn& c);
  void handshake_over(Conn& c);
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
  ByteBudget budget_;
  // Unfinished TCP handshakes per IP address. Its own mutex, never held while waiting: a
  // connection thread ends its handshake while stop() holds mu_ and joins it. Lock order:
  // mu_, then hs_mu_.
  std::mutex hs_mu_;
  std::map<std::string, unsigned> handshakes_;
};

}  // namespace tp::nbd
