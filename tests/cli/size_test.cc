#include "cli/size.h"

#include <gtest/gtest.h>

#include <string>

#include "catalog/catalog.h"

namespace tp::cli {
namespace {

uint64_t ok(std::string_view s) {
  auto r = parse_size(s);
  EXPECT_TRUE(r.ok()) << "\"" << s << "\": " << (r.ok() ? "" : r.error().to_string());
  return r.ok() ? r.value() : ~uint64_t{0};
}

void bad(std::string_view s) {
  auto r = parse_size(s);
  EXPECT_FALSE(r.ok()) << "\"" << s << "\" parsed as " << (r.ok() ? r.value() : 0);
  if (!r.ok()) {
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument) << s;
  }
}

constexpr uint64_t kKi = 1024, kMi = kKi * 1024, kGi = kMi * 1024, kTi = kGi * 1024,
                   kPi = kTi * 1024, kEi = kPi * 1024;

TEST(ParseSize, PlainNumberIsBytes) {
  EXPECT_EQ(ok("0"), 0u);
  EXPECT_EQ(ok("4096"), 4096u);
  EXPECT_EQ(ok("007"), 7u);
  EXPECT_EQ(ok("512B"), 512u);
  EXPECT_EQ(ok("512b"), 512u);
}

TEST(ParseSize, BinaryUnitsInEveryCase) {
  EXPECT_EQ(ok("64K"), 64 * kKi);
  EXPECT_EQ(ok("64k"), 64 * kKi);
  EXPECT_EQ(ok("64KB"), 64 * kKi);
  EXPECT_EQ(ok("64KiB"), 64 * kKi);
  EXPECT_EQ(ok("64kib"), 64 * kKi);
  EXPECT_EQ(ok("3M"), 3 * kMi);
  EXPECT_EQ(ok("2G"), 2 * kGi);
  EXPECT_EQ(ok("2T"), 2 * kTi);
  EXPECT_EQ(ok("5P"), 5 * kPi);
  EXPECT_EQ(ok("7E"), 7 * kEi);
}

TEST(ParseSize, DecimalsAreExact) {
  EXPECT_EQ(ok("1.5G"), kGi + kGi / 2);
  EXPECT_EQ(ok("0.5K"), 512u);
  EXPECT_EQ(ok("1.25M"), kMi + kMi / 4);
  EXPECT_EQ(ok("1.50000000000000000000000000000000000000000000G"), kGi + kGi / 2);
  EXPECT_EQ(ok("2.0"), 2u);
  EXPECT_EQ(ok("0.0009765625M"), 1024u);  // 2^-10 MiB
  // 5^20 / 10^20 = 2^-20, exact even with more digits than a 64-bit integer holds.
  EXPECT_EQ(ok("0.00000095367431640625E"), uint64_t{1} << 40);
}

TEST(ParseSize, UpToTwoToTheSixtyThree) {
  EXPECT_EQ(ok("8E"), uint64_t{1} << 63);
  EXPECT_EQ(ok("9223372036854775808"), uint64_t{1} << 63);
  EXPECT_EQ(ok("7.5E"), (uint64_t{1} << 63) - (uint64_t{1} << 59));
  bad("9223372036854775809");
  bad("8.0000000000000000001E");
  bad("8.5E");
  bad("9E");
}

TEST(ParseSize, RejectsOverflow) {
  bad("99999999999E");
  bad("18446744073709551616");   // 2^64
  bad("100000000000000000000");  // 20 digits
  bad("16E");
  bad("9999999999999999999999999999999999999999K");
  bad("8193P");
}

TEST(ParseSize, RejectsFractionsOfAByte) {
  bad("1.5");
  bad("0.1K");  // 102.4 bytes
  bad("1.0000001G");
  bad("0.3E");
}

TEST(ParseSize, RejectsMalformedText) {
  bad("");
  bad("abc");
  bad("-1");
  bad("+1");
  bad(" 1");
  bad("1 ");
  bad("1 K");
  bad("1K2");
  bad("K");
  bad(".5K");
  bad("1.");
  bad("1.K");
  bad("1..5");
  bad("1X");
  bad("1KK");
  bad("1iB");
  bad("1Ki");
  bad("1KBB");
  bad("0x10");
  bad("1e3");
  bad(std::string_view("1\0K", 3));
  bad("1KiBx");
}

TEST(ParseSize, RejectsTooManyDecimals) {
  bad("1.000000000000000000000000000000000000001K");
}

TEST(FormatBytes, SmallValuesInBytes) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(1023), "1023 B");
}

TEST(FormatBytes, TwoDecimalsInTheLargestUnit) {
  EXPECT_EQ(format_bytes(1024), "1.00 KiB");
  EXPECT_EQ(format_bytes(64 * kKi), "64.00 KiB");
  EXPECT_EQ(format_bytes(kGi + kGi / 2), "1.50 GiB");
  EXPECT_EQ(format_bytes(2 * kTi), "2.00 TiB");
  EXPECT_EQ(format_bytes(uint64_t{1} << 63), "8.00 EiB");
  EXPECT_EQ(format_bytes(~uint64_t{0}), "16.00 EiB");
}

TEST(FormatBytes, RoundTripsThroughParseSize) {
  for (uint64_t v : {kKi, 64 * kKi, 3 * kMi / 2, 5 * kGi / 4, 3 * kTi}) {
    std::string s = format_bytes(v);
    s.erase(s.find(' '), 1);  // "1.50 GiB" -> "1.50GiB"
    EXPECT_EQ(ok(s), v) << s;
  }
}

// Name rules are the catalog's; the CLI only calls valid_volume_name before the pool.
TEST(VolumeNames, CliUsesCatalogRules) {
  EXPECT_TRUE(catalog::valid_volume_name("base"));
  EXPECT_TRUE(catalog::valid_volume_name("base.next"));
  EXPECT_FALSE(catalog::valid_volume_name(""));
  EXPECT_FALSE(catalog::valid_volume_name("-rf"));
  EXPECT_FALSE(catalog::valid_volume_name("a/b"));
  EXPECT_FALSE(catalog::valid_volume_name(std::string(129, 'a')));
}

}  // namespace
}  // namespace tp::cli
