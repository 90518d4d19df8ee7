#include "catalog/catalog.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "support/test_util.h"

namespace tp::catalog {
namespace {

using tp::testing::TempDir;

constexpr uint64_t kData = 0;  // shorthand for range tables below
constexpr uint64_t kMeta = 1;

GuaranteeRange rng(uint64_t b, uint64_t e, uint64_t cls = kData) {
  return GuaranteeRange{b, e, cls == kMeta ? ProvisionClass::kMeta : ProvisionClass::kData};
}

VolumeRecord volume(const std::string& name, uint64_t dev_id) {
  VolumeRecord v;
  v.name = name;
  v.dev_id = dev_id;
  v.size_bytes = 1 << 30;
  v.created_unix = 1700000000 + static_cast<int64_t>(dev_id);
  return v;
}

Catalog rich_catalog() {
  Catalog c;
  c.settings.block_bytes = 128 * 1024;
  c.settings.data_bytes = uint64_t{1} << 40;
  c.settings.low_water_percent = 15;
  c.settings.low_water_hook = "/usr/bin/notify --pool \"p\" \\ \t caf\xc3\xa9";
  c.next_dev_id = 9;
  VolumeRecord base = volume("base", 1);
  base.guarantee = {rng(0, 10), rng(10, 20, kMeta), rng(100, 8192)};
  base.reserve_blocks = 3;
  VolumeRecord snap = volume("base.next", 2);
  snap.read_only = true;
  snap.origin = "base";
  snap.origin_dev_id = 1;
  snap.reserve_blocks = UINT64_MAX;
  snap.created_unix = -5;  // before the epoch: still round trips
  VolumeRecord odd = volume("A_z-0+9.x", (uint64_t{1} << 24) - 1);
  odd.size_bytes = UINT64_MAX;
  odd.origin = "gone";  // the origin was removed since; the name stays as history
  odd.origin_dev_id = 7;
  for (auto* v : {&base, &snap, &odd}) c.volumes[v->name] = *v;
  return c;
}

// A valid JSON catalog with `volume_json` as its only volume.
std::string with_volume(const std::string& volume_json) {
  return R"({"format":1,"settings":{"block_bytes":65536,"data_bytes":0,"low_water_percent":10,)"
         R"("low_water_hook":""},"next_dev_id":5,"volumes":[)" +
         volume_json + "]}";
}

std::string vol_json(const std::string& name = "\"v\"", const std::string& dev_id = "1",
                     const std::string& guarantee = "[]") {
  return R"({"name":)" + name + R"(,"dev_id":)" + dev_id +
         R"(,"size_bytes":4096,"read_only":false,"origin":"","origin_dev_id":0,)"
         R"("created_unix":0,"guarantee":)" +
         guarantee + R"(,"reserve_blocks":0})";
}

void expect_corrupt(const std::string& text) {
  auto r = Catalog::from_json(text);
  ASSERT_FALSE(r.ok()) << text;
  EXPECT_EQ(r.error().code, Errc::kCorruption) << text;
  EXPECT_NE(std::string(r.error().what), "") << text;
}

// Bitwise CRC-32C, independent of the table/SSE code under test.
uint32_t ref_crc32c(std::string_view s) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

uint64_t le(const std::string& s, size_t off, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++) v |= uint64_t{static_cast<unsigned char>(s[off + i])} << (8 * i);
  return v;
}

// A record as catalog.h documents it, built independently of the code under test. The
// current layout ("TPCATLG2") checksums bytes 0..27 and the payload; the old one
// ("TPCATLG1") the payload alone.
std::string make_record(uint64_t trans_id, uint64_t sequence, const std::string& payload,
                        bool old_layout = false) {
  std::string rec = old_layout ? "TPCATLG1" : "TPCATLG2";
  auto put = [&rec](uint64_t v, int n) {
    for (int i = 0; i < n; i++) rec.push_back(static_cast<char>(v >> (8 * i)));
  };
  put(trans_id, 8);
  put(sequence, 8);
  put(payload.size(), 4);
  put(ref_crc32c(old_layout ? payload : rec + payload), 4);
  return rec + payload;
}

// Overwrites one byte of a file in place (no truncation: rewriting a whole small file
// thousands of times is slow on some file systems, which flush on close after a truncate).
void poke(const std::string& path, uint64_t off, char byte) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::pwrite(fd, &byte, 1, static_cast<off_t>(off)), 1) << path;
  ::close(fd);
}

uint64_t file_size(const std::string& path) {
  return std::filesystem::file_size(path);
}

// --- JSON -------------------------------------------------------------------------------------

TEST(CatalogJson, RichCatalogRoundTrips) {
  Catalog c = rich_catalog();
  auto r = Catalog::from_json(c.to_json());
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, c);
}

TEST(CatalogJson, DefaultCatalogRoundTrips) {
  Catalog c;
  auto r = Catalog::from_json(c.to_json());
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, c);
}

TEST(CatalogJson, UsesDocumentedFieldNamesInOrder) {
  Catalog c;
  VolumeRecord v = volume("v", 3);
  v.guarantee = {rng(0, 4, kMeta)};
  c.volumes["v"] = v;
  EXPECT_EQ(c.to_json(),
            R"({"format":1,"settings":{"block_bytes":65536,"data_bytes":0,)"
            R"("low_water_percent":10,"low_water_hook":""},"next_dev_id":1,"volumes":[)"
            R"({"name":"v","dev_id":3,"size_bytes":1073741824,"read_only":false,"origin":"",)"
            R"("origin_dev_id":0,"created_unix":1700000003,)"
            R"("guarantee":[{"begin":0,"end":4,"class":"meta"}],"reserve_blocks":0}]})");
}

TEST(CatalogJson, AcceptsWhitespaceAndUnknownFields) {
  std::string text =
      " {\n \"format\" : 1 , \"extra\" : [1, {\"x\": null}], \"settings\": "
      "{\"block_bytes\":65536,\"data_bytes\":0,\"low_water_percent\":10,"
      "\"low_water_hook\":\"\"},\"next_dev_id\":1,\"volumes\":[] }\n";
  auto r = Catalog::from_json(text);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(r->volumes.empty());
}

TEST(CatalogJson, HelperDocumentIsValid) {
  // The negative tests below change one thing in this document.
  auto r = Catalog::from_json(with_volume(vol_json()));
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_NE(r->find("v"), nullptr);
}

