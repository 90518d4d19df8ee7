// The transmission phase (nbd/session.h) against an in-memory target: every command, the
// error replies, structured reads with holes, block status, and the malformed requests that
// must end only the offending connection.

#include "nbd/session.h"

#include <gtest/gtest.h>

#include <numeric>
#include <set>
#include <thread>

#include "nbd_test_util.h"

namespace tp::nbd {
namespace {

using testing::Client;
using testing::Harness;
using testing::MemDisk;

constexpr uint64_t kSize = 1 << 20;

std::vector<std::byte> pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; i++) v[i] = std::byte((i * 7 + seed) & 0xff);
  return v;
}

class SessionTest : public ::testing::Test {
 protected:
  SessionTest() {
    h.catalog.add("vol", disk);
    h.catalog.add("snap", ro);
  }
  // A client in transmission on `name`, structured replies and base:allocation negotiated.
  std::unique_ptr<Client> open(const std::string& name = "vol", bool structured = true,
                               std::vector<std::string> ctx = {"base:allocation"}) {
    auto c = h.connect();
    c->greet();
    c->go(name, structured, structured ? ctx : std::vector<std::string>{});
    return c;
  }
  // READ with structured replies: the bytes assembled from the chunks (holes as zeros),
  // and the chunk types in order.
  std::pair<std::vector<std::byte>, std::vector<uint16_t>> sread(Client& c, uint64_t off,
                                                                 uint32_t len, uint16_t flags = 0) {
    c.request(kCmdRead, off, len, flags, 77);
    std::vector<std::byte> out(len);
    std::vector<uint16_t> types;
    for (auto& r : c.chunks()) {
      EXPECT_EQ(r.h.cookie, 77u);
      types.push_back(r.h.type);
      if (r.h.type == kReplyTypeOffsetData) {
        uint64_t o = wire::load_be64(r.payload.data());
        std::copy(r.payload.begin() + 8, r.payload.end(), out.begin() + (o - off));
      } else if (r.h.type == kReplyTypeOffsetHole) {
        uint64_t o = wire::load_be64(r.payload.data());
        uint32_t l = wire::load_be32(r.payload.data() + 8);
        std::fill(out.begin() + (o - off), out.begin() + (o - off + l), std::byte{0});
      }
    }
    return {out, types};
  }
  std::shared_ptr<MemDisk> disk = std::make_shared<MemDisk>(kSize);
  std::shared_ptr<MemDisk> ro = std::make_shared<MemDisk>(kSize, true);
  Harness h;
};

TEST_F(SessionTest, WriteThenReadWithSimpleReplies) {
  auto c = open("vol", false);
  auto data = pattern(10000, 1);
  EXPECT_EQ(c->command(kCmdWrite, 1234, 10000, 0, data), 0u);
  auto [err, got] = c->simple_read(1234, 10000);
  EXPECT_EQ(err, 0u);
  EXPECT_EQ(got, data);
}

TEST_F(SessionTest, StructuredReadSendsHolesForUnallocatedRanges) {
  auto c = open();
  auto data = pattern(4096, 2);
  ASSERT_EQ(c->command(kCmdWrite, 8192, 4096, 0, data), 0u);
  auto [got, types] = sread(*c, 0, 16384);
  EXPECT_EQ(types, (std::vector<uint16_t>{kReplyTypeOffsetHole, kReplyTypeOffsetData,
                                          kReplyTypeOffsetHole}));
  std::vector<std::byte> want(16384);
  std::copy(data.begin(), data.end(), want.begin() + 8192);
  EXPECT_EQ(got, want);
}

TEST_F(SessionTest, StructuredReadOfAHoleIsOneHoleChunk) {
  auto c = open();
  auto [got, types] = sread(*c, 100, 5000);
  EXPECT_EQ(types, std::vector<uint16_t>{kReplyTypeOffsetHole});
  EXPECT_EQ(got, std::vector<std::byte>(5000));
}

TEST_F(SessionTest, DfReadIsASingleDataChunk) {
  auto c = open();
  auto data = pattern(100, 3);
  ASSERT_EQ(c->command(kCmdWrite, 5000, 100, 0, data), 0u);
  auto [got, types] = sread(*c, 0, 16384, kCmdFlagDf);
  EXPECT_EQ(types, std::vector<uint16_t>{kReplyTypeOffsetData});
  EXPECT_TRUE(std::equal(data.begin(), data.end(), got.begin() + 5000));
}

