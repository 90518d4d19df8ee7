#pragma once
// Explicit little-endian field access (LevelDB util/coding.h style): on-disk structures are
// never cast onto buffers; every field is loaded or stored through these, via memcpy.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace tp::pdata {

static_assert(std::endian::native == std::endian::little, "thinpool assumes a little-endian host");

inline uint32_t load_le32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t load_le64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline void store_le32(std::byte* p, uint32_t v) {
  std::memcpy(p, &v, 4);
}
inline void store_le64(std::byte* p, uint64_t v) {
  std::memcpy(p, &v, 8);
}

}  // namespace tp::pdata
