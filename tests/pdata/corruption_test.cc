// Bad input: bit flips in each kind of metadata block, truncated files and files that are
// not metadata at all. Opening or reading must report corruption naming the block, never
// crash and never write.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "io/faulty_device.h"
#include "pdata/checker.h"
#include "pdata/thin_metadata.h"

namespace tp::pdata {
namespace {

constexpr uint64_t kMetaBytes = 8 << 20;

class CorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dev = io::make_mem_device(kMetaBytes);
    auto mdr = ThinMetadata::format(*dev, 128, 100000);
    ASSERT_TRUE(mdr.ok());
    auto& md = **mdr;
    ASSERT_TRUE(md.create_thin(1).ok());
    ASSERT_TRUE(md.create_thin(2).ok());
    for (uint64_t vb = 0; vb < 3000; vb++) {
      auto b = md.alloc_data_block();
      ASSERT_TRUE(b.ok() && md.insert(1, vb, *b).ok());
    }
    ASSERT_TRUE(md.create_snap(3, 1).ok());
    for (uint64_t vb = 0; vb < 3000; vb += 2) {
      auto b = md.alloc_data_block();
      ASSERT_TRUE(b.ok() && md.insert(3, vb, *b).ok());
    }
    ASSERT_TRUE(md.commit().ok());
    sb_ = md.superblock();
    dev_root_ = *md.device_root(1);
    image_.resize(kMetaBytes);
    ASSERT_TRUE(dev->read(0, image_).ok());
  }

  uint64_t read_u64(uint64_t block, size_t off) {
    uint64_t v;
    std::memcpy(&v, image_.data() + block * kBlockSize + off, 8);
    return v;
  }
  // First child of an internal node / first value of a leaf with 8-byte values.
  uint64_t first_value(uint64_t node, uint32_t value_size = 8) {
    uint32_t max = max_entries_for(value_size);
    if (read_u64(node, 4) & 1) max = max_entries_for(8);  // internal
    return read_u64(node, kNodeHeaderSize + 8 * max);
  }

  // Opens and reads everything from a copy of image; returns every error seen, joined.
  std::string attempt(const std::vector<std::byte>& img, uint64_t* writes = nullptr) {
    auto mem = io::make_mem_device(img.size());
    EXPECT_TRUE(mem->write(0, img).ok());
    io::FaultyDevice dev(*mem);
    std::string errors;
    {
      auto mdr = ThinMetadata::open(dev);
      if (!mdr.ok()) {
        errors = mdr.error().to_string();
      } else {
        auto& md = **mdr;
        auto rep = check_metadata(md);
        if (!rep.ok()) {
          errors += rep.error().to_string() + "\n";
        } else {
          for (auto& d : rep->damage) errors += d + "\n";
        }
        for (uint64_t id : md.devices()) {
          for (uint64_t vb = 0; vb < 3000; vb += 97) {
            auto m = md.lookup(id, vb);
            if (!m.ok()) errors += m.error().to_string() + "\n";
          }
        }
      }
    }
    if (writes) *writes = dev.writes();
    return errors;
  }

  void flip_and_expect(uint64_t block, const char* kind) {
    SCOPED_TRACE(kind);
    for (size_t off : {size_t{0}, size_t{8}, size_t{20}, size_t{100}, size_t{2000}, size_t{4095}}) {
      auto img = image_;
      img[block * kBlockSize + off] ^= std::byte{0x10};
      uint64_t writes = 0;
      std::string errors = attempt(img, &writes);
      EXPECT_NE(errors, "") << kind << " block " << block << " offset " << off;
      EXPECT_NE(errors.find(std::to_string(block)), std::string::npos)
          << "error does not name block " << block << ": " << errors;
      EXPECT_EQ(writes, 0u) << "reading damaged metadata wrote to it";
    }
  }

  Superblock sb_;
  uint64_t dev_root_ = 0;
  std::vector<std::byte> image_;
};

TEST_F(CorruptionTest, IntactImageReadsClean) {
  uint64_t writes = 1;
  EXPECT_EQ(attempt(image_, &writes), "");
  EXPECT_EQ(writes, 0u);
}

TEST_F(CorruptionTest, Superblock) {
  flip_and_expect(0, "superblock");
}

TEST_F(CorruptionTest, InternalNode) {
  ASSERT_EQ(read_u64(dev_root_, 4) & 0xFFFFFFFF, 1u) << "device root should be internal";
  flip_and_expect(dev_root_, "internal node");
}

TEST_F(CorruptionTest, LeafNode) {
  uint64_t leaf = first_value(dev_root_);
  ASSERT_EQ(read_u64(leaf, 4) & 0xFFFFFFFF, 2u);
  flip_and_expect(leaf, "leaf node");
}

TEST_F(CorruptionTest, DeviceDetailsNode) {
  flip_and_expect(sb_.device_details_root, "details");
}

TEST_F(CorruptionTest, DataSpaceMapIndexNode) {
  flip_and_expect(sb_.data_sm_root.bitmap_root, "data index");
}

TEST_F(CorruptionTest, DataSpaceMapBitmap) {
  uint64_t bitmap = first_value(sb_.data_sm_root.bitmap_root, 16);
  flip_and_expect(bitmap, "data bitmap");
}

TEST_F(CorruptionTest, MetadataSpaceMapIndex) {
  flip_and_expect(sb_.metadata_sm_root.bitmap_root, "metadata index");
}

TEST_F(CorruptionTest, MetadataSpaceMapBitmap) {
  uint64_t bitmap = read_u64(sb_.metadata_sm_root.bitmap_root, kMetadataIndexHeader);
  flip_and_expect(bitmap, "metadata bitmap");
}

TEST_F(CorruptionTest, TruncatedFile) {
  for (size_t keep : {size_t{0}, size_t{100}, size_t{kBlockSize}, size_t{2 * kBlockSize},
                      image_.size() / 8, image_.size() / 2}) {
    std::vector<std::byte> img(image_.begin(), image_.begin() + static_cast<long>(keep));
    uint64_t writes = 0;
    std::string errors = attempt(img, &writes);
    EXPECT_NE(errors, "") << "kept " << keep;
    EXPECT_EQ(writes, 0u);
  }
}

TEST_F(CorruptionTest, NotMetadataAtAll) {
  std::vector<std::byte> zeros(1 << 20);
  EXPECT_NE(attempt(zeros).find("superblock"), std::string::npos);
  std::vector<std::byte> noise(1 << 20);
  std::mt19937_64 rng(5);
  for (auto& b : noise) b = static_cast<std::byte>(rng());
  EXPECT_NE(attempt(noise).find("superblock"), std::string::npos);
}

TEST_F(CorruptionTest, ValidChecksumButBadPointersAreCaught) {
  // A superblock that is well formed but points its mapping root at the metadata index.
  auto img = image_;
  Superblock sb = sb_;
  sb.data_mapping_root = sb_.metadata_sm_root.bitmap_root;
  encode_superblock(sb, Block(std::span(img).subspan<0, kBlockSize>()));
  std::string errors = attempt(img);
  EXPECT_NE(errors, "");
}

}  // namespace
}  // namespace tp::pdata
