// The wire codec (nbd/wire.h): byte layouts, bounds checks, and the request verdicts.

#include <gtest/gtest.h>

#include "nbd/protocol.h"
#include "nbd/target.h"
#include "nbd/wire.h"

namespace tp::nbd {
namespace {

using wire::Verdict;

std::vector<std::byte> hex(std::initializer_list<int> v) {
  std::vector<std::byte> out;
  for (int x : v) out.push_back(std::byte(x));
  return out;
}

TEST(Wire, BigEndianHelpersPutTheMostSignificantByteFirst) {
  std::byte b[8];
  wire::store_be64(b, 0x0102030405060708ull);
  EXPECT_EQ(std::vector<std::byte>(b, b + 8), hex({1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(wire::load_be32(b + 4), 0x05060708u);
  EXPECT_EQ(wire::load_be16(b + 6), 0x0708u);
}

TEST(Wire, RequestRoundTripsThroughTheWireLayout) {
  wire::RequestHeader h{kCmdFlagFua, kCmdWrite, 0xdeadbeefcafef00dull, 1ull << 40, 4096};
  auto b = wire::encode_request(h);
  EXPECT_EQ(wire::load_be32(b.data()), kRequestMagic);
  EXPECT_EQ(wire::load_be16(b.data() + 6), kCmdWrite);
  auto d = wire::decode_request(b);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->flags, h.flags);
  EXPECT_EQ(d->type, h.type);
  EXPECT_EQ(d->cookie, h.cookie);
  EXPECT_EQ(d->offset, h.offset);
  EXPECT_EQ(d->length, h.length);
}

TEST(Wire, DecodeRequestRejectsShortInputAndBadMagic) {
  auto b = wire::encode_request({});
  EXPECT_EQ(wire::decode_request(std::span(b).first(27)).error().code, Errc::kInvalidArgument);
  b[0] = std::byte{0};
  EXPECT_EQ(wire::decode_request(b).error().code, Errc::kInvalidArgument);
}

wire::ExportState rw_state() {
  wire::ExportState s;
  s.size = 1 << 20;
  s.eflags = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendTrim | kTxSendWriteZeroes |
             kTxSendDf | kTxSendCache;
  s.structured = true;
  s.has_contexts = true;
  return s;
}

Verdict check(uint16_t type, uint64_t off, uint32_t len, uint16_t flags = 0,
              wire::ExportState s = rw_state()) {
  return wire::check_request({flags, type, 1, off, len}, s);
}

TEST(Wire, ValidRequestsAreExecutedAndWritesCarryTheirPayload) {
  EXPECT_EQ(check(kCmdRead, 0, 4096).action, Verdict::kExecute);
  Verdict w = check(kCmdWrite, 512, 100, kCmdFlagFua);
  EXPECT_EQ(w.action, Verdict::kExecute);
  EXPECT_EQ(w.payload, 100u);
  EXPECT_EQ(check(kCmdRead, 0, 4096, kCmdFlagDf).action, Verdict::kExecute);
  EXPECT_EQ(check(kCmdWriteZeroes, 0, 1 << 20, kCmdFlagNoHole).action, Verdict::kExecute);
  EXPECT_EQ(check(kCmdBlockStatus, 0, 1 << 20, kCmdFlagReqOne).action, Verdict::kExecute);
  EXPECT_EQ(check(kCmdFlush, 0, 0).action, Verdict::kExecute);
  EXPECT_EQ(check(kCmdCache, 0, 10).action, Verdict::kExecute);
  // The last byte of the export is in range.
  EXPECT_EQ(check(kCmdRead, (1 << 20) - 1, 1).action, Verdict::kExecute);
}

TEST(Wire, DiscIsADisconnect) {
  EXPECT_EQ(check(kCmdDisc, 0, 0).action, Verdict::kDisconnect);
}

TEST(Wire, RequestsPastTheEndAreEinval) {
  Verdict v = check(kCmdRead, (1 << 20) - 1, 2);
  EXPECT_EQ(v.action, Verdict::kReplyError);
  EXPECT_EQ(v.error, kEInval);
  EXPECT_EQ(check(kCmdTrim, 1 << 20, 1).error, kEInval);
  EXPECT_EQ(check(kCmdBlockStatus, ~0ull, 1).error, kEInval);  // offset + length overflows
  // A write past the end still consumes its payload so the stream stays in step.
  Verdict w = check(kCmdWrite, 1 << 20, 512);
  EXPECT_EQ(w.error, kEInval);
  EXPECT_EQ(w.payload, 512u);
}

TEST(Wire, FlagsNotValidForTheCommandAreEinval) {
  EXPECT_EQ(check(kCmdWrite, 0, 1, kCmdFlagNoHole).error, kEInval);
  EXPECT_EQ(check(kCmdRead, 0, 1, kCmdFlagReqOne).error, kEInval);
  EXPECT_EQ(check(kCmdRead, 0, 1, 0x8000).error, kEInval);
  // FAST_ZERO is not advertised, so it is not accepted.
  EXPECT_EQ(check(kCmdWriteZeroes, 0, 1, kCmdFlagFastZero).error, kEInval);
  // DF needs structured replies.
  auto s = rw_state();
  s.structured = false;
  s.eflags &= static_cast<uint16_t>(~kTxSendDf);
  EXPECT_EQ(check(kCmdRead, 0, 1, kCmdFlagDf, s).error, kEInval);
}

TEST(Wire, WritesToAReadOnlyExportAreEperm) {
  auto s = rw_state();
  s.eflags |= kTxReadOnly;
  EXPECT_EQ(check(kCmdWrite, 0, 1, 0, s).error, kEPerm);
  EXPECT_EQ(check(kCmdTrim, 0, 1, 0, s).error, kEPerm);
  EXPECT_EQ(check(kCmdWriteZeroes, 0, 1, 0, s).error, kEPerm);
  EXPECT_EQ(check(kCmdRead, 0, 1, 0, s).action, Verdict::kExecute);
}

TEST(Wire, OversizedReadIsEoverflowAndOversizedWriteIsSkippedOrDropped) {
  wire::ExportState s = rw_state();
  s.size = 1ull << 40;
  EXPECT_EQ(check(kCmdRead, 0, kMaxPayload + 1, 0, s).error, kEOverflow);
  Verdict w = check(kCmdWrite, 0, kMaxPayload + 1, 0, s);
  EXPECT_EQ(w.action, Verdict::kReplyError);
  EXPECT_EQ(w.error, kEOverflow);
  EXPECT_EQ(w.payload, kMaxPayload + 1);
  EXPECT_EQ(check(kCmdWrite, 0, kMaxSkippedPayload + 1, 0, s).action, Verdict::kDrop);
  // Commands without a payload have no size cap.
  EXPECT_EQ(check(kCmdTrim, 0, 0xffffffffu, 0, s).action, Verdict::kExecute);
}

TEST(Wire, MiscellaneousInvalidRequests) {
  EXPECT_EQ(check(kCmdFlush, 0, 1).error, kEInval);
  EXPECT_EQ(check(kCmdRead, 0, 0).error, kEInval);
  EXPECT_EQ(check(99, 0, 1).error, kEInval);
  auto s = rw_state();
  s.has_contexts = false;
  EXPECT_EQ(check(kCmdBlockStatus, 0, 1, 0, s).error, kEInval);
}

TEST(Wire, SimpleAndStructuredRepliesHaveTheSpecLayout) {
  auto s = wire::encode_simple_reply(kENoSpc, 7);
  EXPECT_EQ(std::vector<std::byte>(s.begin(), s.end()),
            hex({0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 7}));
  auto c = wire::encode_chunk_header(kReplyFlagDone, kReplyTypeOffsetHole, 9, 12);
  EXPECT_EQ(std::vector<std::byte>(c.begin(), c.end()),
            hex({0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 12}));
  auto r = wire::decode_reply(c);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->structured);
  EXPECT_EQ(r->type, kReplyTypeOffsetHole);
  EXPECT_EQ(r->length, 12u);
  auto rs = wire::decode_reply(s);
  ASSERT_TRUE(rs.ok());
  EXPECT_EQ(rs->error, kENoSpc);
  EXPECT_FALSE(wire::decode_reply(hex({1, 2, 3, 4})).ok());
}

TEST(Wire, ErrorPayloadCarriesTheMessageCutToTheStringLimit) {
  auto p = wire::encode_error_payload(kEIo, "boom");
  EXPECT_EQ(p, hex({0, 0, 0, 5, 0, 4, 'b', 'o', 'o', 'm'}));
  std::string big(10000, 'x');
  auto q = wire::encode_error_payload(kEIo, big);
  EXPECT_EQ(q.size(), 6 + kMaxStringBytes);
  EXPECT_EQ(wire::load_be16(q.data() + 4), kMaxStringBytes);
}

TEST(Wire, BlockStatusPayloadIsContextThenPairs) {
  wire::Descriptor d[] = {{4096, kStateHole | kStateZero}, {512, 0}};
  auto p = wire::encode_block_status(3, d);
  EXPECT_EQ(p, hex({0, 0, 0, 3, 0, 0, 0x10, 0, 0, 0, 0, 3, 0, 0, 2, 0, 0, 0, 0, 0}));
}

TEST(Wire, HandshakeMessagesHaveTheSpecLayout) {
  auto g = wire::encode_greeting(kFlagFixedNewstyle | kFlagNoZeroes);
  EXPECT_EQ(wire::load_be64(g.data()), kNbdMagic);
  EXPECT_EQ(wire::load_be64(g.data() + 8), kOptMagic);
  EXPECT_EQ(wire::load_be16(g.data() + 16), 3);

  auto r = wire::encode_option_reply(kOptList, kRepAck);
  EXPECT_EQ(r.size(), kOptionReplyHeaderBytes);
  EXPECT_EQ(wire::load_be64(r.data()), kOptReplyMagic);
  EXPECT_EQ(wire::load_be32(r.data() + 8), kOptList);
  EXPECT_EQ(wire::load_be32(r.data() + 12), kRepAck);

  EXPECT_EQ(wire::encode_export_name_reply(1, 2, true).size(), 10u);
  auto z = wire::encode_export_name_reply(1, 2, false);
  EXPECT_EQ(z.size(), 10 + kExportNameZeroes);
  EXPECT_EQ(z.back(), std::byte{0});

  auto e = wire::encode_info_export(1ull << 33, kTxHasFlags | kTxReadOnly);
  EXPECT_EQ(e.size(), 12u);
  EXPECT_EQ(wire::load_be16(e.data()), kInfoExport);
  EXPECT_EQ(wire::load_be64(e.data() + 2), 1ull << 33);
  EXPECT_EQ(wire::load_be16(e.data() + 10), 3);
  auto b = wire::encode_info_block_size(512, 65536, kMaxPayload);
  EXPECT_EQ(b.size(), 14u);
  EXPECT_EQ(wire::load_be32(b.data() + 6), 65536u);
  auto s = wire::encode_server_entry("vol", "desc");
  EXPECT_EQ(wire::load_be32(s.data()), 3u);
  EXPECT_EQ(s.size(), 4u + 3 + 4);
}

TEST(Wire, OptionHeaderNeedsTheIHaveOptMagic) {
  auto o = wire::encode_option(kOptGo, hex({1, 2}));
  auto h = wire::decode_option_header(o);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->option, kOptGo);
  EXPECT_EQ(h->length, 2u);
  o[3] = std::byte{0};
  EXPECT_FALSE(wire::decode_option_header(o).ok());
  EXPECT_FALSE(wire::decode_option_header(std::span(o).first(15)).ok());
}

TEST(Wire, InfoRequestRoundTripsAndRejectsMismatchedCounts) {
  wire::InfoRequest in{"vol", {kInfoName, kInfoBlockSize}};
  auto b = wire::encode_info_request(in);
  auto out = wire::decode_info_request(b);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->name, "vol");
  EXPECT_EQ(out->infos, in.infos);

