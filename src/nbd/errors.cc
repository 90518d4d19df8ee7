#include <cerrno>
#include <cstdio>

#include "nbd/logger.h"
#include "nbd/protocol.h"
#include "nbd/target.h"

namespace tp::nbd {

uint32_t to_nbd_error(const Error& e) {
  // The host's errno first: a full or over-quota host filesystem is "no space" to the client
  // (proto.md: EDQUOT and EFBIG SHOULD be reported as ENOSPC).
  if (e.sys_errno == ENOSPC || e.sys_errno == EDQUOT || e.sys_errno == EFBIG) return kENoSpc;
  switch (e.code) {
    case Errc::kNoSpace:
      return kENoSpc;
    case Errc::kReadOnly:
      return kEPerm;
    case Errc::kInvalidArgument:
    case Errc::kUnsupported:
      return kEInval;
    case Errc::kOk:  // not an error; never passed here, but never answer "success" for it
    case Errc::kNotFound:
    case Errc::kCorruption:
    case Errc::kIo:
    case Errc::kBusy:
    case Errc::kExists:
      return kEIo;
  }
  return kEIo;
}

void StderrLogger::log(LogLevel level, std::string_view message) {
  static const char* const kNames[] = {"error", "warn", "info", "debug"};
  std::lock_guard lk(mu_);
  std::fprintf(stderr, "thinpool: %s: %.*s\n", kNames[static_cast<int>(level)],
               static_cast<int>(message.size()), message.data());
}

}  // namespace tp::nbd
