#pragma once
// NBD protocol constants (the "fixed newstyle" handshake and the transmission phase), as
// documented in the NBD project's doc/proto.md (NetworkBlockDevice/nbd). Every field on the
// wire is big-endian; wire.h converts at the socket edge and nothing else sees wire bytes.
//
// Limits that are ours, not the protocol's, are here too, each with the reason for its value.

#include <cstddef>
#include <cstdint>

namespace tp::nbd {

// --- magics -------------------------------------------------------------------------------
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943;  // "NBDMAGIC"
inline constexpr uint64_t kOptMagic = 0x49484156454F5054;  // "IHAVEOPT"
inline constexpr uint64_t kOptReplyMagic = 0x3e889045565a9;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

// --- handshake flags (server, 16 bits) and client flags (32 bits) --------------------------
inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientNoZeroes = 1 << 1;

// --- transmission flags (16 bits, per export) ----------------------------------------------
inline constexpr uint16_t kTxHasFlags = 1 << 0;
inline constexpr uint16_t kTxReadOnly = 1 << 1;
inline constexpr uint16_t kTxSendFlush = 1 << 2;
inline constexpr uint16_t kTxSendFua = 1 << 3;
inline constexpr uint16_t kTxRotational = 1 << 4;
inline constexpr uint16_t kTxSendTrim = 1 << 5;
inline constexpr uint16_t kTxSendWriteZeroes = 1 << 6;
inline constexpr uint16_t kTxSendDf = 1 << 7;
inline constexpr uint16_t kTxCanMultiConn = 1 << 8;
inline constexpr uint16_t kTxSendCache = 1 << 10;
inline constexpr uint16_t kTxSendFastZero = 1 << 11;

// --- options -------------------------------------------------------------------------------
inline constexpr uint32_t kOptExportName = 1;
inline constexpr uint32_t kOptAbort = 2;
inline constexpr uint32_t kOptList = 3;
inline constexpr uint32_t kOptStartTls = 5;
inline constexpr uint32_t kOptInfo = 6;
inline constexpr uint32_t kOptGo = 7;
inline constexpr uint32_t kOptStructuredReply = 8;
inline constexpr uint32_t kOptListMetaContext = 9;
inline constexpr uint32_t kOptSetMetaContext = 10;

// --- option replies --------------------------------------------------------------------------
inline constexpr uint32_t kRepAck = 1;
inline constexpr uint32_t kRepServer = 2;
inline constexpr uint32_t kRepInfo = 3;
inline constexpr uint32_t kRepMetaContext = 4;
inline constexpr uint32_t kRepErrBit = 0x80000000u;
inline constexpr uint32_t kRepErrUnsup = kRepErrBit | 1;
inline constexpr uint32_t kRepErrPolicy = kRepErrBit | 2;
inline constexpr uint32_t kRepErrInvalid = kRepErrBit | 3;
inline constexpr uint32_t kRepErrPlatform = kRepErrBit | 4;
inline constexpr uint32_t kRepErrTlsReqd = kRepErrBit | 5;
inline constexpr uint32_t kRepErrUnknown = kRepErrBit | 6;
inline constexpr uint32_t kRepErrShutdown = kRepErrBit | 7;
inline constexpr uint32_t kRepErrBlockSizeReqd = kRepErrBit | 8;
inline constexpr uint32_t kRepErrTooBig = kRepErrBit | 9;

// --- NBD_OPT_INFO / NBD_OPT_GO information types ------------------------------------------
inline constexpr uint16_t kInfoExport = 0;
inline constexpr uint16_t kInfoName = 1;
inline constexpr uint16_t kInfoDescription = 2;
inline constexpr uint16_t kInfoBlockSize = 3;

// --- commands and command flags --------------------------------------------------------------
inline constexpr uint16_t kCmdRead = 0;
inline constexpr uint16_t kCmdWrite = 1;
inline constexpr uint16_t kCmdDisc = 2;
inline constexpr uint16_t kCmdFlush = 3;
inline constexpr uint16_t kCmdTrim = 4;
inline constexpr uint16_t kCmdCache = 5;
inline constexpr uint16_t kCmdWriteZeroes = 6;
inline constexpr uint16_t kCmdBlockStatus = 7;

inline constexpr uint16_t kCmdFlagFua = 1 << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1 << 1;
inline constexpr uint16_t kCmdFlagDf = 1 << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1 << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1 << 4;

// --- structured replies ---------------------------------------------------------------------
inline constexpr uint16_t kReplyFlagDone = 1 << 0;
inline constexpr uint16_t kReplyTypeNone = 0;
inline constexpr uint16_t kReplyTypeOffsetData = 1;
inline constexpr uint16_t kReplyTypeOffsetHole = 2;
inline constexpr uint16_t kReplyTypeBlockStatus = 5;
inline constexpr uint16_t kReplyTypeError = (1 << 15) | 1;
inline constexpr uint16_t kReplyTypeErrorOffset = (1 << 15) | 2;

// --- error values (the protocol's own numbering, not the host's errno) ------------------------
inline constexpr uint32_t kEPerm = 1;
inline constexpr uint32_t kEIo = 5;
inline constexpr uint32_t kENoMem = 12;
inline constexpr uint32_t kEInval = 22;
inline constexpr uint32_t kENoSpc = 28;
inline constexpr uint32_t kEOverflow = 75;
inline constexpr uint32_t kENotSup = 95;
inline constexpr uint32_t kEShutdown = 108;

// --- base:allocation and thinpool:delta:<name> status flags ---------------------------------
inline constexpr uint32_t kStateHole = 1 << 0;  // base:allocation: not allocated
inline constexpr uint32_t kStateZero = 1 << 1;  // base:allocation: reads as zeros
// thinpool:delta:<name>: the range differs between <name> and the export (its blocks were
// added, removed or rewritten since); clear means both map the same data blocks.
inline constexpr uint32_t kStateChanged = 1 << 0;

inline constexpr const char* kBaseAllocation = "base:allocation";
inline constexpr const char* kDeltaPrefix = "thinpool:delta:";

// --- wire sizes -------------------------------------------------------------------------------
inline constexpr size_t kRequestHeaderBytes = 28;
inline constexpr size_t kSimpleReplyBytes = 16;
inline constexpr size_t kChunkHeaderBytes = 20;
inline constexpr size_t kOptionHeaderBytes = 16;
inline constexpr size_t kOptionReplyHeaderBytes = 20;
inline constexpr size_t kExportNameZeroes = 124;

// --- our limits -------------------------------------------------------------------------------
// Largest READ or WRITE payload. 32 MiB is what qemu and nbdkit use; it bounds the memory one
// request can pin, and it is what NBD_INFO_BLOCK_SIZE advertises as the maximum.
inline constexpr uint32_t kMaxPayload = 32u << 20;
// A WRITE whose length exceeds kMaxPayload is refused with an error, and its payload is read
// and thrown away so the stream stays in step, when it is at most this long; past that the
// connection is dropped (skipping up to 4 GiB would hold the connection for minutes).
inline constexpr uint32_t kMaxSkippedPayload = 64u << 20;
// Largest option payload. The longest legitimate one is a SET_META_CONTEXT with a few
// queries of at most 4096 bytes each; 64 KiB leaves ample room.
inline constexpr uint32_t kMaxOptionBytes = 64u << 10;
// An oversized option is answered with NBD_REP_ERR_TOO_BIG (its data skipped) up to this
// length; past it the connection is dropped.
inline constexpr uint32_t kMaxSkippedOptionBytes = 1u << 20;
// The protocol's string limit (export names, queries, messages).
inline constexpr size_t kMaxStringBytes = 4096;
// Options per connection before we decide the client is looping (nbdinfo --list sends
// one LIST plus one INFO per export; the limit leaves room for large pools).
inline constexpr unsigned kMaxOptions = 4096;
// Block status descriptors per reply (the spec lets a server return fewer than the whole
// range; clients continue from where the reply ends).
inline constexpr size_t kMaxStatusDescriptors = 4096;

// Names for logs ("NBD_OPT_GO", "NBD_CMD_READ"...); "unknown" for anything else.
const char* option_name(uint32_t opt);
const char* command_name(uint16_t cmd);

}  // namespace tp::nbd
