#pragma once
// The transmission phase of one connection (doc/proto.md "Transmission"): a reader thread
// decodes requests and checks them (wire::check_request), a few worker threads run them on
// the BlockTarget in parallel, and replies go out whole under one write mutex, so chunks of
// different requests never interleave inside a message.
//
// Memory per connection is bounded: the reader waits before taking a request whose READ or
// WRITE buffer would push the bytes in flight past max_inflight_bytes (one request of up to
// kMaxPayload is always allowed), or the request count past max_inflight_requests.
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
  unsigned workers = 4;                           // request threads per connection
  uint64_t max_inflight_bytes = 64ull << 20;      // READ/WRITE buffers held at once
  unsigned max_inflight_requests = 128;           // requests taken but not answered
  std::chrono::milliseconds send_timeout{60000};  // a client that stops reading is dropped
};

// Serves requests until NBD_CMD_DISC, EOF (also after Channel::shutdown_read(), the graceful
// stop), a reply that cannot be sent, or a request the stream cannot survive (bad magic, an
// oversized WRITE payload). Requests already taken are always finished and answered (when
// the socket still works) before this returns. Never throws.
void run_session(Channel& ch, Negotiated& n, Logger& log, const SessionOptions& opts);

}  // namespace tp::nbd