TEST(CatalogJson, RejectsDuplicateNames) {
  expect_corrupt(with_volume(vol_json("\"v\"", "1") + "," + vol_json("\"v\"", "2")));
}

TEST(CatalogJson, RejectsDuplicateDevIds) {
  expect_corrupt(with_volume(vol_json("\"a\"", "1") + "," + vol_json("\"b\"", "1")));
}

TEST(CatalogJson, RejectsDevIdBeyond24Bits) {
  expect_corrupt(with_volume(vol_json("\"v\"", "16777216")));
}

TEST(CatalogJson, RejectsBadNames) {
  for (std::string name : {R"("")", R"(".")", R"("..")", R"("a/b")", R"("a b")", R"("a\u0000b")",
                           R"("-x")", R"(".hidden")", R"("caf\u00e9")"}) {
    expect_corrupt(with_volume(vol_json(name)));
  }
  expect_corrupt(with_volume(vol_json("\"" + std::string(129, 'n') + "\"")));
}

TEST(CatalogJson, RejectsBadOriginName) {
  std::string v = vol_json();
  v.replace(v.find(R"("origin":"")"), 11, R"("origin":"../x")");
  expect_corrupt(with_volume(v));
}

TEST(CatalogJson, RejectsOverlappingRanges) {
  expect_corrupt(with_volume(
      vol_json("\"v\"", "1",
               R"([{"begin":0,"end":10,"class":"data"},{"begin":9,"end":12,"class":"meta"}])")));
}

TEST(CatalogJson, RejectsUnsortedRanges) {
  expect_corrupt(with_volume(
      vol_json("\"v\"", "1",
               R"([{"begin":20,"end":30,"class":"data"},{"begin":0,"end":5,"class":"data"}])")));
}

TEST(CatalogJson, RejectsEmptyAndReversedRanges) {
  expect_corrupt(with_volume(vol_json("\"v\"", "1", R"([{"begin":5,"end":5,"class":"data"}])")));
  expect_corrupt(with_volume(vol_json("\"v\"", "1", R"([{"begin":6,"end":5,"class":"data"}])")));
}

TEST(CatalogJson, RejectsUnknownRangeClass) {
  expect_corrupt(with_volume(vol_json("\"v\"", "1", R"([{"begin":0,"end":5,"class":"DATA"}])")));
  expect_corrupt(with_volume(vol_json("\"v\"", "1", R"([{"begin":0,"end":5,"class":1}])")));
}

TEST(CatalogJson, RejectsWrongTypes) {
  expect_corrupt(with_volume(vol_json("\"v\"", "\"1\"")));                 // string dev_id
  expect_corrupt(with_volume(vol_json("\"v\"", "-1")));                    // negative
  expect_corrupt(with_volume(vol_json("\"v\"", "1.5")));                   // float
  expect_corrupt(with_volume(vol_json("\"v\"", "1e3")));                   // float notation
  expect_corrupt(with_volume(vol_json("\"v\"", "true")));                  // bool
  expect_corrupt(with_volume(vol_json("\"v\"", "null")));                  // null
  expect_corrupt(with_volume(vol_json("\"v\"", "18446744073709551616")));  // > 2^64
  expect_corrupt(with_volume(vol_json("7")));                              // name not a string
  expect_corrupt(with_volume(vol_json("\"v\"", "1", "{}")));               // guarantee not an array
  expect_corrupt(with_volume(vol_json("\"v\"", "1", "[[0,5]]")));
  std::string ro = vol_json();
  ro.replace(ro.find("\"read_only\":false"), 17, "\"read_only\":0");
  expect_corrupt(with_volume(ro));
  std::string created = vol_json();
  created.replace(created.find("\"created_unix\":0"), 16, "\"created_unix\":9223372036854775808");
  expect_corrupt(with_volume(created));
  expect_corrupt(with_volume("[]"));  // a volume that is not an object
  expect_corrupt("[]");
  expect_corrupt("\"catalog\"");
  expect_corrupt("null");
  expect_corrupt(R"({"format":1,"settings":[],"next_dev_id":1,"volumes":[]})");
  expect_corrupt(R"({"format":1,"settings":{"block_bytes":65536,"data_bytes":0,)"
                 R"("low_water_percent":10,"low_water_hook":""},"next_dev_id":1,"volumes":{}})");
}

TEST(CatalogJson, RejectsMissingFields) {
  std::string good = with_volume(vol_json());
  for (const char* key : {"\"format\"", "\"settings\"", "\"next_dev_id\"", "\"volumes\"",
                          "\"block_bytes\"", "\"low_water_hook\"", "\"name\"", "\"dev_id\"",
                          "\"guarantee\"", "\"reserve_blocks\"", "\"origin_dev_id\""}) {
    std::string bad = good;
    size_t at = bad.find(key);
    ASSERT_NE(at, std::string::npos) << key;
    bad.replace(at, std::string(key).size(), "\"renamed_field\"");
    expect_corrupt(bad);
  }
}

TEST(CatalogJson, RejectsUnsupportedFormat) {
  std::string text = Catalog{}.to_json();
  text.replace(text.find("\"format\":1"), 10, "\"format\":2");
  expect_corrupt(text);
}

TEST(CatalogJson, RejectsBadSettings) {
  auto with_settings = [](uint64_t block_bytes, uint64_t low_water) {
    Catalog c;
    std::string text = c.to_json();
    text.replace(text.find("\"block_bytes\":65536"), 19,
                 "\"block_bytes\":" + std::to_string(block_bytes));
    text.replace(text.find("\"low_water_percent\":10"), 22,
                 "\"low_water_percent\":" + std::to_string(low_water));
    return text;
  };
  ASSERT_TRUE(Catalog::from_json(with_settings(1 << 30, 100)).ok());
  expect_corrupt(with_settings(4096, 10));
  expect_corrupt(with_settings(0, 10));
  expect_corrupt(with_settings(3 * 32 * 1024, 10));  // not a multiple of 64 KiB
  expect_corrupt(with_settings((uint64_t{1} << 30) + 65536, 10));
  expect_corrupt(with_settings(uint64_t{1} << 32, 10));  // does not even fit in 32 bits
  expect_corrupt(with_settings(65536, 101));
}

TEST(CatalogJson, RejectsNextDevIdBeyond24Bits) {
  std::string text = Catalog{}.to_json();
  text.replace(text.find("\"next_dev_id\":1"), 15, "\"next_dev_id\":16777217");
  expect_corrupt(text);
}

