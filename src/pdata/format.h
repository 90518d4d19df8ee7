#pragma once
// dm-thin metadata on-disk structures (DM_THIN_FORMAT.md; kernel drivers/md/dm-thin-metadata.c,
// persistent-data/dm-btree-internal.h, dm-space-map-common.h). Little-endian, 4096-byte
// blocks, every checksummed block = { le32 csum; ...; le64 blocknr at offset 8; ... }.
//
// Superblock (block 0), 364 bytes used:
//   0x000 csum  0x004 flags  0x008 blocknr  0x010 uuid[16]  0x020 magic  0x028 version
//   0x02C time  0x030 trans_id  0x038 metadata_snap  0x040 data_sm_root[128]
//   0x0C0 metadata_sm_root[128]  0x140 data_mapping_root  0x148 device_details_root
//   0x150 data_block_size  0x154 metadata_block_size  0x158 metadata_nr_blocks
//   0x160 compat_flags  0x164 compat_ro_flags  0x168 incompat_flags
// sm_root (first 32 bytes of a 128-byte slot): nr_blocks, nr_allocated, bitmap_root,
//   ref_count_root (all le64).
// B-tree node: header {csum, flags(1 internal, 2 leaf), blocknr, nr_entries, max_entries,
//   value_size, padding} = 32 bytes, keys[max_entries] le64, values[max_entries].
// Bitmap: {csum, not_used, blocknr} 16 bytes, then 16320 2-bit entries (bit 2j high).
// Metadata SM index: {csum, padding, blocknr}, 255 index entries of 16 bytes.
// Index entry: le64 blocknr, le32 nr_free, le32 none_free_before.
// Device details (24 bytes): mapped_blocks, transaction_id (le64), creation_time,
//   snapshotted_time (le32).

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "io/result.h"
#include "pdata/endian.h"

