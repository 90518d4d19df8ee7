#include "nbd/tls.h"

#include <gnutls/gnutls.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <fstream>
#include <mutex>
#include <vector>

namespace tp::nbd {

const char* tls_mode_name(TlsMode m) {
  switch (m) {
    case TlsMode::kOff:
      return "off";
    case TlsMode::kOn:
      return "on";
    case TlsMode::kRequire:
      return "require";
  }
  return "?";
}

std::optional<TlsMode> parse_tls_mode(std::string_view s) {
  if (s == "off") return TlsMode::kOff;
  if (s == "on") return TlsMode::kOn;
  if (s == "require") return TlsMode::kRequire;
  return std::nullopt;
}

namespace {

// TLS 1.2 and 1.3 only. PSK adds the PSK key exchanges (ECDHE-PSK first: forward secrecy);
// DHE-PSK is left out because it would need DH parameters for TLS 1.2.
constexpr const char* kPriorityX509 = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2";
constexpr const char* kPriorityPsk = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:+ECDHE-PSK:+PSK";

// Small writes are gathered into one TLS record of at most this size (a reply header and a
// short payload go out as one record, not three).
constexpr size_t kGatherBytes = 16 * 1024;

Error gnutls_error(int rc) {
  // gnutls_strerror returns static strings: a valid Error::what.
  return Error{Errc::kIo, 0, kNoAddr, gnutls_strerror(rc)};
}

class TlsChannel final : public Channel {
 public:
  TlsChannel(Channel& inner, gnutls_session_t s) : inner_(inner), s_(s) {
    gnutls_transport_set_ptr(s_, this);
    gnutls_transport_set_pull_function(s_, &TlsChannel::pull);
    gnutls_transport_set_pull_timeout_function(s_, &TlsChannel::pull_timeout);
    gnutls_transport_set_vec_push_function(s_, &TlsChannel::vec_push);
    gather_.reserve(kGatherBytes);
  }
  ~TlsChannel() override { gnutls_deinit(s_); }

  Result<void> handshake(Clock::time_point deadline) {
    read_deadline_ = deadline;
    for (;;) {
      int rc = gnutls_handshake(s_);
      if (rc == GNUTLS_E_SUCCESS) return {};
      if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal(rc)) {
        if (Clock::now() >= deadline) return Error{Errc::kIo, ETIMEDOUT, kNoAddr, kTimedOut};
        continue;
      }
      return failure(rc, pull_error_);
    }
  }

  // The session is used by one thread at a time (mu_), as GnuTLS requires for key updates:
  // a reader answers a peer's KeyUpdate from inside gnutls_record_recv. So that a reader
  // never holds mu_ while it waits for the peer, it calls GnuTLS only for what has already
  // arrived (the pull callback does not block then) and waits outside the lock.
  Result<size_t> read_some(std::span<std::byte> buf, Clock::time_point deadline) override {
    read_deadline_ = deadline;
    for (;;) {
      ssize_t n;
      {
        std::lock_guard lk(mu_);
        pull_nonblocking_ = true;
        n = gnutls_record_recv(s_, buf.data(), buf.size());
        pull_nonblocking_ = false;
      }
      if (n > 0) return static_cast<size_t>(n);
      if (n == 0) return Error{Errc::kIo, 0, kNoAddr, kPeerClosed};  // close_notify
      if (n != GNUTLS_E_AGAIN && n != GNUTLS_E_INTERRUPTED) {
        // Anything else ends the connection, renegotiation requests included.
        return failure(static_cast<int>(n), pull_error_);
      }
      if (Clock::now() >= deadline) return Error{Errc::kIo, ETIMEDOUT, kNoAddr, kTimedOut};
      TP_ASSIGN_OR_RETURN(bool ready, inner_.wait_readable(deadline));
      if (!ready) return Error{Errc::kIo, ETIMEDOUT, kNoAddr, kTimedOut};
    }
  }

  Result<bool> wait_readable(Clock::time_point deadline) override {
    {
      std::lock_guard lk(mu_);
      if (gnutls_record_check_pending(s_) > 0) return true;
    }
    return inner_.wait_readable(deadline);
  }