TEST(CatalogJson, RejectsEveryTruncation) {
  std::string text = rich_catalog().to_json();
  for (size_t n = 0; n < text.size(); n++) {
    expect_corrupt(text.substr(0, n));
  }
}

TEST(CatalogJson, RejectsTrailingGarbageAndInvalidUtf8) {
  expect_corrupt(Catalog{}.to_json() + "x");
  expect_corrupt(Catalog{}.to_json() + "{}");
  std::string text = Catalog{}.to_json();
  text.replace(text.find("\"low_water_hook\":\"\""), 19, "\"low_water_hook\":\"\xff\xfe\"");
  expect_corrupt(text);
}

TEST(CatalogJson, RejectsDeepNestingWithoutCrashing) {
  expect_corrupt(std::string(1 << 20, '['));
  expect_corrupt(std::string(100000, '[') + std::string(100000, ']'));
  std::string deep = std::string(50, '[') + std::string(50, ']');
  std::string text = Catalog{}.to_json();
  text.insert(text.size() - 1, ",\"extra\":" + deep);
  expect_corrupt(text);
}

TEST(CatalogJson, SurvivesRandomBytes) {
  std::mt19937_64 gen(1234);
  for (int i = 0; i < 20000; i++) {
    std::string s(gen() % 200, '\0');
    for (char& ch : s) ch = static_cast<char>(gen());
    if (i % 2 == 0) s.insert(0, "{\"format\":1,");  // get past the first byte sometimes
    expect_corrupt(s);
  }
}

TEST(CatalogJson, SurvivesMutationsOfAValidCatalog) {
  const std::string good = rich_catalog().to_json();
  const std::string alphabet = "{}[]\",:0123456789-.eE+ tfnul\\\x00\xff";
  std::mt19937_64 gen(99);
  int accepted = 0;
  for (int i = 0; i < 20000; i++) {
    std::string s = good;
    int edits = 1 + static_cast<int>(gen() % 4);
    for (int e = 0; e < edits; e++) {
      size_t at = gen() % s.size();
      char ch = alphabet[gen() % alphabet.size()];
      switch (gen() % 3) {
        case 0:
          s[at] = ch;
          break;
        case 1:
          s.insert(at, 1, ch);
          break;
        default:
          s.erase(at, 1 + gen() % 8);
          break;
      }
      if (s.empty()) s = "x";
    }
    auto r = Catalog::from_json(s);
    if (r.ok()) {
      // Whatever is accepted is a valid catalog that round trips.
      accepted++;
      EXPECT_TRUE(r->validate().ok());
      auto again = Catalog::from_json(r->to_json());
      ASSERT_TRUE(again.ok()) << s;
      EXPECT_EQ(*again, *r);
    } else {
      EXPECT_EQ(r.error().code, Errc::kCorruption);
    }
  }
  EXPECT_GT(accepted, 0);  // some mutations (e.g. digits in numbers) are harmless
}

TEST(CatalogJson, NonUtf8HookIsWrittenAsReplacementCharacter) {
  Catalog c;
  c.settings.low_water_hook = "run\xff";
  auto r = Catalog::from_json(c.to_json());
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->settings.low_water_hook, "run\xef\xbf\xbd");
}

// --- validate / find ---------------------------------------------------------------------------

TEST(CatalogValidate, AcceptsRichCatalog) {
  EXPECT_TRUE(rich_catalog().validate().ok());
}

TEST(CatalogValidate, RejectsKeyThatDiffersFromName) {
  Catalog c;
  c.volumes["a"] = volume("b", 1);
  auto r = c.validate();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
}

TEST(CatalogValidate, RejectsAdjacentRangesThatOverlap) {
  Catalog c;
  VolumeRecord v = volume("v", 1);
  v.guarantee = {rng(0, 10), rng(5, 20, kMeta)};
  c.volumes["v"] = v;
  EXPECT_EQ(c.validate().error().code, Errc::kInvalidArgument);
}

TEST(CatalogFind, ByNameAndByDevId) {
  Catalog c = rich_catalog();
  ASSERT_NE(c.find("base"), nullptr);
  EXPECT_EQ(c.find("base")->dev_id, 1u);
  c.find("base")->reserve_blocks = 77;
  EXPECT_EQ(std::as_const(c).find("base")->reserve_blocks, 77u);
  EXPECT_EQ(c.find("nope"), nullptr);
  ASSERT_NE(c.find_dev(2), nullptr);
  EXPECT_EQ(c.find_dev(2)->name, "base.next");
  EXPECT_EQ(c.find_dev(42), nullptr);
}

// --- names -------------------------------------------------------------------------------------

TEST(VolumeName, AcceptsDocumentedAlphabet) {
  EXPECT_TRUE(valid_volume_name("a"));
  EXPECT_TRUE(valid_volume_name("base.next"));
  EXPECT_TRUE(valid_volume_name("Vol_1+2-3"));
  EXPECT_TRUE(valid_volume_name("x.."));
  EXPECT_TRUE(valid_volume_name("_"));
  EXPECT_TRUE(valid_volume_name(std::string(128, 'n')));
}

TEST(VolumeName, RejectsEmptyDotsSlashesSpacesNulAndLongNames) {
  EXPECT_FALSE(valid_volume_name(""));
  EXPECT_FALSE(valid_volume_name("."));
  EXPECT_FALSE(valid_volume_name(".."));
  EXPECT_FALSE(valid_volume_name(".a"));
  EXPECT_FALSE(valid_volume_name("-a"));
  EXPECT_FALSE(valid_volume_name("a/b"));
  EXPECT_FALSE(valid_volume_name("/"));
  EXPECT_FALSE(valid_volume_name("a b"));
  EXPECT_FALSE(valid_volume_name("a\tb"));
  EXPECT_FALSE(valid_volume_name(std::string_view("a\0b", 3)));
  EXPECT_FALSE(valid_volume_name("caf\xc3\xa9"));
  EXPECT_FALSE(valid_volume_name(std::string(129, 'n')));
}

// --- ranges ------------------------------------------------------------------------------------

using Set = std::vector<GuaranteeRange>;

TEST(Ranges, AddMergesAdjacentSameClass) {
  Set s = add_range({}, rng(0, 10));
  s = add_range(s, rng(10, 20));
  s = add_range(s, rng(30, 40));
  s = add_range(s, rng(20, 30));
  EXPECT_EQ(s, (Set{rng(0, 40)}));
}

