// The fixed newstyle handshake (nbd/handshake.h) over a socketpair, option by option, plus
// the malformed inputs that must end only the offending connection.

#include "nbd/handshake.h"

#include <gtest/gtest.h>

#include <thread>

#include "nbd_test_util.h"

namespace tp::nbd {
namespace {

using testing::bytes;
using testing::Client;
using testing::Harness;
using testing::MemDisk;
using testing::str;

class HandshakeTest : public ::testing::Test {
 protected:
  HandshakeTest() {
    h.catalog.add("vol", std::make_shared<MemDisk>(1 << 20), "a volume");
    h.catalog.add("snap", std::make_shared<MemDisk>(1 << 20, true), "a snapshot");
  }
  std::unique_ptr<Client> greeted() {
    auto c = h.connect();
    c->greet();
    return c;
  }
  // A connection that still works: GO + a READ.
  void expect_server_works() {
    auto c = greeted();
    c->go("vol");
    EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
  }
  Harness h;
};

TEST_F(HandshakeTest, GreetingAdvertisesFixedNewstyleAndNoZeroes) {
  auto c = h.connect();
  EXPECT_EQ(c->greet(), kFlagFixedNewstyle | kFlagNoZeroes);
}

TEST_F(HandshakeTest, UnknownClientFlagsEndTheConnection) {
  auto c = h.connect();
  c->greet(kClientFixedNewstyle | 0x100);
  EXPECT_TRUE(c->closed_by_server());
  expect_server_works();
}

TEST_F(HandshakeTest, ListSendsEveryExportThenAck) {
  auto c = greeted();
  auto r = c->option(kOptList);
  ASSERT_EQ(r.size(), 3u);
  std::vector<std::string> names;
  for (size_t i = 0; i < 2; i++) {
    EXPECT_EQ(r[i].type, kRepServer);
    uint32_t len = wire::load_be32(r[i].data.data());
    names.push_back(str(std::span(r[i].data).subspan(4, len)));
  }
  EXPECT_EQ(names, (std::vector<std::string>{"snap", "vol"}));
  EXPECT_EQ(str(std::span(r[1].data).subspan(7)), "a volume");
  EXPECT_EQ(r[2].type, kRepAck);
}

TEST_F(HandshakeTest, ListWithDataIsInvalidAndTheHandshakeGoesOn) {
  auto c = greeted();
  EXPECT_EQ(c->option(kOptList, bytes("x")).back().type, kRepErrInvalid);
  EXPECT_EQ(c->option(kOptList).back().type, kRepAck);
}

TEST_F(HandshakeTest, InfoAnswersWithoutEnteringTransmission) {
  auto c = greeted();
  auto r = c->option(
      kOptInfo, wire::encode_info_request({"snap", {kInfoName, kInfoDescription, kInfoBlockSize}}));
  ASSERT_EQ(r.size(), 5u);
  EXPECT_EQ(wire::load_be16(r[0].data.data()), kInfoExport);
  EXPECT_EQ(wire::load_be64(r[0].data.data() + 2), 1u << 20);
  uint16_t eflags = wire::load_be16(r[0].data.data() + 10);
  EXPECT_TRUE(eflags & kTxReadOnly);
  EXPECT_FALSE(eflags & kTxSendTrim);
  EXPECT_EQ(str(std::span(r[1].data).subspan(2)), "snap");
  EXPECT_EQ(str(std::span(r[2].data).subspan(2)), "a snapshot");
  ASSERT_EQ(wire::load_be16(r[3].data.data()), kInfoBlockSize);
  EXPECT_EQ(wire::load_be32(r[3].data.data() + 2), 1u);  // minimum: any byte range is served
  EXPECT_EQ(wire::load_be32(r[3].data.data() + 6), 65536u);
  EXPECT_EQ(wire::load_be32(r[3].data.data() + 10), kMaxPayload);
  EXPECT_EQ(r[4].type, kRepAck);
  // Still negotiating: another option is answered.
  EXPECT_EQ(c->option(kOptList).back().type, kRepAck);
}

TEST_F(HandshakeTest, GoEntersTransmissionWithTruthfulFlags) {
  auto c = greeted();
  auto [size, eflags] = c->go("vol");
  EXPECT_EQ(size, 1u << 20);
  uint16_t want = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendTrim | kTxSendWriteZeroes |
                  kTxSendDf | kTxCanMultiConn | kTxSendCache;
  EXPECT_EQ(eflags, want);
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
}

TEST_F(HandshakeTest, WithoutStructuredRepliesDfIsNotAdvertised) {
  auto c = greeted();
  auto [size, eflags] = c->go("vol", false);
  EXPECT_FALSE(eflags & kTxSendDf);
}

TEST_F(HandshakeTest, GoToAnUnknownExportIsErrUnknownAndTheHandshakeGoesOn) {
  auto c = greeted();
  auto r = c->option(kOptGo, wire::encode_info_request({"nope", {}}));
  EXPECT_EQ(r.back().type, kRepErrUnknown);
  EXPECT_NE(str(r.back().data).find("nope"), std::string::npos);
  c->go("vol");
}

TEST_F(HandshakeTest, EmptyNameOpensTheDefaultExport) {
  auto c = greeted();
  EXPECT_EQ(c->option(kOptGo, wire::encode_info_request({"", {}})).back().type, kRepErrUnknown);
  h.catalog.set_default("snap");
  auto r = c->option(kOptInfo, wire::encode_info_request({"", {kInfoName}}));
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(str(std::span(r[1].data).subspan(2)), "snap");
}

TEST_F(HandshakeTest, MalformedInfoRequestIsInvalid) {
  auto c = greeted();
  EXPECT_EQ(c->option(kOptGo, bytes("\x00\x00")).back().type, kRepErrInvalid);
  c->go("vol");
}

TEST_F(HandshakeTest, UnknownOptionsAndStartTlsAreUnsupported) {
  auto c = greeted();
  EXPECT_EQ(c->option(1234).back().type, kRepErrUnsup);
  EXPECT_EQ(c->option(kOptStartTls).back().type, kRepErrUnsup);
  c->go("vol");
}

TEST_F(HandshakeTest, OversizedOptionIsTooBigThenTheHandshakeGoesOn) {
  auto c = greeted();
  std::vector<std::byte> big(kMaxOptionBytes + 1);
  EXPECT_EQ(c->option(99, big).back().type, kRepErrTooBig);
  c->go("vol");
}

TEST_F(HandshakeTest, HugeOptionLengthEndsTheConnection) {
  auto c = greeted();
  std::byte hdr[16];
  wire::store_be64(hdr, kOptMagic);
  wire::store_be32(hdr + 8, kOptGo);
  wire::store_be32(hdr + 12, 0xffffffffu);
  c->write(hdr);
  EXPECT_TRUE(c->closed_by_server());
  expect_server_works();
}

TEST_F(HandshakeTest, BadOptionMagicEndsTheConnection) {
  auto c = greeted();
  auto o = wire::encode_option(kOptList, {});
  o[0] = std::byte{0x42};
  c->write(o);
  EXPECT_TRUE(c->closed_by_server());
  expect_server_works();
}

TEST_F(HandshakeTest, AbortIsAcknowledgedThenClosed) {
  auto c = greeted();
  auto r = c->option(kOptAbort);
  EXPECT_EQ(r.back().type, kRepAck);
  EXPECT_TRUE(c->closed_by_server());
}

TEST_F(HandshakeTest, ExportNameEntersTransmissionWithZeroesUnlessNoZeroes) {
  auto c = h.connect();
  c->greet(kClientFixedNewstyle);  // no NO_ZEROES
  c->send_option(kOptExportName, bytes("vol"));
  auto r = c->read_n(10 + kExportNameZeroes);
  EXPECT_EQ(wire::load_be64(r.data()), 1u << 20);
  EXPECT_TRUE(wire::load_be16(r.data() + 8) & kTxHasFlags);
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);