  using Channel::write_all;
  Result<void> write_all(std::span<const std::span<const std::byte>> pieces) override {
    gather_.clear();
    for (std::span<const std::byte> p : pieces) {
      if (p.empty()) continue;
      if (gather_.size() + p.size() <= kGatherBytes) {
        gather_.insert(gather_.end(), p.begin(), p.end());
        continue;
      }
      TP_TRY(send_gathered());
      if (p.size() < kGatherBytes) {
        gather_.assign(p.begin(), p.end());
      } else {
        TP_TRY(send(p));
      }
    }
    return send_gathered();
  }

  Result<void> key_update() {
    std::lock_guard lk(mu_);
    int rc = gnutls_session_key_update(s_, GNUTLS_KU_PEER);
    if (rc == GNUTLS_E_INVALID_REQUEST) {
      return make_error(Errc::kInvalidArgument, "key update needs TLS 1.3");
    }
    if (rc < 0) return failure(rc, push_error_);
    return {};
  }

  void set_send_timeout(std::chrono::milliseconds t) override { inner_.set_send_timeout(t); }
  void shutdown_read() override { inner_.shutdown_read(); }
  void shutdown_both() override { inner_.shutdown_both(); }
  void close_gracefully() override {
    std::lock_guard lk(mu_);
    (void)gnutls_bye(s_, GNUTLS_SHUT_WR);
  }
  bool encrypted() const override { return true; }

 private:
  Result<void> send_gathered() {
    if (gather_.empty()) return {};
    Result<void> r = send(gather_);
    gather_.clear();
    return r;
  }
  // Holds mu_ while the record goes out (bounded by the socket's send timeout): a reader
  // waits for it only to decrypt what has arrived.
  Result<void> send(std::span<const std::byte> b) {
    std::lock_guard lk(mu_);
    while (!b.empty()) {
      ssize_t n = gnutls_record_send(s_, b.data(), b.size());
      if (n > 0) {
        b = b.subspan(static_cast<size_t>(n));
      } else if (n != GNUTLS_E_AGAIN && n != GNUTLS_E_INTERRUPTED) {
        return failure(static_cast<int>(n), push_error_);
      }
    }
    return {};
  }
  // The error for a failed GnuTLS call: what the transport reported if it failed (the
  // deadline, the peer gone), else GnuTLS's own.
  static Error failure(int rc, std::optional<Error>& transport) {
    if (transport) {
      Error e = *transport;
      transport.reset();
      return e;
    }
    if (rc == GNUTLS_E_PREMATURE_TERMINATION) return Error{Errc::kIo, 0, kNoAddr, kPeerClosed};
    if (rc == GNUTLS_E_TIMEDOUT) return Error{Errc::kIo, ETIMEDOUT, kNoAddr, kTimedOut};
    return gnutls_error(rc);
  }