TEST(Ranges, AddMergesOverlappingSameClass) {
  Set s = add_range({rng(0, 10), rng(20, 30)}, rng(5, 25));
  EXPECT_EQ(s, (Set{rng(0, 30)}));
  EXPECT_EQ(add_range(s, rng(3, 7)), (Set{rng(0, 30)}));
}

TEST(Ranges, AddKeepsAdjacentDifferentClassesApart) {
  Set s = add_range({rng(0, 10)}, rng(10, 20, kMeta));
  EXPECT_EQ(s, (Set{rng(0, 10), rng(10, 20, kMeta)}));
}

TEST(Ranges, AddedClassReplacesTheOverlappedPart) {
  Set s = add_range({rng(0, 100)}, rng(40, 60, kMeta));
  EXPECT_EQ(s, (Set{rng(0, 40), rng(40, 60, kMeta), rng(60, 100)}));
  // Re-adding data over the middle heals it back into one range.
  EXPECT_EQ(add_range(s, rng(40, 60)), (Set{rng(0, 100)}));
  // A meta range over the tail of one data range and the head of another.
  EXPECT_EQ(add_range({rng(0, 10), rng(20, 30)}, rng(5, 25, kMeta)),
            (Set{rng(0, 5), rng(5, 25, kMeta), rng(25, 30)}));
}

TEST(Ranges, AddIgnoresEmptyRange) {
  Set s{rng(0, 10)};
  EXPECT_EQ(add_range(s, rng(5, 5, kMeta)), s);
  EXPECT_EQ(add_range(s, rng(7, 3, kMeta)), s);
}

TEST(Ranges, AddAtTheTopOfTheAddressSpace) {
  Set s = add_range({}, rng(UINT64_MAX - 10, UINT64_MAX));
  s = add_range(s, rng(0, 1));
  EXPECT_EQ(s, (Set{rng(0, 1), rng(UINT64_MAX - 10, UINT64_MAX)}));
  EXPECT_EQ(covered_blocks(s, 0, UINT64_MAX), 11u);
}

TEST(Ranges, RemoveSplitsARange) {
  EXPECT_EQ(remove_range({rng(0, 100, kMeta)}, 40, 60),
            (Set{rng(0, 40, kMeta), rng(60, 100, kMeta)}));
}

TEST(Ranges, RemoveTrimsAndDropsAcrossSeveralRanges) {
  Set s{rng(0, 10), rng(20, 30, kMeta), rng(40, 50), rng(60, 70)};
  EXPECT_EQ(remove_range(s, 5, 45), (Set{rng(0, 5), rng(45, 50), rng(60, 70)}));
  EXPECT_EQ(remove_range(s, 0, 100), Set{});
  EXPECT_EQ(remove_range(s, 20, 30), (Set{rng(0, 10), rng(40, 50), rng(60, 70)}));
}

TEST(Ranges, RemoveOfUncoveredOrEmptyRangeChangesNothing) {
  Set s{rng(10, 20), rng(30, 40)};
  EXPECT_EQ(remove_range(s, 0, 10), s);
  EXPECT_EQ(remove_range(s, 20, 30), s);
  EXPECT_EQ(remove_range(s, 40, 1000), s);
  EXPECT_EQ(remove_range(s, 15, 15), s);
  EXPECT_EQ(remove_range({}, 0, 10), Set{});
}

TEST(Ranges, CoveredBlocksCountsPartialOverlaps) {
  Set s{rng(10, 20), rng(30, 40, kMeta)};
  EXPECT_EQ(covered_blocks(s, 0, 100), 20u);
  EXPECT_EQ(covered_blocks(s, 15, 35), 10u);
  EXPECT_EQ(covered_blocks(s, 20, 30), 0u);
  EXPECT_EQ(covered_blocks(s, 19, 31), 2u);
  EXPECT_EQ(covered_blocks(s, 12, 13), 1u);
  EXPECT_EQ(covered_blocks(s, 13, 12), 0u);
  EXPECT_EQ(covered_blocks({}, 0, 100), 0u);
}

TEST(Ranges, IsCoveredAtBoundaries) {
  Set s{rng(10, 20), rng(20, 30, kMeta), rng(40, 41)};
  EXPECT_FALSE(is_covered(s, 9));
  EXPECT_TRUE(is_covered(s, 10));
  EXPECT_TRUE(is_covered(s, 19));
  EXPECT_TRUE(is_covered(s, 20));
  EXPECT_TRUE(is_covered(s, 29));
  EXPECT_FALSE(is_covered(s, 30));
  EXPECT_TRUE(is_covered(s, 40));
  EXPECT_FALSE(is_covered(s, 41));
  EXPECT_FALSE(is_covered({}, 0));
}

TEST(Ranges, RandomOperationsMatchABitmapModel) {
  std::mt19937_64 gen(7);
  constexpr uint64_t kSpan = 200;
  Set s;
  std::vector<int> model(kSpan, -1);  // -1 uncovered, else the class
  for (int i = 0; i < 5000; i++) {
    uint64_t b = gen() % kSpan;
    uint64_t e = b + gen() % (kSpan - b + 1);
    if (gen() % 3 == 0) {
      s = remove_range(s, b, e);
      for (uint64_t x = b; x < e; x++) model[x] = -1;
    } else {
      uint64_t cls = gen() % 2;
      s = add_range(s, rng(b, e, cls));
      for (uint64_t x = b; x < e; x++) model[x] = static_cast<int>(cls);
    }
    // Canonical: sorted, non-empty, non-overlapping, same-class neighbours merged.
    for (size_t k = 0; k < s.size(); k++) {
      ASSERT_LT(s[k].begin, s[k].end);
      if (k > 0) {
        ASSERT_LE(s[k - 1].end, s[k].begin);
        ASSERT_FALSE(s[k - 1].end == s[k].begin && s[k - 1].cls == s[k].cls);
      }
    }
    for (uint64_t x = 0; x < kSpan; x++) {
      ASSERT_EQ(is_covered(s, x), model[x] >= 0) << x;
    }
    uint64_t qb = gen() % kSpan, qe = gen() % (kSpan + 1);
    uint64_t want = 0;
    for (uint64_t x = qb; x < qe; x++) want += model[x] >= 0;
    ASSERT_EQ(covered_blocks(s, qb, qe), want);
  }
}

