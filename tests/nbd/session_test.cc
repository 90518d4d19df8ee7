// The transmission phase (nbd/session.h) against an in-memory target: every command, the
// error replies, structured reads with holes, block status, and the malformed requests that
// must end only the offending connection.

#include "nbd/session.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <numeric>
#include <set>
#include <thread>

#include "io/read_ring.h"
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

// Whether this kernel lets us have an io_uring (a seccomp filter or
// kernel.io_uring_disabled may not): without it the server reads on its workers.
bool have_io_uring() {
  return io::ReadRing::create(4).ok();
}

// Every test runs three ways: with small READs and WRITEs on the reader thread (the
// default), with every request on the workers (inline_max_bytes = 0), and with every READ
// through the connection's io_uring (the target offers start_read on a memfd).
enum class Path { kOnTheReader, kOnWorkers, kThroughTheRing };

class SessionTest : public ::testing::TestWithParam<Path> {
 protected:
  static bool on_reader() { return GetParam() == Path::kOnTheReader; }
  static bool ring() { return GetParam() == Path::kThroughTheRing; }
  static SessionOptions session_options() {
    SessionOptions so;
    if (!on_reader()) so.inline_max_bytes = 0;
    so.ring_reads = ring();
    return so;
  }
  static ServerOptions server_options() {
    ServerOptions o;
    o.session = session_options();
    return o;
  }
  SessionTest() {
    if (ring()) {
      disk->enable_file();
      ro->enable_file();
    }
    h.catalog.add("vol", disk);
    h.catalog.add("snap", ro);
  }
  ~SessionTest() override {
    h.server.stop();
    // Every read the target started was finished, however its session ended.
    EXPECT_EQ(disk->reads_finished.load(), disk->reads_started.load());
    EXPECT_EQ(ro->reads_finished.load(), ro->reads_started.load());
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
  Harness h{server_options()};
};

INSTANTIATE_TEST_SUITE_P(Paths, SessionTest,
                         ::testing::Values(Path::kOnTheReader, Path::kOnWorkers,
                                           Path::kThroughTheRing),
                         [](const ::testing::TestParamInfo<Path>& i) {
                           switch (i.param) {
                             case Path::kOnTheReader:
                               return "OnTheReader";
                             case Path::kOnWorkers:
                               return "OnWorkers";
                             default:
                               return "ThroughTheRing";
                           }
                         });

TEST_P(SessionTest, WriteThenReadWithSimpleReplies) {
  auto c = open("vol", false);
  auto data = pattern(10000, 1);
  EXPECT_EQ(c->command(kCmdWrite, 1234, 10000, 0, data), 0u);
  auto [err, got] = c->simple_read(1234, 10000);
  EXPECT_EQ(err, 0u);
  EXPECT_EQ(got, data);
}

TEST_P(SessionTest, StructuredReadSendsHolesForUnallocatedRanges) {
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

TEST_P(SessionTest, StructuredReadOfAHoleIsOneHoleChunk) {
  auto c = open();
  auto [got, types] = sread(*c, 100, 5000);
  EXPECT_EQ(types, std::vector<uint16_t>{kReplyTypeOffsetHole});
  EXPECT_EQ(got, std::vector<std::byte>(5000));
}

TEST_P(SessionTest, DfReadIsASingleDataChunk) {
  auto c = open();
  auto data = pattern(100, 3);
  ASSERT_EQ(c->command(kCmdWrite, 5000, 100, 0, data), 0u);
  auto [got, types] = sread(*c, 0, 16384, kCmdFlagDf);
  EXPECT_EQ(types, std::vector<uint16_t>{kReplyTypeOffsetData});
  EXPECT_TRUE(std::equal(data.begin(), data.end(), got.begin() + 5000));
}

TEST_P(SessionTest, OnlyAStructuredReadWithoutDfCallsReadSparseOnce) {
  auto c = open();
  ASSERT_EQ(c->command(kCmdWrite, 4096, 4096, 0, pattern(4096, 13)), 0u);
  auto [got, types] = sread(*c, 0, 12288);
  EXPECT_EQ(types.size(), 3u);  // hole, data, hole
  EXPECT_EQ(disk->sparse_reads.load(), 1);
  // DF and simple replies need no status: a plain read.
  EXPECT_EQ(sread(*c, 0, 12288, kCmdFlagDf).first, got);
  EXPECT_EQ(open("vol", false)->simple_read(0, 12288).second, got);
  EXPECT_EQ(disk->sparse_reads.load(), 1);
}

// Buffers are reused by size class: a READ gets the buffer an earlier request of its class
// left behind, full of that request's bytes; only the target's bytes may reach the client.
TEST_P(SessionTest, AReusedBufferNeverShowsAnEarlierRequestsBytes) {
  auto s = open("vol", false);  // simple replies: the whole buffer is sent
  auto big = pattern(8192, 14);
  ASSERT_EQ(s->command(kCmdWrite, 0, 8192, 0, big), 0u);
  auto [err, zeros] = s->simple_read(100000, 6000);  // same class, never written
  EXPECT_EQ(err, 0u);
  EXPECT_EQ(zeros, std::vector<std::byte>(6000));
  auto small = pattern(5000, 15);
  ASSERT_EQ(s->command(kCmdWrite, 200000, 5000, 0, small), 0u);
  EXPECT_EQ(s->simple_read(200000, 5000).second, small);
  EXPECT_EQ(s->command(kCmdFlush, 0, 0), 0u);  // parses: exactly the bytes asked for were sent

  auto c = open();
  ASSERT_EQ(c->command(kCmdWrite, 0, 8192, 0, big), 0u);
  auto [got, types] = sread(*c, 3996, 8000);  // data up to 8192, then a hole
  EXPECT_EQ(types, (std::vector<uint16_t>{kReplyTypeOffsetData, kReplyTypeOffsetHole}));
  std::vector<std::byte> want(8000);
  std::copy(big.begin() + 3996, big.end(), want.begin());
  EXPECT_EQ(got, want);
}

// Many requests in one burst: the replies (gathered into few writes when the reader runs
// them) each carry their own request's data, whole.
TEST_P(SessionTest, PipelinedReadsEachGetTheirOwnData) {
  constexpr int kN = 100;
  auto len = [](int i) { return uint32_t(512 + 97 * i); };  // 512 .. 10115 bytes
  for (bool structured : {false, true}) {
    auto c = open("vol", structured);
    const uint64_t base = structured ? 0 : 8192;
    for (int i = 0; i < kN; i++) {
      c->request(kCmdWrite, base + i * 10240u, len(i), 0, 1000 + i, pattern(len(i), i));
    }
    for (int i = 0; i < kN; i++) {
      auto r = c->reply();
      ASSERT_TRUE(r);
      ASSERT_EQ(Client::error_of(*r), 0u);
    }
    for (int i = 0; i < kN; i++) c->request(kCmdRead, base + i * 10240u, len(i), 0, 2000 + i);
    std::set<uint64_t> seen;
    for (int n = 0; n < kN; n++) {
      std::vector<std::byte> got;
      uint64_t cookie = 0;
      if (!structured) {
        auto r = c->reply();
        ASSERT_TRUE(r);
        ASSERT_EQ(r->h.error, 0u);
        cookie = r->h.cookie;
        ASSERT_TRUE(cookie >= 2000 && cookie < 2000 + kN);
        got = c->read_n(len(int(cookie - 2000)));
      } else {
        for (auto& r : c->chunks()) {
          ASSERT_EQ(r.h.type, kReplyTypeOffsetData);
          cookie = r.h.cookie;
          got.insert(got.end(), r.payload.begin() + 8, r.payload.end());
        }
      }
      const int i = int(cookie - 2000);
      EXPECT_TRUE(seen.insert(cookie).second);
      EXPECT_EQ(got, pattern(len(i), i)) << "cookie " << cookie;
    }
    EXPECT_EQ(seen.size(), size_t{kN});
  }
}

// A READ split into many file reads (every other block written): the ring path reads it
// in the reader instead (kRingMaxParts); every path returns the same bytes and chunks.
TEST_P(SessionTest, AFragmentedReadReturnsEveryPiece) {
  auto c = open();
  constexpr uint32_t kLen = 256 << 10;
  std::vector<std::byte> want(kLen);
  for (uint32_t off = 0; off < kLen; off += 8192) {
    auto d = pattern(4096, int(off / 8192));
    ASSERT_EQ(c->command(kCmdWrite, off, 4096, 0, d), 0u);
    std::copy(d.begin(), d.end(), want.begin() + off);
  }
  auto [got, types] = sread(*c, 0, kLen);
  EXPECT_EQ(types.size(), size_t{kLen / 4096});
  EXPECT_EQ(got, want);
  EXPECT_EQ(open("vol", false)->simple_read(0, kLen).second, want);
}

// A file read that fails in the ring (a bad descriptor): EIO with a message, the read's
// ticket is finished, and the connection goes on.
TEST_P(SessionTest, AFailedFileReadIsEioAndTheSessionGoesOn) {
  if (!ring()) GTEST_SKIP() << "only reads through the ring read a file";
  auto c = open();
  auto data = pattern(4096, 21);
  ASSERT_EQ(c->command(kCmdWrite, 0, 4096, 0, data), 0u);
  disk->bad_file_next = true;
  c->request(kCmdRead, 0, 4096, 0, 5);
  auto chunks = c->chunks();
  EXPECT_EQ(Client::error_of(chunks.back()), kEIo);
  EXPECT_EQ(sread(*c, 0, 4096).first, data);
  auto s = open("vol", false);
  disk->bad_file_next = true;
  EXPECT_EQ(s->simple_read(0, 4096).first, kEIo);
  EXPECT_EQ(s->simple_read(0, 4096).second, data);
}

// The target may hold a new request until the requests in flight end (a pool whose volume
// operation waits to go idle: MemDisk::barrier). Reads queued in the ring but not yet
// submitted must not be what it waits for: pipelined READs all come back.
TEST_P(SessionTest, ReadsQueuedInTheRingAreSubmittedBeforeTheTargetWaits) {
  if (!ring()) GTEST_SKIP() << "only the ring queues reads";
  if (!have_io_uring()) GTEST_SKIP() << "no io_uring here: READs go to the workers";
  auto c = open("vol", false);
  constexpr int kN = 64;
  for (int i = 0; i < kN; i++) {
    ASSERT_EQ(c->command(kCmdWrite, i * 4096u, 4096, 0, pattern(4096, i)), 0u);
  }
  disk->barrier = true;
  for (int i = 0; i < kN; i++) c->request(kCmdRead, i * 4096u, 4096, 0, 100 + i);
  std::set<uint64_t> seen;
  for (int n = 0; n < kN; n++) {
    auto r = c->reply();
    ASSERT_TRUE(r) << "no reply: the server waits for itself";
    ASSERT_EQ(r->h.error, 0u);
    const int i = int(r->h.cookie - 100);
    EXPECT_EQ(c->read_n(4096), pattern(4096, i));
    seen.insert(r->h.cookie);
  }
  EXPECT_EQ(seen.size(), size_t{kN});
  EXPECT_GT(disk->busy.load(), 0) << "no READ met a read queued before it";
}

TEST_P(SessionTest, ReadOnlyExportRefusesWritesTrimsAndZeroesWithEperm) {
  auto c = open("snap");
  auto data = pattern(512, 4);
  EXPECT_EQ(c->command(kCmdWrite, 0, 512, 0, data), kEPerm);
  EXPECT_EQ(c->command(kCmdTrim, 0, 4096), kEPerm);
  EXPECT_EQ(c->command(kCmdWriteZeroes, 0, 4096), kEPerm);
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
  EXPECT_EQ(ro->writes.load(), 0);
}

TEST_P(SessionTest, RequestsPastTheEndAreEinvalAndTheSessionGoesOn) {
  auto c = open("vol", false);
  EXPECT_EQ(c->simple_read(kSize - 1, 2).first, kEInval);
  auto data = pattern(4096, 5);
  EXPECT_EQ(c->command(kCmdWrite, kSize, 4096, 0, data), kEInval);  // payload skipped
  EXPECT_EQ(c->command(kCmdTrim, kSize - 10, 11), kEInval);
  EXPECT_EQ(c->simple_read(kSize - 1, 1).first, 0u);
}

TEST_P(SessionTest, StructuredErrorsCarryAMessage) {
  auto c = open();
  c->request(kCmdRead, kSize, 1, 0, 5);
  auto r = c->chunks();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].h.type, kReplyTypeError);
  EXPECT_TRUE(r[0].h.flags & kReplyFlagDone);
  EXPECT_EQ(wire::load_be32(r[0].payload.data()), kEInval);
  EXPECT_GT(wire::load_be16(r[0].payload.data() + 4), 0u);
}

