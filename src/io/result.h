#pragma once
// Errors as values (STYLE.md "Errors"): every call in the core layers that can fail returns
// tp::Result<T>. An Error is a small closed code, the errno of the failing syscall (if any),
// the block or byte address it concerns, and a string literal: building one never allocates.

#include <cerrno>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace tp {

enum class Errc : uint8_t {
  kOk = 0,
  kNotFound,         // a named thing (volume, snapshot) does not exist
  kCorruption,       // on-disk structure failed validation
  kNoSpace,          // data or metadata space exhausted (ENOSPC)
  kIo,               // the device reported an error (EIO)
  kInvalidArgument,  // bad size, offset, name...
  kBusy,             // locked, exported, has dependents
  kUnsupported,      // not implemented by this device / build
  kExists,           // a named thing already exists
  kReadOnly,         // pool or volume is read-only (EPERM for NBD writes)
};

const char* errc_name(Errc c);

inline constexpr uint64_t kNoAddr = ~uint64_t{0};
inline constexpr uint32_t kNoDev = ~uint32_t{0};

// What a space refusal (kNoSpace) was for (SEMANTICS.md "Errors").
enum class SpaceFor : uint8_t {
  kNone = 0,
  kGuarantee,    // the guarantee of `dev`: its guaranteed blocks that are (or become) unmapped
                 // or shared need a reserved block each
  kReservation,  // the explicit reservation of `dev` (reserve, snapshot --reserve)
  kWrite,        // a write to `dev` outside its guarantee, with no reservation left
  kMetadata,     // metadata blocks held back so that trim, remove and merge always work
};
// "guarantee", "reservation", "write", "metadata" ("" for kNone).
const char* space_for_name(SpaceFor f);

// The numbers behind a kNoSpace error: what was needed and what was available, in units
// of unit_bytes (the pool's data block size; 4096 for metadata blocks). Plain numbers, so
// an Error stays a small value that never allocates; the layer that decided fills it in,
// the CLI names the volumes. unit_bytes == 0: no details.
struct SpaceNeed {
  uint64_t need = 0;              // units the operation needs reserved or allocated (net of what
                                  // it releases)
  uint64_t unreserved = 0;        // unreserved units before the operation
  uint64_t freed = 0;             // units the operation itself frees (they count as available)
  uint64_t own = 0;               // units of dev's own reservation it may draw on (provision)
  uint32_t unit_bytes = 0;        // bytes a unit; 0: no details
  uint32_t dev = kNoDev;          // thin device id of the volume the space is for
  uint32_t shared_with = kNoDev;  // the volume whose sharing makes it needed, if any
  SpaceFor what_for = SpaceFor::kNone;

  bool present() const { return unit_bytes != 0; }
  uint64_t available() const { return unreserved + freed + own; }
  bool fits() const { return need <= available(); }
};

// The numbers of n in words: "needs A more reserved for the guarantee of V (shared with W),
// B available (U unreserved + F freed by the BY + O of V's reservation)". amount(units)
// and name(dev) (dev != kNoDev; "" when unknown: fallback is used) say how an amount and a
// volume read; by: what frees the blocks. Error::to_string() and the CLI both use it.
std::string describe_space(const SpaceNeed& n,
                           const std::function<std::string(uint64_t units)>& amount,
                           const std::function<std::string(uint32_t dev)>& name,
                           std::string_view fallback, std::string_view by);

struct Error {
  Errc code = Errc::kIo;
  int sys_errno = 0;         // errno of the syscall that failed, 0 if none
  uint64_t where = kNoAddr;  // block number or byte offset concerned, kNoAddr if none
  const char* what = "";     // string literal
  SpaceNeed space;           // kNoSpace: what was needed and available (may be absent)

  constexpr Error() = default;
  constexpr Error(Errc c, int e, uint64_t w, const char* wh)
      : code(c), sys_errno(e), where(w), what(wh) {}

  // "corruption: bad checksum (block 12)"; a space refusal adds its numbers: "out of space:
  // pool is full (no unreserved blocks): needs 1 block (65536 bytes) for a write to device 3
  // outside its guarantee, 0 blocks (0 bytes) available" - for logs, NBD and CLI messages.
  std::string to_string() const;
};

// Built on hot paths (a write on a full pool) and copied through every layer: a plain value.
static_assert(std::is_trivially_copyable_v<Error> && sizeof(Error) <= 80);

inline Error make_error(Errc c, const char* what, uint64_t where = kNoAddr, int sys_errno = 0) {
  return Error{c, sys_errno, where, what};
}
// A space refusal with its numbers.
inline Error space_error(const char* what, const SpaceNeed& need) {
  Error e(Errc::kNoSpace, 0, kNoAddr, what);
  e.space = need;
  return e;
}
// From the current errno after a failed syscall.
inline Error sys_error(const char* what, uint64_t where = kNoAddr) {
  int e = errno;
  return Error{e == ENOSPC ? Errc::kNoSpace : Errc::kIo, e, where, what};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(const T& v) : v_(v) {}        // NOLINT(google-explicit-constructor)
  Result(T&& v) : v_(std::move(v)) {}  // NOLINT
  Result(Error e) : v_(e) {}           // NOLINT
  template <typename U, typename = std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                                    !std::is_same_v<std::decay_t<U>, Error> &&
                                                    !std::is_same_v<std::decay_t<U>, Result<T>>>>
  Result(U&& u) : v_(T(std::forward<U>(u))) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return std::get<1>(v_); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error e) : err_(e) {}  // NOLINT
  bool ok() const { return !err_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return *err_; }
  void value() const {}

 private:
  std::optional<Error> err_;
};

inline Result<void> ok_result() {
  return {};
}

}  // namespace tp

#define TP_CONCAT_INNER(a, b) a##b
#define TP_CONCAT(a, b) TP_CONCAT_INNER(a, b)

// Propagates the error of a Result-returning expression.
#define TP_TRY(expr)                               \
  do {                                             \
    auto&& tp_try_r_ = (expr);                     \
    if (!tp_try_r_.ok()) return tp_try_r_.error(); \
  } while (0)

#define TP_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.error();             \
  lhs = std::move(tmp).value()

// TP_ASSIGN_OR_RETURN(auto x, f()); declares/assigns x or returns f()'s error.
#define TP_ASSIGN_OR_RETURN(lhs, expr) \
  TP_ASSIGN_OR_RETURN_IMPL(TP_CONCAT(tp_aor_, __LINE__), lhs, expr)