// --- file --------------------------------------------------------------------------------------

Catalog numbered(uint64_t n) {
  Catalog c;
  c.next_dev_id = n + 1;
  c.volumes["v" + std::to_string(n)] = volume("v" + std::to_string(n), n % (1 << 24));
  return c;
}

// About `volumes` x 250 bytes of JSON.
Catalog large(uint64_t n, int volumes) {
  Catalog c;
  c.next_dev_id = n;
  for (int i = 0; i < volumes; i++) {
    VolumeRecord v = volume("volume-" + std::to_string(i) + "-gen-" + std::to_string(n),
                            static_cast<uint64_t>(i));
    v.guarantee = {rng(0, n + 1)};
    c.volumes[v.name] = v;
  }
  return c;
}

TEST(CatalogFile, CreateThenOpenReturnsTheCatalog) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, rich_catalog(), 1);
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  EXPECT_EQ(f->current(), rich_catalog());
  EXPECT_EQ(f->trans_id(), 1u);
  auto g = CatalogFile::open(path, 1);
  ASSERT_TRUE(g.ok()) << g.error().to_string();
  EXPECT_EQ(g->current(), rich_catalog());
  EXPECT_EQ(g->trans_id(), 1u);
}

TEST(CatalogFile, CreateFailsWithExistsAndLeavesTheFile) {
  TempDir dir;
  std::string path = dir.file("catalog");
  ASSERT_TRUE(CatalogFile::create(path, numbered(1), 1).ok());
  auto again = CatalogFile::create(path, numbered(2), 5);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, Errc::kExists);
  auto f = CatalogFile::open(path, 1);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->current(), numbered(1));
}

TEST(CatalogFile, CreateRefusesAnInvalidCatalogAndLeavesNoFile) {
  TempDir dir;
  std::string path = dir.file("catalog");
  Catalog c;
  c.volumes["bad name"] = volume("bad name", 1);
  auto f = CatalogFile::create(path, c, 1);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code, Errc::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(CatalogFile, CreateInMissingDirectoryFailsWithErrno) {
  TempDir dir;
  auto f = CatalogFile::create(dir.file("no/such/catalog"), Catalog{}, 1);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code, Errc::kIo);
  EXPECT_EQ(f.error().sys_errno, ENOENT);
}

TEST(CatalogFile, RecordHeaderMatchesDocumentedLayout) {
  TempDir dir;
  std::string path = dir.file("catalog");
  Catalog c = rich_catalog();
  ASSERT_TRUE(CatalogFile::create(path, c, 0x0102030405060708).ok());
  std::string bytes = tp::testing::read_file(path);
  ASSERT_GE(bytes.size(), 32u);
  EXPECT_EQ(bytes.substr(0, 8), "TPCATLG2");
  EXPECT_EQ(le(bytes, 8, 8), 0x0102030405060708u);
  EXPECT_EQ(le(bytes, 16, 8), 1u);  // first sequence number
  uint64_t len = le(bytes, 24, 4);
  ASSERT_EQ(bytes.size(), 32 + len);
  std::string payload = bytes.substr(32);
  EXPECT_EQ(ref_crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(le(bytes, 28, 4), ref_crc32c(bytes.substr(0, 28) + payload));
  EXPECT_EQ(payload, c.to_json());
  EXPECT_EQ(bytes, make_record(0x0102030405060708, 1, c.to_json()));
}

TEST(CatalogFile, OpenPicksTheGenerationOfTheTransaction) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, numbered(1), 1);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f->write(numbered(2), 2).ok());
  EXPECT_EQ(f->current(), numbered(2));
  EXPECT_EQ(f->trans_id(), 2u);
  auto one = CatalogFile::open(path, 1);
  ASSERT_TRUE(one.ok()) << one.error().to_string();
  EXPECT_EQ(one->current(), numbered(1));
  auto two = CatalogFile::open(path, 2);
  ASSERT_TRUE(two.ok()) << two.error().to_string();
  EXPECT_EQ(two->current(), numbered(2));
}

TEST(CatalogFile, OpenPicksTheLastRecordOfARetriedTransaction) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, numbered(1), 1);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f->write(numbered(2), 2).ok());
  ASSERT_TRUE(f->write(numbered(3), 2).ok());  // the commit of 2 failed and was retried
  auto g = CatalogFile::open(path, 2);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->current(), numbered(3));
}

// Found by catalog_fuzz: a record whose (then unchecksummed) header said sequence 2^64-1
// made the next write use sequence 0, which the scan then took for a torn tail: write() said
// ok, but the generation it wrote could never be opened. Now the write is refused and the
// file stays at the previous generation (and a damaged header no longer passes the crc, see
// AnyDamagedHeaderByteOfTheLastRecordMakesItInvalid; this record is well formed).
TEST(CatalogFile, WriteAfterTheLastSequenceNumberIsRefused) {
  TempDir dir;
  std::string path = dir.file("catalog");
  std::string bytes = make_record(1, UINT64_MAX, numbered(1).to_json());
  tp::testing::write_file(path, bytes);
  auto f = CatalogFile::open(path, 1);
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  auto w = f->write(numbered(2), 2);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code, Errc::kCorruption);
  EXPECT_EQ(f->trans_id(), 1u);
  EXPECT_EQ(f->current(), numbered(1));
  EXPECT_EQ(tp::testing::read_file(path), bytes);
  auto again = CatalogFile::open(path, 1);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->current(), numbered(1));
}

TEST(CatalogFile, OpenBeforeTheFirstGenerationIsCorruption) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, numbered(1), 5);
  ASSERT_TRUE(f.ok());
  for (uint64_t t : {0u, 4u}) {
    auto g = CatalogFile::open(path, t);
    ASSERT_FALSE(g.ok());
    EXPECT_EQ(g.error().code, Errc::kCorruption);
    EXPECT_STREQ(g.error().what, "catalog has no generation for the metadata transaction");
  }
}

