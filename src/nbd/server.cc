#include "nbd/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "nbd/channel.h"
#include "nbd/handshake.h"

namespace tp::nbd {

struct Server::Conn {
  Conn(int fd, std::string p, std::string a) : ch(fd), peer(std::move(p)), addr(std::move(a)) {}
  SocketChannel ch;
  std::string peer;
  std::string addr;      // the TCP peer's IP address, "" for others (not counted)
  bool counted = false;  // in handshakes_ (guarded by hs_mu_)
  std::thread th;
  std::atomic<bool> done{false};
};

namespace {

Result<int> listen_unix(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) {
    return make_error(Errc::kInvalidArgument, "socket path too long (at most 107 bytes)");
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return make_error(Errc::kExists, "socket path exists and is not a socket");
    }
    // A socket file: in use if something answers, else left over from a crash.
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return sys_error("socket");
    int r = ::connect(probe, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::close(probe);
    if (r == 0) return make_error(Errc::kBusy, "another server is listening on the socket");
    ::unlink(path.c_str());
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return sys_error("socket");
  // Owner-only, whatever the umask: a client of this socket reads and writes every export.
  // The umask covers the window between bind and chmod (as for the control socket).
  mode_t old_umask = ::umask(0177);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::umask(old_umask);
  if (rc != 0 || ::chmod(path.c_str(), 0600) != 0 || ::listen(fd, 64) != 0) {
    Error e = sys_error("bind/listen on the Unix socket");
    ::close(fd);
    return e;
  }
  return fd;
}

Result<int> listen_tcp(const std::string& spec, uint16_t& port_out) {
  size_t colon = spec.rfind(':');
  if (colon == std::string::npos)
    return make_error(Errc::kInvalidArgument, "listen address is not ADDR:PORT");
  std::string host = spec.substr(0, colon), port_s = spec.substr(colon + 1);
  if (host == "localhost") host = "127.0.0.1";
  sockaddr_in a{};
  a.sin_family = AF_INET;
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) {
    return make_error(Errc::kInvalidArgument, "listen address is not an IPv4 address");
  }
  char* end = nullptr;
  errno = 0;
  unsigned long port = std::strtoul(port_s.c_str(), &end, 10);
  if (port_s.empty() || *end != '\0' || errno != 0 || port > 65535) {
    return make_error(Errc::kInvalidArgument, "bad listen port");
  }
  a.sin_port = htons(static_cast<uint16_t>(port));
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return sys_error("socket");
  int one = 1;
  (void)::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 64) != 0) {
    Error e = sys_error("bind/listen on the TCP address");
    ::close(fd);
    return e;
  }
  socklen_t len = sizeof a;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) port_out = ntohs(a.sin_port);
  return fd;
}

}  // namespace

Server::Server(ExportCatalog& catalog, Logger& log, ServerOptions opts)
    : catalog_(catalog),
      log_(log),
      opts_(std::move(opts)),
      budget_(opts_.max_inflight_bytes_total) {}

Server::~Server() {
  stop();
}

Result<void> Server::start() {
  if (opts_.tls != TlsMode::kOff && !opts_.tls_credentials) {
    return make_error(Errc::kInvalidArgument, "TLS enabled without credentials");
  }
  if (::pipe2(wake_, O_CLOEXEC) != 0) return sys_error("pipe");
  if (!opts_.unix_path.empty()) {
    TP_ASSIGN_OR_RETURN(unix_fd_, listen_unix(opts_.unix_path));
  }
  if (!opts_.tcp_listen.empty()) {
    TP_ASSIGN_OR_RETURN(tcp_fd_, listen_tcp(opts_.tcp_listen, tcp_port_));
  }
  acceptor_ = std::thread([this] { accept_loop(); });
  return {};
}

void Server::accept_loop() {
  for (;;) {
    pollfd p[3];
    nfds_t n = 0;
    p[n++] = {wake_[0], POLLIN, 0};
    if (unix_fd_ >= 0) p[n++] = {unix_fd_, POLLIN, 0};
    if (tcp_fd_ >= 0) p[n++] = {tcp_fd_, POLLIN, 0};
    int r = ::poll(p, n, 1000);
    if (stopping_.load()) return;
    if (r < 0) {
      if (errno == EINTR) continue;
      log_.error("nbd: poll on the listening sockets: {}", std::strerror(errno));
      return;
    }
    {
      std::lock_guard lk(mu_);
      reap_locked(false);
    }
    for (nfds_t i = 1; i < n; i++) {
      if (!(p[i].revents & POLLIN)) continue;
      sockaddr_storage sa{};
      socklen_t sl = sizeof sa;
      int fd = ::accept4(p[i].fd, reinterpret_cast<sockaddr*>(&sa), &sl, SOCK_CLOEXEC);
      if (fd < 0) {
        // EMFILE and friends: log, back off a little, keep serving the others.
        if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
          log_.warn("nbd: accept: {}", std::strerror(errno));
          ::usleep(100 * 1000);
        }
        continue;
      }
      std::string peer = "unix", addr;
      if (sa.ss_family == AF_INET) {
        auto* in = reinterpret_cast<sockaddr_in*>(&sa);
        char buf[INET_ADDRSTRLEN] = "?";
        ::inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
        addr = buf;
        peer = addr + ":" + std::to_string(ntohs(in->sin_port));
        int one = 1;
        (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      }
      admit(fd, peer, addr);
    }
  }
}

