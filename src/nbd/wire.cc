#include "nbd/wire.h"

#include <algorithm>

namespace tp::nbd {

const char* option_name(uint32_t opt) {
  switch (opt) {
    case kOptExportName:
      return "NBD_OPT_EXPORT_NAME";
    case kOptAbort:
      return "NBD_OPT_ABORT";
    case kOptList:
      return "NBD_OPT_LIST";
    case kOptStartTls:
      return "NBD_OPT_STARTTLS";
    case kOptInfo:
      return "NBD_OPT_INFO";
    case kOptGo:
      return "NBD_OPT_GO";
    case kOptStructuredReply:
      return "NBD_OPT_STRUCTURED_REPLY";
    case kOptListMetaContext:
      return "NBD_OPT_LIST_META_CONTEXT";
    case kOptSetMetaContext:
      return "NBD_OPT_SET_META_CONTEXT";
    default:
      return "unknown option";
  }
}

const char* command_name(uint16_t cmd) {
  switch (cmd) {
    case kCmdRead:
      return "NBD_CMD_READ";
    case kCmdWrite:
      return "NBD_CMD_WRITE";
    case kCmdDisc:
      return "NBD_CMD_DISC";
    case kCmdFlush:
      return "NBD_CMD_FLUSH";
    case kCmdTrim:
      return "NBD_CMD_TRIM";
    case kCmdCache:
      return "NBD_CMD_CACHE";
    case kCmdWriteZeroes:
      return "NBD_CMD_WRITE_ZEROES";
    case kCmdBlockStatus:
      return "NBD_CMD_BLOCK_STATUS";
    default:
      return "unknown command";
  }
}

namespace wire {
namespace {

void append(std::vector<std::byte>& out, std::span<const std::byte> b) {
  out.insert(out.end(), b.begin(), b.end());
}
void append_be16(std::vector<std::byte>& out, uint16_t v) {
  std::byte b[2];
  store_be16(b, v);
  append(out, b);
}
void append_be32(std::vector<std::byte>& out, uint32_t v) {
  std::byte b[4];
  store_be32(b, v);
  append(out, b);
}
void append_be64(std::vector<std::byte>& out, uint64_t v) {
  std::byte b[8];
  store_be64(b, v);
  append(out, b);
}
void append_str(std::vector<std::byte>& out, std::string_view s) {
  append(out, std::as_bytes(std::span(s.data(), s.size())));
}

// A bounds-checked reader over option data.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  bool u16(uint16_t& v) {
    if (left() < 2) return false;
    v = load_be16(in_.data() + pos_);
    pos_ += 2;
    return true;
  }
  bool u32(uint32_t& v) {
    if (left() < 4) return false;
    v = load_be32(in_.data() + pos_);
    pos_ += 4;
    return true;
  }
  bool str(uint32_t len, std::string& s) {
    if (left() < len) return false;
    s.assign(reinterpret_cast<const char*>(in_.data() + pos_), len);
    pos_ += len;
    return true;
  }
  size_t left() const { return in_.size() - pos_; }

 private:
  std::span<const std::byte> in_;
  size_t pos_ = 0;
};

Error invalid(const char* what) {
  return make_error(Errc::kInvalidArgument, what);
}

}  // namespace

bool valid_string(std::string_view s) {
  return s.size() <= kMaxStringBytes && s.find('\0') == std::string_view::npos;
}

// ------------------------------------------------------------------ requests

Result<RequestHeader> decode_request(std::span<const std::byte> in) {
  if (in.size() < kRequestHeaderBytes) return invalid("short request header");
  if (load_be32(in.data()) != kRequestMagic) return invalid("bad request magic");
  RequestHeader h;
  h.flags = load_be16(in.data() + 4);
  h.type = load_be16(in.data() + 6);
  h.cookie = load_be64(in.data() + 8);
  h.offset = load_be64(in.data() + 16);
  h.length = load_be32(in.data() + 24);
  return h;
}

