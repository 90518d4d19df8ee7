#include "io/result.h"

#include <cstring>

namespace tp {

const char* errc_name(Errc c) {
  switch (c) {
    case Errc::kOk:
      return "ok";
    case Errc::kNotFound:
      return "not found";
    case Errc::kCorruption:
      return "corruption";
    case Errc::kNoSpace:
      return "out of space";
    case Errc::kIo:
      return "I/O error";
    case Errc::kInvalidArgument:
      return "invalid argument";
    case Errc::kBusy:
      return "busy";
    case Errc::kUnsupported:
      return "unsupported";
    case Errc::kExists:
      return "already exists";
    case Errc::kReadOnly:
      return "read-only";
  }
  return "unknown";
}

std::string Error::to_string() const {
  std::string s = errc_name(code);
  if (what && *what) {
    s += ": ";
    s += what;
  }
  if (where != kNoAddr) {
    s += " (block " + std::to_string(where) + ")";
  }
  if (sys_errno != 0) {
    s += ": ";
    s += std::strerror(sys_errno);
  }
  return s;
}

}  // namespace tp
