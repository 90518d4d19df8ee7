#pragma once
// TLS for NBD (doc/proto.md "TLS support"): the credentials a server (or a test client)
// uses, and the channel NBD_OPT_STARTTLS switches a connection to. GnuTLS does the
// cryptography; its transport is the connection's own Channel (read_some, write_all), so a
// TLS session runs over anything a Channel runs over (TCP, a Unix socket, a socketpair in
// tests) and keeps the Channel's deadlines: a client that stalls in the middle of the TLS
// handshake is dropped like one that stalls in the NBD handshake.
//
// Only TLS 1.2 and later are offered (proto.md: older versions SHOULD NOT be available by
// default). Server credentials are either X.509 or a pre-shared key, never both (nbdkit's
// --tls-certificates / --tls-psk). Client certificates are not requested.
//
// Thread-safety: TlsCredentials is immutable after loading and may be shared by every
// connection. A TLS channel allows one reader and one writer at a time, like any Channel;
// inside, only one of them is in GnuTLS at a time (a TLS 1.3 KeyUpdate from the peer is
// answered from the read call, which must not race a send). The reader waits for data
// outside that lock; a writer holds it while its record goes out, so a client must read
// replies while it sends (libnbd, qemu and the kernel do).

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "nbd/channel.h"

namespace tp::nbd {

// off: NBD_OPT_STARTTLS is refused (NOTLS). on: the client may upgrade, every option works
// without it (SELECTIVETLS with no TLS-only export). require: every option but STARTTLS and
// ABORT is refused with NBD_REP_ERR_TLS_REQD until TLS runs, so not even the export names
// leave the server in clear (FORCEDTLS).
enum class TlsMode : uint8_t { kOff, kOn, kRequire };
const char* tls_mode_name(TlsMode m);  // "off", "on", "require"
std::optional<TlsMode> parse_tls_mode(std::string_view s);

class TlsCredentials {
 public:
  // X.509 server credentials from DIR/server-cert.pem and DIR/server-key.pem (PEM; the
  // layout nbdkit and qemu use; DIR/ca-cert.pem is for the clients and is not read).
  // kNotFound when a file is missing, kInvalidArgument when GnuTLS cannot load them.
  static Result<std::unique_ptr<TlsCredentials>> server_x509(const std::string& dir);
  // PSK server credentials from a psktool file: one "username:hexkey" per line. The file is
  // checked here (kNotFound missing, kInvalidArgument malformed or empty) and read again by
  // GnuTLS at each handshake, so keys can be added without a restart.
  static Result<std::unique_ptr<TlsCredentials>> server_psk(const std::string& file);
  // Client credentials for a PSK (tests speak TLS to the server with these).
  static Result<std::unique_ptr<TlsCredentials>> client_psk(const std::string& username,
                                                            const std::string& hex_key);
  ~TlsCredentials();
  TlsCredentials(const TlsCredentials&) = delete;
  TlsCredentials& operator=(const TlsCredentials&) = delete;

  // Runs the TLS handshake over inner and returns the channel that encrypts over it; inner
  // must outlive that channel. Reads are bounded by deadline, writes by inner's send
  // timeout. Errors: kIo with what == kPeerClosed (the peer hung up), kTimedOut (past the
  // deadline), or GnuTLS's message (a failed handshake: bad key, no common cipher...).
  Result<std::unique_ptr<Channel>> handshake(Channel& inner, Clock::time_point deadline) const;

  struct Impl;

 private:
  explicit TlsCredentials(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Updates this side's TLS 1.3 sending keys and asks the peer to update its own (RFC 8446
// 4.6.3), e.g. for a long-lived session. kInvalidArgument when ch is not a TLS channel or
// the session is not TLS 1.3. May be called by the writing thread while another reads.
Result<void> tls_key_update(Channel& ch);

}  // namespace tp::nbd
