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

const char* space_for_name(SpaceFor f) {
  switch (f) {
    case SpaceFor::kNone:
      return "";
    case SpaceFor::kGuarantee:
      return "guarantee";
    case SpaceFor::kReservation:
      return "reservation";
    case SpaceFor::kWrite:
      return "write";
    case SpaceFor::kMetadata:
      return "metadata";
  }
  return "";
}

namespace {

// "832 blocks (54525952 bytes)"
std::string units(uint64_t n, const SpaceNeed& s) {
  std::string u = s.what_for == SpaceFor::kMetadata ? " metadata block" : " block";
  return std::to_string(n) + u + (n == 1 ? "" : "s") + " (" + std::to_string(n * s.unit_bytes) +
         " bytes)";
}

std::string space_details(const SpaceNeed& s) {
  std::string dev = s.dev == kNoDev ? "the volume" : "device " + std::to_string(s.dev);
  std::string r = "needs " + units(s.need, s);
  switch (s.what_for) {
    case SpaceFor::kGuarantee:
      r += " more reserved for the guarantee of " + dev;
      break;
    case SpaceFor::kReservation:
      r += " for the reservation of " + dev;
      break;
    case SpaceFor::kWrite:
      r += " for a write to " + dev + " outside its guarantee";
      break;
    case SpaceFor::kMetadata:
    case SpaceFor::kNone:
      break;
  }
  if (s.shared_with != kNoDev) r += " (shared with device " + std::to_string(s.shared_with) + ")";
  r += ", " + units(s.available(), s) + " available";
  if (s.freed || s.own) {
    r += " (" + std::to_string(s.unreserved) + " unreserved";
    if (s.freed) r += " + " + std::to_string(s.freed) + " freed by the operation";
    if (s.own) r += " + " + std::to_string(s.own) + " of its own reservation";
    r += ")";
  }
  return r;
}

}  // namespace

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
  if (space.present()) {
    s += ": ";
    s += space_details(space);
  }
  return s;
}

}  // namespace tp
