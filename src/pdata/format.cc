#include "pdata/format.h"

#include <cstring>

#include "pdata/crc32c.h"

namespace tp::pdata {

uint32_t block_checksum(ConstBlock b, uint32_t salt) {
  return crc32c_raw(0xFFFFFFFFu, b.subspan(4)) ^ salt;
}

void seal_block(Block b, uint64_t blocknr, uint32_t salt) {
  store_le64(b.data() + 8, blocknr);
  store_le32(b.data(), block_checksum(b, salt));
}

Result<void> verify_block(ConstBlock b, uint64_t blocknr, uint32_t salt, const char* bad_csum,
                          const char* bad_nr) {
  if (load_le32(b.data()) != block_checksum(b, salt)) {
    return make_error(Errc::kCorruption, bad_csum, blocknr);
  }
  if (load_le64(b.data() + 8) != blocknr) {
    return make_error(Errc::kCorruption, bad_nr, blocknr);
  }
  return {};
}

void encode_sm_root(const SmRoot& r, std::byte* p) {
  store_le64(p, r.nr_blocks);
  store_le64(p + 8, r.nr_allocated);
  store_le64(p + 16, r.bitmap_root);
  store_le64(p + 24, r.ref_count_root);
}

SmRoot decode_sm_root(const std::byte* p) {
  return {load_le64(p), load_le64(p + 8), load_le64(p + 16), load_le64(p + 24)};
}

void encode_superblock(const Superblock& sb, Block b) {
  std::memset(b.data(), 0, kBlockSize);
  std::byte* p = b.data();
  using namespace sb_off;
  store_le32(p + kFlags, sb.flags);
  std::memcpy(p + kUuid, sb.uuid.data(), 16);
  store_le64(p + kMagic, sb.magic);
  store_le32(p + kVersion, sb.version);
  store_le32(p + kTime, sb.time);
  store_le64(p + kTransId, sb.trans_id);
  store_le64(p + kMetadataSnap, sb.metadata_snap);
  encode_sm_root(sb.data_sm_root, p + kDataSmRoot);
  encode_sm_root(sb.metadata_sm_root, p + kMetadataSmRoot);
  store_le64(p + kDataMappingRoot, sb.data_mapping_root);
  store_le64(p + kDeviceDetailsRoot, sb.device_details_root);
  store_le32(p + kDataBlockSize, sb.data_block_size);
  store_le32(p + kMetadataBlockSize, sb.metadata_block_size);
  store_le64(p + kMetadataNrBlocks, sb.metadata_nr_blocks);
  store_le32(p + kCompatFlags, sb.compat_flags);
  store_le32(p + kCompatRoFlags, sb.compat_ro_flags);
  store_le32(p + kIncompatFlags, sb.incompat_flags);
  seal_block(b, kSuperblockLocation, kSuperblockSalt);
}

Result<Superblock> decode_superblock(ConstBlock b) {
  TP_TRY(verify_block(b, kSuperblockLocation, kSuperblockSalt, "bad checksum in superblock",
                      "bad block number in superblock"));
  const std::byte* p = b.data();
  using namespace sb_off;
  Superblock sb;
  sb.flags = load_le32(p + kFlags);
  std::memcpy(sb.uuid.data(), p + kUuid, 16);
  sb.magic = load_le64(p + kMagic);
  sb.version = load_le32(p + kVersion);
  sb.time = load_le32(p + kTime);
  sb.trans_id = load_le64(p + kTransId);
  sb.metadata_snap = load_le64(p + kMetadataSnap);
  sb.data_sm_root = decode_sm_root(p + kDataSmRoot);
  sb.metadata_sm_root = decode_sm_root(p + kMetadataSmRoot);
  sb.data_mapping_root = load_le64(p + kDataMappingRoot);
  sb.device_details_root = load_le64(p + kDeviceDetailsRoot);
  sb.data_block_size = load_le32(p + kDataBlockSize);
  sb.metadata_block_size = load_le32(p + kMetadataBlockSize);
  sb.metadata_nr_blocks = load_le64(p + kMetadataNrBlocks);
  sb.compat_flags = load_le32(p + kCompatFlags);
  sb.compat_ro_flags = load_le32(p + kCompatRoFlags);
  sb.incompat_flags = load_le32(p + kIncompatFlags);

  if (sb.magic != kSuperblockMagic) {
    return make_error(Errc::kCorruption, "bad magic in superblock", 0);
  }
  if (sb.metadata_block_size != kMetadataBlockSectors) {
    return make_error(Errc::kCorruption, "unsupported metadata block size in superblock", 0);
  }
  if (sb.data_block_size < kMinDataBlockSectors || sb.data_block_size > kMaxDataBlockSectors ||
      sb.data_block_size % kMinDataBlockSectors != 0) {
    return make_error(Errc::kCorruption, "bad data block size in superblock", 0);
  }
  if (sb.incompat_flags != 0 || sb.compat_ro_flags != 0) {
    return make_error(Errc::kUnsupported, "unknown feature flags in superblock", 0);
  }
  if (sb.metadata_nr_blocks == 0 || sb.metadata_nr_blocks > kMaxMetadataBlocks) {
    return make_error(Errc::kCorruption, "bad metadata size in superblock", 0);
  }
  return sb;
}

}  // namespace tp::pdata
