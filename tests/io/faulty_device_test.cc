#include "io/faulty_device.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <set>
#include <vector>

namespace tp::io {
namespace {

constexpr uint64_t kSector = 512;
constexpr uint64_t kSectors = 64;
using Bytes = std::vector<std::byte>;

Bytes filled(uint64_t n, uint8_t v) {
  return Bytes(n, std::byte{v});
}

// Different content in every byte, so that a sector mixing two writes cannot go unnoticed.
Bytes pattern(uint64_t n, uint8_t seed) {
  Bytes v(n);
  for (uint64_t i = 0; i < n; i++) v[i] = std::byte(static_cast<uint8_t>(seed * 31 + i * 7));
  return v;
}

// A FaultyDevice over a 64-sector memory device whose content (sector i filled with byte
// 0x80 + i) is flushed.
struct Rig {
  std::unique_ptr<BlockDevice> mem = make_mem_device(kSectors * kSector);
  FaultyDevice dev{*mem};

  Rig() {
    for (uint64_t s = 0; s < kSectors; s++) {
      EXPECT_TRUE(mem->write(s * kSector, filled(kSector, static_cast<uint8_t>(0x80 + s))).ok());
    }
  }
  // The media as the inner device holds it (no counters touched).
  Bytes image() const {
    Bytes b(kSectors * kSector);
    EXPECT_TRUE(mem->read(0, b).ok());
    return b;
  }
  Bytes sectors(uint64_t first, uint64_t n) const {
    Bytes b(n * kSector);
    EXPECT_TRUE(mem->read(first * kSector, b).ok());
    return b;
  }
};

Bytes sector_of(const Bytes& image, uint64_t s) {
  return Bytes(image.begin() + static_cast<ptrdiff_t>(s * kSector),
               image.begin() + static_cast<ptrdiff_t>((s + 1) * kSector));
}

TEST(FaultyDevice, FailNthWriteFailsOnceThenWorks) {
  Rig r;
  Bytes before = r.sectors(2, 1);
  r.dev.fail_nth_write(3);
  EXPECT_TRUE(r.dev.write(0, filled(kSector, 1)).ok());
  EXPECT_TRUE(r.dev.write(kSector, filled(kSector, 2)).ok());
  auto failed = r.dev.write(2 * kSector, filled(kSector, 3));
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().code, Errc::kIo);
  EXPECT_EQ(r.sectors(2, 1), before);  // the failed write changed nothing
  EXPECT_TRUE(r.dev.write(2 * kSector, filled(kSector, 3)).ok());
  EXPECT_EQ(r.sectors(2, 1), filled(kSector, 3));
  EXPECT_TRUE(r.dev.write(3 * kSector, filled(kSector, 4)).ok());
  EXPECT_EQ(r.dev.writes(), 5u);
}

TEST(FaultyDevice, FailNthWriteCountsFromArming) {
  Rig r;
  for (int i = 0; i < 5; i++) ASSERT_TRUE(r.dev.write(0, filled(kSector, 1)).ok());
  r.dev.fail_nth_write(1);
  EXPECT_EQ(r.dev.discard(0, kSector).error().code, Errc::kIo);
  EXPECT_TRUE(r.dev.discard(0, kSector).ok());
}

TEST(FaultyDevice, FailNthReadFailsOnceThenWorks) {
  Rig r;
  Bytes buf(kSector);
  r.dev.fail_nth_read(2);
  EXPECT_TRUE(r.dev.read(0, buf).ok());
  EXPECT_EQ(r.dev.read(0, buf).error().code, Errc::kIo);
  EXPECT_TRUE(r.dev.read(0, buf).ok());
  EXPECT_EQ(buf, filled(kSector, 0x80));
  EXPECT_EQ(r.dev.reads(), 3u);
}

TEST(FaultyDevice, FailAllWritesUntilCleared) {
  Rig r;
  Bytes buf(kSector);
  r.dev.set_fail_all(false, true);
  EXPECT_EQ(r.dev.write(0, filled(kSector, 1)).error().code, Errc::kIo);
  EXPECT_EQ(r.dev.write_zeroes(0, kSector).error().code, Errc::kIo);
  EXPECT_TRUE(r.dev.read(0, buf).ok());
  EXPECT_EQ(buf, filled(kSector, 0x80));
  r.dev.set_fail_all(false, false);
  EXPECT_TRUE(r.dev.write(0, filled(kSector, 1)).ok());
}

TEST(FaultyDevice, CapturingOldContentDoesNotCountAsRead) {
  Rig r;
  ASSERT_TRUE(r.dev.write(100, filled(1000, 1)).ok());
  ASSERT_TRUE(r.dev.discard(0, 4 * kSector).ok());
  ASSERT_TRUE(r.dev.copy(0, 8 * kSector, 4 * kSector).ok());
  EXPECT_EQ(r.dev.reads(), 0u);
  EXPECT_EQ(r.dev.writes(), 3u);
  Bytes buf(10);
  ASSERT_TRUE(r.dev.read(0, buf).ok());
  EXPECT_EQ(r.dev.reads(), 1u);
}

TEST(FaultyDevice, FlushForgetsUnflushedWrites) {
  Rig r;
  ASSERT_TRUE(r.dev.write(0, filled(kSector, 1)).ok());
  ASSERT_TRUE(r.dev.write_zeroes(kSector, kSector).ok());
  EXPECT_EQ(r.dev.unflushed_writes(), 2u);
  ASSERT_TRUE(r.dev.flush().ok());
  EXPECT_EQ(r.dev.unflushed_writes(), 0u);
  EXPECT_EQ(r.dev.flushes(), 1u);
}

TEST(FaultyDevice, PowerCutDropsUnflushedWritesButKeepsFlushedOnes) {
  Rig r;
  Bytes old4 = r.sectors(4, 1);
  ASSERT_TRUE(r.dev.write(0, filled(2 * kSector, 1)).ok());
  ASSERT_TRUE(r.dev.flush().ok());
  ASSERT_TRUE(r.dev.write(kSector, filled(2 * kSector, 2)).ok());
  ASSERT_TRUE(r.dev.write(4 * kSector, filled(kSector, 3)).ok());
  EXPECT_EQ(r.dev.power_cut(CrashMode::kDropUnflushed, 1), 0u);
  EXPECT_EQ(r.sectors(0, 2), filled(2 * kSector, 1));
  EXPECT_EQ(r.sectors(2, 1), filled(kSector, 0x82));
  EXPECT_EQ(r.sectors(4, 1), old4);
  EXPECT_EQ(r.dev.unflushed_writes(), 0u);
}

TEST(FaultyDevice, PowerCutUndoesUnflushedDiscardZeroesAndCopy) {
  Rig r;
  Bytes before = r.image();
  ASSERT_TRUE(r.dev.discard(0, 8 * kSector).ok());
  ASSERT_TRUE(r.dev.write_zeroes(10 * kSector + 7, 3 * kSector).ok());
  ASSERT_TRUE(r.dev.copy(20 * kSector, 30 * kSector + 1, 5 * kSector).ok());
  ASSERT_NE(r.image(), before);
  EXPECT_EQ(r.dev.power_cut(CrashMode::kDropUnflushed, 0), 0u);
  EXPECT_EQ(r.image(), before);
}

TEST(FaultyDevice, EveryOpFailsAfterCutUntilPowerCutRevives) {
  Rig r;
  r.dev.cut_power_after(2);
  ASSERT_TRUE(r.dev.write(0, filled(kSector, 1)).ok());
  ASSERT_TRUE(r.dev.write(kSector, filled(kSector, 2)).ok());  // the last one to land
  ASSERT_TRUE(r.dev.power_is_cut());
  EXPECT_EQ(r.sectors(1, 1), filled(kSector, 2));
  Bytes buf(kSector);
  EXPECT_EQ(r.dev.read(0, buf).error().code, Errc::kIo);
  EXPECT_EQ(r.dev.write(0, buf).error().code, Errc::kIo);
  EXPECT_EQ(r.dev.flush().error().code, Errc::kIo);
  EXPECT_EQ(r.dev.discard(0, kSector).error().code, Errc::kIo);
  EXPECT_EQ(r.dev.write_zeroes(0, kSector).error().code, Errc::kIo);
  EXPECT_EQ(r.dev.provision(0, kSector).error().code, Errc::kIo);
  EXPECT_EQ(r.dev.copy(0, kSector, kSector).error().code, Errc::kIo);
  EXPECT_EQ(r.dev.resize(2 * kSectors * kSector).error().code, Errc::kIo);
  EXPECT_EQ(r.dev.writes(), 2u);
  EXPECT_EQ(r.dev.reads(), 0u);

  r.dev.power_cut(CrashMode::kKeepPrefix, 3);
  EXPECT_FALSE(r.dev.power_is_cut());
  EXPECT_TRUE(r.dev.read(0, buf).ok());
  EXPECT_TRUE(r.dev.write(0, buf).ok());
  EXPECT_TRUE(r.dev.flush().ok());
  EXPECT_EQ(r.dev.writes(), 3u);
  EXPECT_EQ(r.dev.reads(), 1u);
}

TEST(FaultyDevice, TornWriteLandsOnlyItsFirstSectors) {
  Rig r;
  Bytes old = r.sectors(8, 8);
  r.dev.cut_power_after(1, 3);
  auto w = r.dev.write(8 * kSector, filled(8 * kSector, 1));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code, Errc::kIo);
  EXPECT_TRUE(r.dev.power_is_cut());
  EXPECT_EQ(r.sectors(8, 3), filled(3 * kSector, 1));
  EXPECT_EQ(r.sectors(11, 5), Bytes(old.begin() + 3 * kSector, old.end()));
}

