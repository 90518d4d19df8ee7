#pragma once
// CRC-32C (Castagnoli). Uses the SSE4.2 crc32 instruction when the CPU has it, a table
// otherwise. dm-thin checksums are crc32c_raw(~0, bytes 4..4095) ^ salt (DM_THIN_FORMAT.md §1).

#include <cstddef>
#include <cstdint>
#include <span>

namespace tp::pdata {

// Raw update: no initial or final inversion.
uint32_t crc32c_raw(uint32_t seed, std::span<const std::byte> data);

// The usual CRC-32C (iSCSI): init ~0, final ~.
inline uint32_t crc32c(std::span<const std::byte> data) {
  return ~crc32c_raw(0xFFFFFFFFu, data);
}

}  // namespace tp::pdata