namespace tp::pdata {

inline constexpr uint32_t kBlockSize = 4096;
inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint64_t kSuperblockLocation = 0;
inline constexpr uint64_t kSuperblockMagic = 27022010;
inline constexpr uint32_t kMetadataVersion = 2;
inline constexpr uint32_t kMetadataBlockSectors = 8;
inline constexpr uint64_t kMaxMetadataBlocks = 255ull * 16320;  // 4,161,600
inline constexpr uint32_t kEntriesPerBitmap = 16320;
inline constexpr uint32_t kMaxMetadataBitmaps = 255;
inline constexpr uint64_t kMaxDevId = (1ull << 24) - 1;
inline constexpr uint32_t kMaxTime = (1u << 24) - 1;
inline constexpr uint64_t kMaxDataBlock = (1ull << 40) - 1;
inline constexpr uint32_t kMinDataBlockSectors = 128;      // 64 KiB
inline constexpr uint32_t kMaxDataBlockSectors = 2097152;  // 1 GiB

inline constexpr uint32_t kSuperblockSalt = 160774;
inline constexpr uint32_t kBtreeNodeSalt = 121107;
inline constexpr uint32_t kBitmapSalt = 240779;
inline constexpr uint32_t kIndexSalt = 160478;

inline constexpr uint32_t kNeedsCheckFlag = 1;

using Block = std::span<std::byte, kBlockSize>;
using ConstBlock = std::span<const std::byte, kBlockSize>;

// csum over bytes 4..4095, xor salt.
uint32_t block_checksum(ConstBlock b, uint32_t salt);
// Stores blocknr at offset 8 and the checksum at offset 0.
void seal_block(Block b, uint64_t blocknr, uint32_t salt);
// Verifies checksum and blocknr; `what` names the structure in the error.
Result<void> verify_block(ConstBlock b, uint64_t blocknr, uint32_t salt, const char* bad_csum,
                          const char* bad_nr);

struct SmRoot {
  uint64_t nr_blocks = 0;
  uint64_t nr_allocated = 0;
  uint64_t bitmap_root = 0;
  uint64_t ref_count_root = 0;
};
inline constexpr size_t kSmRootSize = 128;

struct Superblock {
  uint32_t flags = 0;
  std::array<std::byte, 16> uuid{};
  uint64_t magic = kSuperblockMagic;
  uint32_t version = kMetadataVersion;
  uint32_t time = 0;
  uint64_t trans_id = 0;
  uint64_t metadata_snap = 0;
  SmRoot data_sm_root;
  SmRoot metadata_sm_root;
  uint64_t data_mapping_root = 0;
  uint64_t device_details_root = 0;
  uint32_t data_block_size = 0;  // sectors
  uint32_t metadata_block_size = kMetadataBlockSectors;
  uint64_t metadata_nr_blocks = 0;
  uint32_t compat_flags = 0;
  uint32_t compat_ro_flags = 0;
  uint32_t incompat_flags = 0;
};

namespace sb_off {
inline constexpr size_t kCsum = 0x000, kFlags = 0x004, kBlocknr = 0x008, kUuid = 0x010,
                        kMagic = 0x020, kVersion = 0x028, kTime = 0x02C, kTransId = 0x030,
                        kMetadataSnap = 0x038, kDataSmRoot = 0x040, kMetadataSmRoot = 0x0C0,
                        kDataMappingRoot = 0x140, kDeviceDetailsRoot = 0x148,
                        kDataBlockSize = 0x150, kMetadataBlockSize = 0x154,
                        kMetadataNrBlocks = 0x158, kCompatFlags = 0x160, kCompatRoFlags = 0x164,
                        kIncompatFlags = 0x168, kEnd = 0x16C;
static_assert(kDataSmRoot + kSmRootSize == kMetadataSmRoot);
static_assert(kMetadataSmRoot + kSmRootSize == kDataMappingRoot);
static_assert(kEnd == 364);
}  // namespace sb_off

// Decodes and validates (checksum, blocknr, magic, block sizes, feature flags).
Result<Superblock> decode_superblock(ConstBlock b);
// Encodes into a zeroed block and seals it.
void encode_superblock(const Superblock& sb, Block b);
void encode_sm_root(const SmRoot& r, std::byte* p);
SmRoot decode_sm_root(const std::byte* p);

struct IndexEntry {
  uint64_t blocknr = 0;
  uint32_t nr_free = 0;
  uint32_t none_free_before = 0;
  bool operator==(const IndexEntry&) const = default;
};
inline constexpr size_t kIndexEntrySize = 16;
inline void encode_index_entry(const IndexEntry& e, std::byte* p) {
  store_le64(p, e.blocknr);
  store_le32(p + 8, e.nr_free);
  store_le32(p + 12, e.none_free_before);
}
inline IndexEntry decode_index_entry(const std::byte* p) {
  return {load_le64(p), load_le32(p + 8), load_le32(p + 12)};
}
inline constexpr size_t kMetadataIndexHeader = 16;
static_assert(kMetadataIndexHeader + kMaxMetadataBitmaps * kIndexEntrySize == kBlockSize);

inline constexpr size_t kBitmapHeader = 16;
static_assert(kBitmapHeader + kEntriesPerBitmap / 4 == kBlockSize);
// 2-bit entry i of a bitmap block (bit 2j of a le64 word is the high bit).
inline uint32_t bitmap_get(ConstBlock b, uint32_t i) {
  uint8_t byte = static_cast<uint8_t>(b[kBitmapHeader + i / 4]);
  unsigned shift = (i % 4) * 2;
  return (((byte >> shift) & 1u) << 1) | ((byte >> (shift + 1)) & 1u);
}
inline void bitmap_set(Block b, uint32_t i, uint32_t v) {
  std::byte& byte = b[kBitmapHeader + i / 4];
  unsigned shift = (i % 4) * 2;
  uint8_t x = static_cast<uint8_t>(byte);
  x = static_cast<uint8_t>(x & ~(3u << shift));
  x = static_cast<uint8_t>(x | (((v >> 1) & 1u) << shift) | ((v & 1u) << (shift + 1)));
  byte = static_cast<std::byte>(x);
}

struct DeviceDetails {
  uint64_t mapped_blocks = 0;
  uint64_t transaction_id = 0;
  uint32_t creation_time = 0;
  uint32_t snapshotted_time = 0;
  bool operator==(const DeviceDetails&) const = default;
};
inline constexpr size_t kDeviceDetailsSize = 24;

// block_time = (data_block << 24) | time.
inline uint64_t pack_block_time(uint64_t data_block, uint32_t time) {
  return (data_block << 24) | (time & kMaxTime);
}
inline uint64_t bt_block(uint64_t v) {
  return v >> 24;
}
inline uint32_t bt_time(uint64_t v) {
  return static_cast<uint32_t>(v & kMaxTime);
}

}  // namespace tp::pdata