  // GnuTLS transport callbacks. pull and pull_timeout run on the reading thread (or the
  // handshake's), vec_push on the writing one: each keeps its own error slot.
  static ssize_t pull(gnutls_transport_ptr_t p, void* data, size_t len) {
    auto* self = static_cast<TlsChannel*>(p);
    // Under read_some: only what is there now (a past deadline polls without waiting).
    const bool now_only = self->pull_nonblocking_;
    auto r = self->inner_.read_some(std::span(static_cast<std::byte*>(data), len),
                                    now_only ? Clock::now() : self->read_deadline_);
    if (r.ok()) return static_cast<ssize_t>(*r);
    if (now_only && r.error().what == kTimedOut) {
      gnutls_transport_set_errno(self->s_, EAGAIN);
      return -1;
    }
    if (is_peer_closed(r.error())) return 0;  // EOF: GnuTLS decides if it was premature
    self->pull_error_ = r.error();
    gnutls_transport_set_errno(self->s_, r.error().sys_errno == ETIMEDOUT ? ETIMEDOUT : EIO);
    return -1;
  }
  static int pull_timeout(gnutls_transport_ptr_t p, unsigned int ms) {
    auto* self = static_cast<TlsChannel*>(p);
    Clock::time_point deadline = self->pull_nonblocking_ ? Clock::now() : self->read_deadline_;
    if (ms != GNUTLS_INDEFINITE_TIMEOUT) {
      deadline = std::min(deadline, Clock::now() + std::chrono::milliseconds(ms));
    }
    auto r = self->inner_.wait_readable(deadline);
    if (!r.ok()) {
      self->pull_error_ = r.error();
      gnutls_transport_set_errno(self->s_, EIO);
      return -1;
    }
    return *r ? 1 : 0;
  }
  static ssize_t vec_push(gnutls_transport_ptr_t p, const giovec_t* iov, int iovcnt) {
    auto* self = static_cast<TlsChannel*>(p);
    // GnuTLS pushes a record in a few pieces: on the stack, no allocation per record.
    constexpr size_t kStackPieces = 16;
    const size_t n = static_cast<size_t>(std::max(iovcnt, 0));
    std::span<const std::byte> on_stack[kStackPieces];
    std::vector<std::span<const std::byte>> on_heap(n > kStackPieces ? n : 0);
    std::span<std::span<const std::byte>> pieces =
        n > kStackPieces ? std::span(on_heap) : std::span(on_stack, n);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
      pieces[i] = {static_cast<const std::byte*>(iov[i].iov_base), iov[i].iov_len};
      total += iov[i].iov_len;
    }
    auto r = self->inner_.write_all(pieces);
    if (r.ok()) return static_cast<ssize_t>(total);
    self->push_error_ = r.error();
    gnutls_transport_set_errno(self->s_, is_peer_closed(r.error()) ? EPIPE : EIO);
    return -1;
  }

  Channel& inner_;
  gnutls_session_t s_;
  std::mutex mu_;                  // one thread in GnuTLS at a time (see read_some)
  bool pull_nonblocking_ = false;  // under mu_: pull returns EAGAIN rather than wait
  Clock::time_point read_deadline_ = kNoDeadline;  // reader only
  std::optional<Error> pull_error_;                // reader only
  std::optional<Error> push_error_;                // writer only
  std::vector<std::byte> gather_;                  // writer only
};

}  // namespace

Result<void> tls_key_update(Channel& ch) {
  auto* t = dynamic_cast<TlsChannel*>(&ch);
  if (!t) return make_error(Errc::kInvalidArgument, "not a TLS channel");
  return t->key_update();
}

namespace {

bool is_hex(std::string_view s) {
  return !s.empty() && s.size() % 2 == 0 &&
         std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(uint8_t(c)) != 0; });
}

}  // namespace

struct TlsCredentials::Impl {
  bool server = true;
  gnutls_credentials_type_t type = GNUTLS_CRD_CERTIFICATE;
  gnutls_certificate_credentials_t x509 = nullptr;
  gnutls_psk_server_credentials_t psk_server = nullptr;
  gnutls_psk_client_credentials_t psk_client = nullptr;
  gnutls_priority_t priority = nullptr;

  ~Impl() {
    if (x509) gnutls_certificate_free_credentials(x509);
    if (psk_server) gnutls_psk_free_server_credentials(psk_server);
    if (psk_client) gnutls_psk_free_client_credentials(psk_client);
    if (priority) gnutls_priority_deinit(priority);
  }
  Result<void> set_priority(const char* p) {
    int rc = gnutls_priority_init(&priority, p, nullptr);
    if (rc < 0) return Error{Errc::kInvalidArgument, 0, kNoAddr, gnutls_strerror(rc)};
    return {};
  }
  const void* credentials() const {
    if (x509) return x509;
    if (psk_server) return psk_server;
    return psk_client;
  }
};

