#include "pdata/transaction_manager.h"

#include <cstring>

namespace tp::pdata {

TransactionManager::TransactionManager(BlockManager& bm, SpaceMap& metadata_sm)
    : bm_(bm), msm_(metadata_sm) {
  msm_.bind(this);
}

Result<WriteRef> TransactionManager::new_block(const Validator& v) {
  TP_ASSIGN_OR_RETURN(uint64_t b, msm_.new_block());
  new_blocks_.insert(b);
  return bm_.write_lock_zero(b, v);
}

Result<std::pair<WriteRef, bool>> TransactionManager::shadow(uint64_t b, const Validator& v) {
  TP_ASSIGN_OR_RETURN(uint32_t count, msm_.get_count(b));
  if (count == 0) {
    return make_error(Errc::kCorruption, "shadowing a metadata block that is not in use", b);
  }
  if (is_new(b) && count == 1) {
    TP_ASSIGN_OR_RETURN(WriteRef w, bm_.write_lock(b, v));
    return std::pair<WriteRef, bool>{std::move(w), false};
  }
  // Copy first (validating the original), then take the new block.
  std::array<std::byte, kBlockSize> copy;
  {
    TP_ASSIGN_OR_RETURN(ReadRef r, bm_.read_lock(b, v));
    std::memcpy(copy.data(), r.data().data(), kBlockSize);
  }
  TP_ASSIGN_OR_RETURN(WriteRef w, new_block(v));
  std::memcpy(w.data().data(), copy.data(), kBlockSize);
  TP_TRY(msm_.dec(b));
  return std::pair<WriteRef, bool>{std::move(w), count > 1};
}

Result<void> TransactionManager::commit(const Superblock& sb) {
  TP_ASSIGN_OR_RETURN(Ticket t, begin_commit(sb));
  Result<void> r = write_commit(t);
  end_commit(t, r.ok());
  return r;
}

Result<TransactionManager::Ticket> TransactionManager::begin_commit(const Superblock& sb) {
  Ticket t;
  t.superblock.assign(kBlockSize, std::byte{0});
  Block b(t.superblock.data(), kBlockSize);
  encode_superblock(sb, b);
  kSuperblockValidator.prepare(b, kSuperblockLocation);
  t.sb_csum = load_le32(t.superblock.data());
  t.blocks = bm_.pin_dirty(kSuperblockLocation + 1);
  // From here on every block of this transaction is committed state for the next one.
  new_blocks_.clear();
  return t;
}

Result<void> TransactionManager::write_commit(const Ticket& t) {
  TP_TRY(write_blocks(t));
  return write_superblock(t);
}

Result<void> TransactionManager::write_blocks(const Ticket& t) {
  if (t.blocks.empty()) return {};
  TP_TRY(bm_.write_pinned(t.blocks));
  return bm_.sync();
}

Result<void> TransactionManager::write_superblock(const Ticket& t) {
  TP_TRY(bm_.write_through(kSuperblockLocation, t.superblock));
  return bm_.sync();
}

void TransactionManager::end_commit(Ticket& t, bool written) {
  bm_.unpin(t.blocks, written);
  if (written) msm_.on_commit();
}

void TransactionManager::abort() {
  new_blocks_.clear();
  bm_.invalidate();
}

}  // namespace tp::pdata