TEST_F(SessionTest, ReadOnlyExportRefusesWritesTrimsAndZeroesWithEperm) {
  auto c = open("snap");
  auto data = pattern(512, 4);
  EXPECT_EQ(c->command(kCmdWrite, 0, 512, 0, data), kEPerm);
  EXPECT_EQ(c->command(kCmdTrim, 0, 4096), kEPerm);
  EXPECT_EQ(c->command(kCmdWriteZeroes, 0, 4096), kEPerm);
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
  EXPECT_EQ(ro->writes.load(), 0);
}

TEST_F(SessionTest, RequestsPastTheEndAreEinvalAndTheSessionGoesOn) {
  auto c = open("vol", false);
  EXPECT_EQ(c->simple_read(kSize - 1, 2).first, kEInval);
  auto data = pattern(4096, 5);
  EXPECT_EQ(c->command(kCmdWrite, kSize, 4096, 0, data), kEInval);  // payload skipped
  EXPECT_EQ(c->command(kCmdTrim, kSize - 10, 11), kEInval);
  EXPECT_EQ(c->simple_read(kSize - 1, 1).first, 0u);
}

TEST_F(SessionTest, StructuredErrorsCarryAMessage) {
  auto c = open();
  c->request(kCmdRead, kSize, 1, 0, 5);
  auto r = c->chunks();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].h.type, kReplyTypeError);
  EXPECT_TRUE(r[0].h.flags & kReplyFlagDone);
  EXPECT_EQ(wire::load_be32(r[0].payload.data()), kEInval);
  EXPECT_GT(wire::load_be16(r[0].payload.data() + 4), 0u);
}

TEST_F(SessionTest, TargetErrorsReachTheClientAsNbdErrors) {
  auto c = open();
  auto data = pattern(512, 6);
  disk->fail_next = Errc::kNoSpace;
  EXPECT_EQ(c->command(kCmdWrite, 0, 512, 0, data), kENoSpc);
  disk->fail_next = Errc::kIo;
  c->request(kCmdRead, 0, 512, kCmdFlagDf, 9);  // DF: no block status call first
  EXPECT_EQ(Client::error_of(c->chunks().back()), kEIo);
  disk->fail_next = Errc::kCorruption;
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), kEIo);
  disk->fail_next = Errc::kNoSpace;
  EXPECT_EQ(c->command(kCmdWriteZeroes, 0, 4096, kCmdFlagNoHole), kENoSpc);
  EXPECT_EQ(c->command(kCmdWrite, 0, 512, 0, data), 0u);
}

TEST_F(SessionTest, SimpleReadErrorHasNoPayload) {
  auto c = open("vol", false);
  disk->fail_next = Errc::kIo;
  EXPECT_EQ(c->simple_read(0, 4096).first, kEIo);
  // The next reply parses: no stray data was sent after the error.
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
}

TEST_F(SessionTest, BadFlagsAndUnknownCommandsAreEinval) {
  auto c = open();
  EXPECT_EQ(c->command(kCmdTrim, 0, 4096, kCmdFlagNoHole), kEInval);
  EXPECT_EQ(c->command(kCmdWriteZeroes, 0, 4096, kCmdFlagFastZero), kEInval);
  EXPECT_EQ(c->command(42, 0, 4096), kEInval);
  EXPECT_EQ(c->command(kCmdFlush, 0, 1), kEInval);
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
}

TEST_F(SessionTest, FlushAndFuaReachTheTarget) {
  auto c = open();
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
  EXPECT_EQ(disk->flushes.load(), 1);
  auto data = pattern(512, 7);
  EXPECT_EQ(c->command(kCmdWrite, 0, 512, kCmdFlagFua, data), 0u);
  EXPECT_EQ(disk->fua_writes.load(), 1);
  EXPECT_EQ(c->command(kCmdTrim, 0, 4096, kCmdFlagFua), 0u);
  EXPECT_EQ(disk->flushes.load(), 2);
}

