#pragma once
// The NBD wire codec: pure functions over byte spans, no sockets, no state. Big-endian
// fields are converted here and nowhere else (STYLE.md "On-disk structs and endianness"):
// what leaves this file is host-order structs and std::string.
//
// Layouts (offsets in bytes, all fields big-endian), from doc/proto.md:
//   option       0 u64 IHAVEOPT   8 u32 option   12 u32 length   16 data
//   option reply 0 u64 0x3e889045565a9   8 u32 option   12 u32 type   16 u32 length   20 data
//   request      0 u32 0x25609513   4 u16 flags   6 u16 type   8 u64 cookie   16 u64 offset
//                24 u32 length   28 (WRITE: length bytes of data)
//   simple reply 0 u32 0x67446698   4 u32 error   8 u64 cookie   16 (READ: data)
//   chunk        0 u32 0x668e33ef   4 u16 flags   6 u16 type   8 u64 cookie   16 u32 length
//                20 payload
//
// Every decode checks lengths before it reads and returns kInvalidArgument on anything
// malformed; the fuzz target (fuzz_request.cc) drives these with arbitrary bytes.

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/result.h"
#include "nbd/protocol.h"

namespace tp::nbd::wire {

// --- big-endian field access ------------------------------------------------------------------
inline uint16_t load_be16(const std::byte* p) {
  return static_cast<uint16_t>((std::to_integer<uint16_t>(p[0]) << 8) |
                               std::to_integer<uint16_t>(p[1]));
}
inline uint32_t load_be32(const std::byte* p) {
  return (uint32_t{load_be16(p)} << 16) | load_be16(p + 2);
}
inline uint64_t load_be64(const std::byte* p) {
  return (uint64_t{load_be32(p)} << 32) | load_be32(p + 4);
}
inline void store_be16(std::byte* p, uint16_t v) {
  p[0] = std::byte(v >> 8);
  p[1] = std::byte(v & 0xff);
}
inline void store_be32(std::byte* p, uint32_t v) {
  store_be16(p, static_cast<uint16_t>(v >> 16));
  store_be16(p + 2, static_cast<uint16_t>(v & 0xffff));
}
inline void store_be64(std::byte* p, uint64_t v) {
  store_be32(p, static_cast<uint32_t>(v >> 32));
  store_be32(p + 4, static_cast<uint32_t>(v & 0xffffffff));
}

// --- transmission: requests --------------------------------------------------------------------
struct RequestHeader {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;  // the spec's "handle": opaque, echoed in every reply
  uint64_t offset = 0;
  uint32_t length = 0;
};

// REQUIRES nothing: a short span or a wrong magic is kInvalidArgument (the caller drops the
// connection: after a bad magic the stream cannot be resynchronised).
Result<RequestHeader> decode_request(std::span<const std::byte> in);
// Client side (tests, fuzz target).
std::array<std::byte, kRequestHeaderBytes> encode_request(const RequestHeader& h);

// What the handshake negotiated, as far as checking a request needs it.
struct ExportState {
  uint64_t size = 0;
  uint16_t eflags = 0;        // transmission flags sent to the client
  bool structured = false;    // NBD_OPT_STRUCTURED_REPLY acknowledged
  bool has_contexts = false;  // at least one meta context selected
};

// The decision about one request header, before any target call.
struct Verdict {
  enum Action : uint8_t {
    kExecute,     // valid: read `payload` bytes (WRITE data), then run it
    kReplyError,  // invalid: read and discard `payload` bytes, reply `error`, keep going
    kDisconnect,  // NBD_CMD_DISC: finish what is in flight, then close
    kDrop,        // cannot stay in step (payload too large to skip): hard disconnect
  };
  Action action = kExecute;
  uint32_t error = 0;    // NBD error for kReplyError
  uint32_t payload = 0;  // bytes that follow the header on the wire
  const char* why = "";  // string literal for the log and the error chunk
};

// Checks flags, length and range against the negotiated state (doc/proto.md "Request
// types", "Error values"). Out-of-range requests are EINVAL, not the ENOSPC the spec
// suggests for writes: in thinpool ENOSPC always means "the pool is full" (SEMANTICS.md).
Verdict check_request(const RequestHeader& h, const ExportState& s);

// --- transmission: replies
// ------------------------------------------------------------------------
std::array<std::byte, kSimpleReplyBytes> encode_simple_reply(uint32_t error, uint64_t cookie);
std::array<std::byte, kChunkHeaderBytes> encode_chunk_header(uint16_t flags, uint16_t type,
                                                             uint64_t cookie, uint32_t length);
// NBD_REPLY_TYPE_ERROR payload: error, message length, message (cut to 4096 bytes).
std::vector<std::byte> encode_error_payload(uint32_t error, std::string_view message);
// NBD_REPLY_TYPE_OFFSET_HOLE payload (12 bytes).
std::array<std::byte, 12> encode_hole_payload(uint64_t offset, uint32_t length);

struct Descriptor {
  uint32_t length = 0;
  uint32_t flags = 0;
};
// NBD_REPLY_TYPE_BLOCK_STATUS payload: context id, then (length, flags) pairs.
std::vector<std::byte> encode_block_status(uint32_t context_id, std::span<const Descriptor> d);

// Client-side decoders (tests, fuzz target). A chunk or simple reply header.
struct ReplyHeader {
  bool structured = false;
  uint32_t error = 0;  // simple replies
  uint16_t flags = 0;  // chunks
  uint16_t type = 0;   // chunks
  uint64_t cookie = 0;
  uint32_t length = 0;  // chunks: payload bytes that follow
};
// A simple reply header is 16 bytes, a chunk header 20; read 4 bytes first, and the magic
// (reply_header_bytes) says how many to read in all. kInvalidArgument on an unknown magic or
// a span shorter than the header.
size_t reply_header_bytes(std::span<const std::byte> magic4);  // 0: unknown magic
Result<ReplyHeader> decode_reply(std::span<const std::byte> in);

// --- handshake ----------------------------------------------------------------------------------
// Server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
std::array<std::byte, 18> encode_greeting(uint16_t handshake_flags);

struct OptionHeader {
  uint32_t option = 0;
  uint32_t length = 0;
};
// kInvalidArgument on a short span or a magic other than IHAVEOPT.
Result<OptionHeader> decode_option_header(std::span<const std::byte> in);
// Client side: an option with its data.
std::vector<std::byte> encode_option(uint32_t option, std::span<const std::byte> data);

// One option reply: header plus data.
std::vector<std::byte> encode_option_reply(uint32_t option, uint32_t type,
                                           std::span<const std::byte> data = {});
// Reply payloads.
std::vector<std::byte> encode_server_entry(std::string_view name, std::string_view description);
std::vector<std::byte> encode_info_export(uint64_t size, uint16_t eflags);
std::vector<std::byte> encode_info_string(uint16_t info, std::string_view s);  // NAME, DESCRIPTION
std::vector<std::byte> encode_info_block_size(uint32_t min, uint32_t preferred, uint32_t max);
std::vector<std::byte> encode_meta_context(uint32_t id, std::string_view name);
// NBD_OPT_EXPORT_NAME's answer: size, flags, and 124 zero bytes unless NO_ZEROES.
std::vector<std::byte> encode_export_name_reply(uint64_t size, uint16_t eflags, bool no_zeroes);

// NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, count x u16 info type.
struct InfoRequest {
  std::string name;
  std::vector<uint16_t> infos;
};
Result<InfoRequest> decode_info_request(std::span<const std::byte> in);
std::vector<std::byte> encode_info_request(const InfoRequest& r);  // client side

// NBD_OPT_{LIST,SET}_META_CONTEXT data: u32 name length, name, u32 count, count x
// (u32 length, query).
struct MetaRequest {
  std::string name;
  std::vector<std::string> queries;
};
Result<MetaRequest> decode_meta_request(std::span<const std::byte> in);
std::vector<std::byte> encode_meta_request(const MetaRequest& r);  // client side

// True if s is acceptable as an NBD string: at most 4096 bytes, no NUL.
bool valid_string(std::string_view s);

}  // namespace tp::nbd::wire