TlsCredentials::TlsCredentials(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TlsCredentials::~TlsCredentials() = default;

Result<std::unique_ptr<TlsCredentials>> TlsCredentials::server_x509(const std::string& dir) {
  const std::string cert = dir + "/server-cert.pem", key = dir + "/server-key.pem";
  if (::access(cert.c_str(), R_OK) != 0) {
    return Error{Errc::kNotFound, errno, kNoAddr, "cannot read server-cert.pem in the directory"};
  }
  if (::access(key.c_str(), R_OK) != 0) {
    return Error{Errc::kNotFound, errno, kNoAddr, "cannot read server-key.pem in the directory"};
  }
  auto impl = std::make_unique<Impl>();
  impl->type = GNUTLS_CRD_CERTIFICATE;
  if (int rc = gnutls_certificate_allocate_credentials(&impl->x509); rc < 0) {
    return gnutls_error(rc);
  }
  int rc = gnutls_certificate_set_x509_key_file(impl->x509, cert.c_str(), key.c_str(),
                                                GNUTLS_X509_FMT_PEM);
  if (rc < 0) return Error{Errc::kInvalidArgument, 0, kNoAddr, gnutls_strerror(rc)};
  TP_TRY(impl->set_priority(kPriorityX509));
  return std::unique_ptr<TlsCredentials>(new TlsCredentials(std::move(impl)));
}

Result<std::unique_ptr<TlsCredentials>> TlsCredentials::server_psk(const std::string& file) {
  std::ifstream in(file);
  if (!in) return Error{Errc::kNotFound, errno, kNoAddr, "cannot read the PSK file"};
  std::string line;
  unsigned keys = 0;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    size_t colon = line.find(':');
    if (colon == 0 || colon == std::string::npos ||
        !is_hex(std::string_view(line).substr(colon + 1))) {
      return make_error(Errc::kInvalidArgument,
                        "the PSK file has a line that is not username:hexkey");
    }
    keys++;
  }
  if (keys == 0) return make_error(Errc::kInvalidArgument, "the PSK file holds no key");
  auto impl = std::make_unique<Impl>();
  impl->type = GNUTLS_CRD_PSK;
  if (int rc = gnutls_psk_allocate_server_credentials(&impl->psk_server); rc < 0) {
    return gnutls_error(rc);
  }
  if (int rc = gnutls_psk_set_server_credentials_file(impl->psk_server, file.c_str()); rc < 0) {
    return Error{Errc::kInvalidArgument, 0, kNoAddr, gnutls_strerror(rc)};
  }
  TP_TRY(impl->set_priority(kPriorityPsk));
  return std::unique_ptr<TlsCredentials>(new TlsCredentials(std::move(impl)));
}

Result<std::unique_ptr<TlsCredentials>> TlsCredentials::client_psk(const std::string& username,
                                                                   const std::string& hex_key) {
  if (!is_hex(hex_key)) return make_error(Errc::kInvalidArgument, "PSK is not hex");
  auto impl = std::make_unique<Impl>();
  impl->server = false;
  impl->type = GNUTLS_CRD_PSK;
  if (int rc = gnutls_psk_allocate_client_credentials(&impl->psk_client); rc < 0) {
    return gnutls_error(rc);
  }
  gnutls_datum_t key{reinterpret_cast<unsigned char*>(const_cast<char*>(hex_key.data())),
                     static_cast<unsigned>(hex_key.size())};
  int rc = gnutls_psk_set_client_credentials(impl->psk_client, username.c_str(), &key,
                                             GNUTLS_PSK_KEY_HEX);
  if (rc < 0) return Error{Errc::kInvalidArgument, 0, kNoAddr, gnutls_strerror(rc)};
  TP_TRY(impl->set_priority(kPriorityPsk));
  return std::unique_ptr<TlsCredentials>(new TlsCredentials(std::move(impl)));
}

Result<std::unique_ptr<Channel>> TlsCredentials::handshake(Channel& inner,
                                                           Clock::time_point deadline) const {
  gnutls_session_t s = nullptr;
  // No session tickets: nothing resumes, and a ticket sent after the handshake would be a
  // write from the reading thread.
  unsigned flags = (impl_->server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_TICKETS;
  if (int rc = gnutls_init(&s, flags); rc < 0) return gnutls_error(rc);
  auto ch = std::make_unique<TlsChannel>(inner, s);  // owns s from here
  if (int rc = gnutls_priority_set(s, impl_->priority); rc < 0) return gnutls_error(rc);
  if (int rc = gnutls_credentials_set(s, impl_->type, const_cast<void*>(impl_->credentials()));
      rc < 0) {
    return gnutls_error(rc);
  }
  if (impl_->server && impl_->x509) gnutls_certificate_server_set_request(s, GNUTLS_CERT_IGNORE);
  TP_TRY(ch->handshake(deadline));
  return std::unique_ptr<Channel>(std::move(ch));
}

}  // namespace tp::nbd
