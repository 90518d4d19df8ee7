#pragma once
// The fixed newstyle handshake (doc/proto.md "Fixed newstyle negotiation"): greeting, client
// flags, then options until NBD_OPT_GO / NBD_OPT_EXPORT_NAME picks an export (or the client
// aborts). Supported: EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY,
// LIST_META_CONTEXT, SET_META_CONTEXT (contexts base:allocation and
// thinpool:delta:<volume>), STARTTLS (nbd/tls.h; NBD_REP_ERR_UNSUP when TLS is off); anything
// else gets NBD_REP_ERR_UNSUP.
//
// TLS (proto.md "TLS support"): with TlsMode::kRequire every option before STARTTLS other than
// ABORT gets NBD_REP_ERR_TLS_REQD (NBD_OPT_EXPORT_NAME, which cannot answer an error, ends
// the connection), so nothing about the exports is said in clear. STARTTLS on a connection
// already in TLS is NBD_REP_ERR_INVALID. After STARTTLS the options negotiated before it
// (structured replies, meta contexts) are forgotten: they came over an unprotected channel.
// The TLS handshake shares the NBD handshake's deadline.
//
// Query syntax for the meta context options: "base:allocation"; "thinpool:delta:NAME" for a
// NAME in BlockTarget::delta_bases(). LIST_META_CONTEXT also accepts the namespace alone
// ("base:", "thinpool:", "thinpool:delta:") and lists everything in it, and with no query at
// all lists every context of the export. Unknown queries select nothing.

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nbd/channel.h"
#include "nbd/logger.h"
#include "nbd/target.h"
#include "nbd/tls.h"

namespace tp::nbd {

struct MetaContext {
  uint32_t id = 0;
  std::string name;        // "base:allocation" or "thinpool:delta:NAME"
  std::string delta_base;  // NAME for a delta context, "" for base:allocation
};

// What a successful handshake hands to the transmission phase.
struct Negotiated {
  std::unique_ptr<BlockTarget> target;
  std::string export_name;  // resolved (never "": the default export's real name)
  uint16_t eflags = 0;      // transmission flags sent to the client
  bool structured = false;
  std::vector<MetaContext> contexts;  // selected by SET_META_CONTEXT for this export
  // The TLS channel (over the connection's own) when STARTTLS ran: transmission must use it.
  std::unique_ptr<Channel> tls;
};

struct TlsPolicy {
  TlsMode mode = TlsMode::kOff;
  const TlsCredentials* credentials = nullptr;  // REQUIRES: set unless mode is kOff
};

// The transmission flags an export is advertised with (truthful: only what the session
// implements; no ROTATIONAL, no FAST_ZERO).
uint16_t transmission_flags(const BlockTarget& t, bool structured);
// NBD_INFO_BLOCK_SIZE values for an export: {min, preferred, max}.
struct BlockSizes {
  uint32_t min, preferred, max;
};
BlockSizes block_sizes(const BlockTarget& t);

// Runs the handshake on ch. Every read must finish before deadline (a stalled client is
// dropped). While stopping is set, options are refused with NBD_REP_ERR_SHUTDOWN.
// Returns the export chosen, std::nullopt when the client ended the handshake politely
// (NBD_OPT_ABORT), or an error when the connection must be dropped (EOF, timeout, bad magic,
// unknown client flags, an export NBD_OPT_EXPORT_NAME cannot open, a failed TLS handshake,
// NBD_OPT_EXPORT_NAME before STARTTLS when TLS is required...).
Result<std::optional<Negotiated>> negotiate(Channel& ch, ExportCatalog& catalog, Logger& log,
                                            Clock::time_point deadline,
                                            const std::atomic<bool>& stopping,
                                            const TlsPolicy& tls = {});

}  // namespace tp::nbd
