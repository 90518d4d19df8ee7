#pragma once
// The transmission phase of one connection (doc/proto.md "Transmission"). One reader thread
// takes requests from the socket (several per recv, from an input buffer), checks them
// (wire::check_request) and runs them; replies go out whole under one write mutex, so
// chunks of different requests never interleave inside a message.
//
// Who runs a request: small READs and WRITEs (up to SessionOptions::inline_max_bytes, no
// FUA) run on the reader itself, and the replies of a burst go out in one gathered write
// before the reader waits for the client again: a page-cache hit costs less than a thread
// handoff. Everything that may take long (FLUSH, FUA, TRIM, WRITE_ZEROES, BLOCK_STATUS,
// larger requests) goes to worker threads (up to SessionOptions::workers, started when
// first needed), so the reader keeps reading. When a small request on the reader turns out
// slow (an I/O wait), small requests go to the workers too, where waits overlap, until
// requests sampled on the reader are fast again. A request alone in flight always runs on
// the reader (QD1: nothing to overlap with).
//
// READs that would go to a worker go through the connection's io_uring instead when the
// target can hand out its file reads (BlockTarget::start_read, SessionOptions::ring_reads):
// the reader looks the READ up, queues its file reads, and submits the queued ones in one
// call before it waits for anything (the client, budget, room in the ring) or calls the
// target for anything but a start_read that must not wait: a target that holds new requests
// until those in flight end must never wait for a read the reader has not submitted. A
// completing thread sends each READ's reply once its file reads have ended. So a deep queue
// of reads that miss the page cache costs no thread handoff per READ and reaches the disk in
// batches. No io_uring (old kernel, seccomp, kernel.io_uring_disabled): the workers read.
//
// Memory is bounded per connection and for the whole server: the reader waits before taking
// a request whose READ or WRITE buffer would push the connection's bytes in flight past
// max_inflight_bytes (one request of up to kMaxPayload is always allowed), or its request
// count past max_inflight_requests; then it waits for the server-wide ByteBudget
// (nbd/budget.h, ServerOptions::max_inflight_bytes_total) before it takes the buffer.
// Buffers come from a per-connection BufferPool (nbd/buffer_pool.h) and are charged at
// their allocated size (the length rounded up to a power of two, at least 4 KiB); freed
// ones are kept for reuse up to buffer_cache_bytes, outside the budgets. A waiting reader
// never fails the request: the client's later requests wait in the socket. Budget comes
// back once the reply is sent or the request has failed; before the reader waits (for the
// client or for budget) it sends the replies it holds, so it never waits for what it holds
// itself. A client that stops reading its replies, or stops sending in the middle of a
// WRITE payload, is dropped after send_timeout, so it cannot keep budget for ever.
//
// Replies: success of anything but READ and BLOCK_STATUS is a simple reply; READ is a
// structured reply when negotiated (OFFSET_DATA for allocated ranges, OFFSET_HOLE for
// unallocated ones, from one BlockTarget::read_sparse call; one OFFSET_DATA chunk with
// NBD_CMD_FLAG_DF); errors are an NBD_REPLY_TYPE_ERROR chunk (with a message) when
// structured replies were negotiated, a simple reply otherwise. Replies may leave in any
// order (the client matches cookies).

#include <chrono>
#include <cstdint>

#include "nbd/channel.h"
#include "nbd/handshake.h"
#include "nbd/logger.h"

namespace tp::nbd {

struct SessionOptions {
  // Threads per connection that run requests besides the reader, started when first
  // needed. They take what may block; while the target waits for I/O, more of them keep
  // more reads in flight at the disk.
  unsigned workers = 16;
  // READs that would go to a worker are read through an io_uring of the connection instead,
  // when the target supports it (BlockTarget::start_read) and the kernel allows it.
  bool ring_reads = true;
  // READs and WRITEs up to this many bytes may run on the reader thread (0: never).
  uint32_t inline_max_bytes = 128u << 10;
  // Freed READ/WRITE buffers kept for reuse by the connection (not counted in the budgets).
  uint64_t buffer_cache_bytes = 4ull << 20;
  uint64_t max_inflight_bytes = 64ull << 20;  // READ/WRITE buffers held at once
  unsigned max_inflight_requests = 128;       // requests taken but not answered
  // A client that stops reading its replies (one blocked send), or sends nothing for this
  // long in the middle of a WRITE payload, is dropped.
  std::chrono::milliseconds send_timeout{60000};
};

class ByteBudget;

// Serves requests until NBD_CMD_DISC, EOF (also after Channel::shutdown_read(), the graceful
// stop), a reply that cannot be sent, or a request the stream cannot survive (bad magic, an
// oversized WRITE payload), or shared->close() (graceful stop: a request waiting for budget
// is not taken). Requests already taken are always finished and answered (when the socket
// still works) before this returns. shared: the server-wide budget, or nullptr for none.
// Never throws.
void run_session(Channel& ch, Negotiated& n, Logger& log, const SessionOptions& opts,
                 ByteBudget* shared = nullptr);

}  // namespace tp::nbd
