// TLS (nbd/tls.h) and NBD_OPT_STARTTLS in the handshake: the option negotiation of each
// mode (off, on, require), a real TLS session over a socketpair (GnuTLS on both ends, PSK)
// carrying the handshake and the transmission phase, and the failures that must end only
// the offending connection (wrong key, a client stalling inside the TLS handshake).

#include "nbd/tls.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "nbd/handshake.h"
#include "nbd_test_util.h"
#include "support/test_util.h"

namespace tp::nbd {
namespace {

using testing::bytes;
using testing::Client;
using testing::Harness;
using testing::MemDisk;
using testing::str;

constexpr const char* kKey = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

std::vector<std::byte> pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; i++) v[i] = std::byte((i * 13 + seed) & 0xff);
  return v;
}

std::shared_ptr<const TlsCredentials> server_psk(const ::tp::testing::TempDir& dir) {
  const std::string f = dir.file("keys.psk");
  ::tp::testing::write_file(f, std::string("alice:") + kKey + "\n");
  auto c = TlsCredentials::server_psk(f);
  if (!c.ok()) throw std::runtime_error("server PSK credentials");
  return std::move(*c);
}

std::unique_ptr<TlsCredentials> client_psk(const std::string& key = kKey) {
  auto c = TlsCredentials::client_psk("alice", key);
  if (!c.ok()) throw std::runtime_error("client PSK credentials");
  return std::move(*c);
}

ServerOptions tls_options(TlsMode mode, std::shared_ptr<const TlsCredentials> creds,
                          std::chrono::milliseconds handshake_timeout = std::chrono::seconds(10)) {
  ServerOptions o;
  o.tls = mode;
  o.tls_credentials = std::move(creds);
  o.handshake_timeout = handshake_timeout;
  return o;
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (Harness* h : {&require, &on}) h->catalog.add("vol", disk, "secret volume");
  }
  std::unique_ptr<Client> greeted(Harness& h) {
    auto c = h.connect();
    c->greet();
    return c;
  }
  // A TLS connection through the handshake and a write + read in transmission.
  void expect_tls_works(Harness& h) {
    auto c = greeted(h);
    ASSERT_EQ(c->start_tls(*client), kRepAck);
    c->go("vol");
    auto data = pattern(4096, 3);
    EXPECT_EQ(c->command(kCmdWrite, 8192, 4096, 0, data), 0u);
    EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
  }

  ::tp::testing::TempDir dir;
  std::shared_ptr<const TlsCredentials> creds = server_psk(dir);
  std::unique_ptr<TlsCredentials> client = client_psk();
  std::shared_ptr<MemDisk> disk = std::make_shared<MemDisk>(1 << 20);
  Harness require{tls_options(TlsMode::kRequire, creds)};
  Harness on{tls_options(TlsMode::kOn, creds)};
};

TEST_F(TlsTest, RequiredTlsRefusesEveryOptionButStartTlsAndLeaksNoExportName) {
  auto c = greeted(require);
  std::vector<std::pair<uint32_t, std::vector<std::byte>>> opts = {
      {kOptList, {}},
      {kOptInfo, wire::encode_info_request({"vol", {kInfoName, kInfoDescription}})},
      {kOptGo, wire::encode_info_request({"vol", {}})},
      {kOptGo, wire::encode_info_request({"nope", {}})},
      {kOptStructuredReply, {}},
      {kOptListMetaContext, wire::encode_meta_request({"vol", {}})},
      {kOptSetMetaContext, wire::encode_meta_request({"vol", {"base:allocation"}})},
      {1234, {}},
  };
  for (auto& [opt, data] : opts) {
    auto r = c->option(opt, data);
    ASSERT_EQ(r.size(), 1u) << option_name(opt);  // the error alone: no SERVER or INFO reply
    EXPECT_EQ(r[0].type, kRepErrTlsReqd) << option_name(opt);
    EXPECT_EQ(str(r[0].data).find("vol"), std::string::npos) << option_name(opt);
  }
  EXPECT_FALSE(c->encrypted());
  // STARTTLS still works after the refusals, and then the same options are answered.
  ASSERT_EQ(c->start_tls(*client), kRepAck);
  EXPECT_TRUE(c->encrypted());
  auto list = c->option(kOptList);
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].type, kRepServer);
  EXPECT_EQ(list[1].type, kRepAck);
  EXPECT_EQ(c->option(1234).back().type, kRepErrUnsup);  // no TLS_REQD once TLS runs
}

TEST_F(TlsTest, StartTlsOnAConnectionAlreadyInTlsIsInvalid) {
  auto c = greeted(require);
  ASSERT_EQ(c->start_tls(*client), kRepAck);
  auto r = c->option(kOptStartTls);
  EXPECT_EQ(r.back().type, kRepErrInvalid);
  EXPECT_TRUE(c->encrypted());
  // The session is still usable, still encrypted.
  c->go("vol");
  EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
}

