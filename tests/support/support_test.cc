// Self-test of the test support code (temporary; see the lead engineer's plan for where
// it ends up). Proves the XML model against thin-provisioning-tools 0.9.0 and the process
// and temp-dir helpers.

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>

#include "support/test_util.h"
#include "support/thin_xml.h"

namespace tp::testing {
namespace {

// The example from docs/DM_THIN_FORMAT.md §9, as thin_dump 0.9.0 printed it after
// thin_restore (mapped_blocks recomputed), plus an empty device.
constexpr std::string_view kDumpText =
    "<superblock uuid=\"\" time=\"1\" transaction=\"5\" flags=\"0\" version=\"2\" "
    "data_block_size=\"128\" nr_data_blocks=\"1000\">\n"
    "  <device dev_id=\"1\" mapped_blocks=\"5\" transaction=\"0\" creation_time=\"0\" "
    "snap_time=\"1\">\n"
    "    <range_mapping origin_begin=\"0\" data_begin=\"10\" length=\"4\" time=\"0\"/>\n"
    "    <single_mapping origin_block=\"100\" data_block=\"20\" time=\"0\"/>\n"
    "  </device>\n"
    "  <device dev_id=\"7\" mapped_blocks=\"0\" transaction=\"3\" creation_time=\"1\" "
    "snap_time=\"1\">\n"
    "  </device>\n"
    "</superblock>\n";

XmlPool example_pool() {
  XmlPool p;
  p.time = 1;
  p.transaction = 5;
  p.nr_data_blocks = 1000;
  XmlDevice d1{1, 5, 0, 0, 1, {{0, 10, 0}, {1, 11, 0}, {2, 12, 0}, {3, 13, 0}, {100, 20, 0}}};
  XmlDevice d7{7, 0, 3, 1, 1, {}};
  p.devices = {d1, d7};
  return p;
}

bool have_oracle() {
  return have_tool("thin_restore") && have_tool("thin_dump") && have_tool("thin_check");
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- XML model --------------------------------------------------------------------------

TEST(ThinXml, ToXmlMatchesThinDumpLayoutByteForByte) {
  EXPECT_EQ(to_xml(example_pool()), kDumpText);
}

TEST(ThinXml, ToXmlSplitsRangesOnTimeChangeAndDataGap) {
  XmlPool p;
  p.nr_data_blocks = 100;
  p.devices.push_back(
      XmlDevice{3, 5, 0, 0, 0, {{0, 1, 0}, {1, 2, 0}, {2, 3, 1}, {3, 4, 1}, {4, 9, 1}}});
  std::string xml = to_xml(p);
  EXPECT_NE(
      xml.find("<range_mapping origin_begin=\"0\" data_begin=\"1\" length=\"2\" time=\"0\"/>"),
      std::string::npos)
      << xml;
  EXPECT_NE(
      xml.find("<range_mapping origin_begin=\"2\" data_begin=\"3\" length=\"2\" time=\"1\"/>"),
      std::string::npos)
      << xml;
  EXPECT_NE(xml.find("<single_mapping origin_block=\"4\" data_block=\"9\" time=\"1\"/>"),
            std::string::npos)
      << xml;
}

TEST(ThinXml, ParseExpandsRangesIntoSingleMappings) {
  std::optional<XmlPool> p = parse_xml(kDumpText);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(*p, example_pool());
}

TEST(ThinXml, ParseAcceptsAnyAttributeOrderAndIgnoresUnknownAttributes) {
  std::string_view text =
      "<?xml version=\"1.0\"?>\n<!-- made by hand -->\n"
      "<superblock nr_data_blocks='1000' data_block_size='128' version='2' flags='0' "
      "transaction='5' time='1' uuid='' metadata_snap='0' bogus='x'>"
      "<device snap_time='1' creation_time='0' transaction='0' mapped_blocks='99' dev_id='1'>"
      "<range_mapping time='0' length='4' data_begin='10' origin_begin='0' extra='1' />"
      "<single_mapping time='0' data_block='20' origin_block='100'/>"
      "</device>"
      "<device dev_id='7' mapped_blocks='0' transaction='3' creation_time='1' snap_time='1'/>"
      "</superblock >";
  std::optional<XmlPool> p = parse_xml(text);
  ASSERT_TRUE(p.has_value());
  XmlPool want = example_pool();
  want.devices[0].mapped_blocks = 99;  // taken as written, not recomputed
  EXPECT_EQ(first_difference(want, *p), "");
}

TEST(ThinXml, ParseDefaultsFlagsToZeroAndVersionToOneLikeThinRestore) {
  std::optional<XmlPool> p = parse_xml(
      "<superblock uuid=\"a&amp;b\" time=\"0\" transaction=\"0\" data_block_size=\"128\" "
      "nr_data_blocks=\"8\"></superblock>");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->flags, 0u);
  EXPECT_EQ(p->version, 1u);
  EXPECT_EQ(p->uuid, "a&b");
  EXPECT_TRUE(p->devices.empty());
}

TEST(ThinXml, ParseRejectsMalformedInput) {
  const std::string sb =
      "<superblock uuid=\"\" time=\"1\" transaction=\"5\" data_block_size=\"128\" "
      "nr_data_blocks=\"1000\">";
  const std::string dev =
      "<device dev_id=\"1\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" "
      "snap_time=\"0\">";
  const std::vector<std::string> bad = {
      "",
      "<superblock uuid=\"\" time=\"1\" transaction=\"5\" data_block_size=\"128\">"
      "</superblock>",                    // missing nr_data_blocks
      sb,                                 // not closed
      sb + "</superblock><superblock/>",  // trailing element
      sb + "</superblock>x",              // trailing text
      sb + "hello</superblock>",          // character data
      sb + "<single_mapping origin_block=\"1\" data_block=\"2\" time=\"0\"/></superblock>",
      sb + dev + "</superblock>",  // device not closed
      sb + dev +
          "<single_mapping origin_block=\"1\" data_block=\"x\" time=\"0\"/>"
          "</device></superblock>",  // not a number
      sb + dev +
          "<single_mapping origin_block=\"1\" data_block=\"-1\" time=\"0\"/>"
          "</device></superblock>",  // negative
      sb + dev +
          "<single_mapping origin_block=\"1\" data_block=\"2\" time=\"4294967296\"/>"
          "</device></superblock>",  // time > uint32
      sb + dev +
          "<single_mapping origin_block=\"1\" data_block=\"2\"/>"
          "</device></superblock>",  // missing time
      sb + dev +
          "<range_mapping origin_begin=\"1\" data_begin=\"2\" length=\"0\" time=\"0\"/>"
          "</device></superblock>",  // empty range
      sb + dev +
          "<range_mapping origin_begin=\"18446744073709551615\" data_begin=\"2\" "
          "length=\"2\" time=\"0\"/></device></superblock>",  // origin overflow
      sb + dev +
          "<single_mapping origin_block=\"1\" origin_block=\"1\" data_block=\"2\" "
          "time=\"0\"/></device></superblock>",  // duplicate attribute
      sb + dev +
          "<single_mapping origin_block=\"1\" data_block=\"2\" time=\"0\">"
          "</device></superblock>",         // mapping not self-closing
      sb + dev + "</superblock></device>",  // bad nesting
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_FALSE(parse_xml(bad[i]).has_value()) << "case " << i << ": " << bad[i];
  }
}

TEST(ThinXml, RoundTripsRandomPoolsThroughText) {
  std::vector<RandomPoolParams> variants(6);
  variants[1].devices = 1;
  variants[2].devices = 0;
  variants[3].nr_data_blocks = uint64_t{1} << 40;  // 40-bit data block numbers
  variants[4].nr_data_blocks = 2000;               // dense: targets get scaled down
  variants[4].share_fraction = 0.8;
  variants[5].max_time = 0;
  variants[5].devices = 12;
  variants[5].max_mappings_per_device = 200;
  uint64_t mappings = 0;
  for (size_t v = 0; v < variants.size(); ++v) {
    for (uint64_t seed = 1; seed <= 40; ++seed) {
      XmlPool p = random_pool(seed, variants[v]);
      mappings += total_mappings(p);
      std::optional<XmlPool> back = parse_xml(to_xml(p));
      ASSERT_TRUE(back.has_value()) << "variant " << v << " seed " << seed;
      ASSERT_EQ(first_difference(p, *back), "") << "variant " << v << " seed " << seed;
      ASSERT_TRUE(p == *back);
    }
  }
  std::printf("  round-tripped 240 pools, %llu mappings\n",
              static_cast<unsigned long long>(mappings));
}

TEST(ThinXml, RandomPoolKeepsItsPromises) {
  RandomPoolParams params;
  uint64_t shared_blocks = 0, ranges = 0, singles = 0;
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    XmlPool p = random_pool(seed, params);
    ASSERT_EQ(p.devices.size(), 4u);
    EXPECT_EQ(p.uuid, "");
    EXPECT_EQ(p.nr_data_blocks, params.nr_data_blocks);
    EXPECT_EQ(p.time, params.max_time);
    std::map<uint64_t, std::set<uint64_t>> devs_of_block;
    for (size_t i = 0; i < p.devices.size(); ++i) {
      const XmlDevice& d = p.devices[i];
      EXPECT_LT(d.dev_id, uint64_t{1} << 24);
      if (i > 0) {
        EXPECT_LT(p.devices[i - 1].dev_id, d.dev_id);
      }
      EXPECT_EQ(d.mapped_blocks, d.mappings.size());
      EXPECT_LE(d.mappings.size(), params.max_mappings_per_device);
      EXPECT_LE(d.creation_time, d.snap_time);
      EXPECT_LE(d.snap_time, p.time);
      EXPECT_LE(d.transaction, p.transaction);
      for (size_t k = 0; k < d.mappings.size(); ++k) {
        const XmlMapping& m = d.mappings[k];
        if (k > 0) {
          EXPECT_LT(d.mappings[k - 1].origin, m.origin);
        }
        EXPECT_LT(m.data, p.nr_data_blocks);
        EXPECT_LE(m.time, p.time);
        EXPECT_TRUE(devs_of_block[m.data].insert(d.dev_id).second)
            << "data block " << m.data << " mapped twice in dev " << d.dev_id;
      }
    }
    for (auto [block, count] : data_ref_counts(p)) {
      EXPECT_GE(count, 1u);
      EXPECT_LE(count, 4u);
      EXPECT_EQ(count, devs_of_block[block].size());
      shared_blocks += count > 1;
    }
    std::string xml = to_xml(p);
    for (size_t pos = 0; (pos = xml.find("<range_mapping", pos)) != std::string::npos; ++pos) {
      ++ranges;
    }
    for (size_t pos = 0; (pos = xml.find("<single_mapping", pos)) != std::string::npos; ++pos) {
      ++singles;
    }
  }
  // The mix the generator promises actually shows up.
  EXPECT_GT(shared_blocks, 0u);
  EXPECT_GT(ranges, 0u);
  EXPECT_GT(singles, 0u);
}

TEST(ThinXml, RandomPoolIsDeterministicPerSeed) {
  EXPECT_TRUE(random_pool(42, {}) == random_pool(42, {}));
  EXPECT_FALSE(random_pool(42, {}) == random_pool(43, {}));
}

TEST(ThinXml, DataRefCountsCountsMappingsPerDataBlock) {
  XmlPool p;
  p.nr_data_blocks = 100;
  p.devices.push_back(XmlDevice{1, 2, 0, 0, 0, {{0, 5, 0}, {1, 6, 0}}});
  p.devices.push_back(XmlDevice{2, 1, 0, 0, 0, {{9, 5, 0}}});
  p.devices.push_back(XmlDevice{3, 1, 0, 0, 0, {{0, 5, 0}}});
  std::map<uint64_t, uint32_t> want{{5, 3}, {6, 1}};
  EXPECT_EQ(data_ref_counts(p), want);
}

TEST(ThinXml, FirstDifferenceNamesTheDifferingMapping) {
  XmlPool a = example_pool();
  XmlPool b = a;
  EXPECT_EQ(first_difference(a, b), "");
  b.devices[0].mappings[2].data = 99;
  EXPECT_EQ(first_difference(a, b), "dev 1 mapping[2] (origin 2) data: 12 vs 99");
}

// ---- against thin-provisioning-tools ------------------------------------------------------

// random_pool -> thin_restore -> thin_check -> thin_dump -> parse must give back the input
// (after the two normalisations thin_restore/thin_dump apply), and thin_dump's text must be
// exactly to_xml of that.
void oracle_round_trip(uint64_t seed, const RandomPoolParams& params, uint64_t* mappings_out,
                       uint64_t* bytes_out) {
  TempDir dir;
  std::string meta = dir.file("meta.bin");
  XmlPool pool = random_pool(seed, params);
  uint64_t bytes = metadata_bytes_for(pool);
  *mappings_out += total_mappings(pool);
  *bytes_out = std::max(*bytes_out, bytes);

  CmdResult r = thin_restore(pool, meta, bytes);
  ASSERT_EQ(r.rc, 0) << "seed " << seed << ": " << r.err;
  ASSERT_EQ(thin_check(meta), "") << "seed " << seed;

  CmdResult dump = run_cmd({"thin_dump", meta});
  ASSERT_EQ(dump.rc, 0) << dump.err;
  XmlPool want = normalized_for_dump(pool);
  EXPECT_EQ(dump.out, to_xml(want)) << "seed " << seed;

  std::optional<XmlPool> got = thin_dump(meta);
  ASSERT_TRUE(got.has_value()) << "seed " << seed;
  EXPECT_EQ(first_difference(want, *got), "") << "seed " << seed;
  EXPECT_TRUE(want == *got);
}

TEST(ThinXml, RandomPoolsSurviveThinRestoreCheckDump) {
  if (!have_oracle()) {
    GTEST_SKIP() << "thin-provisioning-tools not installed";
  }
  auto t0 = std::chrono::steady_clock::now();
  uint64_t mappings = 0, bytes = 0;
  const int kSeeds = 12;
  for (uint64_t seed = 1; seed <= kSeeds; ++seed) {
    oracle_round_trip(seed, {}, &mappings, &bytes);
    if (HasFatalFailure()) {
      return;
    }
  }
  std::printf("  %d pools, %llu mappings, file %llu bytes, %.2f s\n", kSeeds,
              static_cast<unsigned long long>(mappings), static_cast<unsigned long long>(bytes),
              seconds_since(t0));
}

TEST(ThinXml, LargeSharedRandomPoolSurvivesThinRestoreCheckDump) {
  if (!have_oracle()) {
    GTEST_SKIP() << "thin-provisioning-tools not installed";
  }
  auto t0 = std::chrono::steady_clock::now();
  RandomPoolParams params;
  params.devices = 8;
  params.max_mappings_per_device = 40000;
  params.nr_data_blocks = 1000000;
  params.share_fraction = 0.4;
  uint64_t mappings = 0, bytes = 0;
  oracle_round_trip(7, params, &mappings, &bytes);
  std::printf("  1 pool, %llu mappings, file %llu bytes, %.2f s\n",
              static_cast<unsigned long long>(mappings), static_cast<unsigned long long>(bytes),
              seconds_since(t0));
}

TEST(ThinXml, ThinCheckReportsACorruptSuperblock) {
  if (!have_oracle()) {
    GTEST_SKIP() << "thin-provisioning-tools not installed";
  }
  TempDir dir;
  std::string meta = dir.file("meta.bin");
  ASSERT_EQ(thin_restore(example_pool(), meta, 4 << 20).rc, 0);
  ASSERT_EQ(thin_check(meta), "");
  std::string img = read_file(meta);
  img[100] = static_cast<char>(img[100] ^ 0xff);  // inside the checksummed area
  write_file(meta, img);
  std::string msg = thin_check(meta);
  EXPECT_EQ(msg.rfind("thin_check rc=1: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("checksum"), std::string::npos) << msg;
  EXPECT_FALSE(thin_dump(meta).has_value());
}

TEST(ThinXml, ThinRestoreRejectsDataBlockBeyondDataDevice) {
  if (!have_oracle()) {
    GTEST_SKIP() << "thin-provisioning-tools not installed";
  }
  TempDir dir;
  XmlPool p = example_pool();
  p.nr_data_blocks = 15;  // dev 1 maps data block 20
  CmdResult r = thin_restore(p, dir.file("meta.bin"), 4 << 20);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("mapping beyond end of data device"), std::string::npos) << r.err;
}

// ---- process and file helpers -------------------------------------------------------------

TEST(TestUtil, RunCmdCapturesStdoutStderrAndExitCode) {
  CmdResult r = run_cmd({"sh", "-c", "echo out; echo err >&2; printf 'no newline'; exit 3"});
  EXPECT_EQ(r.rc, 3);
  EXPECT_EQ(r.out, "out\nno newline");
  EXPECT_EQ(r.err, "err\n");
}

TEST(TestUtil, RunCmdDrainsLargeOutputOnBothStreamsWithoutDeadlock) {
  // 1 MiB to stderr before anything on stdout: reading stdout alone would block forever
  // once the stderr pipe (64 KiB) fills.
  CmdResult r = run_cmd({"sh", "-c",
                         "head -c 1048576 /dev/zero | tr '\\000' e >&2; "
                         "head -c 3000000 /dev/zero | tr '\\000' o"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_EQ(r.err, std::string(1048576, 'e'));
  EXPECT_EQ(r.out, std::string(3000000, 'o'));
}

TEST(TestUtil, RunCmdReportsSignalAs128PlusSignalNumber) {
  EXPECT_EQ(run_cmd({"sh", "-c", "kill -KILL $$"}).rc, 128 + 9);
  EXPECT_EQ(run_cmd({"sh", "-c", "kill -TERM $$"}).rc, 128 + 15);
}

TEST(TestUtil, RunCmdReportsMissingProgramAs127) {
  CmdResult r = run_cmd({"tp-no-such-program-xyz"});
  EXPECT_EQ(r.rc, 127);
  EXPECT_NE(r.err.find("tp-no-such-program-xyz"), std::string::npos);
}

TEST(TestUtil, RunCmdGivesTheChildAnEmptyStdin) {
  CmdResult r = run_cmd({"cat"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_EQ(r.out, "");
}

TEST(TestUtil, HaveToolFindsExecutablesInPathOnly) {
  EXPECT_TRUE(have_tool("sh"));
  EXPECT_TRUE(have_tool("/bin/sh"));
  EXPECT_FALSE(have_tool("tp-no-such-program-xyz"));
  EXPECT_FALSE(have_tool("/etc/passwd"));  // exists, not executable
  EXPECT_FALSE(have_tool(""));
}

TEST(TestUtil, TempDirIsFreshOutsideCwdAndRemovedRecursively) {
  std::string path;
  {
    TempDir a;
    TempDir b;
    path = a.path();
    EXPECT_NE(a.path(), b.path());
    EXPECT_TRUE(std::filesystem::is_directory(path));
    EXPECT_TRUE(std::filesystem::is_empty(path));
    const char* env = std::getenv("TMPDIR");
    std::string base = (env != nullptr && env[0] == '/') ? env : "/tmp";
    EXPECT_EQ(path.rfind(base + "/tp_test.", 0), 0u) << path << " is not under " << base;
    EXPECT_EQ(a.file("x"), path + "/x");
    std::filesystem::create_directories(path + "/sub/dir");
    write_file(path + "/sub/dir/f", "data");
    write_file(a.file("g"), "data");
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(TestUtil, ReadFileReturnsWhatWriteFileWrote) {
  TempDir dir;
  std::string bytes("a\0b\xff\n", 5);
  write_file(dir.file("f"), bytes);
  EXPECT_EQ(read_file(dir.file("f")), bytes);
  write_file(dir.file("f"), "short");  // truncates
  EXPECT_EQ(read_file(dir.file("f")), "short");
  EXPECT_THROW(read_file(dir.file("missing")), std::runtime_error);
}

TEST(TestUtil, ThinRestoreSizesTheOutputFile) {
  if (!have_oracle()) {
    GTEST_SKIP() << "thin-provisioning-tools not installed";
  }
  TempDir dir;
  std::string meta = dir.file("meta.bin");
  write_file(meta, std::string(64 << 20, 'x'));  // stale, larger content is discarded
  ASSERT_EQ(thin_restore(example_pool(), meta, 8 << 20).rc, 0);
  EXPECT_EQ(std::filesystem::file_size(meta), uint64_t{8} << 20);
  EXPECT_EQ(thin_check(meta), "");
}

}  // namespace
}  // namespace tp::testing