TEST(FaultyDevice, TornWriteIsDroppedEntirelyByDropUnflushed) {
  Rig r;
  Bytes before = r.image();
  r.dev.cut_power_after(1, 3);
  ASSERT_FALSE(r.dev.write(8 * kSector, filled(8 * kSector, 1)).ok());
  EXPECT_EQ(r.dev.power_cut(CrashMode::kDropUnflushed, 0), 0u);
  EXPECT_EQ(r.image(), before);
}

TEST(FaultyDevice, TornWriteSurvivesOnlyAsExactlyItsPrefix) {
  std::set<uint64_t> outcomes;
  for (uint64_t seed = 0; seed < 32; seed++) {
    Rig r;
    Bytes old = r.sectors(8, 8);
    r.dev.cut_power_after(1, 3);
    ASSERT_FALSE(r.dev.write(8 * kSector, filled(8 * kSector, 1)).ok());
    uint64_t kept = r.dev.power_cut(CrashMode::kRandomSubset, seed);
    outcomes.insert(kept);
    Bytes expect = old;
    if (kept == 1) std::fill_n(expect.begin(), 3 * kSector, std::byte{1});
    EXPECT_EQ(r.sectors(8, 8), expect) << "seed " << seed;
  }
  EXPECT_EQ(outcomes, (std::set<uint64_t>{0, 1}));
}