TEST_F(TlsTest, StartTlsWithDataIsInvalidAndTheHandshakeGoesOn) {
  auto c = greeted(require);
  EXPECT_EQ(c->option(kOptStartTls, bytes("x")).back().type, kRepErrInvalid);
  EXPECT_EQ(c->start_tls(*client), kRepAck);
}

TEST_F(TlsTest, ExportNameBeforeTlsEndsTheConnectionWhenTlsIsRequired) {
  auto c = greeted(require);
  c->send_option(kOptExportName, bytes("vol"));
  EXPECT_TRUE(c->closed_by_server());
  expect_tls_works(require);
}

TEST_F(TlsTest, AbortBeforeTlsIsAcknowledgedWhenTlsIsRequired) {
  auto c = greeted(require);
  EXPECT_EQ(c->option(kOptAbort).back().type, kRepAck);
  EXPECT_TRUE(c->closed_by_server());
}

TEST_F(TlsTest, TransmissionOverTlsCarriesLargeAndPipelinedRequests) {
  auto c = greeted(require);
  ASSERT_EQ(c->start_tls(*client), kRepAck);
  c->go("vol", true, {"base:allocation"});
  // 1 MiB: the reply is far larger than one TLS record.
  auto big = pattern(1 << 20, 5);
  ASSERT_EQ(c->command(kCmdWrite, 0, 1 << 20, kCmdFlagFua, big), 0u);
  c->request(kCmdRead, 0, 1 << 20, kCmdFlagDf, 9);
  auto chunks = c->chunks();
  ASSERT_EQ(chunks.size(), 1u);
  ASSERT_EQ(chunks[0].h.type, kReplyTypeOffsetData);
  EXPECT_TRUE(std::equal(big.begin(), big.end(), chunks[0].payload.begin() + 8));
  // Pipelined small writes: many replies gathered by the server's writer.
  constexpr int kN = 64;
  auto small = pattern(512, 7);
  for (int i = 0; i < kN; i++) c->request(kCmdWrite, uint64_t(i) * 512, 512, 0, 500 + i, small);
  for (int i = 0; i < kN; i++) {
    auto r = c->reply();
    ASSERT_TRUE(r);
    EXPECT_EQ(testing::Client::error_of(*r), 0u);
  }
  EXPECT_EQ(c->command(kCmdBlockStatus, 0, 4096), 0u);
  c->request(kCmdDisc, 0, 0);
  EXPECT_TRUE(c->closed_by_server());
  EXPECT_EQ(std::memcmp(disk->data.data() + 512, small.data(), 512), 0);
}

// TLS 1.3 key updates (RFC 8446 4.6.3) in the middle of pipelined traffic: GnuTLS answers a
// peer's KeyUpdate from inside the read call, on the reading thread, while the writing
// thread sends replies on the same session. Unserialised, the two threads race inside
// GnuTLS (this test crashed the process before the channel took a lock). The client keeps
// at most kWindow requests outstanding and reads replies while it sends, as libnbd and
// qemu do (a TLS writer holds the session while a record goes out).
TEST_F(TlsTest, KeyUpdatesDuringPipelinedTrafficKeepTheSessionWorking) {
  auto c = greeted(require);
  ASSERT_EQ(c->start_tls(*client), kRepAck);
  c->go("vol", false);  // simple replies: READ data follows the header
  auto data = pattern(64 << 10, 11);
  ASSERT_EQ(c->command(kCmdWrite, 0, 64 << 10, kCmdFlagFua, data), 0u);
  ASSERT_TRUE(tls_key_update(c->ch()).ok()) << "not TLS 1.3?";
  // GnuTLS ends a session whose peer asks for more than 8 key updates a second.
  constexpr int kReads = 1500, kEvery = 250, kWindow = 8;
  std::atomic<int> updates{0}, answered{0};
  std::atomic<bool> send_failed{false}, stop{false};
  std::thread sender([&] {
    try {
      for (int i = 0; i < kReads && !stop; i++) {
        while (i - answered.load() >= kWindow && !stop) std::this_thread::yield();
        c->request(kCmdRead, 0, 64 << 10, 0, 1000 + i);
        if (i % kEvery == 0 && tls_key_update(c->ch()).ok()) updates++;
      }
    } catch (const std::exception&) {
      send_failed = true;
    }
  });
  try {
    for (int i = 0; i < kReads; i++) {
      auto r = c->reply(20000);
      if (!r || r->h.error != 0) break;
      if (c->read_n(64 << 10) != data) break;
      answered++;
    }
  } catch (const std::exception&) {
  }
  stop = true;
  if (answered < kReads) c->close_now();  // unblocks the sender
  sender.join();
  EXPECT_FALSE(send_failed);
  EXPECT_EQ(answered.load(), kReads) << "replies read intact before the session broke";
  EXPECT_EQ(updates.load(), kReads / kEvery);
  if (answered == kReads) {
    EXPECT_EQ(c->command(kCmdFlush, 0, 0), 0u);
  }
}

TEST_F(TlsTest, OptionalTlsServesClearAndTlsClients) {
  auto clear = greeted(on);
  EXPECT_EQ(clear->option(kOptList).back().type, kRepAck);
  clear->go("vol");
  EXPECT_EQ(clear->command(kCmdFlush, 0, 0), 0u);
  EXPECT_FALSE(clear->encrypted());
  expect_tls_works(on);
}

