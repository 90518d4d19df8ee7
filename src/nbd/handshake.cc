#include "nbd/handshake.h"

#include <algorithm>
#include <bit>
#include <string_view>

#include "nbd/protocol.h"
#include "nbd/wire.h"

namespace tp::nbd {

uint16_t transmission_flags(const BlockTarget& t, bool structured) {
  uint16_t f = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendCache;
  if (t.read_only()) {
    f |= kTxReadOnly;
  } else {
    f |= kTxSendTrim | kTxSendWriteZeroes;
  }
  if (structured) f |= kTxSendDf;
  if (t.can_multi_conn()) f |= kTxCanMultiConn;
  return f;
}

BlockSizes block_sizes(const BlockTarget& t) {
  // The minimum is 1: the session and the pool serve any byte range (a partial block is
  // read-modify-written under the pool's lock), so a client need not round its requests
  // (libnbd refuses unaligned ones itself when a larger minimum is advertised). The
  // preferred size tells clients what is efficient.
  const uint32_t min = 1;
  uint32_t pref = t.preferred_block_size();
  if (pref < 512 || !std::has_single_bit(pref)) pref = 4096;
  pref = std::min(pref, kMaxPayload);
  return {min, pref, kMaxPayload};
}

namespace {

constexpr uint16_t kServerFlags = kFlagFixedNewstyle | kFlagNoZeroes;
constexpr uint32_t kKnownClientFlags = kClientFixedNewstyle | kClientNoZeroes;

class Handshake {
 public:
  Handshake(Channel& ch, ExportCatalog& cat, Logger& log, Clock::time_point deadline,
            const std::atomic<bool>& stopping, const TlsPolicy& tls)
      : ch_(&ch), cat_(cat), log_(log), deadline_(deadline), stopping_(stopping), tls_(tls) {}

  Result<std::optional<Negotiated>> run();

 private:
  Result<void> reply(uint32_t opt, uint32_t type, std::span<const std::byte> data = {}) {
    return ch_->write_all(wire::encode_option_reply(opt, type, data));
  }
  Result<void> reply_error(uint32_t opt, uint32_t type, std::string_view msg) {
    log_.debug("nbd: {}: refused ({:#x}): {}", option_name(opt), type, msg);
    return reply(opt, type, std::as_bytes(std::span(msg.data(), msg.size())));
  }
  // "" resolves to the default export; "" back means there is none.
  std::string resolve(const std::string& name) {
    return name.empty() ? cat_.default_export() : name;
  }
  std::string description_of(const std::string& name) {
    for (const ExportEntry& e : cat_.list()) {
      if (e.name == name) return e.description;
    }
    return "";
  }
  // Opens the export for an option that can answer with an error; on failure sends the
  // error reply and returns nullptr.
  Result<std::unique_ptr<BlockTarget>> open_or_reply(uint32_t opt, const std::string& requested,
                                                     std::string& resolved);

  Result<std::optional<Negotiated>> export_name(const std::vector<std::byte>& data);
  Result<std::optional<Negotiated>> info_or_go(uint32_t opt, const std::vector<std::byte>& data);
  Result<void> list(const std::vector<std::byte>& data);
  Result<void> meta_context(uint32_t opt, const std::vector<std::byte>& data);
  Result<void> start_tls(const std::vector<std::byte>& data);
  Negotiated finish(std::unique_ptr<BlockTarget> t, const std::string& name);

