#include "io/block_device.h"

#include <algorithm>
#include <vector>

namespace tp::io {

// The portable fallback: bounce through memory. Devices with a native copy override it.
Result<void> BlockDevice::copy(uint64_t src, uint64_t dst, uint64_t len) {
  // 1 MiB keeps the buffer small while amortising the per-call cost of read and write.
  constexpr uint64_t kChunk = uint64_t{1} << 20;
  std::vector<std::byte> buf(std::min(len, kChunk));
  for (uint64_t done = 0; done < len;) {
    auto chunk = std::span(buf).first(std::min(kChunk, len - done));
    TP_TRY(read(src + done, chunk));
    TP_TRY(write(dst + done, chunk));
    done += chunk.size();
  }
  return ok_result();
}

}  // namespace tp::io