TEST_P(SessionTest, TargetErrorsReachTheClientAsNbdErrors) {
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

TEST_P(SessionTest, SimpleReadErrorHasNoPayload) {
  auto c = open("vol", false);
  disk->fail_next = Errc::kIo;
  EXPECT_EQ(c->simple_read(0, 4096).first, kEIo);
  // The next reply parses: no stray data was sent after the error.
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
}

TEST_P(SessionTest, BadFlagsAndUnknownCommandsAreEinval) {
  auto c = open();
  EXPECT_EQ(c->command(kCmdTrim, 0, 4096, kCmdFlagNoHole), kEInval);
  EXPECT_EQ(c->command(kCmdWriteZeroes, 0, 4096, kCmdFlagFastZero), kEInval);
  EXPECT_EQ(c->command(42, 0, 4096), kEInval);
  EXPECT_EQ(c->command(kCmdFlush, 0, 1), kEInval);
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
}

TEST_P(SessionTest, FlushAndFuaReachTheTarget) {
  auto c = open();
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
  EXPECT_EQ(disk->flushes.load(), 1);
  auto data = pattern(512, 7);
  EXPECT_EQ(c->command(kCmdWrite, 0, 512, kCmdFlagFua, data), 0u);
  EXPECT_EQ(disk->fua_writes.load(), 1);
  EXPECT_EQ(c->command(kCmdTrim, 0, 4096, kCmdFlagFua), 0u);
  EXPECT_EQ(disk->flushes.load(), 2);
}

TEST_P(SessionTest, TrimAndWriteZeroesUnmapButNoHoleProvisions) {
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

TEST_P(SessionTest, CacheIsAcceptedAsANoOp) {
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

TEST_P(SessionTest, BlockStatusReportsHolesAndData) {
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

TEST_P(SessionTest, DeltaContextFlagsChangedRanges) {
  auto c = open("vol", true, {"base:allocation", "thinpool:delta:base"});
  auto data = pattern(4096, 10);
  ASSERT_EQ(c->command(kCmdWrite, 4096, 4096, 0, data), 0u);
  auto bs = block_status(*c, 0, 16384);
  ASSERT_EQ(bs.size(), 2u);
  EXPECT_EQ(bs.at(c->context_ids.at("thinpool:delta:base")),
            (std::vector<Desc>{{4096, 0}, {4096, kStateChanged}, {8192, 0}}));
  EXPECT_EQ(bs.at(c->context_ids.at("base:allocation")).size(), 3u);
}

TEST_P(SessionTest, BlockStatusWithoutContextsIsEinval) {
  auto c = open("vol", true, {});
  EXPECT_EQ(c->command(kCmdBlockStatus, 0, 4096), kEInval);
  auto d = open("vol", false);
  EXPECT_EQ(d->command(kCmdBlockStatus, 0, 4096), kEInval);
}

TEST_P(SessionTest, OversizedWriteIsRefusedAndSkipped) {
  auto c = open();
  std::vector<std::byte> big(kMaxPayload + 1);
  EXPECT_EQ(c->command(kCmdWrite, 0, kMaxPayload + 1, 0, big), kEOverflow);
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
  EXPECT_EQ(disk->writes.load(), 0);
}

TEST_P(SessionTest, OversizedReadIsRefused) {
  auto c = open();
  EXPECT_EQ(c->command(kCmdRead, 0, kMaxPayload + 1), kEOverflow);
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
}

TEST_P(SessionTest, WriteTooLargeToSkipDropsOnlyThatConnection) {
  auto other = open();
  auto c = open();
  c->request(kCmdWrite, 0, kMaxSkippedPayload + 1);
  EXPECT_TRUE(c->closed_by_server());
  EXPECT_EQ(other->command(kCmdFlush, 0, 0), 0u);
}

TEST_P(SessionTest, BadRequestMagicDropsOnlyThatConnection) {
  auto other = open();
  auto c = open();
  auto req = wire::encode_request({0, kCmdFlush, 1, 0, 0});
  req[1] = std::byte{0};
  c->write(req);
  EXPECT_TRUE(c->closed_by_server());
  EXPECT_EQ(other->command(kCmdFlush, 0, 0), 0u);
}

TEST_P(SessionTest, ClientVanishingMidWriteEndsOnlyThatConnection) {
  auto other = open();
  auto c = open();
  c->request(kCmdWrite, 0, 4096);
  auto half = pattern(100, 1);
  c->write(half);
  c->close_now();
  EXPECT_EQ(other->command(kCmdFlush, 0, 0), 0u);
}

TEST_P(SessionTest, PipelinedRequestsAreAllAnsweredOnce) {
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

TEST_P(SessionTest, DiscAnswersRequestsInFlightThenCloses) {
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

TEST_P(SessionTest, StopFinishesRequestsInFlightThenCloses) {
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

// Sends stream without blocking until all of it is sent or the server stops reading (no
// progress for a second); returns the bytes sent. A slow server only makes it stop early.
size_t push_until_stalled(int fd, std::span<const std::byte> stream) {
  size_t sent = 0;
  while (sent < stream.size()) {
    ssize_t n = ::send(fd, stream.data() + sent, stream.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, 1000) == 0) break;
    } else {
      throw std::runtime_error("send to server failed");
    }
  }
  return sent;
}

// n WRITE requests of len bytes each at offset 0, cookies 1..n, back to back.
std::vector<std::byte> write_stream(int n, uint32_t len) {
  std::vector<std::byte> out;
  out.reserve(size_t(n) * (kRequestHeaderBytes + len));
  auto data = pattern(len, 4);
  for (int i = 1; i <= n; i++) {
    auto h = wire::encode_request({0, kCmdWrite, uint64_t(i), 0, len});
    out.insert(out.end(), h.begin(), h.end());
    out.insert(out.end(), data.begin(), data.end());
  }
  return out;
}

// A client pipelines n writes while the target is stalled: the server must stop taking
// requests at its limits (the rest waits in the socket, not in server memory); once the
// target moves again every request is answered.
void expect_reader_stops_at_the_limit(const SessionOptions& so, int n, uint32_t len,
                                      size_t max_accepted_bytes) {
  ServerOptions o;
  o.session = so;
  Harness capped(o);
  auto d = std::make_shared<MemDisk>(kSize);
  capped.catalog.add("vol", d);
  auto c = capped.connect();
  c->greet();
  c->go("vol", false);
  {
    std::lock_guard lk(d->mu);
    d->gate_closed = d->gate_writes = true;
  }
  auto stream = write_stream(n, len);
  size_t sent = push_until_stalled(c->fd(), stream);
  EXPECT_LT(sent, max_accepted_bytes) << "the server kept reading requests it could not run";
  EXPECT_LE(d->waiting.load(), int(so.workers));
  d->open_gate();
  // Replies are read while the rest is written: a client that does not read its replies
  // would stall the server's writers and so its reader (by design).
  std::set<uint64_t> cookies;
  int errors = 0;
  std::thread reader([&] {
    for (int i = 0; i < n; i++) {
      auto r = c->reply();
      if (!r) return;
      errors += r->h.error != 0;
      cookies.insert(r->h.cookie);
    }
  });
  c->write(std::span(stream).subspan(sent));
  reader.join();
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(cookies.size(), size_t(n));
  EXPECT_EQ(d->writes.load(), n);
}

TEST_P(SessionTest, InflightBytesAreCappedPerConnection) {
  SessionOptions so = session_options();
  so.workers = 1;
  so.max_inflight_bytes = 4 << 20;
  so.max_inflight_requests = 1024;
  // 64 writes of 1 MiB: 4 MiB in flight, plus what the socket buffers hold.
  expect_reader_stops_at_the_limit(so, 64, 1 << 20, 16 << 20);
}

TEST_P(SessionTest, InflightRequestsAreCappedPerConnection) {
  SessionOptions so = session_options();
  so.workers = 2;
  so.max_inflight_bytes = 1ull << 30;
  so.max_inflight_requests = 8;
  // 4096 writes of 4 KiB (16 MiB): 8 in flight, plus what the socket buffers hold.
  expect_reader_stops_at_the_limit(so, 4096, 4096, 4 << 20);
}

TEST_P(SessionTest, ConnectionsShareTheExport) {
  auto a = open();
  auto b = open();
  auto data = pattern(4096, 12);
  ASSERT_EQ(a->command(kCmdWrite, 0, 4096, 0, data), 0u);
  ASSERT_EQ(a->command(kCmdFlush, 0, 0), 0u);
  auto [got, types] = sread(*b, 0, 4096);
  EXPECT_EQ(got, data);
}

TEST_P(SessionTest, ManyConnectionsInParallel) {
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

// The default options with a slow disk: small READs go through the ring while it is slow
// (probes on the reader), small WRITEs run on the reader. With the target holding new
// requests while a read is out (MemDisk::barrier), a WRITE the reader runs itself must not
// wait for a read it queued but did not submit: mixed pipelined bursts all come back.
TEST(SessionRingTest, AWriteOnTheReaderNeverWaitsForAReadItHasNotSubmitted) {
  if (!have_io_uring()) GTEST_SKIP() << "no io_uring here: READs go to the workers";
  Harness h{ServerOptions{}};
  auto d = std::make_shared<MemDisk>(kSize);
  d->enable_file();
  d->read_delay = std::chrono::microseconds(300);
  h.catalog.add("vol", d);
  auto c = h.connect();
  c->greet();
  c->go("vol", false);
  constexpr int kBlocks = 64;
  for (int i = 0; i < kBlocks; i++) {
    ASSERT_EQ(c->command(kCmdWrite, i * 4096u, 4096, 0, pattern(4096, 1)), 0u);
  }
  d->barrier = true;
  constexpr int kBursts = 60, kReadsPerBurst = 8;
  uint64_t cookie = 0;
  for (int b = 0; b < kBursts; b++) {
    std::vector<uint64_t> reads;
    for (int i = 0; i < kReadsPerBurst; i++) {
      c->request(kCmdRead, ((b * 7 + i) % kBlocks) * 4096u, 4096, 0, ++cookie);
      reads.push_back(cookie);
    }
    c->request(kCmdWrite, (b % kBlocks) * 4096u, 4096, 0, ++cookie, pattern(4096, 1));
    for (int n = 0; n <= kReadsPerBurst; n++) {
      auto r = c->reply();
      ASSERT_TRUE(r) << "burst " << b << ": no reply: the server waits for itself";
      ASSERT_EQ(r->h.error, 0u);
      if (std::find(reads.begin(), reads.end(), r->h.cookie) != reads.end()) {
        EXPECT_EQ(c->read_n(4096), pattern(4096, 1));
      }
    }
  }
  h.server.stop();
  EXPECT_GT(d->reads_started.load(), 0) << "no READ went through the ring";
  EXPECT_EQ(d->reads_finished.load(), d->reads_started.load());
}

}  // namespace
}  // namespace tp::nbd
