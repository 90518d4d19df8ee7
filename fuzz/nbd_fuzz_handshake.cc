// libFuzzer target: the NBD server's real handshake (nbd/handshake.h) and, when a client
// gets through it, the real transmission phase (nbd/session.h), both on the server end of
// a socketpair whose client end sends the fuzz input and then hangs up. The exports are
// in-memory (tests/nbd/nbd_test_util.h): "vol" (writable, the default) and "snap"
// (read-only), with a delta base.
//
// Properties: no crash, sanitizer report or hang (the handshake has a deadline; EOF ends
// the session); the server's first bytes are the greeting; a handshake that ends without an
// export is an error or a polite NBD_OPT_ABORT. Seeds (fuzz/corpus/nbd_fuzz_handshake):
// transcripts of real client conversations (LIST, INFO, GO with structured replies and
// meta contexts, then I/O; EXPORT_NAME; ABORT), written by fuzz/gen_corpus.

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "fuzz_util.h"
#include "nbd/handshake.h"
#include "nbd/session.h"
#include "nbd_test_util.h"

namespace {

using namespace tp;
using namespace tp::nbd;

void send_all(int fd, std::span<const std::byte> in) {
  size_t done = 0;
  while (done < in.size()) {
    ssize_t n = ::send(fd, in.data() + done, in.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the server hung up: the rest is never read
    done += static_cast<size_t>(n);
  }
}

// Everything the server sends, until it closes its end.
std::vector<std::byte> drain(int fd) {
  std::vector<std::byte> out;
  std::byte buf[16384];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return out;
    if (out.size() < 64) out.insert(out.end(), buf, buf + std::min<ssize_t>(n, 64));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto in = fuzz::as_bytes(data, size);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  const int client = sv[1];

  testing::MemCatalog catalog;
  catalog.add("vol", std::make_shared<testing::MemDisk>(256 * 1024), "a volume");
  catalog.add("snap", std::make_shared<testing::MemDisk>(128 * 1024, true), "a snapshot");
  catalog.set_default("vol");

  std::thread writer([&] {
    send_all(client, in);
    ::shutdown(client, SHUT_WR);
  });
  std::vector<std::byte> got;
  std::thread reader([&] { got = drain(client); });
  {
    SocketChannel ch(sv[0]);  // owns the server end; closing it ends the reader
    NullLogger log;
    std::atomic<bool> stopping{false};
    auto deadline = Clock::now() + std::chrono::seconds(10);
    auto neg = negotiate(ch, catalog, log, deadline, stopping);
    if (neg.ok() && neg->has_value()) {
      Negotiated& n = **neg;
      TP_FUZZ_REQUIRE(n.target != nullptr);
      TP_FUZZ_REQUIRE(!n.export_name.empty());
      SessionOptions opts;
      opts.workers = 2;
      opts.max_inflight_bytes = 4 << 20;
      opts.send_timeout = std::chrono::milliseconds(10000);
      run_session(ch, n, log, opts);
    }
    ch.shutdown_both();
  }
  writer.join();
  reader.join();
  ::close(client);
  // The server always speaks first: the fixed newstyle greeting.
  TP_FUZZ_REQUIRE(got.size() >= 16);
  TP_FUZZ_REQUIRE(wire::load_be64(got.data()) == kNbdMagic);
  TP_FUZZ_REQUIRE(wire::load_be64(got.data() + 8) == kOptMagic);
  return 0;
}