TEST_F(TlsTest, OptionsNegotiatedInClearAreForgottenAfterStartTls) {
  auto c = greeted(on);
  ASSERT_EQ(c->option(kOptStructuredReply).back().type, kRepAck);
  ASSERT_EQ(c->option(kOptSetMetaContext, wire::encode_meta_request({"vol", {"base:allocation"}}))
                .back()
                .type,
            kRepAck);
  ASSERT_EQ(c->start_tls(*client), kRepAck);
  // Structured replies must be asked for again, over TLS.
  EXPECT_EQ(c->option(kOptSetMetaContext, wire::encode_meta_request({"vol", {"base:allocation"}}))
                .back()
                .type,
            kRepErrInvalid);
  c->go("vol", false);
  EXPECT_EQ(c->command(kCmdBlockStatus, 0, 4096), kEInval);  // no context carried over
}

TEST_F(TlsTest, StartTlsIsUnsupportedWhenTlsIsOff) {
  Harness off;
  off.catalog.add("vol", disk);
  auto c = greeted(off);
  EXPECT_EQ(c->option(kOptStartTls).back().type, kRepErrUnsup);
  EXPECT_EQ(c->option(kOptList).back().type, kRepAck);
}

TEST_F(TlsTest, WrongKeyFailsTheTlsHandshakeAndEndsOnlyThatConnection) {
  auto wrong = client_psk("fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210");
  auto c = greeted(require);
  EXPECT_THROW(c->start_tls(*wrong), std::runtime_error);
  // Whatever the server still sent (an alert), the connection then ends.
  std::byte buf[256];
  Result<size_t> r = size_t{0};
  for (int i = 0; i < 100 && r.ok(); i++) {
    r = c->ch().read_some(buf, Clock::now() + std::chrono::seconds(5));
  }
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(is_peer_closed(r.error())) << r.error().what;
  expect_tls_works(require);
}

TEST_F(TlsTest, ClientStallingInsideTheTlsHandshakeIsDroppedWhileOthersWork) {
  Harness fast(tls_options(TlsMode::kRequire, creds, std::chrono::milliseconds(300)));
  fast.catalog.add("vol", disk);
  auto stalled = greeted(fast);
  EXPECT_EQ(stalled->option(kOptStartTls).back().type, kRepAck);  // then no ClientHello
  auto other = greeted(fast);
  ASSERT_EQ(other->start_tls(*client), kRepAck);
  other->go("vol");
  EXPECT_TRUE(stalled->closed_by_server(5000));
  EXPECT_EQ(other->command(kCmdFlush, 0, 0), 0u);  // the session has no handshake deadline
}

TEST(TlsCredentials, PskFileMustExistAndHoldUsernameColonHexLines) {
  ::tp::testing::TempDir dir;
  EXPECT_EQ(TlsCredentials::server_psk(dir.file("none")).error().code, Errc::kNotFound);
  for (const char* bad :
       {"", "\n\n", "alice\n", ":abcd\n", "alice:xyz0\n", "alice:abc\n", "alice:abcd\nbob\n"}) {
    ::tp::testing::write_file(dir.file("k"), bad);
    auto r = TlsCredentials::server_psk(dir.file("k"));
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument) << bad;
  }
  ::tp::testing::write_file(dir.file("k"), "alice:abcd\r\n\nbob:0011\n");
  EXPECT_TRUE(TlsCredentials::server_psk(dir.file("k")).ok());
}

TEST(TlsCredentials, CertificateDirectoryNeedsTheServerCertificateAndKey) {
  ::tp::testing::TempDir dir;
  EXPECT_EQ(TlsCredentials::server_x509(dir.path()).error().code, Errc::kNotFound);
  ::tp::testing::write_file(dir.file("server-cert.pem"), "not a certificate\n");
  EXPECT_EQ(TlsCredentials::server_x509(dir.path()).error().code, Errc::kNotFound);  // no key
  ::tp::testing::write_file(dir.file("server-key.pem"), "not a key\n");
  EXPECT_EQ(TlsCredentials::server_x509(dir.path()).error().code, Errc::kInvalidArgument);
}

TEST(TlsCredentials, ModesParseByName) {
  EXPECT_EQ(parse_tls_mode("off"), TlsMode::kOff);
  EXPECT_EQ(parse_tls_mode("on"), TlsMode::kOn);
  EXPECT_EQ(parse_tls_mode("require"), TlsMode::kRequire);
  EXPECT_EQ(parse_tls_mode("yes"), std::nullopt);
  EXPECT_STREQ(tls_mode_name(TlsMode::kRequire), "require");
}

TEST(TlsServer, TlsWithoutCredentialsDoesNotStart) {
  testing::MemCatalog cat;
  NullLogger log;
  Server s(cat, log, tls_options(TlsMode::kOn, nullptr));
  auto r = s.start();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
}

}  // namespace
}  // namespace tp::nbd