// A generation is written only in a transaction that changed the catalog: transaction t uses
// the newest one at or below t; one above t (a commit that did not complete) is ignored but
// reported, so that the pool writes the catalog at its next commit.
TEST(CatalogFile, OpenPicksTheNewestGenerationAtOrBelowTheTransaction) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, numbered(1), 1);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f->write(numbered(4), 4).ok());
  struct Case {
    uint64_t t;
    int catalog;
    uint64_t from;
    bool newer;
  };
  for (Case c : {Case{1, 1, 1, true}, Case{3, 1, 1, true}, Case{4, 4, 4, false},
                 Case{100, 4, 4, false}}) {
    auto g = CatalogFile::open(path, c.t);
    ASSERT_TRUE(g.ok()) << c.t;
    EXPECT_EQ(g->current(), numbered(c.catalog)) << c.t;
    EXPECT_EQ(g->trans_id(), c.from) << c.t;
    EXPECT_EQ(g->has_newer(), c.newer) << c.t;
  }
  // A retried transaction 4 that wrote again: the later record of the two wins.
  auto g = CatalogFile::open(path, 3);
  ASSERT_TRUE(g.ok());
  ASSERT_TRUE(g->write(numbered(5), 4).ok());
  EXPECT_FALSE(g->has_newer());
  auto h = CatalogFile::open(path, 4);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->current(), numbered(5));
}

TEST(CatalogFile, OpenOfMissingFileFailsWithEnoent) {
  TempDir dir;
  auto g = CatalogFile::open(dir.file("catalog"), 1);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.error().code, Errc::kIo);
  EXPECT_EQ(g.error().sys_errno, ENOENT);
}

TEST(CatalogFile, OpenOfEmptyOrGarbageFileIsCorruption) {
  TempDir dir;
  std::string path = dir.file("catalog");
  tp::testing::write_file(path, "");
  EXPECT_EQ(CatalogFile::open(path, 1).error().code, Errc::kCorruption);
  tp::testing::write_file(path, std::string(4096, 'x'));
  EXPECT_EQ(CatalogFile::open(path, 1).error().code, Errc::kCorruption);
}

TEST(CatalogFile, MatchingRecordWithBadJsonIsCorruption) {
  TempDir dir;
  std::string path = dir.file("catalog");
  // A well-framed record whose payload is not a catalog (a writer bug, not a torn tail).
  tp::testing::write_file(path, make_record(1, 1, "{\"format\":1}"));
  auto g = CatalogFile::open(path, 1);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.error().code, Errc::kCorruption);
}

TEST(CatalogFile, TruncatedLastRecordIsIgnored) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, rich_catalog(), 1);
  ASSERT_TRUE(f.ok());
  uint64_t first = file_size(path);
  ASSERT_TRUE(f->write(numbered(2), 2).ok());
  uint64_t full = file_size(path);
  for (uint64_t cut : {first + 1, first + 20, first + 32, full - 1}) {
    ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(cut)), 0);
    auto one = CatalogFile::open(path, 1);
    ASSERT_TRUE(one.ok()) << cut << ": " << one.error().to_string();
    EXPECT_EQ(one->current(), rich_catalog());
    // Transaction 2 falls back to generation 1 (its own record never became durable).
    auto two = CatalogFile::open(path, 2);
    ASSERT_TRUE(two.ok()) << cut;
    EXPECT_EQ(two->current(), rich_catalog()) << cut;
    EXPECT_EQ(two->trans_id(), 1u) << cut;
    auto recs = one->records();
    ASSERT_TRUE(recs.ok());
    ASSERT_EQ(recs->size(), 2u);
    EXPECT_TRUE((*recs)[0].valid);
    EXPECT_FALSE((*recs)[1].valid);
    EXPECT_EQ((*recs)[1].offset, first);
  }
}

TEST(CatalogFile, FlippedPayloadByteOfLastRecordIsIgnored) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, numbered(1), 1);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f->write(numbered(2), 2).ok());
  std::string bytes = tp::testing::read_file(path);
  bytes[bytes.size() - 3] ^= 0x01;
  tp::testing::write_file(path, bytes);
  auto one = CatalogFile::open(path, 1);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->current(), numbered(1));
  auto two = CatalogFile::open(path, 2);  // the damaged record is not taken: generation 1
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->current(), numbered(1));
  EXPECT_EQ(two->trans_id(), 1u);
}

const char* header_field(size_t off) {
  return off < 8    ? "magic"
         : off < 16 ? "trans_id"
         : off < 24 ? "sequence"
         : off < 28 ? "length"
                    : "crc";
}

constexpr const char* kNoGeneration = "catalog has no generation for the metadata transaction";

// Every single-byte corruption (each of the 255 other values of each of the 32 header bytes)
// of the last record makes it invalid: a torn tail, as a damaged payload. The generation
// before it is what every transaction from 1 on gets (also the one its damaged header
// claims); never the damaged record's catalog.
// While the crc covered the payload alone, e.g. a trans_id damaged into 1 made open(1) load
// generation 2's catalog, and a damaged sequence went unnoticed.
TEST(CatalogFile, AnyDamagedHeaderByteOfTheLastRecordMakesItInvalid) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, numbered(1), 1);
  ASSERT_TRUE(f.ok());
  const uint64_t last = file_size(path);
  ASSERT_TRUE(f->write(numbered(2), 2).ok());
  const std::string good = tp::testing::read_file(path);
  int cases = 0;
  std::string bytes = good;
  for (size_t i = 0; i < 32; i++) {
    for (int x = 1; x < 256; x++) {
      bytes[last + i] = static_cast<char>(good[last + i] ^ x);
      ASSERT_NO_FATAL_FAILURE(poke(path, last + i, bytes[last + i]));
      const std::string where =
          std::string(header_field(i)) + " byte " + std::to_string(i) + " ^ " + std::to_string(x);
      auto one = CatalogFile::open(path, 1);
      ASSERT_TRUE(one.ok()) << where << ": " << one.error().to_string();
      ASSERT_EQ(one->current(), numbered(1)) << where;
      auto two = CatalogFile::open(path, 2);
      ASSERT_TRUE(two.ok()) << where;
      ASSERT_EQ(two->current(), numbered(1)) << where;
      ASSERT_EQ(two->trans_id(), 1u) << where;
      uint64_t claimed = le(bytes, last + 8, 8);
      auto c = CatalogFile::open(path, claimed);
      if (claimed == 0) {
        ASSERT_FALSE(c.ok()) << where;
        ASSERT_STREQ(c.error().what, kNoGeneration) << where;
      } else {
        ASSERT_TRUE(c.ok()) << where;
        ASSERT_EQ(c->current(), numbered(1)) << where;
      }
      auto recs = one->records();
      ASSERT_TRUE(recs.ok()) << where;
      ASSERT_EQ(recs->size(), 2u) << where;
      ASSERT_TRUE((*recs)[0].valid) << where;
      ASSERT_FALSE((*recs)[1].valid) << where;
      ASSERT_EQ((*recs)[1].offset, last) << where;
      cases++;
    }
    bytes[last + i] = good[last + i];
    ASSERT_NO_FATAL_FAILURE(poke(path, last + i, good[last + i]));
  }
  ASSERT_EQ(tp::testing::read_file(path), good);
  ASSERT_NO_FATAL_FAILURE(poke(path, last + 16, static_cast<char>(good[last + 16] ^ 0x80)));
  EXPECT_EQ(cases, 32 * 255);
  // As any torn tail, the next append (the retried transaction 2) overwrites it.
  auto one = CatalogFile::open(path, 1);
  ASSERT_TRUE(one.ok());
  ASSERT_TRUE(one->write(numbered(3), 2).ok());
  auto two = CatalogFile::open(path, 2);
  ASSERT_TRUE(two.ok()) << two.error().to_string();
  EXPECT_EQ(two->current(), numbered(3));
  EXPECT_EQ(file_size(path), good.size());
}

