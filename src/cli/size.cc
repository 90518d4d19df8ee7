#include "cli/size.h"

#include <fmt/format.h>

#include <array>
#include <cctype>

namespace tp::cli {
namespace {

using u128 = unsigned __int128;

constexpr std::string_view kUnits = "KMGTPE";

// The exponent of 1024 a unit letter stands for; 0 when `c` is not a unit.
int unit_power(char c) {
  auto pos = kUnits.find(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  return pos == std::string_view::npos ? 0 : static_cast<int>(pos) + 1;
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (size_t i = 0; i < a.size(); i++) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

Error bad(const char* why) {
  return make_error(Errc::kInvalidArgument, why);
}

}  // namespace

Result<uint64_t> parse_size(std::string_view text) {
  if (text.empty()) {
    return bad("empty size");
  }
  size_t i = 0;
  while (i < text.size() && is_digit(text[i])) {
    i++;
  }
  std::string_view int_digits = text.substr(0, i);
  if (int_digits.empty()) {
    return bad("a size must start with a digit");
  }
  std::string_view frac_digits;
  if (i < text.size() && text[i] == '.') {
    size_t start = ++i;
    while (i < text.size() && is_digit(text[i])) {
      i++;
    }
    frac_digits = text.substr(start, i - start);
    if (frac_digits.empty()) {
      return bad("a digit must follow the decimal point");
    }
  }
  std::string_view suffix = text.substr(i);
  int power = 0;
  if (!suffix.empty() && unit_power(suffix[0]) != 0) {
    power = unit_power(suffix[0]);
    suffix.remove_prefix(1);
    if (!suffix.empty() && !iequals(suffix, "B") && !iequals(suffix, "iB")) {
      return bad("unknown unit (use K, M, G, T, P or E, optionally followed by iB or B)");
    }
  } else if (!suffix.empty() && !iequals(suffix, "B")) {
    return bad("unknown unit (use K, M, G, T, P or E, optionally followed by iB or B)");
  }
  const unsigned shift = 10u * static_cast<unsigned>(power);

  // Integer part: leading zeros do not count towards the length limit.
  while (int_digits.size() > 1 && int_digits[0] == '0') {
    int_digits.remove_prefix(1);
  }
  if (int_digits.size() > 19) {  // 10^19 > 2^63 already
    return bad("too large (the limit is 8 EiB)");
  }
  u128 int_part = 0;
  for (char c : int_digits) {
    int_part = int_part * 10 + static_cast<unsigned>(c - '0');
  }
  // int_part < 10^19 < 2^64 and shift <= 60, so this fits in 128 bits.
  u128 total = int_part << shift;
  if (total > kMaxSizeBytes) {
    return bad("too large (the limit is 8 EiB)");
  }

  // Fraction f / 10^n scaled by 2^shift must be a whole number: with c = min(n, shift) twos
  // cancelled, the denominator left is d = 2^(n-c) * 5^n, which must divide f.
  while (!frac_digits.empty() && frac_digits.back() == '0') {
    frac_digits.remove_suffix(1);
  }
  if (!frac_digits.empty()) {
    if (frac_digits.size() > 38) {  // f < 10^38 fits in 128 bits; no size needs more
      return bad("too many decimal places");
    }
    const unsigned n = static_cast<unsigned>(frac_digits.size());
    u128 f = 0;
    for (char c : frac_digits) {
      f = f * 10 + static_cast<unsigned>(c - '0');
    }
    const unsigned c = n < shift ? n : shift;
    u128 d = u128{1} << (n - c);
    for (unsigned k = 0; k < n; k++) {
      d *= 5;
    }
    if (f % d != 0) {
      return bad("not a whole number of bytes");
    }
    const u128 q = f / d;
    const unsigned left = shift - c;
    if (q > (u128{kMaxSizeBytes} >> left)) {
      return bad("too large (the limit is 8 EiB)");
    }
    total += q << left;
    if (total > kMaxSizeBytes) {
      return bad("too large (the limit is 8 EiB)");
    }
  }
  return static_cast<uint64_t>(total);
}

std::string format_bytes(uint64_t bytes) {
  static constexpr std::array<const char*, 6> kNames = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) {
    return fmt::format("{} B", bytes);
  }
  size_t unit = 0;
  while (unit + 1 < kNames.size() && bytes >= (uint64_t{1} << (10 * (unit + 2)))) {
    unit++;
  }
  const double value =
      static_cast<double>(bytes) / static_cast<double>(uint64_t{1} << (10 * (unit + 1)));
  return fmt::format("{:.2f} {}", value, kNames[unit]);
}

}  // namespace tp::cli