void Server::adopt(int fd, const std::string& peer) {
  admit(fd, peer, "");
}

void Server::admit(int fd, const std::string& peer, const std::string& addr) {
  std::lock_guard lk(mu_);
  if (stopping_.load()) {
    ::close(fd);
    return;
  }
  if (conns_.size() >= opts_.max_connections) {
    log_.warn("nbd: {} connections open; refusing {}", conns_.size(), peer);
    ::close(fd);
    return;
  }
  bool count = !addr.empty() && opts_.max_handshakes_per_address > 0;
  if (count) {
    std::lock_guard hl(hs_mu_);
    unsigned& n = handshakes_[addr];
    if (n >= opts_.max_handshakes_per_address) {
      log_.warn("nbd: {} unfinished handshakes from {}; refusing {}", n, addr, peer);
      ::close(fd);
      return;
    }
    n++;
  }
  conns_.push_back(std::make_unique<Conn>(fd, peer, addr));
  Conn* c = conns_.back().get();
  c->counted = count;
  c->th = std::thread([this, c] {
    serve(*c);
    // The client sees the end now; the fd itself is closed when the thread is reaped.
    c->ch.shutdown_both();
    c->done.store(true);
  });
}

void Server::serve(Conn& c) {
  log_.debug("nbd: connection from {}", c.peer);
  c.ch.set_send_timeout(opts_.handshake_timeout);
  TlsPolicy tls{opts_.tls, opts_.tls_credentials.get()};
  auto n = negotiate(c.ch, catalog_, log_, Clock::now() + opts_.handshake_timeout, stopping_, tls);
  handshake_over(c);
  if (!n.ok()) {
    const Error& e = n.error();
    if (is_peer_closed(e)) {
      log_.debug("nbd: {}: client hung up during the handshake", c.peer);
    } else if (e.what == kTimedOut) {
      log_.info("nbd: {}: handshake timed out; connection dropped", c.peer);
    } else {
      log_.warn("nbd: {}: handshake failed: {}", c.peer, describe(e));
    }
    return;
  }
  if (!*n) {
    log_.debug("nbd: {}: client aborted the handshake", c.peer);
    return;
  }
  Negotiated& neg = **n;
  log_.debug("nbd: {}: serving export {} ({} bytes{}{}{})", c.peer, neg.export_name,
             neg.target->size(), neg.structured ? ", structured replies" : "",
             neg.target->read_only() ? ", read-only" : "", neg.tls ? ", TLS" : "");
  // The TLS channel, when there is one, reads and writes through c.ch: stop() shutting c.ch
  // down still wakes the session's reader.
  Channel& ch = neg.tls ? *neg.tls : static_cast<Channel&>(c.ch);
  run_session(ch, neg, log_, opts_.session, &budget_);
  ch.close_gracefully();
}

void Server::handshake_over(Conn& c) {
  std::lock_guard hl(hs_mu_);
  if (!c.counted) return;
  c.counted = false;
  auto it = handshakes_.find(c.addr);
  if (it != handshakes_.end() && --it->second == 0) handshakes_.erase(it);
}

size_t Server::handshakes_in_progress() {
  std::lock_guard hl(hs_mu_);
  size_t n = 0;
  for (auto& [addr, count] : handshakes_) n += count;
  return n;
}

void Server::reap_locked(bool all) {
  for (auto it = conns_.begin(); it != conns_.end();) {
    if (all || (*it)->done.load()) {
      if ((*it)->th.joinable()) (*it)->th.join();
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
}

size_t Server::connections() {
  std::lock_guard lk(mu_);
  size_t n = 0;
  for (auto& c : conns_) n += !c->done.load();
  return n;
}

void Server::stop() {
  if (stopped_) return;
  stopped_ = true;
  stopping_.store(true);
  // Readers waiting for memory give up now instead of taking more requests.
  budget_.close();
  if (wake_[1] >= 0) {
    char b = 1;
    (void)!::write(wake_[1], &b, 1);
  }
  if (acceptor_.joinable()) acceptor_.join();
  if (unix_fd_ >= 0) {
    ::close(unix_fd_);
    ::unlink(opts_.unix_path.c_str());
    unix_fd_ = -1;
  }
  if (tcp_fd_ >= 0) {
    ::close(tcp_fd_);
    tcp_fd_ = -1;
  }
  for (int& fd : wake_) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  // Wake every reader: handshakes end, sessions stop taking requests, finish the ones they
  // have, answer them and return.
  std::lock_guard lk(mu_);
  for (auto& c : conns_) c->ch.shutdown_read();
  reap_locked(true);
}

}  // namespace tp::nbd