  auto d = greeted();
  d->send_option(kOptExportName, bytes("vol"));
  d->read_n(10);
  EXPECT_EQ(d->command(kCmdFlush, 0, 0), 0u);  // no zeroes came before the reply
}

TEST_F(HandshakeTest, ExportNameOfAnUnknownExportEndsTheConnection) {
  auto c = greeted();
  c->send_option(kOptExportName, bytes("nope"));
  EXPECT_TRUE(c->closed_by_server());
  expect_server_works();
}

TEST_F(HandshakeTest, ExportNamesOverTheStringLimitAreRefusedBeforeAnyLookup) {
  const std::string huge(kMaxStringBytes + 1, 'v');
  auto c = greeted();
  auto r = c->option(kOptGo, wire::encode_info_request({huge, {}}));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  EXPECT_EQ(c->option(kOptInfo, wire::encode_info_request({huge, {kInfoName}})).back().type,
            kRepErrInvalid);
  c->go("vol");  // the connection goes on
  // NBD_OPT_EXPORT_NAME cannot answer an error: the connection ends.
  auto d = greeted();
  d->send_option(kOptExportName, bytes(huge));
  EXPECT_TRUE(d->closed_by_server());
  expect_server_works();
}

TEST_F(HandshakeTest, MetaContextsNeedStructuredRepliesFirst) {
  auto c = greeted();
  auto q = wire::encode_meta_request({"vol", {"base:allocation"}});
  EXPECT_EQ(c->option(kOptSetMetaContext, q).back().type, kRepErrInvalid);
  EXPECT_EQ(c->option(kOptListMetaContext, q).back().type, kRepErrInvalid);
  EXPECT_EQ(c->option(kOptStructuredReply, bytes("x")).back().type, kRepErrInvalid);
  EXPECT_EQ(c->option(kOptStructuredReply).back().type, kRepAck);
  EXPECT_EQ(c->option(kOptSetMetaContext, q).back().type, kRepAck);
}

std::vector<std::string> context_names(const std::vector<testing::OptReply>& r) {
  std::vector<std::string> out;
  for (auto& x : r) {
    if (x.type == kRepMetaContext) out.push_back(str(std::span(x.data).subspan(4)));
  }
  return out;
}

TEST_F(HandshakeTest, ListMetaContextListsAllOrByNamespace) {
  auto c = greeted();
  c->option(kOptStructuredReply);
  using V = std::vector<std::string>;
  EXPECT_EQ(context_names(c->option(kOptListMetaContext, wire::encode_meta_request({"vol", {}}))),
            (V{"base:allocation", "thinpool:delta:base"}));
  EXPECT_EQ(
      context_names(c->option(kOptListMetaContext, wire::encode_meta_request({"vol", {"base:"}}))),
      V{"base:allocation"});
  EXPECT_EQ(context_names(
                c->option(kOptListMetaContext, wire::encode_meta_request({"vol", {"thinpool:"}}))),
            V{"thinpool:delta:base"});
  EXPECT_EQ(context_names(c->option(kOptListMetaContext,
                                    wire::encode_meta_request({"vol", {"qemu:dirty-bitmap:x"}}))),
            V{});
  EXPECT_EQ(c->option(kOptListMetaContext, wire::encode_meta_request({"nope", {}})).back().type,
            kRepErrUnknown);
  EXPECT_EQ(c->option(kOptListMetaContext, bytes("\x00")).back().type, kRepErrInvalid);
}

TEST_F(HandshakeTest, SetMetaContextSelectsKnownContextsWithDistinctIds) {
  auto c = greeted();
  c->option(kOptStructuredReply);
  auto r = c->option(
      kOptSetMetaContext,
      wire::encode_meta_request(
          {"vol", {"base:allocation", "thinpool:delta:nope", "thinpool:delta:base", "base:"}}));
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(context_names(r), (std::vector<std::string>{"base:allocation", "thinpool:delta:base"}));
  EXPECT_NE(wire::load_be32(r[0].data.data()), wire::load_be32(r[1].data.data()));
  EXPECT_NE(wire::load_be32(r[0].data.data()), 0u);
}

TEST_F(HandshakeTest, ContextsChosenForAnotherExportAreDropped) {
  auto c = greeted();
  c->option(kOptStructuredReply);
  c->option(kOptSetMetaContext, wire::encode_meta_request({"snap", {"base:allocation"}}));
  c->go("vol", false);
  EXPECT_EQ(c->command(kCmdBlockStatus, 0, 4096), kEInval);
}

TEST_F(HandshakeTest, TruncatedHandshakeEndsOnlyThatConnection) {
  auto c = greeted();
  auto o = wire::encode_option(kOptGo, wire::encode_info_request({"vol", {}}));
  c->write(std::span(o).first(o.size() - 3));
  c->close_now();
  auto d = h.connect();
  std::byte two[2];
  d->read(two);  // half the greeting, then hang up
  d->close_now();
  expect_server_works();
}

TEST_F(HandshakeTest, StalledClientIsDroppedAfterTheTimeoutWhileOthersWork) {
  ServerOptions o;
  o.handshake_timeout = std::chrono::milliseconds(300);
  Harness fast(o);
  fast.catalog.add("vol", std::make_shared<MemDisk>(4096));
  auto stalled = fast.connect();
  stalled->greet();  // then says nothing
  auto other = fast.connect();
  other->greet();
  other->go("vol");
  EXPECT_EQ(other->command(kCmdFlush, 0, 0), 0u);
  EXPECT_TRUE(stalled->closed_by_server(5000));
  EXPECT_EQ(other->command(kCmdFlush, 0, 0), 0u);  // the session has no such deadline
}

TEST_F(HandshakeTest, OptionsAfterStopAreRefusedWithShutdown) {
  auto c = greeted();
  std::thread stopper([&] { h.server.stop(); });
  // stop() wakes the reader with EOF: the client sees the connection end.
  EXPECT_TRUE(c->closed_by_server());
  stopper.join();
}

// Any byte range is served (docs/CLI.md "NBD"), so every export says so: minimum 1.
TEST(BlockSizes, EveryExportAdvertisesAMinimumOfOne) {
  testing::MemTarget even(std::make_shared<MemDisk>(8192));
  testing::MemTarget odd(std::make_shared<MemDisk>(8193));
  EXPECT_EQ(block_sizes(even).min, 1u);
  EXPECT_EQ(block_sizes(odd).min, 1u);
  EXPECT_EQ(block_sizes(odd).max, kMaxPayload);
}

}  // namespace
}  // namespace tp::nbd
