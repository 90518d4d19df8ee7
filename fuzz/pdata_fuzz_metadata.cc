// libFuzzer target: a whole pool's metadata with fuzzed damage, opened, checked, read and
// changed through the engine (pdata/thin_metadata.h, checker.h). Property: whatever the
// damage, the engine returns errors (or works) and never crashes, hangs or trips a sanitizer.
//
// The base is a real pool made here at start-up with the engine itself: three thin devices,
// snapshots of snapshots (so data blocks reach count 3 and the ref-count tree is used),
// multi-level mapping trees, three data bitmaps (a multi-entry data index). The input is a
// list of patches over it:
//   repeat { u8 sel; u16 offset; u8 len; len bytes }
// sel & 0x7f picks one of the base's metadata blocks in use (modulo their number), offset
// (mod 4096) where the bytes go. Unless sel & 0x80, the patched block is resealed with
// the checksum salt of the structure it held, so the damage reaches the structural checks.
// A patch on the superblock's roots or a node's child pointer makes blocks be read as
// another kind, which must be refused too.

#include <array>
#include <cstring>
#include <memory>
#include <vector>

#include "fuzz_util.h"
#include "io/block_device.h"
#include "pdata/checker.h"
#include "pdata/format.h"
#include "pdata/thin_metadata.h"

namespace {

using namespace tp;
using namespace tp::pdata;

constexpr uint64_t kMetadataBlocks = 256;
constexpr uint64_t kDataBlocks = 3 * kEntriesPerBitmap - 100;

struct Base {
  std::vector<std::byte> image;
  std::vector<uint64_t> blocks;  // blocks holding a structure, with its salt
  std::vector<uint32_t> salts;
};

void must(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "pdata_fuzz_metadata: cannot build the base pool: %s\n", what);
    std::abort();
  }
}

Base make_base() {
  auto dev = io::make_mem_device(kMetadataBlocks * kBlockSize);
  {
    auto md_r = ThinMetadata::format(*dev, kMinDataBlockSectors, kDataBlocks);
    must(md_r.ok(), "format");
    ThinMetadata& md = **md_r;
    must(md.create_thin(1).ok(), "create_thin");
    must(md.create_thin(5).ok(), "create_thin");
    for (uint64_t v = 0; v < 300; v++) {  // two leaves under an internal node
      auto d = md.alloc_data_block();
      must(d.ok(), "alloc");
      must(md.insert(1, v * 3, *d).ok(), "insert");
    }
    must(md.commit().ok(), "commit");
    must(md.create_snap(2, 1).ok(), "snap");
    must(md.create_snap(3, 2).ok(), "snap of snap");  // data counts reach 3
    for (uint64_t v = 0; v < 50; v++) {
      auto d = md.alloc_data_block();
      must(d.ok(), "alloc");
      must(md.insert(2, v * 7, *d).ok(), "insert into the snapshot");
      auto e = md.alloc_data_block();
      must(e.ok(), "alloc");
      must(md.insert(5, v, *e).ok(), "insert");
    }
    // Blocks in the second and third data bitmap.
    for (uint64_t v = 0; v < 2; v++) {
      uint64_t b = (v + 1) * kEntriesPerBitmap + 17;
      must(md.data_sm().set_count(b, 1).ok(), "set_count");
      must(md.insert(5, 1000 + v, b).ok(), "insert far");
    }
    must(md.remove(1, 9).ok(), "remove");
    must(md.commit().ok(), "commit");
  }
  Base base;
  base.image.resize(kMetadataBlocks * kBlockSize);
  must(dev->read(0, base.image).ok(), "read");
  for (uint64_t nr = 0; nr < kMetadataBlocks; nr++) {
    ConstBlock b(base.image.data() + nr * kBlockSize, kBlockSize);
    for (uint32_t salt : {kSuperblockSalt, kBtreeNodeSalt, kBitmapSalt, kIndexSalt}) {
      if (load_le32(b.data()) == block_checksum(b, salt) && load_le64(b.data() + 8) == nr) {
        base.blocks.push_back(nr);
        base.salts.push_back(salt);
        break;
      }
    }
  }
  must(base.blocks.size() > 10, "structures found in the image");
  return base;
}

const Base& base() {
  static const Base b = make_base();
  return b;
}

void exercise(ThinMetadata& md) {
  (void)check_metadata(md);
  for (uint64_t dev : md.devices()) {
    (void)md.details(dev);
    (void)md.walk(dev, 0, ~uint64_t{0},
                  [](uint64_t, const Mapping&) -> Result<bool> { return true; });
    (void)md.walk_exact(dev, 0, 5000,
                        [](uint64_t, const Mapping&) -> Result<bool> { return true; });
    for (uint64_t v : {uint64_t{0}, uint64_t{3}, uint64_t{9}, uint64_t{2000}}) {
      (void)md.lookup(dev, v);
    }
  }
  // Changes: each may fail on damage; the next still runs on what is left.
  auto d = md.alloc_data_block();
  if (d.ok()) (void)md.insert(1, 4, *d);
  (void)md.remove(2, 21);
  (void)md.remove(5, 1001);
  (void)md.create_snap(7, 3);
  (void)md.delete_device(1);
  (void)md.clone_tree_into(5, 2);
  if (auto r = md.data_ref_count(kEntriesPerBitmap + 17); r.ok() && *r > 0) {
    (void)md.dec_data_block(kEntriesPerBitmap + 17);
  }
  (void)md.resize_data(kDataBlocks + 5);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Base& b = base();
  std::vector<std::byte> image = b.image;
  fuzz::Bytes in(fuzz::as_bytes(data, size));
  while (!in.empty()) {
    uint8_t sel = in.u8();
    size_t i = (sel & 0x7f) % b.blocks.size();
    uint64_t nr = b.blocks[i];
    size_t off = in.u16() % kBlockSize;
    auto bytes = in.take(in.u8());
    Block blk(image.data() + nr * kBlockSize, kBlockSize);
    size_t n = std::min(bytes.size(), kBlockSize - off);
    std::memcpy(blk.data() + off, bytes.data(), n);
    if (!(sel & 0x80)) seal_block(blk, nr, b.salts[i]);
  }
  auto dev = io::make_mem_device(image.size());
  if (!dev->write(0, image).ok()) std::abort();
  auto md = ThinMetadata::open(*dev, 64);
  if (!md.ok()) return 0;
  exercise(**md);
  if ((*md)->commit().ok()) {
    md->reset();
    // A commit over damaged metadata may keep the damage, but what it wrote must open or
    // be refused cleanly, like any other metadata.
    auto again = ThinMetadata::open(*dev, 64);
    if (again.ok()) (void)check_metadata(**again);
  }
  return 0;
}
