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

std::string describe_space(const SpaceNeed& n, const std::function<std::string(uint64_t)>& amount,
                           const std::function<std::string(uint32_t)>& name,
                           std::string_view fallback, std::string_view by) {
  auto named = [&](uint32_t dev, std::string_view otherwise) {
    std::string v = dev != kNoDev ? name(dev) : "";
    return v.empty() ? std::string(otherwise) : v;
  };
  const std::string vol = named(n.dev, fallback);
  std::string t = "needs " + amount(n.need);
  // (A plan of an operation that only gives space back needs nothing.)
  switch (n.need ? n.what_for : SpaceFor::kNone) {
    case SpaceFor::kGuarantee:
      t += " more reserved for the guarantee of " + vol;
      break;
    case SpaceFor::kReservation:
      t += " for the reservation of " + vol;
      break;
    case SpaceFor::kWrite:
      t += " for a write to " + vol + " outside its guarantee";
      break;
    case SpaceFor::kMetadata:
      t += " of free metadata space (held back so that trim, remove and merge always work)";
      break;
    case SpaceFor::kNone:
      break;
  }
  if (std::string with = named(n.shared_with, ""); n.need && !with.empty()) {
    t += " (shared with " + with + ")";
  }
  t += ", " + amount(n.available()) + " available";
  if (n.freed || n.own) {
    t +=
        " (" + amount(n.unreserved) + (n.what_for == SpaceFor::kMetadata ? " free" : " unreserved");
    if (n.freed) t += " + " + amount(n.freed) + " freed by the " + std::string(by);
    if (n.own) t += " + " + amount(n.own) + " of " + vol + "'s reservation";
    t += ")";
  }
  return t;
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
  if (space.present()) {
    // Without names or human units (the CLI has those): "832 blocks (54525952 bytes)",
    // "device 3".
    const SpaceNeed& n = space;
    auto amount = [&](uint64_t units) {
      std::string u = n.what_for == SpaceFor::kMetadata ? " metadata block" : " block";
      return std::to_string(units) + u + (units == 1 ? "" : "s") + " (" +
             std::to_string(units * n.unit_bytes) + " bytes)";
    };
    auto name = [](uint32_t dev) { return "device " + std::to_string(dev); };
    s += ": ";
    s += describe_space(n, amount, name, "the volume", "operation");
  }
  return s;
}

}  // namespace tp
