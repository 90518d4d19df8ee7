// Delta files and the one-step A/B update.
#include "thin/update.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <random>

#include "support/test_util.h"

namespace tp::thin {
namespace {

using testing::TempDir;
constexpr uint64_t kB = 64 * 1024;

std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::string random_image(uint64_t size, uint32_t seed) {
  std::string s(size, '\0');
  std::mt19937 rng(seed);
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

class UpdateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.file("pool");
    PoolOptions o;
    o.data_bytes = 64ull << 20;
    pool_ = std::move(*Pool::create(dir_, o));
    v1_ = random_image(8ull << 20, 1);
    // v2: some blocks changed, one block zeroed, a partial change, and 100 KiB longer.
    v2_ = v1_;
    v2_.replace(3 * kB + 10, 5000, random_image(5000, 2));
    v2_.replace(20 * kB, 4 * kB, random_image(4 * kB, 3));
    std::fill(v2_.begin() + 40 * kB, v2_.begin() + 41 * kB, '\0');
    v2_ += random_image(100 * 1024, 4);
    testing::write_file(tmp_.file("v1.img"), v1_);
    testing::write_file(tmp_.file("v2.img"), v2_);
    ASSERT_TRUE(pool_->create_volume("base", v1_.size(), true).ok());
    ASSERT_TRUE(pool_->write(dev("base"), 0, bytes(v1_)).ok());
  }
  void TearDown() override {
    auto c = pool_->check();
    ASSERT_TRUE(c.ok());
    EXPECT_TRUE(c->ok()) << c->damage.front();
    ASSERT_TRUE(pool_->close().ok());
    EXPECT_EQ(testing::thin_check(dir_ + "/metadata"), "");
  }
  uint64_t dev(const std::string& n) { return *pool_->dev_id(n); }
  std::string content(const std::string& n) {
    std::string s(*pool_->size_of(dev(n)), '\0');
    EXPECT_TRUE(pool_->read(dev(n), 0, {reinterpret_cast<std::byte*>(s.data()), s.size()}).ok());
    return s;
  }
  std::string make_delta(const std::string& a, const std::string& b, const std::string& out) {
    int fa = -1, fb = -1;
    auto sa = file_source(tmp_.file(a), &fa);
    auto sb = file_source(tmp_.file(b), &fb);
    EXPECT_TRUE(sa.ok() && sb.ok());
    auto st = write_delta(tmp_.file(out), *sa, *sb, 4096);
    EXPECT_TRUE(st.ok()) << st.error().to_string();
    ::close(fa);
    ::close(fb);
    return tmp_.file(out);
  }
  void expect_failed_cleanly(const Result<UpdateResult>& r) {
    ASSERT_FALSE(r.ok());
    EXPECT_FALSE(pool_->dev_id("base.next").ok()) << "base.next must be removed";
    EXPECT_EQ(content("base"), v1_);
  }
  // The metadata as the independent tool sees it (committed state).
  std::string dump() {
    auto r = testing::run_cmd({"thin_dump", dir_ + "/metadata"});
    EXPECT_EQ(r.rc, 0) << r.err;
    return r.out;
  }