  auto extra = b;
  extra.push_back(std::byte{0});
  EXPECT_FALSE(wire::decode_info_request(extra).ok());
  EXPECT_FALSE(wire::decode_info_request(std::span(b).first(b.size() - 1)).ok());
  auto lie = b;
  wire::store_be32(lie.data(), 1000);  // name longer than the data
  EXPECT_FALSE(wire::decode_info_request(lie).ok());
  EXPECT_FALSE(wire::decode_info_request(hex({0, 0})).ok());
}

TEST(Wire, MetaRequestRoundTripsAndRejectsLies) {
  wire::MetaRequest in{"vol", {"base:allocation", "thinpool:delta:snap"}};
  auto b = wire::encode_meta_request(in);
  auto out = wire::decode_meta_request(b);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->name, in.name);
  EXPECT_EQ(out->queries, in.queries);

  auto hostile = wire::encode_meta_request({"v", {}});
  wire::store_be32(hostile.data() + 5, 0xffffffffu);  // 4 G queries in 0 bytes
  EXPECT_FALSE(wire::decode_meta_request(hostile).ok());
  auto trailing = b;
  trailing.push_back(std::byte{1});
  EXPECT_FALSE(wire::decode_meta_request(trailing).ok());
  auto nul = wire::encode_meta_request({"v", {std::string("a\0b", 3)}});
  EXPECT_FALSE(wire::decode_meta_request(nul).ok());
}

TEST(Wire, StringsOver4096BytesOrWithNulAreInvalid) {
  EXPECT_TRUE(wire::valid_string("vol"));
  EXPECT_TRUE(wire::valid_string(std::string(4096, 'a')));
  EXPECT_FALSE(wire::valid_string(std::string(4097, 'a')));
  EXPECT_FALSE(wire::valid_string(std::string("a\0", 2)));
}

TEST(Wire, ErrorMappingFollowsTheContract) {
  EXPECT_EQ(to_nbd_error(make_error(Errc::kNoSpace, "x")), kENoSpc);
  EXPECT_EQ(to_nbd_error(make_error(Errc::kReadOnly, "x")), kEPerm);
  EXPECT_EQ(to_nbd_error(make_error(Errc::kInvalidArgument, "x")), kEInval);
  EXPECT_EQ(to_nbd_error(make_error(Errc::kIo, "x")), kEIo);
  EXPECT_EQ(to_nbd_error(make_error(Errc::kCorruption, "x")), kEIo);
  EXPECT_EQ(to_nbd_error(make_error(Errc::kIo, "x", kNoAddr, EDQUOT)), kENoSpc);
}

}  // namespace
}  // namespace tp::nbd
