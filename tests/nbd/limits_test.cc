// What no client can take from the server as a whole (nbd/server.h, nbd/budget.h): the
// server-wide budget of READ/WRITE bytes in flight, shared by every connection, and the cap
// on unfinished TCP handshakes per address. No timing assertions: the tests wait for
// states the server reports (budget waiters, handshakes in progress) with a generous
// deadline that only a bug reaches.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <functional>
#include <thread>

#include "nbd/budget.h"
#include "nbd/channel.h"
#include "nbd_test_util.h"

namespace tp::nbd {
namespace {

using testing::Client;
using testing::Harness;
using testing::MemDisk;

constexpr uint64_t kSize = 8 << 20;
constexpr uint32_t kMiB = 1 << 20;

// Waits until cond holds; false after 20 s (a bug, not a slow machine).
bool eventually(const std::function<bool()>& cond) {
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// n WRITEs of len bytes at offset 0 with cookies first..first+n-1, back to back.
std::vector<std::byte> write_stream(int n, uint32_t len, uint64_t first = 1) {
  std::vector<std::byte> out;
  std::vector<std::byte> data(len, std::byte{0x5a});
  for (int i = 0; i < n; i++) {
    auto h = wire::encode_request({0, kCmdWrite, first + i, 0, len});
    out.insert(out.end(), h.begin(), h.end());
    out.insert(out.end(), data.begin(), data.end());
  }
  return out;
}

// Blocking send of everything; stops quietly when the server hangs up.
void send_all(int fd, std::span<const std::byte> b) {
  while (!b.empty()) {
    ssize_t n = ::send(fd, b.data(), b.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    b = b.subspan(static_cast<size_t>(n));
  }
}

void close_gate(MemDisk& d) {
  std::lock_guard lk(d.mu);
  d.gate_closed = d.gate_writes = true;
}

std::unique_ptr<Client> open_session(Harness& h) {
  auto c = h.connect();
  c->greet();
  c->go("vol", false);
  return c;
}

TEST(SharedBudget, BytesHeldOverAllConnectionsStayWithinTheBudget) {
  ServerOptions o;
  o.session.workers = 4;
  o.session.max_inflight_bytes = 8 << 20;  // each connection alone could take 8 MiB
  o.max_inflight_bytes_total = 2 << 20;
  Harness h(o);
  auto d = std::make_shared<MemDisk>(kSize);
  h.catalog.add("vol", d);
  constexpr int kConns = 4, kWrites = 4;
  std::vector<std::unique_ptr<Client>> cs;
  for (int i = 0; i < kConns; i++) cs.push_back(open_session(h));
  close_gate(*d);
  // Each client sends all its writes without reading a reply.
  std::vector<std::thread> senders;
  auto stream = write_stream(kWrites, kMiB);
  for (auto& c : cs) senders.emplace_back([&, fd = c->fd()] { send_all(fd, stream); });
  // Two 1 MiB writes fill the budget; every reader then waits for it. (EXPECT, not ASSERT,
  // from here on: the sender threads must be joined whatever happens.)
  EXPECT_TRUE(eventually([&] {
    return d->waiting.load() == 2 && h.server.budget().waiters() == 4;
  })) << "in target "
      << d->waiting.load() << ", waiting for budget " << h.server.budget().waiters();
  EXPECT_EQ(h.server.budget().in_use(), 2u << 20);
  d->open_gate();
  for (auto& t : senders) t.join();
  for (auto& c : cs) {
    for (int i = 0; i < kWrites; i++) {
      auto r = c->reply();
      ASSERT_TRUE(r);
      EXPECT_EQ(r->h.error, 0u);
    }
  }
  EXPECT_EQ(d->writes.load(), kConns * kWrites);
  EXPECT_LE(h.server.budget().peak(), 2u << 20);
  h.server.stop();
  EXPECT_EQ(h.server.budget().in_use(), 0u);
  EXPECT_EQ(h.server.connections(), 0u);
}

// Sends stream from another thread while reading the replies to its n requests (READs
// have cookies from 5000 and 4 KiB of data); returns how many came.
int replies_while_sending(Client& c, std::span<const std::byte> stream, int n) {
  std::thread sender([&] { send_all(c.fd(), stream); });
  int replies = 0;
  for (; replies < n; replies++) {
    auto r = c.reply();
    if (!r) break;
    EXPECT_EQ(r->h.error, 0u);
    if (r->h.cookie >= 5000) c.read_n(4096);
  }
  sender.join();
  return replies;
}

// Small requests run on the reader and their replies wait to go out together: what those
// replies hold counts against the budgets like anything else.
TEST(SharedBudget, RequestsRunOnTheReaderKeepToTheBudgets) {
  constexpr int kWrites = 200, kReads = 100;
  auto stream = write_stream(kWrites, 4096);
  for (int i = 0; i < kReads; i++) {
    auto r = wire::encode_request({0, kCmdRead, uint64_t(5000 + i), 0, 4096});
    stream.insert(stream.end(), r.begin(), r.end());
  }
  auto d = std::make_shared<MemDisk>(kSize);
  ServerOptions o;
  o.max_inflight_bytes_total = 16 << 10;  // four 4 KiB buffers
  Harness h(o);
  h.catalog.add("vol", d);
  auto c = open_session(h);
  EXPECT_EQ(replies_while_sending(*c, stream, kWrites + kReads), kWrites + kReads);
  EXPECT_EQ(d->writes.load(), kWrites);
  EXPECT_LE(h.server.budget().peak(), 16u << 10);
  // And the per-connection limits.
  ServerOptions p;
  p.session.max_inflight_requests = 3;
  p.session.max_inflight_bytes = 8 << 10;
  Harness hp(p);
  hp.catalog.add("vol", d);
  auto cp = open_session(hp);
  EXPECT_EQ(replies_while_sending(*cp, stream, kWrites + kReads), kWrites + kReads);
  EXPECT_LE(hp.server.budget().peak(), 8u << 10);
}

TEST(SharedBudget, ARequestLargerThanTheWholeBudgetGoesThroughAlone) {
  ServerOptions o;
  o.max_inflight_bytes_total = 256 << 10;
  Harness h(o);
  auto d = std::make_shared<MemDisk>(kSize);
  h.catalog.add("vol", d);
  auto c = open_session(h);
  std::vector<std::byte> data(4 * kMiB, std::byte{7});
  ASSERT_EQ(c->command(kCmdWrite, 0, 4 * kMiB, 0, data), 0u);
  auto [err, got] = c->simple_read(0, 4 * kMiB);
  EXPECT_EQ(err, 0u);
  EXPECT_EQ(got, data);
  EXPECT_EQ(h.server.budget().peak(), 4u * kMiB);
}

TEST(SharedBudget, StopEndsAReaderWaitingForBudget) {
  ServerOptions o;
  o.max_inflight_bytes_total = 1 << 20;
  Harness h(o);
  auto d = std::make_shared<MemDisk>(kSize);
  h.catalog.add("vol", d);
  auto a = open_session(h);
  auto b = open_session(h);
  close_gate(*d);
  auto sa = write_stream(1, kMiB, 1);
  auto sb = write_stream(1, kMiB, 2);
  // EXPECT, not ASSERT: the threads must be joined whatever happens.
  std::thread ta([&] { send_all(a->fd(), sa); });
  EXPECT_TRUE(eventually([&] { return d->waiting.load() == 1; }));
  std::thread tb([&] { send_all(b->fd(), sb); });
  EXPECT_TRUE(eventually([&] { return h.server.budget().waiters() == 1; }));
  // stop() waits for a's write, in the target; b's reader must give up its wait at once.
  std::thread stopper([&] { h.server.stop(); });
  EXPECT_TRUE(eventually([&] { return h.server.budget().waiters() == 0; }));
  d->open_gate();
  auto r = a->reply();
  EXPECT_TRUE(r && r->h.cookie == 1u && r->h.error == 0u);
  EXPECT_FALSE(b->reply()) << "a request waiting for budget was taken after stop()";
  stopper.join();
  b->close_now();
  ta.join();
  tb.join();
  EXPECT_EQ(d->writes.load(), 1);
  EXPECT_EQ(h.server.budget().in_use(), 0u);
  EXPECT_EQ(h.server.connections(), 0u);
}

TEST(SharedBudget, AClientThatStopsReadingRepliesGivesItsBudgetBack) {
  ServerOptions o;
  o.session.workers = 1;
  o.session.send_timeout = std::chrono::milliseconds(300);
  o.max_inflight_bytes_total = 2 << 20;
  Harness h(o);
  auto d = std::make_shared<MemDisk>(kSize);
  h.catalog.add("vol", d);
  auto hog = open_session(h);
  auto other = open_session(h);
  // READs of 1 MiB whose replies are never read: the first reply fills the socket buffers
  // and blocks, the second holds the rest of the budget.
  for (uint64_t i = 1; i <= 4; i++) hog->request(kCmdRead, 0, kMiB, 0, i);
  ASSERT_TRUE(eventually([&] { return h.server.budget().peak() == 2u << 20; }));
  // Served once the hog is dropped (send_timeout) and its budget is back.
  std::vector<std::byte> data(kMiB, std::byte{3});
  EXPECT_EQ(other->command(kCmdWrite, 0, kMiB, 0, data), 0u);
  EXPECT_TRUE(eventually([&] { return h.server.connections() == 1; }));
  // other's budget comes back just after its reply.
  EXPECT_TRUE(eventually([&] { return h.server.budget().in_use() == 0; }));
}

TEST(SharedBudget, AClientStalledInAWritePayloadIsDropped) {
  ServerOptions o;
  o.session.send_timeout = std::chrono::milliseconds(300);
  Harness h(o);
  auto d = std::make_shared<MemDisk>(kSize);
  h.catalog.add("vol", d);
  auto c = open_session(h);
  auto s = write_stream(1, kMiB);
  c->write(std::span(s).first(kRequestHeaderBytes + 1000));  // and then nothing
  EXPECT_TRUE(c->closed_by_server(20000));
  EXPECT_TRUE(eventually([&] { return h.server.connections() == 0; }));
  EXPECT_EQ(h.server.budget().in_use(), 0u);
  EXPECT_EQ(d->writes.load(), 0);
}

TEST(ByteBudget, WaitersAreServedInOrderAndCloseWakesThem) {
  ByteBudget b(100);
  ASSERT_TRUE(b.acquire(60));
  std::atomic<int> order{0};
  int big_at = 0, small_at = 0;
  std::thread big([&] {
    ASSERT_TRUE(b.acquire(80));
    big_at = ++order;
    b.release(80);
  });
  ASSERT_TRUE(eventually([&] { return b.waiters() == 1; }));
  // 30 would fit now, but it comes after the 80 that is waiting.
  std::thread small([&] {
    ASSERT_TRUE(b.acquire(30));
    small_at = ++order;
    b.release(30);
  });
  ASSERT_TRUE(eventually([&] { return b.waiters() == 2; }));
  b.release(60);
  big.join();
  small.join();
  EXPECT_EQ(big_at, 1);
  EXPECT_EQ(small_at, 2);
  EXPECT_EQ(b.in_use(), 0u);
  EXPECT_EQ(b.peak(), 80u);

  ASSERT_TRUE(b.acquire(100));
  std::thread blocked([&] { EXPECT_FALSE(b.acquire(1)); });
  ASSERT_TRUE(eventually([&] { return b.waiters() == 1; }));
  b.close();
  blocked.join();
  EXPECT_FALSE(b.acquire(0));
  b.release(100);
  EXPECT_EQ(b.in_use(), 0u);
}

TEST(ByteBudget, TryAcquireTakesWhatFitsAndNeverPassesAWaiter) {
  ByteBudget b(100);
  EXPECT_TRUE(b.try_acquire(60));
  EXPECT_FALSE(b.try_acquire(50));  // does not fit
  EXPECT_TRUE(b.try_acquire(40));
  b.release(40);
  std::thread big([&] {
    EXPECT_TRUE(b.acquire(80));
    b.release(80);
  });
  EXPECT_TRUE(eventually([&] { return b.waiters() == 1; }));
  EXPECT_FALSE(b.try_acquire(10));  // fits, but the 80 came first
  b.release(60);
  big.join();
  EXPECT_TRUE(b.try_acquire(500));  // more than the limit, with nothing in use: alone
  EXPECT_FALSE(b.try_acquire(1));
  b.release(500);
  EXPECT_EQ(b.peak(), 500u);
  b.close();
  EXPECT_FALSE(b.try_acquire(1));
  EXPECT_EQ(b.in_use(), 0u);
}

// --- unfinished handshakes per TCP address -------------------------------------------------

std::unique_ptr<Client> tcp_connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    throw std::runtime_error("connect");
  }
  return std::make_unique<Client>(fd);
}

// True when the server sent its greeting (the connection was admitted).
bool greeted(Client& c) {
  std::byte g[18];
  return c.read(g) && wire::load_be64(g) == kNbdMagic;
}

ServerOptions tcp_options(unsigned cap) {
  ServerOptions o;
  o.tcp_listen = "127.0.0.1:0";
  o.max_handshakes_per_address = cap;
  return o;
}

TEST(HandshakeCap, OneAddressCannotHoldMoreThanItsShareOfHandshakes) {
  Harness h(tcp_options(2));
  h.catalog.add("vol", std::make_shared<MemDisk>(kSize));
  const uint16_t port = h.server.tcp_port();
  auto c1 = tcp_connect(port), c2 = tcp_connect(port);
  ASSERT_TRUE(greeted(*c1));
  ASSERT_TRUE(greeted(*c2));
  auto c3 = tcp_connect(port);
  EXPECT_TRUE(c3->closed_by_server()) << "a third unfinished handshake from 127.0.0.1 admitted";
  EXPECT_EQ(h.server.handshakes_in_progress(), 2u);

  // A finished handshake no longer counts.
  std::byte f[4];
  wire::store_be32(f, kClientFixedNewstyle | kClientNoZeroes);
  c1->write(f);
  c1->go("vol", false);
  ASSERT_TRUE(eventually([&] { return h.server.handshakes_in_progress() == 1; }));
  auto c4 = tcp_connect(port);
  ASSERT_TRUE(greeted(*c4));
  // Nor does one whose client hung up.
  c2->close_now();
  ASSERT_TRUE(eventually([&] { return h.server.handshakes_in_progress() == 1; }));
  auto c5 = tcp_connect(port);
  ASSERT_TRUE(greeted(*c5));
  auto c6 = tcp_connect(port);
  EXPECT_TRUE(c6->closed_by_server());
  // The session of c1 was never affected.
  EXPECT_EQ(c1->command(kCmdFlush, 0, 0), 0u);
}

TEST(HandshakeCap, StalledHandshakesTimeOutAndTheAddressGetsIn) {
  ServerOptions o = tcp_options(2);
  o.handshake_timeout = std::chrono::milliseconds(200);
  Harness h(o);
  h.catalog.add("vol", std::make_shared<MemDisk>(kSize));
  const uint16_t port = h.server.tcp_port();
  auto c1 = tcp_connect(port), c2 = tcp_connect(port);
  ASSERT_TRUE(greeted(*c1));
  ASSERT_TRUE(greeted(*c2));
  EXPECT_TRUE(tcp_connect(port)->closed_by_server());
  EXPECT_TRUE(c1->closed_by_server(20000));
  EXPECT_TRUE(c2->closed_by_server(20000));
  ASSERT_TRUE(eventually([&] { return h.server.handshakes_in_progress() == 0; }));
  auto c = tcp_connect(port);
  c->greet();
  c->go("vol", false);
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
}

TEST(HandshakeCap, UnixPeersAreNotCapped) {
  // Adopted sockets take the Unix-socket path: no address, no per-address cap.
  Harness h(tcp_options(1));
  h.catalog.add("vol", std::make_shared<MemDisk>(kSize));
  std::vector<std::unique_ptr<Client>> cs;
  for (int i = 0; i < 3; i++) {
    cs.push_back(h.connect());
    EXPECT_TRUE(greeted(*cs.back()));
  }
  EXPECT_EQ(h.server.handshakes_in_progress(), 0u);
}

TEST(HandshakeCap, ZeroMeansNoCap) {
  Harness h(tcp_options(0));
  const uint16_t port = h.server.tcp_port();
  std::vector<std::unique_ptr<Client>> cs;
  for (int i = 0; i < 20; i++) {
    cs.push_back(tcp_connect(port));
    EXPECT_TRUE(greeted(*cs.back()));
  }
}

TEST(Describe, ChannelErrorsSayWhatTheNumberIs) {
  Error e = make_error(Errc::kIo, kPeerClosed, 3);
  std::string s = describe(e);
  EXPECT_EQ(s.find("block"), std::string::npos) << s;
  EXPECT_NE(s.find("after 3 bytes"), std::string::npos) << s;
  EXPECT_EQ(describe(make_error(Errc::kInvalidArgument, "x")), "invalid argument: x");
}

}  // namespace
}  // namespace tp::nbd
