#include "pdata/format.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "pdata/crc32c.h"

namespace tp::pdata {
namespace {

std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

TEST(Crc32c, MatchesKnownVectors) {
  // RFC 3720 B.4 and the usual "123456789" check value.
  EXPECT_EQ(crc32c(bytes("123456789")), 0xE3069283u);
  std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(bytes(zeros)), 0x8A9136AAu);
  std::string ones(32, '\xff');
  EXPECT_EQ(crc32c(bytes(ones)), 0x62A8AB43u);
}

TEST(Crc32c, RawUpdateChainsAcrossSplits) {
  std::string s = "The quick brown fox jumps over the lazy dog, twice over.";
  uint32_t whole = crc32c_raw(0xFFFFFFFFu, bytes(s));
  for (size_t cut = 0; cut <= s.size(); cut++) {
    uint32_t a = crc32c_raw(0xFFFFFFFFu, bytes(s.substr(0, cut)));
    EXPECT_EQ(crc32c_raw(a, bytes(s.substr(cut))), whole) << cut;
  }
}

TEST(Superblock, EncodeDecodeRoundTrip) {
  Superblock sb;
  sb.flags = 0;
  sb.time = 7;
  sb.trans_id = 42;
  sb.data_sm_root = {1000, 7, 4, 5};
  sb.metadata_sm_root = {1024, 12, 1, 2};
  sb.data_mapping_root = 7;
  sb.device_details_root = 6;
  sb.data_block_size = 128;
  sb.metadata_nr_blocks = 1024;
  std::array<std::byte, kBlockSize> b{};
  encode_superblock(sb, Block(b));
  EXPECT_EQ(load_le64(b.data() + 0x20), kSuperblockMagic);
  EXPECT_EQ(load_le32(b.data() + 0x150), 128u);
  auto r = decode_superblock(ConstBlock(b));
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->trans_id, 42u);
  EXPECT_EQ(r->data_sm_root.nr_allocated, 7u);
  EXPECT_EQ(r->metadata_sm_root.bitmap_root, 1u);
  EXPECT_EQ(r->data_mapping_root, 7u);
  // Everything past the used 364 bytes is zero.
  for (size_t i = sb_off::kEnd; i < kBlockSize; i++) ASSERT_EQ(b[i], std::byte{0}) << i;
}

TEST(Superblock, RejectsBadChecksumMagicAndFlags) {
  Superblock sb;
  sb.data_block_size = 128;
  sb.metadata_nr_blocks = 1024;
  std::array<std::byte, kBlockSize> b{};
  encode_superblock(sb, Block(b));
  auto flip = b;
  flip[100] ^= std::byte{1};
  EXPECT_EQ(decode_superblock(ConstBlock(flip)).error().code, Errc::kCorruption);

  Superblock bad = sb;
  bad.magic = 1;
  encode_superblock(bad, Block(b));
  EXPECT_EQ(decode_superblock(ConstBlock(b)).error().code, Errc::kCorruption);
  bad = sb;
  bad.incompat_flags = 1;
  encode_superblock(bad, Block(b));
  EXPECT_EQ(decode_superblock(ConstBlock(b)).error().code, Errc::kUnsupported);
  bad = sb;
  bad.data_block_size = 100;
  encode_superblock(bad, Block(b));
  EXPECT_EQ(decode_superblock(ConstBlock(b)).error().code, Errc::kCorruption);
}

TEST(Bitmap, EntryBitOrderMatchesKernel) {
  // DM_THIN_FORMAT.md §5: four entries of 1 -> byte 0xAA; entries 10=2, 11=1 -> byte 0x90.
  std::array<std::byte, kBlockSize> b{};
  for (uint32_t i = 0; i < 4; i++) bitmap_set(Block(b), i, 1);
  EXPECT_EQ(b[kBitmapHeader], std::byte{0xAA});
  bitmap_set(Block(b), 10, 2);
  bitmap_set(Block(b), 11, 1);
  EXPECT_EQ(b[kBitmapHeader + 2], std::byte{0x90});
  EXPECT_EQ(bitmap_get(ConstBlock(b), 10), 2u);
  EXPECT_EQ(bitmap_get(ConstBlock(b), 11), 1u);
  bitmap_set(Block(b), 10, 3);
  EXPECT_EQ(bitmap_get(ConstBlock(b), 10), 3u);
  EXPECT_EQ(bitmap_get(ConstBlock(b), 11), 1u);
}

TEST(BlockTime, PacksDataBlockAboveTime) {
  // DM_THIN_FORMAT.md §4: data 30, time 1 -> 0x1E000001.
  EXPECT_EQ(pack_block_time(30, 1), 0x1E000001u);
  EXPECT_EQ(bt_block(0x1E000001u), 30u);
  EXPECT_EQ(bt_time(0x1E000001u), 1u);
}

}  // namespace
}  // namespace tp::pdata