std::array<std::byte, kRequestHeaderBytes> encode_request(const RequestHeader& h) {
  std::array<std::byte, kRequestHeaderBytes> b{};
  store_be32(b.data(), kRequestMagic);
  store_be16(b.data() + 4, h.flags);
  store_be16(b.data() + 6, h.type);
  store_be64(b.data() + 8, h.cookie);
  store_be64(b.data() + 16, h.offset);
  store_be32(b.data() + 24, h.length);
  return b;
}

Verdict check_request(const RequestHeader& h, const ExportState& s) {
  Verdict v;
  auto fail = [&](uint32_t err, const char* why) {
    v.action = Verdict::kReplyError;
    v.error = err;
    v.why = why;
    return v;
  };
  if (h.type == kCmdDisc) {
    v.action = Verdict::kDisconnect;
    return v;
  }
  if (h.type == kCmdWrite) {
    v.payload = h.length;
    if (h.length > kMaxPayload) {
      if (h.length > kMaxSkippedPayload) {
        v.action = Verdict::kDrop;
        v.error = kEOverflow;
        v.why = "write payload too large to skip";
        return v;
      }
      return fail(kEOverflow, "write larger than the 32 MiB maximum");
    }
  }

  const bool fua_ok = s.eflags & kTxSendFua;
  uint16_t allowed = fua_ok ? kCmdFlagFua : 0;
  bool writes = false;       // modifies the export
  bool needs_length = true;  // a zero length is invalid
  bool ranged = true;        // offset/length must lie inside the export
  switch (h.type) {
    case kCmdRead:
      if (s.structured && (s.eflags & kTxSendDf)) allowed |= kCmdFlagDf;
      break;
    case kCmdWrite:
      writes = true;
      break;
    case kCmdFlush:
      needs_length = ranged = false;
      if (h.offset != 0 || h.length != 0) {
        return fail(kEInval, "flush with a nonzero offset or length");
      }
      break;
    case kCmdTrim:
      writes = true;
      break;
    case kCmdCache:
      break;
    case kCmdWriteZeroes:
      writes = true;
      allowed |= kCmdFlagNoHole;
      if (s.eflags & kTxSendFastZero) allowed |= kCmdFlagFastZero;
      break;
    case kCmdBlockStatus:
      allowed |= kCmdFlagReqOne;
      if (!s.structured || !s.has_contexts) {
        return fail(kEInval, "block status without a negotiated meta context");
      }
      break;
    default:
      return fail(kEInval, "unknown command");
  }
  if (h.flags & ~allowed) return fail(kEInval, "command flag not valid for this command");
  if (writes && (s.eflags & kTxReadOnly)) return fail(kEPerm, "export is read-only");
  if (h.type == kCmdRead && h.length > kMaxPayload) {
    return fail(kEOverflow, "read larger than the 32 MiB maximum");
  }
  if (needs_length && h.length == 0) return fail(kEInval, "zero-length request");
  if (ranged && (h.offset > s.size || h.length > s.size - h.offset)) {
    return fail(kEInval, "request beyond the end of the export");
  }
  return v;
}

// ------------------------------------------------------------------ replies

std::array<std::byte, kSimpleReplyBytes> encode_simple_reply(uint32_t error, uint64_t cookie) {
  std::array<std::byte, kSimpleReplyBytes> b{};
  store_be32(b.data(), kSimpleReplyMagic);
  store_be32(b.data() + 4, error);
  store_be64(b.data() + 8, cookie);
  return b;
}

std::array<std::byte, kChunkHeaderBytes> encode_chunk_header(uint16_t flags, uint16_t type,
                                                             uint64_t cookie, uint32_t length) {
  std::array<std::byte, kChunkHeaderBytes> b{};
  store_be32(b.data(), kStructuredReplyMagic);
  store_be16(b.data() + 4, flags);
  store_be16(b.data() + 6, type);
  store_be64(b.data() + 8, cookie);
  store_be32(b.data() + 16, length);
  return b;
}

