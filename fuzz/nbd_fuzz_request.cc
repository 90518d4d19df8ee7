// libFuzzer target for the NBD wire codec (nbd/wire.h): arbitrary bytes as a stream of
// requests checked against an arbitrary negotiated state, and as option payloads. Checks the
// properties the server relies on: no crash or sanitizer report on any input, a verdict
// never asks to read more than a WRITE's own length, and option payloads that decode
// re-encode to the same bytes.
//
// Build and run: make fuzz-smoke (see fuzz/README.md).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "nbd/protocol.h"
#include "nbd/target.h"
#include "nbd/wire.h"

namespace {

using namespace tp::nbd;

void require(bool ok) {
  if (!ok) std::abort();
}

void fuzz_requests(std::span<const std::byte> in) {
  if (in.size() < 4) return;
  wire::ExportState s;
  s.eflags = static_cast<uint16_t>(wire::load_be16(in.data()) | kTxHasFlags);
  s.structured = std::to_integer<int>(in[2]) & 1;
  s.has_contexts = std::to_integer<int>(in[2]) & 2;
  s.size = uint64_t{std::to_integer<uint8_t>(in[3])} << (std::to_integer<int>(in[2]) >> 2);
  in = in.subspan(4);
  while (in.size() >= kRequestHeaderBytes) {
    auto h = wire::decode_request(in);
    in = in.subspan(kRequestHeaderBytes);
    if (!h.ok()) return;  // the server drops the connection here
    wire::Verdict v = wire::check_request(*h, s);
    require(v.payload == 0 || h->type == kCmdWrite);
    require(v.payload <= h->length);
    if (v.action == wire::Verdict::kExecute) {
      require(h->type != kCmdDisc);
      // What the session then relies on.
      if (h->type == kCmdRead || h->type == kCmdWrite) require(h->length <= kMaxPayload);
      if (h->type != kCmdFlush) require(h->offset <= s.size && h->length <= s.size - h->offset);
      if (h->type == kCmdBlockStatus) require(s.structured && s.has_contexts);
    }
    if (v.action == wire::Verdict::kReplyError) require(v.error != 0);
    if (v.action == wire::Verdict::kDrop || v.action == wire::Verdict::kDisconnect) return;
    (void)wire::encode_simple_reply(v.error, h->cookie);
    auto e = wire::encode_error_payload(v.error, v.why);
    (void)wire::encode_chunk_header(kReplyFlagDone, kReplyTypeError, h->cookie,
                                    static_cast<uint32_t>(e.size()));
    size_t skip = std::min<size_t>(v.payload, in.size());
    in = in.subspan(skip);
  }
}

void fuzz_options(std::span<const std::byte> in) {
  if (auto r = wire::decode_info_request(in); r.ok()) {
    auto again = wire::encode_info_request(*r);
    require(again.size() == in.size() && std::equal(again.begin(), again.end(), in.begin()));
  }
  if (auto r = wire::decode_meta_request(in); r.ok()) {
    auto again = wire::encode_meta_request(*r);
    require(again.size() == in.size() && std::equal(again.begin(), again.end(), in.begin()));
  }
  if (auto r = wire::decode_option_header(in); r.ok()) {
    require(in.size() >= kOptionHeaderBytes);
  }
  if (auto r = wire::decode_reply(in); r.ok()) {
    require(in.size() >= wire::reply_header_bytes(in));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  fuzz_requests(in);
  fuzz_options(in);
  return 0;
}
