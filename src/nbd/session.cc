#include "nbd/session.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "nbd/budget.h"
#include "nbd/protocol.h"
#include "nbd/wire.h"

namespace tp::nbd {
namespace {

struct Request {
  wire::RequestHeader h;
  std::vector<std::byte> payload;  // WRITE data
  uint64_t cost = 0;               // bytes charged against max_inflight_bytes and the shared budget
};

// Extents clipped to [0, len), zero-length ones dropped, neighbours with the same flags
// merged, at most max_count of them. An empty input (or one that covers nothing) becomes a
// single extent with flags 0 (what the spec allows a server to say for anything).
std::vector<wire::Descriptor> to_descriptors(const std::vector<StatusExtent>& ext, uint32_t len,
                                             size_t max_count) {
  std::vector<wire::Descriptor> out;
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
  return out;
}

class Session {
 public:
  Session(Channel& ch, Negotiated& n, Logger& log, const SessionOptions& opts, ByteBudget* shared)
      : ch_(ch), n_(n), t_(*n.target), log_(log), opts_(opts), shared_(shared) {
    state_.size = t_.size();
    state_.eflags = n.eflags;
    state_.structured = n.structured;
    state_.has_contexts = !n.contexts.empty();
    opts_.workers = std::max(1u, opts_.workers);
    opts_.max_inflight_requests = std::max(1u, opts_.max_inflight_requests);
  }

  void run();

 private:
  void worker();
  void execute(Request& r);
  void read(const wire::RequestHeader& h);
  void block_status(const wire::RequestHeader& h);
  Result<void> zero(const wire::RequestHeader& h);

  // Sends one whole reply; on failure the connection is finished (shut down both ways so
  // the reader stops too).
  void send(std::span<const std::span<const std::byte>> pieces);
  void reply_ok(uint64_t cookie);
  void reply_error(const wire::RequestHeader& h, uint32_t err, std::string_view msg);
  void reply_result(const wire::RequestHeader& h, const Result<void>& r);

  // Budget: blocks the reader until a request of `cost` bytes fits in this connection's
  // limits, then in the shared budget. False (nothing held) when the shared budget is
  // closed: the server is stopping.
  bool acquire(uint64_t cost);
  void release(uint64_t cost);
  // Reads a WRITE payload; fails when the client sends nothing for send_timeout.
  Result<void> read_payload(std::span<std::byte> buf);

  Channel& ch_;
  Negotiated& n_;
  BlockTarget& t_;
  Logger& log_;
  SessionOptions opts_;
  ByteBudget* shared_;
  wire::ExportState state_;

  std::mutex write_mu_;
  bool broken_ = false;  // guarded by write_mu_

  std::mutex mu_;
  std::condition_variable queue_cv_;   // workers: a request or closing
  std::condition_variable budget_cv_;  // reader: budget freed
  std::deque<Request> queue_;
  bool closing_ = false;
  uint64_t inflight_bytes_ = 0;
  unsigned inflight_requests_ = 0;
};

bool Session::acquire(uint64_t cost) {
  {
    std::unique_lock lk(mu_);
    budget_cv_.wait(lk, [&] {
      return inflight_requests_ == 0 || (inflight_requests_ < opts_.max_inflight_requests &&
                                         inflight_bytes_ + cost <= opts_.max_inflight_bytes);
    });
    inflight_requests_++;
    inflight_bytes_ += cost;
  }
  // Only this connection's own workers hold its limits, and they never wait for the shared
  // budget: waiting for it while holding a slot here cannot deadlock.
  if (cost > 0 && shared_ && !shared_->acquire(cost)) {
    std::lock_guard lk(mu_);
    inflight_requests_--;
    inflight_bytes_ -= cost;
    return false;
  }
  return true;
}

void Session::release(uint64_t cost) {
  if (cost > 0 && shared_) shared_->release(cost);
  std::lock_guard lk(mu_);
  inflight_requests_--;
  inflight_bytes_ -= cost;
  budget_cv_.notify_one();
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

void Session::run() {
  ch_.set_send_timeout(opts_.send_timeout);
  std::vector<std::thread> workers;
  workers.reserve(opts_.workers);
  for (unsigned i = 0; i < opts_.workers; i++) workers.emplace_back([this] { worker(); });

  const char* end_reason = "client disconnected";
  for (;;) {
    std::byte hb[kRequestHeaderBytes];
    if (auto r = ch_.read_exact(hb); !r.ok()) {
      if (!is_peer_closed(r.error()))
        log_.warn("nbd: {}: read: {}", n_.export_name, describe(r.error()));
      end_reason = "connection closed without NBD_CMD_DISC";
      break;
    }
    auto h = wire::decode_request(hb);
    if (!h.ok()) {
      log_.warn("nbd: {}: {}; dropping the connection", n_.export_name, h.error().what);
      end_reason = "protocol error";
      break;
    }
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
        if (auto r = ch_.skip(v.payload); !r.ok()) break;
      }
      reply_error(*h, v.error, v.why);
      continue;
    }
    Request req;
    req.h = *h;
    if (h->type == kCmdRead || h->type == kCmdWrite) req.cost = h->length;
    if (!acquire(req.cost)) {
      end_reason = "server stopping (a request waiting for memory was not taken)";
      break;
    }
    if (v.payload > 0) {
      req.payload.resize(v.payload);
      if (auto r = read_payload(req.payload); !r.ok()) {
        release(req.cost);
        if (r.error().what == kTimedOut) {
          log_.warn("nbd: {}: client stalled in the middle of a WRITE payload; dropping it",
                    n_.export_name);
        }
        end_reason = "connection closed in the middle of a write";
        break;
      }
    }
    {
      std::lock_guard lk(mu_);
      queue_.push_back(std::move(req));
    }
    queue_cv_.notify_one();
  }