// A damaged header byte in an earlier record ends the scan there, as a damaged payload
// does: the generations before it still open (for every later transaction too); with none
// before it, the "no generation" error (never the old-format one, never a misread catalog).
TEST(CatalogFile, AnyDamagedHeaderByteOfAnEarlierRecordEndsTheScanThere) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, numbered(1), 1);
  ASSERT_TRUE(f.ok());
  const uint64_t second = file_size(path);
  ASSERT_TRUE(f->write(numbered(2), 2).ok());
  ASSERT_TRUE(f->write(numbered(3), 3).ok());
  const std::string good = tp::testing::read_file(path);
  int cases = 0;
  for (uint64_t rec : {uint64_t{0}, second}) {
    for (size_t i = 0; i < 32; i++) {
      for (int x = 1; x < 256; x++) {
        ASSERT_NO_FATAL_FAILURE(poke(path, rec + i, static_cast<char>(good[rec + i] ^ x)));
        const std::string where = "record at " + std::to_string(rec) + ", " + header_field(i) +
                                  " byte " + std::to_string(i) + " ^ " + std::to_string(x);
        for (uint64_t t = 1; t <= 3; t++) {
          auto g = CatalogFile::open(path, t);
          if (rec == second) {
            ASSERT_TRUE(g.ok()) << where << ": " << g.error().to_string();
            ASSERT_EQ(g->current(), numbered(1)) << where;
          } else {
            ASSERT_FALSE(g.ok()) << where << " t=" << t;
            ASSERT_EQ(g.error().code, Errc::kCorruption) << where;
            ASSERT_STREQ(g.error().what, kNoGeneration) << where << " t=" << t;
          }
        }
        cases++;
      }
      ASSERT_NO_FATAL_FAILURE(poke(path, rec + i, good[rec + i]));
    }
  }
  EXPECT_EQ(cases, 2 * 32 * 255);
  EXPECT_EQ(tp::testing::read_file(path), good);
}

// A catalog of the first layout (TPCATLG1, crc of the payload only) is refused with a clear
// error, whole, with several records or with a torn tail; it is not read as empty or torn,
// and it is left as it was.
TEST(CatalogFile, OldLayoutFileIsRefusedWithAClearError) {
  TempDir dir;
  std::string path = dir.file("catalog");
  const std::string old1 = make_record(1, 1, numbered(1).to_json(), /*old_layout=*/true);
  const std::string old2 = make_record(2, 2, numbered(2).to_json(), /*old_layout=*/true);
  for (const std::string& bytes : {old1, old1 + old2, old1 + old2.substr(0, 40)}) {
    tp::testing::write_file(path, bytes);
    for (uint64_t t : {0u, 1u, 2u, 3u}) {
      auto g = CatalogFile::open(path, t);
      ASSERT_FALSE(g.ok()) << bytes.size() << " t=" << t;
      EXPECT_EQ(g.error().code, Errc::kCorruption);
      EXPECT_NE(std::string(g.error().what).find("catalog written by an older thinpool format"),
                std::string::npos)
          << g.error().what;
    }
    EXPECT_EQ(tp::testing::read_file(path), bytes);
  }
  // records() says the same when the file is replaced by an old one under an open catalog.
  auto f = CatalogFile::create(dir.file("new"), numbered(1), 1);
  ASSERT_TRUE(f.ok());
  tp::testing::write_file(dir.file("new"), old1);
  auto recs = f->records();
  ASSERT_FALSE(recs.ok());
  EXPECT_EQ(recs.error().code, Errc::kCorruption);
  EXPECT_NE(std::string(recs.error().what).find("older thinpool format"), std::string::npos);
}

// Only an intact old record counts as the old layout: bytes that merely start with the old
// magic are garbage (no generation), and an old record after current ones is a torn tail.
TEST(CatalogFile, OldMagicAloneIsNotTakenForTheOldLayout) {
  TempDir dir;
  std::string path = dir.file("catalog");
  std::string old1 = make_record(1, 1, numbered(1).to_json(), /*old_layout=*/true);
  old1[old1.size() - 2] ^= 0x20;  // payload no longer matches its crc
  tp::testing::write_file(path, old1);
  auto g = CatalogFile::open(path, 1);
  ASSERT_FALSE(g.ok());
  EXPECT_STREQ(g.error().what, kNoGeneration);

  const std::string cur = make_record(1, 1, numbered(1).to_json());
  tp::testing::write_file(path, cur + make_record(2, 2, numbered(2).to_json(), true));
  auto one = CatalogFile::open(path, 1);
  ASSERT_TRUE(one.ok()) << one.error().to_string();
  EXPECT_EQ(one->current(), numbered(1));
  auto two = CatalogFile::open(path, 2);  // the old-layout tail is not generation 2
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->current(), numbered(1));
  auto recs = one->records();
  ASSERT_TRUE(recs.ok());
  ASSERT_EQ(recs->size(), 2u);
  EXPECT_FALSE((*recs)[1].valid);
  EXPECT_EQ((*recs)[1].offset, cur.size());
}