TEST_F(SessionTest, TrimAndWriteZeroesUnmapButNoHoleProvisions) {
  auto c = open();
  auto data = pattern(16384, 8);
  ASSERT_EQ(c->command(kCmdWrite, 0, 16384, 0, data), 0u);
  EXPECT_EQ(c->command(kCmdTrim, 0, 4096), 0u);
  EXPECT_EQ(c->command(kCmdWriteZeroes, 4096, 4096), 0u);
  EXPECT_EQ(c->command(kCmdWriteZeroes, 8192, 4096, kCmdFlagNoHole), 0u);
  EXPECT_EQ(disk->provisions.load(), 1);
  EXPECT_FALSE(disk->mapped[0]);
  EXPECT_FALSE(disk->mapped[1]);
  EXPECT_TRUE(disk->mapped[2]);
  auto [got, types] = sread(*c, 4096, 12288);
  EXPECT_EQ(types, (std::vector<uint16_t>{kReplyTypeOffsetHole, kReplyTypeOffsetData}));
  EXPECT_TRUE(
      std::all_of(got.begin(), got.begin() + 8192, [](std::byte b) { return b == std::byte{0}; }));
  EXPECT_TRUE(std::equal(got.begin() + 8192, got.end(), data.begin() + 12288));
}

TEST_F(SessionTest, CacheIsAcceptedAsANoOp) {
  auto c = open();
  EXPECT_EQ(c->command(kCmdCache, 0, 65536), 0u);
}

struct Desc {
  uint32_t length, flags;
  bool operator==(const Desc&) const = default;
};
std::map<uint32_t, std::vector<Desc>> block_status(Client& c, uint64_t off, uint32_t len,
                                                   uint16_t flags = 0) {
  c.request(kCmdBlockStatus, off, len, flags, 55);
  std::map<uint32_t, std::vector<Desc>> out;
  for (auto& r : c.chunks()) {
    EXPECT_EQ(r.h.type, kReplyTypeBlockStatus);
    if (r.h.type != kReplyTypeBlockStatus) continue;
    uint32_t id = wire::load_be32(r.payload.data());
    for (size_t i = 4; i + 8 <= r.payload.size(); i += 8) {
      out[id].push_back(
          {wire::load_be32(r.payload.data() + i), wire::load_be32(r.payload.data() + i + 4)});
    }
  }
  return out;
}

TEST_F(SessionTest, BlockStatusReportsHolesAndData) {
  auto c = open();
  auto data = pattern(8192, 9);
  ASSERT_EQ(c->command(kCmdWrite, 8192, 8192, 0, data), 0u);
  auto bs = block_status(*c, 0, 32768);
  ASSERT_EQ(bs.size(), 1u);
  uint32_t id = c->context_ids.at("base:allocation");
  EXPECT_EQ(bs.at(id),
            (std::vector<Desc>{
                {8192, kStateHole | kStateZero}, {8192, 0}, {16384, kStateHole | kStateZero}}));
  // REQ_ONE: one descriptor.
  auto one = block_status(*c, 0, 32768, kCmdFlagReqOne);
  EXPECT_EQ(one.at(id), (std::vector<Desc>{{8192, kStateHole | kStateZero}}));
  // Unaligned ranges are clipped to the request.
  auto part = block_status(*c, 100, 8200);
  EXPECT_EQ(part.at(id), (std::vector<Desc>{{8092, kStateHole | kStateZero}, {108, 0}}));
}

TEST_F(SessionTest, DeltaContextFlagsChangedRanges) {
  auto c = open("vol", true, {"base:allocation", "thinpool:delta:base"});
  auto data = pattern(4096, 10);
  ASSERT_EQ(c->command(kCmdWrite, 4096, 4096, 0, data), 0u);
  auto bs = block_status(*c, 0, 16384);
  ASSERT_EQ(bs.size(), 2u);
  EXPECT_EQ(bs.at(c->context_ids.at("thinpool:delta:base")),
            (std::vector<Desc>{{4096, 0}, {4096, kStateChanged}, {8192, 0}}));
  EXPECT_EQ(bs.at(c->context_ids.at("base:allocation")).size(), 3u);
}

TEST_F(SessionTest, BlockStatusWithoutContextsIsEinval) {
  auto c = open("vol", true, {});
  EXPECT_EQ(c->command(kCmdBlockStatus, 0, 4096), kEInval);
  auto d = open("vol", false);
  EXPECT_EQ(d->command(kCmdBlockStatus, 0, 4096), kEInval);
}

TEST_F(SessionTest, OversizedWriteIsRefusedAndSkipped) {
  auto c = open();
  std::vector<std::byte> big(kMaxPayload + 1);
  EXPECT_EQ(c->command(kCmdWrite, 0, kMaxPayload + 1, 0, big), kEOverflow);
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
  EXPECT_EQ(disk->writes.load(), 0);
}

TEST_F(SessionTest, OversizedReadIsRefused) {
  auto c = open();
  EXPECT_EQ(c->command(kCmdRead, 0, kMaxPayload + 1), kEOverflow);
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
}