  Channel* ch_;  // the connection's channel, or tls_channel_ once STARTTLS ran
  ExportCatalog& cat_;
  Logger& log_;
  Clock::time_point deadline_;
  const std::atomic<bool>& stopping_;
  const TlsPolicy& tls_;
  std::unique_ptr<Channel> tls_channel_;
  bool no_zeroes_ = false;
  bool structured_ = false;
  std::string meta_export_;  // the (resolved) export SET_META_CONTEXT chose contexts for
  std::vector<MetaContext> contexts_;
};

Result<std::optional<Negotiated>> Handshake::run() {
  TP_TRY(ch_->write_all(wire::encode_greeting(kServerFlags)));
  std::byte cf[4];
  TP_TRY(ch_->read_exact(cf, deadline_));
  uint32_t client_flags = wire::load_be32(cf);
  if (client_flags & ~kKnownClientFlags) {
    // proto.md: the server MUST drop the connection on a client flag it does not know.
    // (Error::where is never a flag value or a length here: see describe() in channel.h.)
    log_.debug("nbd: client handshake flags {:#x}", client_flags);
    return make_error(Errc::kInvalidArgument, "unknown client handshake flags");
  }
  no_zeroes_ = client_flags & kClientNoZeroes;

  for (unsigned n = 0; n < kMaxOptions; n++) {
    std::byte hb[kOptionHeaderBytes];
    TP_TRY(ch_->read_exact(hb, deadline_));
    TP_ASSIGN_OR_RETURN(wire::OptionHeader h, wire::decode_option_header(hb));
    if (h.length > kMaxOptionBytes) {
      // NBD_OPT_EXPORT_NAME cannot answer with an error, and a huge length cannot be
      // skipped in reasonable time: both end the connection.
      if (h.option == kOptExportName || h.length > kMaxSkippedOptionBytes) {
        log_.debug("nbd: option {} with {} bytes of data", option_name(h.option), h.length);
        return make_error(Errc::kInvalidArgument, "option data too long");
      }
      TP_TRY(ch_->skip(h.length, deadline_));
      TP_TRY(reply_error(h.option, kRepErrTooBig, "option data too long"));
      continue;
    }
    std::vector<std::byte> data(h.length);
    TP_TRY(ch_->read_exact(data, deadline_));
    log_.debug("nbd: option {} ({} bytes)", option_name(h.option), h.length);

    if (stopping_.load() && h.option != kOptAbort) {
      if (h.option == kOptExportName) {
        return make_error(Errc::kBusy, "server is shutting down");
      }
      TP_TRY(reply_error(h.option, kRepErrShutdown, "server is shutting down"));
      continue;
    }
    if (h.option == kOptStartTls) {
      TP_TRY(start_tls(data));
      continue;
    }
    if (!tls_channel_ && tls_.mode == TlsMode::kRequire && h.option != kOptAbort) {
      // FORCEDTLS: not even the list of exports is given out in clear.
      if (h.option == kOptExportName) {
        return make_error(Errc::kInvalidArgument, "NBD_OPT_EXPORT_NAME before STARTTLS");
      }
      TP_TRY(reply_error(h.option, kRepErrTlsReqd, "TLS is required: send NBD_OPT_STARTTLS"));
      continue;
    }
    switch (h.option) {
      case kOptExportName:
        return export_name(data);
      case kOptAbort:
        // The client may already have closed: a failed ACK does not matter.
        (void)reply(h.option, kRepAck);
        return std::optional<Negotiated>{};
      case kOptList:
        TP_TRY(list(data));
        break;
      case kOptInfo:
      case kOptGo: {
        TP_ASSIGN_OR_RETURN(auto r, info_or_go(h.option, data));
        if (r) return r;
        break;
      }
      case kOptStructuredReply:
        if (!data.empty()) {
          TP_TRY(reply_error(h.option, kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data"));
        } else {
          structured_ = true;
          TP_TRY(reply(h.option, kRepAck));
        }
        break;
      case kOptListMetaContext:
      case kOptSetMetaContext:
        TP_TRY(meta_context(h.option, data));
        break;
      default:
        TP_TRY(reply_error(h.option, kRepErrUnsup, "option not supported"));
        break;
    }
  }
  return make_error(Errc::kInvalidArgument, "too many options");
}

Negotiated Handshake::finish(std::unique_ptr<BlockTarget> t, const std::string& name) {
  Negotiated n;
  n.eflags = transmission_flags(*t, structured_);
  n.target = std::move(t);
  n.export_name = name;
  n.structured = structured_;
  // Contexts chosen for another export do not apply to this one (as nbdkit does).
  if (structured_ && meta_export_ == name) n.contexts = contexts_;
  n.tls = std::move(tls_channel_);  // ch_ still points at it
  return n;
}

Result<std::optional<Negotiated>> Handshake::export_name(const std::vector<std::byte>& data) {
  std::string requested(reinterpret_cast<const char*>(data.data()), data.size());
  if (!wire::valid_string(requested)) {
    return make_error(Errc::kInvalidArgument, "bad export name");
  }
  std::string name = resolve(requested);
  if (name.empty()) return make_error(Errc::kNotFound, "no default export");
  // This option has no error reply: an export we cannot open ends the session.
  TP_ASSIGN_OR_RETURN(auto t, cat_.open(name));
  Negotiated n = finish(std::move(t), name);
  TP_TRY(ch_->write_all(wire::encode_export_name_reply(n.target->size(), n.eflags, no_zeroes_)));
  return std::optional<Negotiated>(std::move(n));
}

Result<std::unique_ptr<BlockTarget>> Handshake::open_or_reply(uint32_t opt,
                                                              const std::string& requested,
                                                              std::string& resolved) {
  resolved = resolve(requested);
  if (resolved.empty()) {
    TP_TRY(reply_error(opt, kRepErrUnknown, "there is no default export; name one"));
    return std::unique_ptr<BlockTarget>();
  }
  auto t = cat_.open(resolved);
  if (!t.ok()) {
    if (t.error().code != Errc::kNotFound) {
      log_.warn("nbd: cannot open export {}: {}", resolved, t.error().to_string());
    }
    std::string msg = "export '" + resolved + "': " + t.error().what;
    TP_TRY(reply_error(opt, kRepErrUnknown, msg));
    return std::unique_ptr<BlockTarget>();
  }
  return std::move(*t);
}

Result<std::optional<Negotiated>> Handshake::info_or_go(uint32_t opt,
                                                        const std::vector<std::byte>& data) {
  auto req = wire::decode_info_request(data);
  if (!req.ok()) {
    TP_TRY(reply_error(opt, kRepErrInvalid, req.error().what));
    return std::optional<Negotiated>{};
  }
  std::string name;
  TP_ASSIGN_OR_RETURN(auto t, open_or_reply(opt, req->name, name));
  if (!t) return std::optional<Negotiated>{};

  // NBD_INFO_EXPORT goes out whether or not it was asked for: qemu does not ask and
  // still requires it (nbdkit's handshake notes the same).
  TP_TRY(reply(opt, kRepInfo,
               wire::encode_info_export(t->size(), transmission_flags(*t, structured_))));
  std::vector<uint16_t> infos = req->infos;
  std::sort(infos.begin(), infos.end());
  infos.erase(std::unique(infos.begin(), infos.end()), infos.end());
  for (uint16_t i : infos) {
    switch (i) {
      case kInfoName:
        TP_TRY(reply(opt, kRepInfo, wire::encode_info_string(kInfoName, name)));
        break;
      case kInfoDescription: {
        std::string d = description_of(name);
        if (!d.empty()) {
          TP_TRY(reply(opt, kRepInfo, wire::encode_info_string(kInfoDescription, d)));
        }
        break;
      }
      case kInfoBlockSize: {
        BlockSizes b = block_sizes(*t);
        TP_TRY(reply(opt, kRepInfo, wire::encode_info_block_size(b.min, b.preferred, b.max)));
        break;
      }
      default:
        break;  // NBD_INFO_EXPORT was sent above; unknown types are ignored (spec)
    }
  }
  TP_TRY(reply(opt, kRepAck));
  if (opt == kOptInfo) return std::optional<Negotiated>{};
  return std::optional<Negotiated>(finish(std::move(t), name));
}

Result<void> Handshake::list(const std::vector<std::byte>& data) {
  if (!data.empty()) return reply_error(kOptList, kRepErrInvalid, "NBD_OPT_LIST takes no data");
  for (const ExportEntry& e : cat_.list()) {
    TP_TRY(reply(kOptList, kRepServer, wire::encode_server_entry(e.name, e.description)));
  }
  return reply(kOptList, kRepAck);
}

Result<void> Handshake::meta_context(uint32_t opt, const std::vector<std::byte>& data) {
  const bool set = opt == kOptSetMetaContext;
  if (set) {
    // A SET replaces whatever was chosen before, even when it fails.
    contexts_.clear();
    meta_export_.clear();
  }
  if (!structured_) {
    return reply_error(opt, kRepErrInvalid, "negotiate NBD_OPT_STRUCTURED_REPLY first");
  }
  auto req = wire::decode_meta_request(data);
  if (!req.ok()) return reply_error(opt, kRepErrInvalid, req.error().what);
  std::string name;
  TP_ASSIGN_OR_RETURN(auto t, open_or_reply(opt, req->name, name));
  if (!t) return {};

  std::vector<std::string> bases = t->delta_bases();
  std::vector<std::string> found;
  auto add = [&](std::string s) {
    if (std::find(found.begin(), found.end(), s) == found.end()) found.push_back(std::move(s));
  };
  auto add_all_deltas = [&] {
    for (const std::string& b : bases) add(kDeltaPrefix + b);
  };
  const std::string_view delta_prefix = kDeltaPrefix;
  if (!set && req->queries.empty()) {
    add(kBaseAllocation);
    add_all_deltas();
  }
  for (const std::string& q : req->queries) {
    if (q == kBaseAllocation) {
      add(q);
    } else if (!set && q == "base:") {
      add(kBaseAllocation);
    } else if (!set && (q == "thinpool:" || q == delta_prefix)) {
      add_all_deltas();
    } else if (q.size() > delta_prefix.size() && q.starts_with(delta_prefix)) {
      std::string base = q.substr(delta_prefix.size());
      if (std::find(bases.begin(), bases.end(), base) != bases.end()) add(q);
    }
    // Anything else is a context we do not have: it selects nothing.
  }
  uint32_t next_id = 1;
  for (const std::string& c : found) {
    uint32_t id = 0;  // LIST: the id is reserved, zero
    if (set) {
      id = next_id++;
      MetaContext m{id, c, ""};
      if (c != kBaseAllocation) m.delta_base = c.substr(delta_prefix.size());
      contexts_.push_back(std::move(m));
    }
    TP_TRY(reply(opt, kRepMetaContext, wire::encode_meta_context(id, c)));
  }
  if (set) meta_export_ = name;
  return reply(opt, kRepAck);
}

Result<void> Handshake::start_tls(const std::vector<std::byte>& data) {
  if (tls_.mode == TlsMode::kOff || tls_.credentials == nullptr) {
    return reply_error(kOptStartTls, kRepErrUnsup, "TLS is not enabled on this server");
  }
  if (tls_channel_) {
    return reply_error(kOptStartTls, kRepErrInvalid, "TLS is already running");
  }
  if (!data.empty()) {
    return reply_error(kOptStartTls, kRepErrInvalid, "NBD_OPT_STARTTLS takes no data");
  }
  TP_TRY(reply(kOptStartTls, kRepAck));
  // From the ACK on, only TLS: a failed handshake ends the connection (proto.md).
  TP_ASSIGN_OR_RETURN(tls_channel_, tls_.credentials->handshake(*ch_, deadline_));
  ch_ = tls_channel_.get();
  // What was negotiated in clear could have been chosen by someone in the middle.
  structured_ = false;
  contexts_.clear();
  meta_export_.clear();
  log_.debug("nbd: TLS session started");
  return {};
}

}  // namespace

Result<std::optional<Negotiated>> negotiate(Channel& ch, ExportCatalog& catalog, Logger& log,
                                            Clock::time_point deadline,
                                            const std::atomic<bool>& stopping,
                                            const TlsPolicy& tls) {
  Handshake h(ch, catalog, log, deadline, stopping, tls);
  return h.run();
}

}  // namespace tp::nbd