TEST(FaultyDevice, KeepPrefixKeepsAPrefixOfWritesTearingOnlyTheLast) {
  constexpr uint64_t kWrites = 8, kLen = 4;  // write i fills sectors [4i, 4i+4) with i+1
  std::set<uint64_t> kept_seen;
  bool torn_seen = false;
  for (uint64_t seed = 0; seed < 64; seed++) {
    Rig r;
    Bytes before = r.image();
    for (uint64_t i = 0; i < kWrites; i++) {
      ASSERT_TRUE(r.dev.write(i * kLen * kSector, filled(kLen * kSector, uint8_t(i + 1))).ok());
    }
    uint64_t kept = r.dev.power_cut(CrashMode::kKeepPrefix, seed);
    ASSERT_LE(kept, kWrites);
    kept_seen.insert(kept);
    Bytes got = r.image();
    for (uint64_t i = 0; i < kWrites; i++) {
      for (uint64_t s = i * kLen; s < (i + 1) * kLen; s++) {
        bool is_new = sector_of(got, s) == filled(kSector, uint8_t(i + 1));
        bool is_old = sector_of(got, s) == sector_of(before, s);
        if (i + 1 < kept) {
          EXPECT_TRUE(is_new) << "seed " << seed << " sector " << s;
        } else if (i >= kept) {
          EXPECT_TRUE(is_old) << "seed " << seed << " sector " << s;
        } else {
          // The last survivor: its first sector landed, then new sectors up to the tear.
          bool first = s == i * kLen;
          bool prev_new = first || sector_of(got, s - 1) == filled(kSector, uint8_t(i + 1));
          EXPECT_TRUE(first ? is_new : (is_new ? prev_new : is_old))
              << "seed " << seed << " sector " << s;
          if (!first && is_old) torn_seen = true;
        }
      }
    }
  }
  EXPECT_GT(kept_seen.size(), 3u);
  EXPECT_TRUE(torn_seen);
}