  TempDir tmp_;
  std::string dir_;
  std::unique_ptr<Pool> pool_;
  std::string v1_, v2_;
};

TEST_F(UpdateTest, DiffThenUpdateProducesTheNewImage) {
  std::string d = make_delta("v1.img", "v2.img", "v2.delta");
  auto df = read_delta(d);
  ASSERT_TRUE(df.ok()) << df.error().to_string();
  EXPECT_EQ(df->header.result_size, v2_.size());
  // Only the changed 4 KiB blocks: 2 + 64 changed, 16 zeroed, 25 appended.
  EXPECT_EQ(df->entries.size(), 107u);
  size_t zeros = 0;
  for (auto& e : df->entries) zeros += e.zero;
  EXPECT_EQ(zeros, 16u);
  auto r = apply_update(*pool_, "base", d, false);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_FALSE(r->staged);
  EXPECT_EQ(content("base"), v2_);
  EXPECT_FALSE(pool_->dev_id("base.next").ok());
  // The guarantee grew with the image; every guaranteed block is mapped and exclusive
  // except the zeroed ones, which stay reserved.
  auto vi = pool_->volume("base");
  EXPECT_EQ(vi->guaranteed_blocks, (v2_.size() + kB - 1) / kB);
  EXPECT_EQ(pool_->info().reserved_blocks, 1u);
}

TEST_F(UpdateTest, StagedUpdateStopsBeforeMerge) {
  std::string d = make_delta("v1.img", "v2.img", "v2.delta");
  auto r = apply_update(*pool_, "base", d, true);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(r->staged);
  EXPECT_EQ(content("base"), v1_);
  EXPECT_EQ(content("base.next"), v2_);
  ASSERT_TRUE(pool_->merge("base.next", true).ok());
  EXPECT_EQ(content("base"), v2_);
}

TEST_F(UpdateTest, UsesPreparedNextWhenPoolIsFull) {
  ASSERT_TRUE(pool_->resize("base", v1_.size()).ok());
  ASSERT_TRUE(pool_->snapshot("base", "base.next", true, 1ull << 20).ok());
  // Fill the rest of the pool.
  ASSERT_TRUE(pool_->create_volume("filler", 64ull << 20).ok());
  std::string blk = random_image(kB, 9);
  for (uint64_t b = 0; b < 1024; b++) {
    if (!pool_->write(dev("filler"), b * kB, bytes(blk)).ok()) break;
  }
  EXPECT_EQ(pool_->info().unreserved_blocks, 0u);
  std::string d = make_delta("v1.img", "v2.img", "v2.delta");
  auto r = apply_update(*pool_, "base", d, false);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(r->used_existing_next);
  EXPECT_EQ(content("base"), v2_);
}

TEST_F(UpdateTest, CorruptDeltaIsRefusedUpFront) {
  std::string d = make_delta("v1.img", "v2.img", "v2.delta");
  std::string raw = testing::read_file(d);
  raw[raw.size() / 2] ^= 1;
  testing::write_file(d, raw);
  std::string before = dump();
  expect_failed_cleanly(apply_update(*pool_, "base", d, false));
  EXPECT_EQ(dump(), before);
}

TEST_F(UpdateTest, TruncatedDeltaIsRefused) {
  std::string d = make_delta("v1.img", "v2.img", "v2.delta");
  std::string raw = testing::read_file(d);
  std::string before = dump();
  for (size_t keep : {size_t{0}, size_t{10}, size_t{200}, raw.size() / 2, raw.size() - 1}) {
    testing::write_file(d, raw.substr(0, keep));
    expect_failed_cleanly(apply_update(*pool_, "base", d, false));
  }
  EXPECT_EQ(dump(), before);
}

TEST_F(UpdateTest, WrongBaseIsRefused) {
  testing::write_file(tmp_.file("other.img"), random_image(v1_.size(), 77));
  std::string d = make_delta("other.img", "v2.img", "x.delta");
  std::string before = dump();
  auto r = apply_update(*pool_, "base", d, false);
  expect_failed_cleanly(r);
  EXPECT_EQ(dump(), before);
  EXPECT_NE(r.error().to_string().find("base"), std::string::npos);
}

TEST_F(UpdateTest, DeltaLargerThanReservationOnFullPoolDropsNext) {
  // A guaranteed base reserves a copy of every block for its snapshot, which covers any
  // in-place update; without a guarantee only the snapshot's budget counts.
  ASSERT_TRUE(pool_->unprovision("base", 0, v1_.size()).ok());
  ASSERT_TRUE(pool_->snapshot("base", "base.next", true, kB).ok());  // 1 block of budget
  ASSERT_TRUE(pool_->create_volume("filler", 64ull << 20).ok());
  std::string blk = random_image(kB, 9);
  for (uint64_t b = 0; b < 1024; b++) {
    if (!pool_->write(dev("filler"), b * kB, bytes(blk)).ok()) break;
  }
  std::string d = make_delta("v1.img", "v2.img", "v2.delta");
  auto r = apply_update(*pool_, "base", d, false);
  expect_failed_cleanly(r);
  EXPECT_EQ(r.error().code, Errc::kNoSpace);
}

TEST(DeltaParser, RandomMutationsNeverCrash) {
  // Build a small valid delta in memory via files, then mutate bytes and truncate.
  TempDir tmp;
  std::string a = random_image(256 * 1024, 5), b = a;
  b.replace(70000, 9000, random_image(9000, 6));
  testing::write_file(tmp.file("a"), a);
  testing::write_file(tmp.file("b"), b);
  int fa, fb;
  auto sa = file_source(tmp.file("a"), &fa);
  auto sb = file_source(tmp.file("b"), &fb);
  ASSERT_TRUE(write_delta(tmp.file("d"), *sa, *sb, 4096).ok());
  ::close(fa);
  ::close(fb);
  std::string raw = testing::read_file(tmp.file("d"));
  auto ok = parse_delta(bytes(raw));
  ASSERT_TRUE(ok.ok()) << ok.error().to_string();
  std::mt19937_64 rng(1);
  int accepted = 0;
  for (int i = 0; i < 3000; i++) {
    std::string m = raw;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; f++) m[rng() % m.size()] ^= static_cast<char>(1 + rng() % 255);
    if (rng() % 3 == 0) m.resize(rng() % m.size());
    auto r = parse_delta(bytes(m));
    accepted += r.ok();
  }
  // The checksums catch every mutation of this kind.
  EXPECT_EQ(accepted, 0);
}

}  // namespace
}  // namespace tp::thin
