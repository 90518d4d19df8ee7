#pragma once
// Sizes on the command line and in human output (CLI.md: "Sizes take 4096, 64K, 1.5G, 2T").
//
// Accepted: DIGITS [ "." DIGITS ] [ UNIT ] [ "iB" | "B" ], case-insensitive, no sign and no
// spaces. UNIT is one of K M G T P E, binary (K = 1024). Without a unit only a plain "B" may
// follow ("512B"). Decimals are exact ("1.5K" = 1536) and the result must be a whole number of
// bytes ("1.5" and "0.1K" are rejected) and at most 2^63.

#include <cstdint>
#include <string>
#include <string_view>

#include "io/result.h"

namespace tp::cli {

inline constexpr uint64_t kMaxSizeBytes = uint64_t{1} << 63;

// The number of bytes `text` names. Errc::kInvalidArgument with a reason otherwise.
Result<uint64_t> parse_size(std::string_view text);

// "512 B", "64.00 KiB", "1.50 GiB": two decimals in the largest binary unit that keeps the
// number >= 1.
std::string format_bytes(uint64_t bytes);

}  // namespace tp::cli
