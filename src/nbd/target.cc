#include "nbd/target.h"

#include <cstring>

#include "nbd/protocol.h"

namespace tp::nbd {

Result<void> BlockTarget::read_sparse(uint64_t off, std::span<std::byte> buf,
                                      std::vector<StatusExtent>& extents) {
  extents.clear();
  auto st = block_status(off, buf.size());
  // No status is no reason to fail a READ: it is all data then.
  if (st.ok()) extents = std::move(*st);
  uint64_t zero = 0;  // bytes from off covered by zero runs only
  for (const StatusExtent& e : extents) {
    if (!(e.flags & kStateZero)) break;
    zero += e.length;
  }
  if (zero >= buf.size()) {
    std::memset(buf.data(), 0, buf.size());
    return {};
  }
  return read(off, buf);
}

}  // namespace tp::nbd
