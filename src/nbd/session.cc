#include "nbd/session.h"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "io/read_ring.h"
#include "nbd/budget.h"
#include "nbd/buffer_pool.h"
#include "nbd/protocol.h"
#include "nbd/wire.h"

namespace tp::nbd {
namespace {

// What the reader takes from the socket at once: a QD32 burst of 4 KiB WRITEs (32 x 4124
// bytes) in one or two recv calls.
constexpr size_t kInputBytes = 128 << 10;
// Replies of requests the reader ran itself go out together, in one gathered write: at the
// latest before the reader waits for the client or for budget, or once this many replies
// or bytes of READ data are held (their buffers and budget come back after the send).
constexpr size_t kBatchReplies = 64;
constexpr size_t kBatchBytes = 512 << 10;
// A READ or WRITE the reader ran itself that took longer than its kSlow* + kSlowNsPerByte x
// its length waited for something. Measured per request on the 2-core VM (issue 12): a READ
// that hits the page cache takes 4-8 us, one that goes to the disk 64 us and more; a WRITE
// takes 4-130 us of engine work (allocation, metadata shadowing) without waiting, so only
// a longer one (writeback throttling, a commit holding the pool) counts. One slow request
// may be the reader losing its CPU; a second one within kSlowWindow requests means the
// target waits for I/O: small requests then go to the workers, where the waits overlap.
// (On that VM, cold-cache random READs at QD32 ran 3.8k/s all on the reader and 8-9k/s
// with the workers; cold copy-on-write WRITEs ran alike either way.)
constexpr auto kSlowRead = std::chrono::microseconds(50);
constexpr auto kSlowWrite = std::chrono::microseconds(250);
constexpr double kSlowNsPerByte = 0.5;
constexpr unsigned kSlowWindow = 16;
// While they do, every kProbeEvery-th small request still runs on the reader, and
// kFastProbes fast ones in a row bring them back.
constexpr unsigned kProbeEvery = 16;
constexpr unsigned kFastProbes = 4;

// The io_uring of a connection (reads the workers would otherwise wait for): room for this
// many file reads queued or in flight; the reader submits what it queued once this many wait,
// and before it waits for anything.
constexpr unsigned kRingEntries = 256;
constexpr unsigned kRingSubmitBatch = 32;
// A READ split into more file reads than this is left to a worker (a fragmented large read).
constexpr size_t kRingMaxParts = 16;
// Completions taken at once by the completing thread.
constexpr size_t kRingReap = 64;
constexpr uint64_t kRingWakeTag = ~uint64_t{0};

struct Request {
  wire::RequestHeader h;
  Buffer buf;         // READ: the data read; WRITE: the payload
  uint64_t cost = 0;  // bytes charged against max_inflight_bytes and the shared budget
};

// Requests handed to the workers, in arrival order: a ring that grows and never shrinks, so
// that steady state allocates nothing. Guarded by Session::mu_.
class RequestQueue {
 public:
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  void push(Request&& r) {
    if (size_ == slots_.size()) grow();
    slots_[(head_ + size_) % slots_.size()] = std::move(r);
    size_++;
  }
  Request pop() {
    Request r = std::move(slots_[head_]);
    head_ = (head_ + 1) % slots_.size();
    size_--;
    return r;
  }

 private:
  void grow() {
    std::vector<Request> s(std::max<size_t>(16, slots_.size() * 2));
    for (size_t i = 0; i < size_; i++) s[i] = std::move(slots_[(head_ + i) % slots_.size()]);
    slots_ = std::move(s);
    head_ = 0;
  }
  std::vector<Request> slots_;
  size_t head_ = 0;
  size_t size_ = 0;
};

// Whole replies waiting to go out in one gathered write, and the requests they answer
// (whose buffers and budget come back once sent). Headers, offsets and error payloads are
// copied into an arena; READ data is referenced in the request's buffer, which the batch
// holds. Every vector keeps its capacity across clear(): no allocation in steady state.
class ReplyBatch {
 public:
  void copy(std::span<const std::byte> b) {
    if (!pieces_.empty() && !pieces_.back().ext &&
        pieces_.back().off + pieces_.back().len == arena_.size()) {
      pieces_.back().len += b.size();  // adjacent in the arena: one iovec
    } else {
      pieces_.push_back({nullptr, arena_.size(), b.size()});
    }
    arena_.insert(arena_.end(), b.begin(), b.end());
  }
  // REQUIRES: b stays valid until clear() (it lies in a buffer given to hold()).
  void ref(std::span<const std::byte> b) {
    pieces_.push_back({b.data(), 0, b.size()});
    ref_bytes_ += b.size();
  }
  void end_reply() { replies_++; }
  void hold(Buffer&& b, uint64_t cost) {
    if (!b.empty()) held_.push_back(std::move(b));
    held_cost_ += cost;
    held_requests_++;
  }

