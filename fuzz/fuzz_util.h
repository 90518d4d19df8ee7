#pragma once
// Helpers shared by the fuzz targets: a property check that crashes (so libFuzzer reports
// it), a per-process scratch directory, and a byte reader that turns fuzz input into
// choices without ever running past its end.

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>

namespace tp::fuzz {

// A broken property: print what and abort (libFuzzer saves the input as a crash).
#define TP_FUZZ_REQUIRE(cond)                                                                \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "fuzz property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

// A directory of this process's own under $TMPDIR (or /tmp), removed at exit.
inline const std::string& scratch_dir() {
  // Never freed: the exit handler below runs after static destructors would have.
  static const std::string* dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/tp-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl.data())) {
      std::perror("mkdtemp");
      std::abort();
    }
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return new std::string(tmpl);
  }();
  return *dir;
}

inline void write_file(const std::string& path, std::span<const std::byte> bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!f) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::abort();
  }
}

// Consumes fuzz input front to back; past the end everything reads as zero.
class Bytes {
 public:
  explicit Bytes(std::span<const std::byte> in) : in_(in) {}
  bool empty() const { return in_.empty(); }
  size_t size() const { return in_.size(); }
  uint8_t u8() {
    if (in_.empty()) return 0;
    uint8_t v = std::to_integer<uint8_t>(in_[0]);
    in_ = in_.subspan(1);
    return v;
  }
  uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
  uint32_t u32() { return u16() | (uint32_t{u16()} << 16); }
  uint64_t u64() { return u32() | (uint64_t{u32()} << 32); }
  // Up to n bytes (fewer at the end of the input).
  std::span<const std::byte> take(size_t n) {
    n = std::min(n, in_.size());
    auto out = in_.first(n);
    in_ = in_.subspan(n);
    return out;
  }
  std::span<const std::byte> rest() { return take(in_.size()); }

 private:
  std::span<const std::byte> in_;
};

inline std::span<const std::byte> as_bytes(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const std::byte*>(data), size};
}

}  // namespace tp::fuzz