TEST_F(SessionTest, WriteTooLargeToSkipDropsOnlyThatConnection) {
  auto other = open();
  auto c = open();
  c->request(kCmdWrite, 0, kMaxSkippedPayload + 1);
  EXPECT_TRUE(c->closed_by_server());
  EXPECT_EQ(other->command(kCmdFlush, 0, 0), 0u);
}

TEST_F(SessionTest, BadRequestMagicDropsOnlyThatConnection) {
  auto other = open();
  auto c = open();
  auto req = wire::encode_request({0, kCmdFlush, 1, 0, 0});
  req[1] = std::byte{0};
  c->write(req);
  EXPECT_TRUE(c->closed_by_server());
  EXPECT_EQ(other->command(kCmdFlush, 0, 0), 0u);
}

TEST_F(SessionTest, ClientVanishingMidWriteEndsOnlyThatConnection) {
  auto other = open();
  auto c = open();
  c->request(kCmdWrite, 0, 4096);
  auto half = pattern(100, 1);
  c->write(half);
  c->close_now();
  EXPECT_EQ(other->command(kCmdFlush, 0, 0), 0u);
}

TEST_F(SessionTest, PipelinedRequestsAreAllAnsweredOnce) {
  auto c = open("vol", false);
  constexpr int kN = 200;
  auto data = pattern(4096, 11);
  for (int i = 0; i < kN; i++) {
    c->request(kCmdWrite, (i % 64) * 4096, 4096, 0, 1000 + i, data);
  }
  std::set<uint64_t> seen;
  for (int i = 0; i < kN; i++) {
    auto r = c->reply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->h.error, 0u);
    EXPECT_TRUE(seen.insert(r->h.cookie).second);
  }
  EXPECT_EQ(seen.size(), size_t{kN});
  EXPECT_EQ(disk->writes.load(), kN);
}

TEST_F(SessionTest, DiscAnswersRequestsInFlightThenCloses) {
  auto c = open("vol", false);
  {
    std::lock_guard lk(disk->mu);
    disk->gate_closed = true;
  }
  c->request(kCmdRead, 0, 4096, 0, 31);
  c->request(kCmdDisc, 0, 0);
  while (disk->waiting.load() == 0) std::this_thread::yield();
  disk->open_gate();
  auto r = c->reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->h.cookie, 31u);
  EXPECT_EQ(c->read_n(4096).size(), 4096u);
  EXPECT_TRUE(c->closed_by_server());
}

TEST_F(SessionTest, StopFinishesRequestsInFlightThenCloses) {
  auto c = open("vol", false);
  {
    std::lock_guard lk(disk->mu);
    disk->gate_closed = true;
  }
  c->request(kCmdRead, 0, 4096, 0, 32);
  while (disk->waiting.load() == 0) std::this_thread::yield();
  std::thread stopper([&] { h.server.stop(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  disk->open_gate();
  auto r = c->reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->h.cookie, 32u);
  EXPECT_EQ(r->h.error, 0u);
  EXPECT_EQ(c->read_n(4096).size(), 4096u);
  EXPECT_TRUE(c->closed_by_server());
  stopper.join();
  EXPECT_EQ(h.server.connections(), 0u);
}

TEST_F(SessionTest, ConnectionsShareTheExport) {
  auto a = open();
  auto b = open();
  auto data = pattern(4096, 12);
  ASSERT_EQ(a->command(kCmdWrite, 0, 4096, 0, data), 0u);
  ASSERT_EQ(a->command(kCmdFlush, 0, 0), 0u);
  auto [got, types] = sread(*b, 0, 4096);
  EXPECT_EQ(got, data);
}

TEST_F(SessionTest, ManyConnectionsInParallel) {
  constexpr int kConns = 8;
  std::vector<std::thread> ts;
  std::atomic<int> ok{0};
  for (int i = 0; i < kConns; i++) {
    ts.emplace_back([&, i] {
      auto c = open("vol", false);
      auto data = pattern(4096, i);
      for (int j = 0; j < 20; j++) {
        uint64_t off = uint64_t(i) * 131072 + j * 4096;  // disjoint per connection
        if (c->command(kCmdWrite, off, 4096, 0, data) != 0) return;
        if (c->simple_read(off, 4096).second != data) return;
      }
      ok++;
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(ok.load(), kConns);
}

}  // namespace
}  // namespace tp::nbd