  {
    std::lock_guard lk(mu_);
    closing_ = true;
  }
  queue_cv_.notify_all();
  for (std::thread& w : workers) w.join();
  log_.debug("nbd: {}: session ended: {}", n_.export_name, end_reason);
}

void Session::worker() {
  for (;;) {
    Request r;
    {
      std::unique_lock lk(mu_);
      queue_cv_.wait(lk, [&] { return closing_ || !queue_.empty(); });
      if (queue_.empty()) return;  // closing, nothing left
      r = std::move(queue_.front());
      queue_.pop_front();
    }
    execute(r);
    uint64_t cost = r.cost;
    r.payload = {};  // free the buffer before the reader may take more
    release(cost);
  }
}

void Session::execute(Request& r) {
  const wire::RequestHeader& h = r.h;
  const bool fua = h.flags & kCmdFlagFua;
  switch (h.type) {
    case kCmdRead:
      read(h);
      return;
    case kCmdWrite:
      reply_result(h, t_.write(h.offset, r.payload, fua));
      return;
    case kCmdFlush:
      reply_result(h, t_.flush());
      return;
    case kCmdTrim: {
      Result<void> res = t_.trim(h.offset, h.length);
      // TRIM is a hint: a target that cannot discard has done nothing wrong.
      if (!res.ok() && res.error().code == Errc::kUnsupported) res = {};
      if (res.ok() && fua) res = t_.flush();
      reply_result(h, res);
      return;
    }
    case kCmdWriteZeroes: {
      Result<void> res = zero(h);
      if (res.ok() && fua) res = t_.flush();
      reply_result(h, res);
      return;
    }
    case kCmdCache:
      // A prefetch hint; there is no cache in front of the pool to warm.
      reply_ok(h.cookie);
      return;
    case kCmdBlockStatus:
      block_status(h);
      return;
    default:
      // check_request let only the commands above through.
      reply_error(h, kEInval, "unknown command");
      return;
  }
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

void Session::read(const wire::RequestHeader& h) {
  const uint32_t len = h.length;
  std::vector<wire::Descriptor> parts;  // flags kStateHole marks a hole
  if (n_.structured && !(h.flags & kCmdFlagDf)) {
    auto st = t_.block_status(h.offset, len);
    if (st.ok()) {
      std::vector<StatusExtent> e = std::move(*st);
      for (StatusExtent& x : e) x.flags = (x.flags & kStateZero) ? kStateHole : 0;
      parts = to_descriptors(e, len, SIZE_MAX);
      // Extents that do not reach the end leave the tail as data.
      uint64_t covered = 0;
      for (auto& p : parts) covered += p.length;
      if (covered < len) parts.push_back({static_cast<uint32_t>(len - covered), 0});
    }
  }
  if (parts.empty()) parts.push_back({len, 0});
  const bool all_hole = parts.size() == 1 && parts[0].flags == kStateHole;

  std::vector<std::byte> buf;
  if (!all_hole) {
    buf.resize(len);
    if (auto r = t_.read(h.offset, buf); !r.ok()) {
      reply_result(h, r);
      return;
    }
  }
  if (!n_.structured) {
    auto hdr = wire::encode_simple_reply(0, h.cookie);
    std::span<const std::byte> pieces[] = {hdr, buf};
    send(pieces);
    return;
  }
  // Chunk headers and payload prefixes live here while the pieces point at them.
  std::vector<std::array<std::byte, kChunkHeaderBytes>> hdrs(parts.size());
  std::vector<std::array<std::byte, 12>> pre(parts.size());
  std::vector<std::span<const std::byte>> pieces;
  pieces.reserve(parts.size() * 3);
  uint64_t pos = 0;
  for (size_t i = 0; i < parts.size(); i++) {
    const uint16_t flags = i + 1 == parts.size() ? kReplyFlagDone : 0;
    const uint64_t off = h.offset + pos;
    if (parts[i].flags == kStateHole) {
      hdrs[i] = wire::encode_chunk_header(flags, kReplyTypeOffsetHole, h.cookie, 12);
      pre[i] = wire::encode_hole_payload(off, parts[i].length);
      pieces.push_back(hdrs[i]);
      pieces.push_back(pre[i]);
    } else {
      hdrs[i] =
          wire::encode_chunk_header(flags, kReplyTypeOffsetData, h.cookie, 8 + parts[i].length);
      wire::store_be64(pre[i].data(), off);
      pieces.push_back(hdrs[i]);
      pieces.push_back(std::span<const std::byte>(pre[i]).first(8));
      pieces.push_back(std::span<const std::byte>(buf).subspan(pos, parts[i].length));
    }
    pos += parts[i].length;
  }
  send(pieces);
}

void Session::block_status(const wire::RequestHeader& h) {
  const size_t max_count = (h.flags & kCmdFlagReqOne) ? 1 : kMaxStatusDescriptors;
  std::vector<std::vector<std::byte>> payloads;
  for (const MetaContext& c : n_.contexts) {
    auto st = c.delta_base.empty() ? t_.block_status(h.offset, h.length)
                                   : t_.delta_status(c.delta_base, h.offset, h.length);
    std::vector<StatusExtent> e;
    if (st.ok()) {
      e = std::move(*st);
    } else if (st.error().code != Errc::kUnsupported) {
      reply_result(h, st.error());
      return;
    }  // unsupported: one extent, flags 0 ("allocated, contents unknown")
    payloads.push_back(wire::encode_block_status(c.id, to_descriptors(e, h.length, max_count)));
  }
  std::vector<std::array<std::byte, kChunkHeaderBytes>> hdrs(payloads.size());
  std::vector<std::span<const std::byte>> pieces;
  for (size_t i = 0; i < payloads.size(); i++) {
    const uint16_t flags = i + 1 == payloads.size() ? kReplyFlagDone : 0;
    hdrs[i] = wire::encode_chunk_header(flags, kReplyTypeBlockStatus, h.cookie,
                                        static_cast<uint32_t>(payloads[i].size()));
    pieces.push_back(hdrs[i]);
    pieces.push_back(payloads[i]);
  }
  send(pieces);
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

void Session::reply_ok(uint64_t cookie) {
  auto hdr = wire::encode_simple_reply(0, cookie);
  std::span<const std::byte> pieces[] = {hdr};
  send(pieces);
}

void Session::reply_error(const wire::RequestHeader& h, uint32_t err, std::string_view msg) {
  if (!n_.structured) {
    // A simple reply to a failed READ carries no data (proto.md "Simple replies").
    auto hdr = wire::encode_simple_reply(err, h.cookie);
    std::span<const std::byte> pieces[] = {hdr};
    send(pieces);
    return;
  }
  auto payload = wire::encode_error_payload(err, msg);
  auto hdr = wire::encode_chunk_header(kReplyFlagDone, kReplyTypeError, h.cookie,
                                       static_cast<uint32_t>(payload.size()));
  std::span<const std::byte> pieces[] = {hdr, payload};
  send(pieces);
}

void Session::reply_result(const wire::RequestHeader& h, const Result<void>& r) {
  if (r.ok()) {
    reply_ok(h.cookie);
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
  reply_error(h, err, e.to_string());
}

}  // namespace

void run_session(Channel& ch, Negotiated& n, Logger& log, const SessionOptions& opts,
                 ByteBudget* shared) {
  Session s(ch, n, log, opts, shared);
  s.run();
}

}  // namespace tp::nbd
