#pragma once
// Test doubles for the nbd layer: an in-memory export (MemDisk/MemTarget) whose failures
// can be scripted, a catalog of them, and a raw protocol client over one end of a
// socketpair whose other end a Server adopts. Every read has a timeout so a server bug
// fails a test instead of hanging it. Test support only: plumbing failures throw.

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "nbd/protocol.h"
#include "nbd/server.h"
#include "nbd/target.h"
#include "nbd/tls.h"
#include "nbd/wire.h"

namespace tp::nbd::testing {

inline std::vector<std::byte> bytes(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}
inline std::string str(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// The shared content of one export: bytes plus a per-4 KiB "mapped" flag (written blocks
// are mapped, trimmed and zeroed-without-NO_HOLE whole blocks are not).
struct MemDisk {
  static constexpr uint64_t kBlock = 4096;
  explicit MemDisk(uint64_t size, bool ro = false)
      : data(size), mapped((size + kBlock - 1) / kBlock), changed(mapped.size()), read_only(ro) {}
  std::mutex mu;
  std::vector<std::byte> data;
  std::vector<bool> mapped;
  std::vector<bool> changed;  // written since "base" (the delta context)
  bool read_only;
  std::optional<Errc> fail_next;  // the next data call fails with this code
  std::atomic<int> flushes{0};
  std::atomic<int> writes{0};
  std::atomic<int> fua_writes{0};
  std::atomic<int> provisions{0};    // zero() with no_hole
  std::atomic<int> reads{0};         // read() calls
  std::atomic<int> status_calls{0};  // block_status() calls
  std::atomic<int> sparse_reads{0};  // read_sparse() calls (the default: block_status + read)
  // A gate: when closed, reads (and writes too with gate_writes) block until it opens
  // (tests of in-flight requests).
  bool gate_closed = false;
  bool gate_writes = false;
  std::atomic<int> waiting{0};
  std::condition_variable gate_cv;
  // With a file (enable_file), the target offers start_read: the server reads the bytes
  // from this memfd (a copy taken at start_read) through its io_uring.
  int file = -1;
  bool bad_file_next = false;          // the next start_read gives a descriptor that fails
  std::atomic<int> reads_started{0};   // start_read calls that returned a ticket
  std::atomic<int> reads_finished{0};  // finish_read calls
  // Like a pool with a volume operation waiting to go idle: while a ticket is out, reads and
  // writes wait for it to be finished, and start_read without may_wait is kBusy.
  bool barrier = false;
  std::atomic<int> busy{0};                 // kBusy answers of start_read
  std::chrono::microseconds read_delay{0};  // read() sleeps this long (a disk, not a cache)
  void enable_file() {
    file = ::memfd_create("memdisk", 0);
    if (file < 0 || ::ftruncate(file, static_cast<off_t>(data.size())) != 0) {
      throw std::runtime_error("memfd_create");
    }
  }
  ~MemDisk() {
    if (file >= 0) ::close(file);
  }
  void open_gate() {
    std::lock_guard lk(mu);
    gate_closed = false;
    gate_cv.notify_all();
  }
};

class MemTarget : public BlockTarget {
 public:
  explicit MemTarget(std::shared_ptr<MemDisk> d) : d_(std::move(d)) {}
  uint64_t size() const override { return d_->data.size(); }
  bool read_only() const override { return d_->read_only; }
  bool can_multi_conn() const override { return true; }
  uint32_t preferred_block_size() const override { return 65536; }

  Result<void> read(uint64_t off, std::span<std::byte> buf) override {
    d_->reads++;
    if (d_->read_delay.count() > 0) std::this_thread::sleep_for(d_->read_delay);
    std::unique_lock lk(d_->mu);
    wait_turn(lk, false);
    TP_TRY(check(off, buf.size()));
    std::memcpy(buf.data(), d_->data.data() + off, buf.size());
    return {};
  }
  Result<void> write(uint64_t off, std::span<const std::byte> buf, bool fua) override {
    std::unique_lock lk(d_->mu);
    wait_turn(lk, true);
    TP_TRY(check(off, buf.size()));
    if (d_->read_only) return make_error(Errc::kReadOnly, "read-only");
    std::memcpy(d_->data.data() + off, buf.data(), buf.size());
    mark(off, buf.size(), true);
    d_->writes++;
    if (fua) d_->fua_writes++;
    return {};
  }
  Result<void> flush() override {
    std::lock_guard lk(d_->mu);
    TP_TRY(check(0, 0));
    d_->flushes++;
    return {};
  }
  Result<void> trim(uint64_t off, uint64_t len) override {
    std::lock_guard lk(d_->mu);
    TP_TRY(check(off, len));
    unmap_whole(off, len);
    return {};
  }
  Result<void> zero(uint64_t off, uint64_t len, bool no_hole) override {
    std::lock_guard lk(d_->mu);
    TP_TRY(check(off, len));
    std::memset(d_->data.data() + off, 0, len);
    if (no_hole) {
      mark(off, len, true);
      d_->provisions++;
    } else {
      unmap_whole(off, len);
    }
    return {};
  }
  Result<std::vector<StatusExtent>> block_status(uint64_t off, uint64_t len) override {
    d_->status_calls++;
    std::lock_guard lk(d_->mu);
    TP_TRY(check(off, len));
    return runs(d_->mapped, off, len, 0, kStateHole | kStateZero);
  }
  // Counted, then BlockTarget's default (block_status + read).
  Result<void> read_sparse(uint64_t off, std::span<std::byte> buf,
                           std::vector<StatusExtent>& extents) override {
    d_->sparse_reads++;
    return BlockTarget::read_sparse(off, buf, extents);
  }
  Result<uint64_t> start_read(uint64_t off, std::span<std::byte> buf,
                              std::vector<StatusExtent>* extents, std::vector<FileRead>& parts,
                              bool may_wait) override {
    if (d_->file < 0) return BlockTarget::start_read(off, buf, extents, parts, may_wait);
    std::unique_lock lk(d_->mu);
    if (!may_wait && tickets_out()) {
      d_->busy++;
      return make_error(Errc::kBusy, "tickets are out");
    }
    (extents ? d_->sparse_reads : d_->reads)++;
    wait_turn(lk, false);
    TP_TRY(check(off, buf.size()));
    if (::pwrite(d_->file, d_->data.data() + off, buf.size(), static_cast<off_t>(off)) !=
        static_cast<ssize_t>(buf.size())) {
      throw std::runtime_error("pwrite to the memfd");
    }
    const int fd = std::exchange(d_->bad_file_next, false) ? 1 << 20 : d_->file;
    if (!extents) {
      parts.push_back({fd, off, 0, buf.size()});
    } else {
      *extents = runs(d_->mapped, off, buf.size(), 0, kStateHole | kStateZero);
      uint64_t pos = 0;
      for (const StatusExtent& e : *extents) {
        if (e.flags & kStateZero) {
          std::memset(buf.data() + pos, 0, e.length);
        } else {
          parts.push_back({fd, off + pos, pos, e.length});
        }
        pos += e.length;
      }
    }
    return static_cast<uint64_t>(++d_->reads_started);
  }
  void finish_read(uint64_t ticket) override {
    (void)ticket;
    std::lock_guard lk(d_->mu);
    d_->reads_finished++;
    d_->gate_cv.notify_all();
  }
  std::vector<std::string> delta_bases() override { return {"base"}; }
  Result<std::vector<StatusExtent>> delta_status(const std::string& base, uint64_t off,
                                                 uint64_t len) override {
    std::lock_guard lk(d_->mu);
    if (base != "base") return make_error(Errc::kNotFound, "no such base");
    TP_TRY(check(off, len));
    return runs(d_->changed, off, len, kStateChanged, 0);
  }

 private:
  bool tickets_out() const {
    return d_->barrier && d_->reads_started.load() != d_->reads_finished.load();
  }
  // Where a request waits: for the tickets out (barrier), then at a closed gate (a write
  // only with gate_writes).
  void wait_turn(std::unique_lock<std::mutex>& lk, bool write) {
    d_->gate_cv.wait(lk, [&] { return !tickets_out(); });
    if (d_->gate_closed && (!write || d_->gate_writes)) {
      d_->waiting++;
      d_->gate_cv.wait(lk, [&] { return !d_->gate_closed; });
      d_->waiting--;
    }
  }
  Result<void> check(uint64_t off, uint64_t len) {
    if (d_->fail_next) {
      Errc c = *d_->fail_next;
      d_->fail_next.reset();
      return make_error(c, "injected failure");
    }
    if (off > d_->data.size() || len > d_->data.size() - off) {
      return make_error(Errc::kInvalidArgument, "out of range");
    }
    return {};
  }
  void mark(uint64_t off, uint64_t len, bool v) {
    if (len == 0) return;
    for (uint64_t b = off / MemDisk::kBlock; b <= (off + len - 1) / MemDisk::kBlock; b++) {
      d_->mapped[b] = v;
      d_->changed[b] = true;
    }
  }
  void unmap_whole(uint64_t off, uint64_t len) {
    const uint64_t B = MemDisk::kBlock;
    for (uint64_t b = (off + B - 1) / B; (b + 1) * B <= off + len; b++) {
      d_->mapped[b] = false;
      d_->changed[b] = true;
    }
  }
  static std::vector<StatusExtent> runs(const std::vector<bool>& bits, uint64_t off, uint64_t len,
                                        uint32_t set, uint32_t clear) {
    std::vector<StatusExtent> out;
    const uint64_t B = MemDisk::kBlock;
    for (uint64_t pos = off; pos < off + len;) {
      uint64_t b = pos / B;
      uint64_t end = std::min(off + len, (b + 1) * B);
      uint32_t f = bits[b] ? set : clear;
      if (!out.empty() && out.back().flags == f) {
        out.back().length += end - pos;
      } else {
        out.push_back({end - pos, f});
      }
      pos = end;
    }
    return out;
  }
  std::shared_ptr<MemDisk> d_;
};

class MemCatalog : public ExportCatalog {
 public:
  void add(const std::string& name, std::shared_ptr<MemDisk> d, std::string desc = "") {
    std::lock_guard lk(mu_);
    disks_[name] = {std::move(d), std::move(desc)};
  }
  void set_default(std::string d) {
    std::lock_guard lk(mu_);
    default_ = std::move(d);
  }
  std::vector<ExportEntry> list() override {
    std::lock_guard lk(mu_);
    std::vector<ExportEntry> out;
    for (auto& [n, e] : disks_) out.push_back({n, e.second});
    return out;
  }
  std::string default_export() override {
    std::lock_guard lk(mu_);
    return default_;
  }
  Result<std::unique_ptr<BlockTarget>> open(const std::string& name) override {
    std::lock_guard lk(mu_);
    auto it = disks_.find(name);
    if (it == disks_.end()) return make_error(Errc::kNotFound, "no such export");
    return std::unique_ptr<BlockTarget>(std::make_unique<MemTarget>(it->second.first));
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::pair<std::shared_ptr<MemDisk>, std::string>> disks_;
  std::string default_;
};

struct OptReply {
  uint32_t option = 0;
  uint32_t type = 0;
  std::vector<std::byte> data;
};

struct Reply {
  wire::ReplyHeader h;
  std::vector<std::byte> payload;  // chunk payload (structured replies)
};

// The client end of a connection, speaking raw protocol, in clear or (after start_tls) over
// TLS with the server's own TLS channel code in the client role.
class Client {
 public:
  explicit Client(int fd) : sock_(std::make_unique<SocketChannel>(fd)) {}
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  Channel& ch() { return tls_ ? *tls_ : static_cast<Channel&>(*sock_); }
  bool encrypted() { return ch().encrypted(); }

  // Reads exactly n bytes; false on EOF or timeout.
  bool read(std::span<std::byte> b, int timeout_ms = 5000) {
    return ch().read_exact(b, Clock::now() + std::chrono::milliseconds(timeout_ms)).ok();
  }
  std::vector<std::byte> read_n(size_t n) {
    std::vector<std::byte> b(n);
    if (!read(b)) throw std::runtime_error("short read from server");
    return b;
  }
  void write(std::span<const std::byte> b) {
    if (!ch().write_all(b).ok()) throw std::runtime_error("write to server failed");
  }
  // True when the server has closed the connection (EOF, or a broken TLS session, within
  // the timeout); false on a timeout or when data comes instead.
  bool closed_by_server(int timeout_ms = 5000) {
    std::byte b;
    auto r = ch().read_some(std::span(&b, 1), Clock::now() + std::chrono::milliseconds(timeout_ms));
    if (r.ok()) return false;
    return r.error().what != kTimedOut;
  }
  // Hangs up (both directions).
  void close_now() { sock_->shutdown_both(); }
  // Sets a send timeout on the socket (tests that fill the server's socket buffers).
  int fd() const { return sock_->fd(); }

  // NBD_OPT_STARTTLS; on ACK, the TLS handshake with creds. Returns the option reply type.
  uint32_t start_tls(const TlsCredentials& creds) {
    auto r = option(kOptStartTls);
    if (r.back().type != kRepAck) return r.back().type;
    auto t = creds.handshake(*sock_, Clock::now() + std::chrono::seconds(5));
    if (!t.ok()) throw std::runtime_error(std::string("TLS handshake: ") + t.error().what);
    tls_ = std::move(*t);
    return kRepAck;
  }

  // Reads the greeting and sends client flags. Returns the handshake flags.
  uint16_t greet(uint32_t client_flags = kClientFixedNewstyle | kClientNoZeroes) {
    auto g = read_n(18);
    if (wire::load_be64(g.data()) != kNbdMagic || wire::load_be64(g.data() + 8) != kOptMagic) {
      throw std::runtime_error("bad greeting");
    }
    std::byte f[4];
    wire::store_be32(f, client_flags);
    write(f);
    return wire::load_be16(g.data() + 16);
  }
  void send_option(uint32_t opt, std::span<const std::byte> data = {}) {
    write(wire::encode_option(opt, data));
  }
  OptReply read_option_reply() {
    auto h = read_n(kOptionReplyHeaderBytes);
    if (wire::load_be64(h.data()) != kOptReplyMagic) throw std::runtime_error("bad option reply");
    OptReply r;
    r.option = wire::load_be32(h.data() + 8);
    r.type = wire::load_be32(h.data() + 12);
    r.data = read_n(wire::load_be32(h.data() + 16));
    return r;
  }
  // Replies up to and including the first ACK or error.
  std::vector<OptReply> option(uint32_t opt, std::span<const std::byte> data = {}) {
    send_option(opt, data);
    std::vector<OptReply> out;
    for (;;) {
      out.push_back(read_option_reply());
      if (out.back().type == kRepAck || (out.back().type & kRepErrBit)) return out;
    }
  }
  // STRUCTURED_REPLY (optional), SET_META_CONTEXT (optional), GO. Returns {size, eflags}.
  std::pair<uint64_t, uint16_t> go(const std::string& name, bool structured = true,
                                   std::vector<std::string> contexts = {}) {
    if (structured) {
      auto r = option(kOptStructuredReply);
      if (r.back().type != kRepAck) throw std::runtime_error("structured reply refused");
    }
    if (!contexts.empty()) {
      auto r = option(kOptSetMetaContext, wire::encode_meta_request({name, contexts}));
      for (auto& x : r) {
        if (x.type == kRepMetaContext) {
          context_ids[str(std::span(x.data).subspan(4))] = wire::load_be32(x.data.data());
        }
      }
    }
    auto r = option(kOptGo, wire::encode_info_request({name, {}}));
    if (r.back().type != kRepAck) throw std::runtime_error("GO refused");
    for (auto& x : r) {
      if (x.type == kRepInfo && wire::load_be16(x.data.data()) == kInfoExport) {
        return {wire::load_be64(x.data.data() + 2), wire::load_be16(x.data.data() + 10)};
      }
    }
    throw std::runtime_error("no NBD_INFO_EXPORT");
  }

  void request(uint16_t type, uint64_t offset, uint32_t length, uint16_t flags = 0,
               uint64_t cookie = 1, std::span<const std::byte> data = {}) {
    write(wire::encode_request({flags, type, cookie, offset, length}));
    if (!data.empty()) write(data);
  }
  // One reply message: a simple reply (payload not read: READ data follows, the caller
  // knows its length) or one structured chunk with its payload.
  std::optional<Reply> reply(int timeout_ms = 5000) {
    std::byte m[kChunkHeaderBytes];
    if (!read(std::span(m, 4), timeout_ms)) return std::nullopt;
    size_t need = wire::reply_header_bytes(std::span(m, 4));
    if (need == 0) throw std::runtime_error("bad reply magic");
    if (!read(std::span(m + 4, need - 4))) return std::nullopt;
    auto h = wire::decode_reply(std::span(m, need));
    Reply r{*h, {}};
    if (r.h.structured) r.payload = read_n(r.h.length);
    return r;
  }
  // All chunks of one structured reply (until DONE).
  std::vector<Reply> chunks() {
    std::vector<Reply> out;
    for (;;) {
      auto r = reply();
      if (!r) throw std::runtime_error("connection ended inside a structured reply");
      out.push_back(std::move(*r));
      if (!out.back().h.structured || (out.back().h.flags & kReplyFlagDone)) return out;
    }
  }
  // The error of a reply: simple reply error, or the error chunk's value, or 0.
  static uint32_t error_of(const Reply& r) {
    if (!r.h.structured) return r.h.error;
    if ((r.h.type & 0x8000) && r.payload.size() >= 4) return wire::load_be32(r.payload.data());
    return 0;
  }
  // Sends a command and returns its error (0 on success); for replies without data.
  uint32_t command(uint16_t type, uint64_t offset, uint32_t length, uint16_t flags = 0,
                   std::span<const std::byte> data = {}) {
    request(type, offset, length, flags, ++cookie_, data);
    auto c = chunks();
    if (c.back().h.cookie != cookie_) throw std::runtime_error("cookie mismatch");
    return error_of(c.back());
  }
  // READ with simple replies: data or the error.
  std::pair<uint32_t, std::vector<std::byte>> simple_read(uint64_t off, uint32_t len) {
    request(kCmdRead, off, len, 0, ++cookie_);
    auto r = reply();
    if (!r) throw std::runtime_error("no reply");
    if (r->h.error != 0) return {r->h.error, {}};
    return {0, read_n(len)};
  }

  std::map<std::string, uint32_t> context_ids;

 private:
  std::unique_ptr<SocketChannel> sock_;
  std::unique_ptr<Channel> tls_;  // over sock_; declared after it, destroyed before it
  uint64_t cookie_ = 100;
};

// A server with no listening socket; connect() hands it one end of a socketpair.
class Harness {
 public:
  explicit Harness(ServerOptions opts = {}) : server(catalog, log, std::move(opts)) {
    if (!server.start().ok()) throw std::runtime_error("server start failed");
  }
  std::unique_ptr<Client> connect() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      throw std::runtime_error("socketpair");
    }
    server.adopt(sv[0], "test");
    return std::make_unique<Client>(sv[1]);
  }
  MemCatalog catalog;
  NullLogger log;
  Server server;
};

}  // namespace tp::nbd::testing