std::vector<std::byte> encode_error_payload(uint32_t error, std::string_view message) {
  message = message.substr(0, kMaxStringBytes);
  std::vector<std::byte> out;
  out.reserve(6 + message.size());
  append_be32(out, error);
  append_be16(out, static_cast<uint16_t>(message.size()));
  append_str(out, message);
  return out;
}

std::array<std::byte, 12> encode_hole_payload(uint64_t offset, uint32_t length) {
  std::array<std::byte, 12> b{};
  store_be64(b.data(), offset);
  store_be32(b.data() + 8, length);
  return b;
}

std::vector<std::byte> encode_block_status(uint32_t context_id, std::span<const Descriptor> d) {
  std::vector<std::byte> out;
  out.reserve(4 + 8 * d.size());
  append_be32(out, context_id);
  for (const Descriptor& x : d) {
    append_be32(out, x.length);
    append_be32(out, x.flags);
  }
  return out;
}

size_t reply_header_bytes(std::span<const std::byte> magic4) {
  if (magic4.size() < 4) return 0;
  uint32_t m = load_be32(magic4.data());
  if (m == kSimpleReplyMagic) return kSimpleReplyBytes;
  if (m == kStructuredReplyMagic) return kChunkHeaderBytes;
  return 0;
}

Result<ReplyHeader> decode_reply(std::span<const std::byte> in) {
  size_t need = reply_header_bytes(in);
  if (need == 0) return invalid("bad reply magic");
  if (in.size() < need) return invalid("short reply header");
  ReplyHeader r;
  r.structured = need == kChunkHeaderBytes;
  if (r.structured) {
    r.flags = load_be16(in.data() + 4);
    r.type = load_be16(in.data() + 6);
    r.cookie = load_be64(in.data() + 8);
    r.length = load_be32(in.data() + 16);
  } else {
    r.error = load_be32(in.data() + 4);
    r.cookie = load_be64(in.data() + 8);
  }
  return r;
}

// ------------------------------------------------------------------ handshake

std::array<std::byte, 18> encode_greeting(uint16_t handshake_flags) {
  std::array<std::byte, 18> b{};
  store_be64(b.data(), kNbdMagic);
  store_be64(b.data() + 8, kOptMagic);
  store_be16(b.data() + 16, handshake_flags);
  return b;
}

Result<OptionHeader> decode_option_header(std::span<const std::byte> in) {
  if (in.size() < kOptionHeaderBytes) return invalid("short option header");
  if (load_be64(in.data()) != kOptMagic) return invalid("bad option magic");
  return OptionHeader{load_be32(in.data() + 8), load_be32(in.data() + 12)};
}

std::vector<std::byte> encode_option(uint32_t option, std::span<const std::byte> data) {
  std::vector<std::byte> out;
  out.reserve(kOptionHeaderBytes + data.size());
  append_be64(out, kOptMagic);
  append_be32(out, option);
  append_be32(out, static_cast<uint32_t>(data.size()));
  append(out, data);
  return out;
}

std::vector<std::byte> encode_option_reply(uint32_t option, uint32_t type,
                                           std::span<const std::byte> data) {
  std::vector<std::byte> out;
  out.reserve(kOptionReplyHeaderBytes + data.size());
  append_be64(out, kOptReplyMagic);
  append_be32(out, option);
  append_be32(out, type);
  append_be32(out, static_cast<uint32_t>(data.size()));
  append(out, data);
  return out;
}

std::vector<std::byte> encode_server_entry(std::string_view name, std::string_view description) {
  std::vector<std::byte> out;
  append_be32(out, static_cast<uint32_t>(name.size()));
  append_str(out, name);
  append_str(out, description.substr(0, kMaxStringBytes));
  return out;
}

