// libFuzzer target: one metadata block of arbitrary bytes through every decoder and
// validator the engine applies to a block it reads (pdata/format.h, block_manager.h,
// btree.h): the superblock decoder, the node/bitmap/index validators, the node shape
// check, NodeView searches, and B-tree lookups and diffs through a real BlockManager.
//
// Checksums are mostly what random bytes fail first, so besides the raw block each
// decoder also sees a copy sealed with its own salt and block number: the fuzzer then
// reaches the structural checks behind the checksum.
//
// Input: up to 4096 bytes (zero-padded). Seeds: real blocks of a real pool
// (fuzz/corpus/pdata_fuzz_block, written by fuzz/gen_corpus).

#include <array>
#include <cstring>

#include "fuzz_util.h"
#include "io/block_device.h"
#include "pdata/block_manager.h"
#include "pdata/btree.h"
#include "pdata/format.h"

namespace {

using namespace tp;
using namespace tp::pdata;

using BlockBuf = std::array<std::byte, kBlockSize>;

constexpr uint32_t kValueSizes[] = {4, 8, 16, 24};  // ref counts, mappings, index, details

void fuzz_superblock(const BlockBuf& raw) {
  (void)decode_superblock(ConstBlock(raw));
  BlockBuf b = raw;
  seal_block(Block(b), kSuperblockLocation, kSuperblockSalt);
  auto sb = decode_superblock(ConstBlock(b));
  if (!sb.ok()) return;
  TP_FUZZ_REQUIRE(sb->magic == kSuperblockMagic);
  TP_FUZZ_REQUIRE(sb->metadata_nr_blocks > 0 && sb->metadata_nr_blocks <= kMaxMetadataBlocks);
  // Encoding what was decoded is stable (the input's unused bytes, e.g. the rest of each
  // 128-byte space map root, are not kept).
  BlockBuf again, twice;
  encode_superblock(*sb, Block(again));
  auto sb2 = decode_superblock(ConstBlock(again));
  TP_FUZZ_REQUIRE(sb2.ok());
  encode_superblock(*sb2, Block(twice));
  TP_FUZZ_REQUIRE(again == twice);
}

void fuzz_node(const BlockBuf& raw) {
  BlockBuf b = raw;
  kNodeValidator.prepare(Block(b), 1);
  if (!kNodeValidator.check(ConstBlock(b), 1).ok()) return;
  NodeView n(b.data());
  // The validator's promises, which every reader relies on.
  TP_FUZZ_REQUIRE(n.nr_entries() <= n.max_entries());
  TP_FUZZ_REQUIRE(kNodeHeaderSize + uint64_t{8 + n.value_size()} * n.max_entries() <= kBlockSize);
  for (uint32_t vs : kValueSizes) {
    if (!check_node_shape(ConstBlock(b), 1, vs).ok()) continue;
    // Shape checked: keys strictly increase, so lower_bound finds each key at its index.
    for (uint32_t i = 0; i < n.nr_entries(); i++) {
      TP_FUZZ_REQUIRE(n.lower_bound(n.key(i)) == static_cast<int>(i));
      TP_FUZZ_REQUIRE(n.upper_index(n.key(i)) == i);
    }
  }
  (void)n.lower_bound(0);
  (void)n.lower_bound(~uint64_t{0});
  (void)n.upper_index(~uint64_t{0});
}

void fuzz_space_map_blocks(const BlockBuf& raw) {
  BlockBuf b = raw;
  kBitmapValidator.prepare(Block(b), 1);
  TP_FUZZ_REQUIRE(kBitmapValidator.check(ConstBlock(b), 1).ok());
  uint64_t counts[4] = {};
  for (uint32_t i = 0; i < kEntriesPerBitmap; i++) counts[bitmap_get(ConstBlock(b), i)]++;
  TP_FUZZ_REQUIRE(counts[0] + counts[1] + counts[2] + counts[3] == kEntriesPerBitmap);

  b = raw;
  kIndexValidator.prepare(Block(b), 1);
  TP_FUZZ_REQUIRE(kIndexValidator.check(ConstBlock(b), 1).ok());
  for (uint32_t k = 0; k < kMaxMetadataBitmaps; k++) {
    IndexEntry e = decode_index_entry(b.data() + kMetadataIndexHeader + k * kIndexEntrySize);
    std::array<std::byte, kIndexEntrySize> again;
    encode_index_entry(e, again.data());
    TP_FUZZ_REQUIRE(decode_index_entry(again.data()) == e);
  }
}

// The block as every node of a small device (each copy sealed at its own address), read
// through a real BlockManager: lookups and diffs follow whatever child pointers it holds.
void fuzz_tree_reads(const BlockBuf& raw) {
  constexpr uint64_t kBlocks = 8;
  auto dev = io::make_mem_device(kBlocks * kBlockSize);
  for (uint64_t nr = 1; nr < kBlocks; nr++) {
    BlockBuf b = raw;
    kNodeValidator.prepare(Block(b), nr);
    if (!dev->write(nr * kBlockSize, b).ok()) std::abort();
  }
  BlockManager bm(*dev, 4);
  NodeView n(const_cast<std::byte*>(raw.data()));
  uint64_t keys[] = {0, 1, ~uint64_t{0}, n.key(0), n.key(1)};
  for (uint32_t vs : kValueSizes) {
    ValueType vt{vs};
    std::array<std::byte, 24> out{};
    for (uint64_t k : keys) {
      (void)Btree::lookup(bm, 1, k, vt, std::span(out).first(vs));
    }
    (void)btree_diff(
        bm, 1, 2, vs,
        [](uint64_t, const std::byte*, const std::byte*) -> Result<bool> { return true; });
  }
  // A block read with one validator and then another (a corrupt pointer to a block of another
  // kind) must be refused, not reinterpreted.
  (void)bm.read_lock(3, kBitmapValidator);
  (void)bm.read_lock(3, kIndexValidator);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  BlockBuf raw{};
  std::memcpy(raw.data(), data, std::min<size_t>(size, kBlockSize));
  fuzz_superblock(raw);
  fuzz_node(raw);
  fuzz_space_map_blocks(raw);
  fuzz_tree_reads(raw);
  return 0;
}
