#include "daemon/control.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tp::daemon {
namespace {

nlohmann::json error_reply(std::string_view why) {
  return {{"error", why}};
}

Result<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(a.sun_path)) {
    return make_error(Errc::kInvalidArgument, "control socket path is empty or too long");
  }
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

// A connected socket to path, or -1 with errno.
int connect_unix(const sockaddr_un& a) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0) {
    int e = errno;
    ::close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

// Only the daemon's own user (and root) may use the control socket.
bool peer_allowed(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  return cred.uid == ::geteuid() || cred.uid == 0;
}

}  // namespace

// ------------------------------------------------------------------ lines

bool LineReader::next(std::string* line) {
  for (;;) {
    size_t nl = buf_.find('\n');
    if (nl != std::string::npos) {
      line->assign(buf_, 0, nl);
      buf_.erase(0, nl + 1);
      return true;
    }
    if (buf_.size() > max_) return false;
    char chunk[64 * 1024];
    ssize_t n = ::read(fd_, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf_.append(chunk, static_cast<size_t>(n));
  }
}

bool write_line(int fd, std::string_view s) {
  std::string msg(s);
  msg.push_back('\n');
  size_t done = 0;
  while (done < msg.size()) {
    ssize_t n = ::send(fd, msg.data() + done, msg.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// ------------------------------------------------------------------ server

struct ControlServer::Conn {
  int fd = -1;
  std::thread thread;
  std::atomic<bool> done{false};
};

ControlServer::ControlServer(std::string path, CommandRunner run, EventBus& events,
                             std::function<nlohmann::json()> status)
    : path_(std::move(path)), run_(std::move(run)), events_(events), status_(std::move(status)) {}

ControlServer::~ControlServer() {
  stop();
}

Result<void> ControlServer::start() {
  TP_ASSIGN_OR_RETURN(sockaddr_un a, unix_address(path_));
  struct stat st;
  if (::lstat(path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return make_error(Errc::kBusy, "the control socket path exists and is not a socket");
    }
    if (int fd = connect_unix(a); fd >= 0) {
      ::close(fd);
      return make_error(Errc::kBusy, "another daemon answers on the control socket");
    }
    ::unlink(path_.c_str());  // stale: its daemon is gone
  }
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return sys_error("control socket");
  // Owner-only from the moment it exists: the umask covers the window before the chmod.
  mode_t old = ::umask(0177);
  int rc = ::bind(fd_, reinterpret_cast<const sockaddr*>(&a), sizeof(a));
  ::umask(old);
  if (rc != 0 || ::chmod(path_.c_str(), 0600) != 0 || ::listen(fd_, 16) != 0) {
    Error e = sys_error("cannot listen on the control socket");
    ::close(fd_);
    fd_ = -1;
    return e;
  }
  if (::pipe2(wake_, O_CLOEXEC) != 0) return sys_error("control socket pipe");
  acceptor_ = std::thread([this] { accept_loop(); });
  return {};
}

void ControlServer::stop() {
  if (stopping_.exchange(true)) return;
  if (wake_[1] >= 0) {
    char b = 1;
    (void)!::write(wake_[1], &b, 1);
  }
  if (acceptor_.joinable()) acceptor_.join();
  std::list<std::unique_ptr<Conn>> conns;
  {
    std::lock_guard lk(mu_);
    conns.swap(conns_);
    for (auto& c : conns) ::shutdown(c->fd, SHUT_RDWR);  // ends reads; a command finishes
  }
  for (auto& c : conns) {
    if (c->thread.joinable()) c->thread.join();
    ::close(c->fd);
  }
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(path_.c_str());
    fd_ = -1;
  }
  for (int& fd : wake_) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
}

void ControlServer::accept_loop() {
  for (;;) {
    pollfd p[2] = {{fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents || stopping_) return;
    int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    if (!peer_allowed(fd)) {
      (void)write_line(fd, error_reply("permission denied: not the pool's owner").dump());
      ::close(fd);
      continue;
    }
    timeval tv{kIdleTimeout.count(), 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    std::lock_guard lk(mu_);
    // Reap connections that ended.
    for (auto it = conns_.begin(); it != conns_.end();) {
      if ((*it)->done) {
        (*it)->thread.join();
        ::close((*it)->fd);
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
    if (conns_.size() >= kMaxConnections) {
      (void)write_line(fd, error_reply("too many control connections").dump());
      ::close(fd);
      continue;
    }
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    Conn& ref = *c;
    conns_.push_back(std::move(c));
    ref.thread = std::thread([this, &ref] {
      serve(ref);
      ::shutdown(ref.fd, SHUT_RDWR);  // the client sees the end now; close() when reaped
      ref.done = true;
    });
  }
}

void ControlServer::serve(Conn& c) {
  LineReader reader(c.fd, kMaxRequest);
  std::string line;
  while (!stopping_ && reader.next(&line)) {
    bool stream = false;
    if (!write_line(c.fd, handle(line, &stream))) return;
    if (stream) {  // an accepted "events": the connection is a stream from now on
      stream_events(c.fd);
      return;
    }
  }
  // An overlong line, a timeout or EOF: a reply only for the first (the others hang up).
  if (!stopping_ && reader.overlong()) {
    (void)write_line(c.fd, error_reply("request too long").dump());
  }
}

void ControlServer::stream_events(int fd) {
  EventBus::Handle sub = events_.subscribe();
  while (!stopping_) {
    if (auto ev = sub->next(std::chrono::milliseconds(200))) {
      if (!write_line(fd, ev->dump())) break;
      continue;
    }
    // Nothing to send: has the client hung up?
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) {
      char b;
      if (::recv(fd, &b, 1, MSG_DONTWAIT) <= 0) break;
    }
  }
  events_.unsubscribe(sub);
}

std::string ControlServer::handle(std::string_view line, bool* stream) {
  auto req = nlohmann::json::parse(line, nullptr, false);
  if (req.is_discarded() || !req.is_object()) return error_reply("not a JSON object").dump();
  auto op = req.find("op");
  if (op == req.end() || !op->is_string()) return error_reply("no \"op\"").dump();
  const std::string& name = op->get_ref<const std::string&>();
  if (name == "status") {
    return status_ ? status_().dump() : nlohmann::json::object().dump();
  }
  if (name == "events") {
    if (stream) *stream = true;
    return nlohmann::json{{"ok", true}}.dump();
  }
  if (name != "run") return error_reply("unknown op \"" + name + "\"").dump();
  if (!run_) return error_reply("this daemon runs no commands").dump();
  ControlRequest r;
  auto argv = req.find("argv");
  if (argv == req.end() || !argv->is_array() || argv->empty() || argv->size() > kMaxArgs) {
    return error_reply("\"argv\" must be a non-empty array of strings").dump();
  }
  for (const auto& a : *argv) {
    if (!a.is_string()) return error_reply("\"argv\" must be a non-empty array of strings").dump();
    r.argv.push_back(a.get<std::string>());
  }
  if (auto cwd = req.find("cwd"); cwd != req.end()) {
    if (!cwd->is_string() || !cwd->get_ref<const std::string&>().starts_with('/')) {
      return error_reply("\"cwd\" must be an absolute path").dump();
    }
    r.cwd = cwd->get<std::string>();
  }
  ControlReply rep;
  {
    std::lock_guard lk(run_mu_);
    rep = run_(r);
  }
  return nlohmann::json{{"status", rep.status}, {"stdout", rep.out}, {"stderr", rep.err}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// ------------------------------------------------------------------ client

Result<std::unique_ptr<ControlClient>> ControlClient::connect(const std::string& path) {
  TP_ASSIGN_OR_RETURN(sockaddr_un a, unix_address(path));
  int fd = connect_unix(a);
  if (fd < 0) {
    if (errno == ENOENT || errno == ECONNREFUSED) {
      return make_error(Errc::kNotFound, "no daemon on the control socket");
    }
    return sys_error("cannot connect to the control socket");
  }
  return std::unique_ptr<ControlClient>(new ControlClient(fd));
}

ControlClient::~ControlClient() {
  ::close(fd_);
}

Result<nlohmann::json> ControlClient::call(const nlohmann::json& request) {
  if (!write_line(fd_, request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace))) {
    Error e = sys_error("cannot send to the control socket");
    // A daemon that refuses a client (not the pool's owner) says why and hangs up, maybe
    // before the request is written: its reason is worth more than EPIPE.
    if (auto why = read(); why.ok()) return why;
    return e;
  }
  return read();
}

void ControlClient::set_timeout(std::chrono::milliseconds timeout) {
  timeval tv{static_cast<time_t>(timeout.count() / 1000),
             static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

Result<nlohmann::json> ControlClient::read() {
  std::string line;
  errno = 0;
  if (!reader_.next(&line)) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return make_error(Errc::kBusy, "no reply from the daemon in time");
    }
    return make_error(Errc::kIo, "the daemon closed the control socket");
  }
  auto reply = nlohmann::json::parse(line, nullptr, false);
  if (reply.is_discarded() || !reply.is_object()) {
    return make_error(Errc::kIo, "the daemon sent a malformed reply");
  }
  return reply;
}

}  // namespace tp::daemon
