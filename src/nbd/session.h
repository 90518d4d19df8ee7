#pragma once
// The transmission phase of one connection (doc/proto.md "Transmission"): a reader thread
// decodes requests and checks them (wire::check_request), a few worker threads run them on
// the BlockTarget in parallel, and replies go out whole under one write mutex, so chunks of
// different requests never interleave inside a message.
//
// Memory is bounded per connection and for the whole server: the reader waits before taking
// a request whose READ or WRITE buffer would push the connection's bytes in flight past
// max_inflight_bytes (one request of up to kMaxPayload is always allowed), or its request
// count past max_inflight_requests; then it waits for the server-wide ByteBudget
// (nbd/budget.h, ServerOptions::max_inflight_bytes_total) before it allocates the buffer.
// A waiting reader never fails the request: the client's later requests wait in the
// socket. Budget comes back once the reply is sent or the request has failed; a client
// that stops reading its replies, or stops sending in the middle of a WRITE payload, is
// dropped after send_timeout, so it cannot keep budget for ever.
//
// Replies: success of anything but READ and BLOCK_STATUS is a simple reply; READ is a
// structured reply when negotiated (OFFSET_DATA for allocated ranges, OFFSET_HOLE for
// unallocated ones, one OFFSET_DATA chunk with NBD_CMD_FLAG_DF); errors are an
// NBD_REPLY_TYPE_ERROR chunk (with a message) when structured replies were negotiated, a
// simple reply otherwise.

#include <chrono>
#include <cstdint>

#include "nbd/channel.h"
#include "nbd/handshake.h"
#include "nbd/logger.h"

namespace tp::nbd {

struct SessionOptions {
  unsigned workers = 4;                       // request threads per connection
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