std::vector<std::byte> encode_info_export(uint64_t size, uint16_t eflags) {
  std::vector<std::byte> out;
  append_be16(out, kInfoExport);
  append_be64(out, size);
  append_be16(out, eflags);
  return out;
}

std::vector<std::byte> encode_info_string(uint16_t info, std::string_view s) {
  std::vector<std::byte> out;
  append_be16(out, info);
  append_str(out, s.substr(0, kMaxStringBytes));
  return out;
}

std::vector<std::byte> encode_info_block_size(uint32_t min, uint32_t preferred, uint32_t max) {
  std::vector<std::byte> out;
  append_be16(out, kInfoBlockSize);
  append_be32(out, min);
  append_be32(out, preferred);
  append_be32(out, max);
  return out;
}

std::vector<std::byte> encode_meta_context(uint32_t id, std::string_view name) {
  std::vector<std::byte> out;
  append_be32(out, id);
  append_str(out, name);
  return out;
}

std::vector<std::byte> encode_export_name_reply(uint64_t size, uint16_t eflags, bool no_zeroes) {
  std::vector<std::byte> out;
  append_be64(out, size);
  append_be16(out, eflags);
  if (!no_zeroes) out.resize(out.size() + kExportNameZeroes);
  return out;
}

Result<InfoRequest> decode_info_request(std::span<const std::byte> in) {
  Reader r(in);
  InfoRequest req;
  uint32_t name_len = 0;
  uint16_t n = 0;
  if (!r.u32(name_len) || name_len > kMaxStringBytes || !r.str(name_len, req.name)) {
    return invalid("bad export name length");
  }
  if (!r.u16(n)) return invalid("missing information request count");
  if (r.left() != size_t{n} * 2) return invalid("information request count does not match");
  req.infos.resize(n);
  for (uint16_t& i : req.infos) (void)r.u16(i);
  if (!valid_string(req.name)) return invalid("export name contains NUL");
  return req;
}

std::vector<std::byte> encode_info_request(const InfoRequest& r) {
  std::vector<std::byte> out;
  append_be32(out, static_cast<uint32_t>(r.name.size()));
  append_str(out, r.name);
  append_be16(out, static_cast<uint16_t>(r.infos.size()));
  for (uint16_t i : r.infos) append_be16(out, i);
  return out;
}

Result<MetaRequest> decode_meta_request(std::span<const std::byte> in) {
  Reader r(in);
  MetaRequest req;
  uint32_t name_len = 0, n = 0;
  if (!r.u32(name_len) || name_len > kMaxStringBytes || !r.str(name_len, req.name)) {
    return invalid("bad export name length");
  }
  if (!r.u32(n)) return invalid("missing query count");
  // Each query takes at least its 4-byte length: a count beyond that is a lie, and
  // checking it first keeps a hostile count from reserving memory.
  if (n > r.left() / 4) return invalid("query count exceeds the option length");
  req.queries.reserve(n);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t len = 0;
    std::string q;
    if (!r.u32(len) || len > kMaxStringBytes || !r.str(len, q)) return invalid("bad query length");
    if (!valid_string(q)) return invalid("query contains NUL");
    req.queries.push_back(std::move(q));
  }
  if (r.left() != 0) return invalid("trailing bytes after the queries");
  if (!valid_string(req.name)) return invalid("export name contains NUL");
  return req;
}

std::vector<std::byte> encode_meta_request(const MetaRequest& r) {
  std::vector<std::byte> out;
  append_be32(out, static_cast<uint32_t>(r.name.size()));
  append_str(out, r.name);
  append_be32(out, static_cast<uint32_t>(r.queries.size()));
  for (const std::string& q : r.queries) {
    append_be32(out, static_cast<uint32_t>(q.size()));
    append_str(out, q);
  }
  return out;
}

}  // namespace wire
}  // namespace tp::nbd