TEST(CatalogFile, WriteAfterATornTailOverwritesIt) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, numbered(1), 1);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f->write(large(2, 20), 2).ok());
  uint64_t full = file_size(path);
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(full - 7)), 0);  // crash mid-append
  auto g = CatalogFile::open(path, 1);
  ASSERT_TRUE(g.ok());
  ASSERT_TRUE(g->write(numbered(3), 2).ok());  // shorter than the torn record
  auto two = CatalogFile::open(path, 2);
  ASSERT_TRUE(two.ok()) << two.error().to_string();
  EXPECT_EQ(two->current(), numbered(3));
  auto recs = two->records();
  ASSERT_TRUE(recs.ok());
  ASSERT_EQ(recs->size(), 2u);
  EXPECT_TRUE((*recs)[1].valid);
  EXPECT_LT((*recs)[0].sequence, (*recs)[1].sequence);
  EXPECT_LT(file_size(path), full - 7);  // the leftover tail bytes were trimmed
}

TEST(CatalogFile, RecordThatDoesNotRaiseTheSequenceEndsTheScan) {
  TempDir dir;
  std::string path = dir.file("catalog");
  ASSERT_TRUE(CatalogFile::create(path, numbered(1), 1).ok());
  std::string bytes = tp::testing::read_file(path);
  // Well formed, but with the same sequence (1) and a different trans_id.
  std::string second = make_record(2, 1, numbered(2).to_json());
  tp::testing::write_file(path, bytes + second);
  auto two = CatalogFile::open(path, 2);  // the second record is not taken
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->current(), numbered(1));
  auto one = CatalogFile::open(path, 1);
  ASSERT_TRUE(one.ok());
  auto recs = one->records();
  ASSERT_TRUE(recs.ok());
  ASSERT_EQ(recs->size(), 2u);
  EXPECT_FALSE((*recs)[1].valid);
  EXPECT_EQ((*recs)[1].trans_id, 2u);
}

TEST(CatalogFile, WriteRefusesAnInvalidCatalogAndKeepsState) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, numbered(1), 1);
  ASSERT_TRUE(f.ok());
  Catalog bad = numbered(2);
  bad.settings.low_water_percent = 300;
  uint64_t size = file_size(path);
  auto r = f->write(bad, 2);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  EXPECT_EQ(f->current(), numbered(1));
  EXPECT_EQ(f->trans_id(), 1u);
  EXPECT_EQ(file_size(path), size);
}

TEST(CatalogFile, SequenceKeepsRisingAcrossReopen) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, numbered(1), 1);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f->write(numbered(2), 2).ok());
  auto g = CatalogFile::open(path, 1);  // crashed before the superblock of 2
  ASSERT_TRUE(g.ok());
  ASSERT_TRUE(g->write(numbered(3), 2).ok());
  auto recs = g->records();
  ASSERT_TRUE(recs.ok());
  ASSERT_EQ(recs->size(), 3u);
  for (size_t i = 0; i < recs->size(); i++) {
    EXPECT_TRUE((*recs)[i].valid);
    EXPECT_EQ((*recs)[i].sequence, i + 1);
  }
  EXPECT_EQ(CatalogFile::open(path, 2)->current(), numbered(3));
}

TEST(CatalogFile, CompactionKeepsTheLastTwoGenerationsAndBoundsTheFile) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, large(1, 200), 1);
  ASSERT_TRUE(f.ok());
  uint64_t record = file_size(path);  // ~50 KB; the bound is max(1 MiB, 8 records) + 1
  ASSERT_GT(record, 30000u);
  uint64_t bound = std::max<uint64_t>(1 << 20, 8 * (record + 1000)) + record + 1000;
  bool compacted = false;
  for (uint64_t t = 2; t <= 80; t++) {
    ASSERT_TRUE(f->write(large(t, 200), t).ok()) << t;
    EXPECT_LE(file_size(path), bound) << t;
    auto recs = f->records();
    ASSERT_TRUE(recs.ok());
    if (recs->size() < t) compacted = true;
  }
  EXPECT_TRUE(compacted);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  auto last = CatalogFile::open(path, 80);
  ASSERT_TRUE(last.ok()) << last.error().to_string();
  EXPECT_EQ(last->current(), large(80, 200));
  auto prev = CatalogFile::open(path, 79);
  ASSERT_TRUE(prev.ok()) << prev.error().to_string();
  EXPECT_EQ(prev->current(), large(79, 200));
}

TEST(CatalogFile, CompactionRightAfterItLeavesExactlyTwoRecords) {
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, large(1, 200), 1);
  ASSERT_TRUE(f.ok());
  size_t before = 1;
  for (uint64_t t = 2; t <= 80; t++) {
    ASSERT_TRUE(f->write(large(t, 200), t).ok());
    auto recs = f->records();
    ASSERT_TRUE(recs.ok());
    if (recs->size() < before + 1) {
      ASSERT_EQ(recs->size(), 2u);
      EXPECT_EQ((*recs)[0].trans_id, t - 1);
      EXPECT_EQ((*recs)[1].trans_id, t);
      EXPECT_EQ((*recs)[0].offset, 0u);
      EXPECT_LT((*recs)[0].sequence, (*recs)[1].sequence);
      return;
    }
    before = recs->size();
  }
  FAIL() << "no compaction happened";
}

TEST(CatalogFile, CompactionKeepsTheCommittedGenerationWhenATransactionIsRetried) {
  // Each transaction t is written twice (the first commit attempt failed): when compaction
  // falls on the retry, the record before it is the stale one for t, yet the superblock
  // still names t-1, which must survive.
  TempDir dir;
  std::string path = dir.file("catalog");
  auto f = CatalogFile::create(path, large(1, 200), 1);
  ASSERT_TRUE(f.ok());
  int compactions = 0;
  size_t count = 1;
  for (uint64_t t = 2; t <= 60; t++) {
    for (int attempt = 0; attempt < 2; attempt++) {
      ASSERT_TRUE(f->write(large(t * 10 + attempt, 200), t).ok());
      auto recs = f->records();
      ASSERT_TRUE(recs.ok());
      if (recs->size() <= count) compactions++;
      count = recs->size();
      auto committed = CatalogFile::open(path, t - 1);
      ASSERT_TRUE(committed.ok()) << "t=" << t << " attempt=" << attempt;
      EXPECT_EQ(committed->current(), t == 2 ? large(1, 200) : large((t - 1) * 10 + 1, 200));
      auto fresh = CatalogFile::open(path, t);
      ASSERT_TRUE(fresh.ok());
      EXPECT_EQ(fresh->current(), large(t * 10 + attempt, 200));
    }
  }
  EXPECT_GT(compactions, 2);
}

}  // namespace
}  // namespace tp::catalog