// Overlapping writes, several not sector-aligned, all unflushed.
struct OverlapRun {
  Rig rig;
  std::vector<Bytes> states;  // states[0]: before any write; states[i]: after write i
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // byte ranges [first, last) written
};

std::unique_ptr<OverlapRun> run_overlapping_writes() {
  auto run = std::make_unique<OverlapRun>();
  const std::pair<uint64_t, uint64_t> writes[] = {
      {0, 8 * kSector},           {3 * kSector + 100, 700},
      {2 * kSector, 4 * kSector}, {5 * kSector, 300},
      {7 * kSector - 1, 2},       {kSector + 10, 6 * kSector},
      {9 * kSector, 512},         {4 * kSector, 4 * kSector + 77},
  };
  run->states.push_back(run->rig.image());
  uint8_t id = 1;
  for (auto [off, len] : writes) {
    EXPECT_TRUE(run->rig.dev.write(off, pattern(len, id++)).ok());
    run->states.push_back(run->rig.image());
    run->ranges.emplace_back(off, off + len);
  }
  return run;
}

TEST(FaultyDevice, RandomSubsetNeverInventsSectorContent) {
  for (uint64_t seed = 0; seed < 64; seed++) {
    auto run = run_overlapping_writes();
    run->rig.dev.power_cut(CrashMode::kRandomSubset, seed);
    Bytes got = run->rig.image();
    for (uint64_t s = 0; s < kSectors; s++) {
      // Allowed: the flushed content, or what any write covering the sector left in it.
      bool ok = sector_of(got, s) == sector_of(run->states[0], s);
      for (size_t i = 0; i < run->ranges.size() && !ok; i++) {
        auto [first, last] = run->ranges[i];
        bool covers = first < (s + 1) * kSector && last > s * kSector;
        ok = covers && sector_of(got, s) == sector_of(run->states[i + 1], s);
      }
      EXPECT_TRUE(ok) << "seed " << seed << " sector " << s;
    }
  }
}

TEST(FaultyDevice, RandomSubsetIsDeterministicPerSeed) {
  std::set<Bytes> images;
  for (uint64_t seed = 0; seed < 8; seed++) {
    auto a = run_overlapping_writes();
    auto b = run_overlapping_writes();
    EXPECT_EQ(a->rig.dev.power_cut(CrashMode::kRandomSubset, seed),
              b->rig.dev.power_cut(CrashMode::kRandomSubset, seed));
    EXPECT_EQ(a->rig.image(), b->rig.image()) << "seed " << seed;
    images.insert(a->rig.image());
  }
  EXPECT_GT(images.size(), 1u);  // and the seed does matter
}

TEST(FaultyDevice, RandomSubsetEqualsReplayingSomeSubsetOfWrites) {
  // Sector-aligned overlapping writes: the crashed image must be exactly what applying some
  // subset of them (as many as power_cut reports), in order, to the flushed state gives.
  const std::pair<uint64_t, uint64_t> writes[] = {
      {0, 6}, {2, 3}, {4, 6}, {1, 1}, {5, 4}, {0, 2},  // {first sector, sectors}
  };
  constexpr size_t kN = std::size(writes);
  for (uint64_t seed = 0; seed < 32; seed++) {
    Rig r;
    Bytes before = r.image();
    for (size_t i = 0; i < kN; i++) {
      auto [first, n] = writes[i];
      ASSERT_TRUE(r.dev.write(first * kSector, pattern(n * kSector, uint8_t(i + 1))).ok());
    }
    uint64_t kept = r.dev.power_cut(CrashMode::kRandomSubset, seed);
    Bytes got = r.image();
    bool matched = false;
    for (unsigned mask = 0; mask < (1u << kN) && !matched; mask++) {
      if (static_cast<uint64_t>(__builtin_popcount(mask)) != kept) continue;
      Bytes model = before;
      for (size_t i = 0; i < kN; i++) {
        if (!(mask & (1u << i))) continue;
        auto [first, n] = writes[i];
        Bytes data = pattern(n * kSector, uint8_t(i + 1));
        std::copy(data.begin(), data.end(), model.begin() + ptrdiff_t(first * kSector));
      }
      matched = model == got;
    }
    EXPECT_TRUE(matched) << "seed " << seed << " kept " << kept;
  }
}

}  // namespace
}  // namespace tp::io