  bool empty() const { return replies_ == 0 && held_requests_ == 0; }
  size_t replies() const { return replies_; }
  size_t ref_bytes() const { return ref_bytes_; }
  std::vector<Buffer>& held() { return held_; }
  uint64_t held_cost() const { return held_cost_; }
  unsigned held_requests() const { return held_requests_; }

  // The pieces of every reply, in order. Valid until the next change.
  std::span<const std::span<const std::byte>> pieces() {
    spans_.clear();
    for (const Piece& p : pieces_) {
      spans_.emplace_back(p.ext ? p.ext : arena_.data() + p.off, p.len);
    }
    return spans_;
  }
  void clear() {
    arena_.clear();
    pieces_.clear();
    held_.clear();
    replies_ = ref_bytes_ = 0;
    held_cost_ = 0;
    held_requests_ = 0;
  }

 private:
  struct Piece {
    const std::byte* ext;  // referenced bytes, or nullptr: arena_[off, off + len)
    size_t off;
    size_t len;
  };
  std::vector<std::byte> arena_;
  std::vector<Piece> pieces_;
  std::vector<std::span<const std::byte>> spans_;
  std::vector<Buffer> held_;
  size_t replies_ = 0;
  size_t ref_bytes_ = 0;
  uint64_t held_cost_ = 0;
  unsigned held_requests_ = 0;
};

// What one thread needs to run requests: its replies and reused scratch vectors.
struct Context {
  ReplyBatch out;
  std::vector<StatusExtent> extents;
  std::vector<wire::Descriptor> parts;
};

// The bytes received and not yet decoded. Whole WRITE payloads are taken out as soon as
// their header is decoded, so what is left when more must be read is part of one header.
class InputBuffer {
 public:
  InputBuffer() : data_(std::make_unique_for_overwrite<std::byte[]>(kInputBytes)) {}
  size_t size() const { return end_ - begin_; }
  const std::byte* data() const { return data_.get() + begin_; }
  void consume(size_t n) {
    begin_ += n;
    if (begin_ == end_) begin_ = end_ = 0;
  }
  // Free room at the end, after moving what is left to the front.
  std::span<std::byte> space() {
    if (begin_ > 0) {
      std::memmove(data_.get(), data_.get() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    return {data_.get() + end_, kInputBytes - end_};
  }
  void produced(size_t n) { end_ += n; }

 private:
  std::unique_ptr<std::byte[]> data_;
  size_t begin_ = 0;
  size_t end_ = 0;
};

// Extents clipped to [0, len), zero-length ones dropped, neighbours with the same flags
// merged, at most max_count of them, into out. An empty input (or one that covers nothing)
// becomes a single extent with flags 0 (what the spec allows a server to say for anything).
void to_descriptors(const std::vector<StatusExtent>& ext, uint32_t len, size_t max_count,
                    std::vector<wire::Descriptor>& out) {
  out.clear();
  uint64_t pos = 0;
  for (const StatusExtent& e : ext) {
    if (pos >= len || out.size() > max_count) break;
    uint64_t l = std::min<uint64_t>(e.length, len - pos);
    if (l == 0) continue;
    if (!out.empty() && out.back().flags == e.flags) {
      out.back().length += static_cast<uint32_t>(l);
    } else {
      out.push_back({static_cast<uint32_t>(l), e.flags});
    }
    pos += l;
  }
  if (out.size() > max_count) out.resize(max_count);
  if (out.empty()) out.push_back({len, 0});
}

class Session {
 public:
  Session(Channel& ch, Negotiated& n, Logger& log, const SessionOptions& opts, ByteBudget* shared)
      : ch_(ch),
        n_(n),
        t_(*n.target),
        log_(log),
        opts_(opts),
        shared_(shared),
        pool_(opts.buffer_cache_bytes) {
    state_.size = t_.size();
    state_.eflags = n.eflags;
    state_.structured = n.structured;
    state_.has_contexts = !n.contexts.empty();
    opts_.workers = std::max(1u, opts_.workers);
    opts_.max_inflight_requests = std::max(1u, opts_.max_inflight_requests);
  }

  void run();

 private:
  // --- the reader
  // Reads what the client has sent (at least one byte) into in_.
  Result<void> fill();
  // The payload of a WRITE: first what in_ holds, then the rest straight from the channel.
  Result<void> take_payload(std::span<std::byte> buf);
  // Reads a WRITE payload; fails when the client sends nothing for send_timeout.
  Result<void> read_payload(std::span<std::byte> buf);
  // Drops n bytes of a refused request's payload.
  Result<void> skip(uint64_t n);
  // Runs r on the reader or hands it to a worker.
  void dispatch(Request&& r);
  bool run_inline(const wire::RequestHeader& h);
  void note_inline(const wire::RequestHeader& h, Clock::duration took);
  // Sends the reader's replies once a batch is full.
  void flush_if_full();
  // Starts a worker (the reader runs the queue itself if no thread can be had at all).
  void start_worker();
  // Before the reader waits (for the client, for budget, for room in the ring): sends the
  // replies it holds and submits the reads it queued, so it never waits for what it holds.
  void before_wait();

  // --- reads through the connection's io_uring (the target's start_read)
  // The reader: takes r if the ring can run it (else false: a worker runs it).
  bool ring_read(Request& r);
  // Makes the ring and its completing thread; false (logged) when they cannot be had.
  bool make_ring();
  void ring_submit();
  // The completing thread: replies to reads whose file reads have ended.
  void completer();
  void finish_ring_read(unsigned slot, Context& cx);

  // Budget: blocks the reader until a request of `cost` bytes fits in this connection's
  // limits, then in the shared budget; before it waits, it sends the replies it holds.
  // False (nothing held) when the shared budget is closed: the server is stopping.
  bool acquire(uint64_t cost);
  void release(uint64_t cost, unsigned requests);

  // --- any thread that runs requests
  void worker();
  // Runs r and adds its reply to cx.out, which holds r's buffer and budget from now on.
  void execute(Request& r, Context& cx);
  void read(Request& r, Context& cx);
  // Whether a READ of h is answered with its holes as such (structured replies, no DF).
  bool sparse_read(const wire::RequestHeader& h) const {
    return n_.structured && !(h.flags & kCmdFlagDf);
  }
  // Ends a READ whose ticket (start_read) is out: finish_read, then its reply (res: how its
  // file reads ended; extents as start_read gave them), and its buffer and budget to cx.out.
  void end_read(Context& cx, Request& r, uint64_t ticket, std::vector<StatusExtent>& extents,
                const Result<void>& res);
  // The reply to a READ of h whose bytes are in buf; extents (reused; nullptr: all data) as
  // read_sparse gave them.
  void reply_read(Context& cx, const wire::RequestHeader& h, std::span<const std::byte> buf,
                  std::vector<StatusExtent>* extents);
  void block_status(const wire::RequestHeader& h, Context& cx);
  Result<void> zero(const wire::RequestHeader& h);
  // Sends the replies in cx.out and gives back what they held.
  void flush(Context& cx);

  // Sends whole replies; on failure the connection is finished (shut down both ways so the
  // reader stops too).
  void send(std::span<const std::span<const std::byte>> pieces);
  void reply_ok(Context& cx, uint64_t cookie);
  void reply_error(Context& cx, const wire::RequestHeader& h, uint32_t err, std::string_view msg);
  void reply_result(Context& cx, const wire::RequestHeader& h, const Result<void>& r);

  Channel& ch_;
  Negotiated& n_;
  BlockTarget& t_;
  Logger& log_;
  SessionOptions opts_;
  ByteBudget* shared_;
  wire::ExportState state_;
  BufferPool pool_;

  // Reader only.
  InputBuffer in_;
  Context reader_cx_;
  std::vector<std::thread> workers_;
  bool offload_ = false;               // small requests go to the workers (the target was slow)
  unsigned since_probe_ = 0;           // small requests handed off since the last probe
  unsigned fast_probes_ = 0;           // fast probes in a row
  unsigned since_slow_ = kSlowWindow;  // requests run on the reader since a slow one
  unsigned last_inflight_ = 0;         // requests in flight, the one just taken included

  std::mutex write_mu_;
  bool broken_ = false;  // guarded by write_mu_

  // A READ in the ring: its request (buffer, budget), the target's ticket, its extents and
  // file reads, and how many of those have not ended.
  struct RingRead {
    Request r;
    uint64_t ticket = 0;
    std::vector<StatusExtent> extents;
    std::vector<BlockTarget::FileRead> parts;
    size_t left = 0;
    Result<void> res;
  };
  std::unique_ptr<io::ReadRing> ring_;  // made at the first READ for it; null: none
  bool ring_off_ = false;               // reader only: no ring for this connection
  unsigned ring_queued_ = 0;            // reader only: file reads queued, not submitted
  std::thread completer_;
  std::mutex ring_mu_;                // guards what follows, and hands slots between threads
  std::condition_variable ring_cv_;   // reader: room in the ring
  std::vector<RingRead> ring_slots_;  // max_inflight_requests of them
  std::vector<unsigned> ring_free_;   // free slots
  unsigned ring_parts_ = 0;           // file reads queued or in flight
  unsigned ring_reads_ = 0;           // READs in the ring
  bool ring_closing_ = false;

  std::mutex mu_;
  std::condition_variable queue_cv_;   // workers: a request or closing
  std::condition_variable budget_cv_;  // reader: budget freed
  RequestQueue queue_;
  unsigned idle_ = 0;  // workers waiting on queue_cv_
  bool closing_ = false;
  uint64_t inflight_bytes_ = 0;
  unsigned inflight_requests_ = 0;
};

bool Session::acquire(uint64_t cost) {
  {
    std::unique_lock lk(mu_);
    auto fits = [&] {
      return inflight_requests_ == 0 || (inflight_requests_ < opts_.max_inflight_requests &&
                                         inflight_bytes_ + cost <= opts_.max_inflight_bytes);
    };
    if (!fits()) {
      // The replies the reader holds count too: they must go out before it waits.
      lk.unlock();
      before_wait();
      lk.lock();
      budget_cv_.wait(lk, fits);
    }
    inflight_requests_++;
    inflight_bytes_ += cost;
    last_inflight_ = inflight_requests_;
  }
  // Only this connection's own threads hold its limits, and they never wait for the shared
  // budget while they hold replies: waiting for it while holding a slot here cannot
  // deadlock.
  if (cost > 0 && shared_ && !shared_->try_acquire(cost)) {
    before_wait();
    if (!shared_->acquire(cost)) {
      std::lock_guard lk(mu_);
      inflight_requests_--;
      inflight_bytes_ -= cost;
      return false;
    }
  }
  return true;
}

void Session::release(uint64_t cost, unsigned requests) {
  if (cost > 0 && shared_) shared_->release(cost);
  std::lock_guard lk(mu_);
  inflight_requests_ -= requests;
  inflight_bytes_ -= cost;
  budget_cv_.notify_one();
}

Result<void> Session::fill() {
  TP_ASSIGN_OR_RETURN(size_t n, ch_.read_some(in_.space(), kNoDeadline));
  in_.produced(n);
  return {};
}

Result<void> Session::take_payload(std::span<std::byte> buf) {
  const size_t have = std::min(in_.size(), buf.size());
  std::memcpy(buf.data(), in_.data(), have);
  in_.consume(have);
  if (have == buf.size()) return {};
  before_wait();  // about to wait for the client
  return read_payload(buf.subspan(have));
}

Result<void> Session::read_payload(std::span<std::byte> buf) {
  // The deadline counts from the last bytes received, so a slow link is fine and only a
  // client that stops in the middle (holding budget) is dropped.
  size_t done = 0;
  while (done < buf.size()) {
    Clock::time_point deadline =
        opts_.send_timeout.count() > 0 ? Clock::now() + opts_.send_timeout : kNoDeadline;
    TP_ASSIGN_OR_RETURN(size_t n, ch_.read_some(buf.subspan(done), deadline));
    done += n;
  }
  return {};
}

Result<void> Session::skip(uint64_t n) {
  const size_t have = static_cast<size_t>(std::min<uint64_t>(in_.size(), n));
  in_.consume(have);
  if (have == n) return {};
  before_wait();
  return ch_.skip(n - have);
}

void Session::run() {
  ch_.set_send_timeout(opts_.send_timeout);
  const char* end_reason = "client disconnected";
  for (;;) {
    if (in_.size() < kRequestHeaderBytes) {
      before_wait();  // about to wait for the client: what is answered goes out first
      if (auto r = fill(); !r.ok()) {
        if (!is_peer_closed(r.error()))
          log_.warn("nbd: {}: read: {}", n_.export_name, describe(r.error()));
        end_reason = "connection closed without NBD_CMD_DISC";
        break;
      }
      continue;
    }
    auto h = wire::decode_request(std::span(in_.data(), kRequestHeaderBytes));
    if (!h.ok()) {
      log_.warn("nbd: {}: {}; dropping the connection", n_.export_name, h.error().what);
      end_reason = "protocol error";
      break;
    }
    in_.consume(kRequestHeaderBytes);
    wire::Verdict v = wire::check_request(*h, state_);
    if (v.action == wire::Verdict::kDisconnect) break;
    if (v.action == wire::Verdict::kDrop) {
      log_.warn("nbd: {}: {} of {} bytes: {}; dropping the connection", n_.export_name,
                command_name(h->type), h->length, v.why);
      end_reason = "protocol error";
      break;
    }
    if (v.action == wire::Verdict::kReplyError) {
      log_.debug("nbd: {}: {} refused: {}", n_.export_name, command_name(h->type), v.why);
      if (v.payload > 0) {
        if (auto r = skip(v.payload); !r.ok()) break;
      }
      reply_error(reader_cx_, *h, v.error, v.why);
      flush_if_full();
      continue;
    }
    Request req;
    req.h = *h;
    const bool has_buffer = h->type == kCmdRead || h->type == kCmdWrite;
    if (has_buffer) req.cost = BufferPool::class_bytes(h->length);
    if (!acquire(req.cost)) {
      end_reason = "server stopping (a request waiting for memory was not taken)";
      break;
    }
    if (has_buffer) req.buf = pool_.get(h->length);
    if (v.payload > 0) {
      if (auto r = take_payload(req.buf.first(v.payload)); !r.ok()) {
        pool_.put(std::move(req.buf));
        release(req.cost, 1);
        if (r.error().what == kTimedOut) {
          log_.warn("nbd: {}: client stalled in the middle of a WRITE payload; dropping it",
                    n_.export_name);
        }
        end_reason = "connection closed in the middle of a write";
        break;
      }
    }
    dispatch(std::move(req));
  }

  before_wait();
  if (completer_.joinable()) {
    {
      std::lock_guard lk(ring_mu_);
      ring_closing_ = true;
    }
    // The completing thread ends once the ring is empty; this wakes it to see that.
    if (!ring_->queue_wake(kRingWakeTag)) std::abort();  // the reads in flight leave room
    ring_queued_++;
    ring_submit();
    completer_.join();
  }
  {
    std::lock_guard lk(mu_);
    closing_ = true;
  }
  queue_cv_.notify_all();
  for (std::thread& w : workers_) w.join();
  log_.debug("nbd: {}: session ended: {}", n_.export_name, end_reason);
}

// Small READs and WRITEs run on the reader: a page-cache hit costs less than waking a
// worker, and the replies of a burst go out in one write. What may take long (FLUSH, FUA,
// TRIM, WRITE_ZEROES, BLOCK_STATUS, large requests) goes to the workers, so the reader
// keeps reading; so do small requests while the target is slow (I/O waits), so that they
// overlap, except for a probe now and then that tells when it is fast again.
bool Session::run_inline(const wire::RequestHeader& h) {
  if (h.type == kCmdCache) return true;  // a no-op
  if ((h.type != kCmdRead && h.type != kCmdWrite) || (h.flags & kCmdFlagFua) ||
      h.length > opts_.inline_max_bytes) {
    return false;
  }
  // Alone in flight: there is nothing to overlap with, a worker would only add a wakeup.
  if (last_inflight_ == 1 || !offload_) return true;
  if (++since_probe_ < kProbeEvery) return false;
  since_probe_ = 0;
  return true;
}

void Session::note_inline(const wire::RequestHeader& h, Clock::duration took) {
  if (h.type != kCmdRead && h.type != kCmdWrite) return;
  const bool slow =
      took > (h.type == kCmdRead ? kSlowRead : kSlowWrite) +
                 std::chrono::nanoseconds(static_cast<int64_t>(kSlowNsPerByte * h.length));
  if (offload_) {
    fast_probes_ = slow ? 0 : fast_probes_ + 1;
    if (fast_probes_ >= kFastProbes) {
      offload_ = false;
      fast_probes_ = 0;
      since_slow_ = kSlowWindow;
    }
    return;
  }
  if (!slow) {
    since_slow_ = std::min(since_slow_ + 1, kSlowWindow);
    return;
  }
  if (since_slow_ < kSlowWindow) offload_ = true;
  since_slow_ = 0;
}

void Session::dispatch(Request&& r) {
  if (run_inline(r.h)) {
    // The target may wait for the requests in flight (a volume operation going idle): the
    // reads queued in the ring must be in flight first.
    ring_submit();
    const Clock::time_point start = Clock::now();
    execute(r, reader_cx_);
    note_inline(r.h, Clock::now() - start);
    flush_if_full();
    return;
  }
  if (r.h.type == kCmdRead && ring_read(r)) return;
  bool wake, more;
  {
    std::lock_guard lk(mu_);
    queue_.push(std::move(r));
    wake = idle_ > 0;
    more = idle_ < queue_.size() && workers_.size() < opts_.workers;
  }
  if (wake) queue_cv_.notify_one();
  if (more) start_worker();
}

void Session::flush_if_full() {
  if (reader_cx_.out.replies() >= kBatchReplies || reader_cx_.out.ref_bytes() >= kBatchBytes) {
    flush(reader_cx_);
  }
}

void Session::before_wait() {
  ring_submit();
  flush(reader_cx_);
}

bool Session::make_ring() {
  auto ring = io::ReadRing::create(kRingEntries);
  if (!ring.ok()) {
    log_.debug("nbd: {}: no io_uring ({}); READs that wait go to worker threads", n_.export_name,
               describe(ring.error()));
    return false;
  }
  ring_ = std::move(*ring);
  try {
    completer_ = std::thread([this] { completer(); });
  } catch (const std::system_error& e) {
    log_.warn("nbd: {}: cannot start the io_uring thread: {}", n_.export_name, e.what());
    ring_.reset();
    return false;
  }
  return true;
}

bool Session::ring_read(Request& r) {
  if (ring_off_ || !opts_.ring_reads) return false;
  if (ring_slots_.empty()) {
    ring_slots_.resize(opts_.max_inflight_requests);
    for (unsigned i = opts_.max_inflight_requests; i-- > 0;) ring_free_.push_back(i);
  }
  const wire::RequestHeader& h = r.h;
  unsigned slot;
  {
    std::lock_guard lk(ring_mu_);
    slot = ring_free_.back();  // one per request in flight: never empty here
    ring_free_.pop_back();
  }
  RingRead& rr = ring_slots_[slot];
  const bool sparse = sparse_read(h);
  auto start = [&](bool may_wait) {
    rr.parts.clear();
    return t_.start_read(h.offset, r.buf.first(h.length), sparse ? &rr.extents : nullptr, rr.parts,
                         may_wait);
  };
  // With reads queued, not submitted, the target must not wait for the requests in flight.
  auto ticket = start(ring_queued_ == 0);
  if (!ticket.ok() && ticket.error().code == Errc::kBusy && ring_queued_ > 0) {
    ring_submit();
    ticket = start(true);
  }
  auto give_back = [&] {
    std::lock_guard lk(ring_mu_);
    ring_free_.push_back(slot);
  };
  if (!ticket.ok()) {
    give_back();
    if (ticket.error().code == Errc::kUnsupported) {
      ring_off_ = true;  // this target reads itself: workers from now on
      return false;
    }
    reply_result(reader_cx_, h, ticket.error());
    reader_cx_.out.hold(std::move(r.buf), r.cost);
    flush_if_full();
    return true;
  }
  if (!ring_ && !rr.parts.empty() && !make_ring()) ring_off_ = true;
  if (!ring_ || rr.parts.empty() || rr.parts.size() > kRingMaxParts) {
    // All holes: nothing to wait for. No ring, or too fragmented for it: read here (rare).
    Result<void> res;
    for (const BlockTarget::FileRead& p : rr.parts) {
      res =
          io::pread_all(p.fd, r.buf.first(h.length).subspan(p.buf_offset, p.length), p.file_offset);
      if (!res.ok()) break;
    }
    end_read(reader_cx_, r, *ticket, rr.extents, res);
    give_back();
    flush_if_full();
    return true;
  }
  const unsigned n = static_cast<unsigned>(rr.parts.size());
  // Taken before the slot is handed over: the completing thread owns rr.r from then on (the
  // kernel's completion orders it after our reads, which ThreadSanitizer cannot see).
  const std::span<std::byte> buf = r.buf.first(h.length);
  {
    std::unique_lock lk(ring_mu_);
    if (ring_parts_ + n >= ring_->capacity()) {
      lk.unlock();
      before_wait();
      lk.lock();
      ring_cv_.wait(lk, [&] { return ring_parts_ + n < ring_->capacity(); });
    }
    ring_parts_ += n;
    ring_reads_++;
    rr.r = std::move(r);
    rr.ticket = *ticket;
    rr.left = n;
    rr.res = {};
  }
  for (unsigned i = 0; i < n; i++) {
    const BlockTarget::FileRead& p = rr.parts[i];
    const uint64_t tag = (uint64_t{slot} << 32) | i;
    while (!ring_->queue_read(p.fd, buf.subspan(p.buf_offset, p.length), p.file_offset, tag)) {
      ring_submit();
    }
    ring_queued_++;
  }
  if (ring_queued_ >= kRingSubmitBatch) ring_submit();
  return true;
}

void Session::ring_submit() {
  if (!ring_ || ring_queued_ == 0) return;
  if (auto r = ring_->submit(); !r.ok()) {
    // Only a broken ring fails here (per-read errors come as completions); the reads queued
    // in it could never be answered.
    log_.error("nbd: {}: {}", n_.export_name, describe(r.error()));
    std::abort();
  }
  ring_queued_ = 0;
}

void Session::completer() {
  Context cx;
  std::array<io::ReadRing::Completion, kRingReap> done;
  for (;;) {
    auto got = ring_->wait(done);
    if (!got.ok()) {
      log_.error("nbd: {}: {}", n_.export_name, describe(got.error()));
      std::abort();
    }
    unsigned parts_done = 0;
    bool finish = false;
    {
      std::lock_guard lk(ring_mu_);  // the slots were filled before the reader unlocked it
      for (size_t i = 0; i < *got; i++) {
        if (done[i].tag == kRingWakeTag) continue;
        const unsigned slot = static_cast<unsigned>(done[i].tag >> 32);
        RingRead& rr = ring_slots_[slot];
        const BlockTarget::FileRead& p = rr.parts[done[i].tag & 0xffffffffu];
        const int32_t res = done[i].result;
        parts_done++;
        if (res < 0) {
          errno = -res;
          if (rr.res.ok()) rr.res = sys_error("io_uring read", p.file_offset);
        } else if (static_cast<uint64_t>(res) < p.length && rr.res.ok()) {
          // A short read: the rest synchronously.
          std::span<std::byte> rest =
              rr.r.buf.first(rr.r.h.length).subspan(p.buf_offset + res, p.length - res);
          rr.res = io::pread_all(p.fd, rest, p.file_offset + res);
        }
        if (--rr.left == 0) finish_ring_read(slot, cx);
      }
      ring_parts_ -= parts_done;
      finish = ring_closing_ && ring_reads_ == 0;
    }
    if (parts_done > 0) ring_cv_.notify_one();
    flush(cx);
    if (finish) return;
  }
}

// REQUIRES: ring_mu_ held.
void Session::finish_ring_read(unsigned slot, Context& cx) {
  RingRead& rr = ring_slots_[slot];
  end_read(cx, rr.r, rr.ticket, rr.extents, rr.res);
  ring_reads_--;
  ring_free_.push_back(slot);
}

void Session::end_read(Context& cx, Request& r, uint64_t ticket, std::vector<StatusExtent>& extents,
                       const Result<void>& res) {
  t_.finish_read(ticket);
  if (res.ok()) {
    reply_read(cx, r.h, r.buf.first(r.h.length), sparse_read(r.h) ? &extents : nullptr);
  } else {
    reply_result(cx, r.h, res);
  }
  cx.out.hold(std::move(r.buf), r.cost);
}

void Session::start_worker() {
  try {
    workers_.emplace_back([this] { worker(); });
    return;
  } catch (const std::system_error& e) {
    log_.warn("nbd: {}: cannot start a worker thread: {}", n_.export_name, e.what());
  }
  if (!workers_.empty()) return;  // they will get to the queue
  for (;;) {
    Request r;
    {
      std::lock_guard lk(mu_);
      if (queue_.empty()) return;
      r = queue_.pop();
    }
    ring_submit();
    execute(r, reader_cx_);
    flush(reader_cx_);
  }
}

void Session::worker() {
  Context cx;
  std::unique_lock lk(mu_);
  for (;;) {
    while (queue_.empty() && !closing_) {
      idle_++;
      queue_cv_.wait(lk);
      idle_--;
    }
    if (queue_.empty()) return;  // closing, nothing left
    Request r = queue_.pop();
    lk.unlock();
    execute(r, cx);
    flush(cx);
    lk.lock();
  }
}

void Session::execute(Request& r, Context& cx) {
  const wire::RequestHeader& h = r.h;
  const bool fua = h.flags & kCmdFlagFua;
  switch (h.type) {
    case kCmdRead:
      read(r, cx);
      break;
    case kCmdWrite:
      reply_result(cx, h, t_.write(h.offset, r.buf.first(h.length), fua));
      break;
    case kCmdFlush:
      reply_result(cx, h, t_.flush());
      break;
    case kCmdTrim: {
      Result<void> res = t_.trim(h.offset, h.length);
      // TRIM is a hint: a target that cannot discard has done nothing wrong.
      if (!res.ok() && res.error().code == Errc::kUnsupported) res = {};
      if (res.ok() && fua) res = t_.flush();
      reply_result(cx, h, res);
      break;
    }
    case kCmdWriteZeroes: {
      Result<void> res = zero(h);
      if (res.ok() && fua) res = t_.flush();
      reply_result(cx, h, res);
      break;
    }
    case kCmdCache:
      // A prefetch hint; there is no cache in front of the pool to warm.
      reply_ok(cx, h.cookie);
      break;
    case kCmdBlockStatus:
      block_status(h, cx);
      break;
    default:
      // check_request let only the commands above through.
      reply_error(cx, h, kEInval, "unknown command");
      break;
  }
  cx.out.hold(std::move(r.buf), r.cost);
}

Result<void> Session::zero(const wire::RequestHeader& h) {
  const bool no_hole = h.flags & kCmdFlagNoHole;
  Result<void> res = t_.zero(h.offset, h.length, no_hole);
  if (res.ok() || res.error().code != Errc::kUnsupported) return res;
  // The target has no zeroing of its own: write zeros, 1 MiB at a time.
  static const std::vector<std::byte> zeros(1 << 20);
  for (uint64_t pos = 0; pos < h.length;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), h.length - pos));
    TP_TRY(t_.write(h.offset + pos, std::span(zeros.data(), n), false));
    pos += n;
  }
  return {};
}

void Session::read(Request& r, Context& cx) {
  const wire::RequestHeader& h = r.h;
  // Every byte of it is written by the target (read_sparse: holes as zeros) before any is
  // sent: a reused buffer never shows an earlier request's data.
  std::span<std::byte> buf = r.buf.first(h.length);
  const bool sparse = sparse_read(h);
  Result<void> res = sparse ? t_.read_sparse(h.offset, buf, cx.extents) : t_.read(h.offset, buf);
  if (!res.ok()) {
    reply_result(cx, h, res);
    return;
  }
  reply_read(cx, h, buf, sparse ? &cx.extents : nullptr);
}

void Session::reply_read(Context& cx, const wire::RequestHeader& h, std::span<const std::byte> buf,
                         std::vector<StatusExtent>* extents) {
  const uint32_t len = h.length;
  std::vector<wire::Descriptor>& parts = cx.parts;  // flags kStateHole marks a hole
  if (extents) {
    for (StatusExtent& x : *extents) x.flags = (x.flags & kStateZero) ? kStateHole : 0;
    to_descriptors(*extents, len, SIZE_MAX, parts);
    // Extents that do not reach the end leave the tail as data.
    uint64_t covered = 0;
    for (const wire::Descriptor& p : parts) covered += p.length;
    if (covered < len) parts.push_back({static_cast<uint32_t>(len - covered), 0});
  } else {
    parts.clear();
    parts.push_back({len, 0});
  }
  ReplyBatch& out = cx.out;
  if (!n_.structured) {
    out.copy(wire::encode_simple_reply(0, h.cookie));
    out.ref(buf);
    out.end_reply();
    return;
  }
  uint64_t pos = 0;
  for (size_t i = 0; i < parts.size(); i++) {
    const uint16_t flags = i + 1 == parts.size() ? kReplyFlagDone : 0;
    const uint64_t off = h.offset + pos;
    if (parts[i].flags == kStateHole) {
      out.copy(wire::encode_chunk_header(flags, kReplyTypeOffsetHole, h.cookie, 12));
      out.copy(wire::encode_hole_payload(off, parts[i].length));
    } else {
      out.copy(
          wire::encode_chunk_header(flags, kReplyTypeOffsetData, h.cookie, 8 + parts[i].length));
      std::byte o[8];
      wire::store_be64(o, off);
      out.copy(o);
      out.ref(buf.subspan(pos, parts[i].length));
    }
    pos += parts[i].length;
  }
  out.end_reply();
}

void Session::block_status(const wire::RequestHeader& h, Context& cx) {
  const size_t max_count = (h.flags & kCmdFlagReqOne) ? 1 : kMaxStatusDescriptors;
  std::vector<std::vector<std::byte>> payloads;
  for (const MetaContext& c : n_.contexts) {
    auto st = c.delta_base.empty() ? t_.block_status(h.offset, h.length)
                                   : t_.delta_status(c.delta_base, h.offset, h.length);
    std::vector<StatusExtent> e;
    if (st.ok()) {
      e = std::move(*st);
    } else if (st.error().code != Errc::kUnsupported) {
      reply_result(cx, h, st.error());
      return;
    }  // unsupported: one extent, flags 0 ("allocated, contents unknown")
    to_descriptors(e, h.length, max_count, cx.parts);
    payloads.push_back(wire::encode_block_status(c.id, cx.parts));
  }
  for (size_t i = 0; i < payloads.size(); i++) {
    const uint16_t flags = i + 1 == payloads.size() ? kReplyFlagDone : 0;
    cx.out.copy(wire::encode_chunk_header(flags, kReplyTypeBlockStatus, h.cookie,
                                          static_cast<uint32_t>(payloads[i].size())));
    cx.out.copy(payloads[i]);
  }
  cx.out.end_reply();
}

void Session::flush(Context& cx) {
  ReplyBatch& out = cx.out;
  if (out.empty()) return;
  if (out.replies() > 0) send(out.pieces());
  for (Buffer& b : out.held()) pool_.put(std::move(b));
  if (out.held_requests() > 0) release(out.held_cost(), out.held_requests());
  out.clear();
}

void Session::send(std::span<const std::span<const std::byte>> pieces) {
  std::lock_guard lk(write_mu_);
  if (broken_) return;
  if (auto r = ch_.write_all(pieces); !r.ok()) {
    broken_ = true;
    if (is_peer_closed(r.error())) {
      log_.debug("nbd: {}: client went away before its reply", n_.export_name);
    } else {
      log_.warn("nbd: {}: cannot send a reply: {}", n_.export_name, describe(r.error()));
    }
    ch_.shutdown_both();
  }
}

void Session::reply_ok(Context& cx, uint64_t cookie) {
  cx.out.copy(wire::encode_simple_reply(0, cookie));
  cx.out.end_reply();
}

void Session::reply_error(Context& cx, const wire::RequestHeader& h, uint32_t err,
                          std::string_view msg) {
  if (!n_.structured) {
    // A simple reply to a failed READ carries no data (proto.md "Simple replies").
    cx.out.copy(wire::encode_simple_reply(err, h.cookie));
    cx.out.end_reply();
    return;
  }
  auto payload = wire::encode_error_payload(err, msg);
  cx.out.copy(wire::encode_chunk_header(kReplyFlagDone, kReplyTypeError, h.cookie,
                                        static_cast<uint32_t>(payload.size())));
  cx.out.copy(payload);
  cx.out.end_reply();
}

void Session::reply_result(Context& cx, const wire::RequestHeader& h, const Result<void>& r) {
  if (r.ok()) {
    reply_ok(cx, h.cookie);
    return;
  }
  const Error& e = r.error();
  uint32_t err = to_nbd_error(e);
  // Logged once, here, where it becomes the client's answer (STYLE.md "Logging").
  if (err == kEIo) {
    log_.error("nbd: {}: {} at {} (+{}): {}", n_.export_name, command_name(h.type), h.offset,
               h.length, e.to_string());
  } else {
    log_.debug("nbd: {}: {} at {} (+{}): {}", n_.export_name, command_name(h.type), h.offset,
               h.length, e.to_string());
  }
  reply_error(cx, h, err, e.to_string());
}

}  // namespace

void run_session(Channel& ch, Negotiated& n, Logger& log, const SessionOptions& opts,
                 ByteBudget* shared) {
  Session s(ch, n, log, opts, shared);
  s.run();
}

}  // namespace tp::nbd
