// The command line driven in-process: exit statuses, one-line errors, JSON output.

#include "cli/app.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/test_util.h"
#include "thin/pool.h"

namespace tp::cli {
namespace {

namespace fs = std::filesystem;

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  std::vector<char> v(static_cast<size_t>(f.tellg()));
  f.seekg(0);
  f.read(v.data(), static_cast<std::streamsize>(v.size()));
  return v;
}

struct Outcome {
  int status;
  std::string out, err;
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::unsetenv("THINPOOL_POOL");
    std::string tmpl = (fs::temp_directory_path() / "tp_cli_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    tmp_ = tmpl;
    pool_ = (fs::path(tmp_) / "pool").string();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }

  Outcome invoke(std::vector<std::string> args) {
    args.insert(args.begin(), "thinpool");
    std::vector<const char*> argv;
    for (const auto& a : args) {
      argv.push_back(a.c_str());
    }
    std::ostringstream out, err;
    Console con{out, err, false};
    int st = cli::run(static_cast<int>(argv.size()), argv.data(), con);
    return {st, out.str(), err.str()};
  }
  Outcome tp(std::vector<std::string> args) {
    args.insert(args.begin(), {"-p", pool_});
    return invoke(std::move(args));
  }
  void init() {
    Outcome r = tp({"init", "--size", "64M"});
    ASSERT_EQ(r.status, 0) << r.err;
  }

  static void expect_one_line(const Outcome& r) {
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
    EXPECT_EQ(r.err.rfind("thinpool: ", 0), 0u) << r.err;
  }

  std::string tmp_, pool_;
};

TEST_F(CliTest, HelpExitsZeroAndListsCommands) {
  Outcome r = invoke({"--help"});
  EXPECT_EQ(r.status, 0);
  for (const char* c : {"init", "info", "list", "create", "snapshot", "remove", "resize", "extend",
                        "delta", "write", "read", "check"}) {
    EXPECT_NE(r.out.find(c), std::string::npos) << c;
  }
  Outcome sub = invoke({"create", "--help"});
  EXPECT_EQ(sub.status, 0);
  EXPECT_NE(sub.out.find("--size"), std::string::npos) << sub.out;
}

TEST_F(CliTest, ParseErrorsAreUsageErrorsOnOneLine) {
  for (auto args : std::vector<std::vector<std::string>>{
           {}, {"frobnicate"}, {"create"}, {"create", "v"}, {"info", "--bogus"}}) {
    Outcome r = tp(args);
    EXPECT_EQ(r.status, kExitUsage);
    expect_one_line(r);
    EXPECT_TRUE(r.out.empty());
  }
}

TEST_F(CliTest, BadSizeIsUsageErrorAndTouchesNothing) {
  Outcome r = tp({"init", "--size", "lots"});
  EXPECT_EQ(r.status, kExitUsage);
  expect_one_line(r);
  EXPECT_NE(r.err.find("--size \"lots\""), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(pool_));
  EXPECT_EQ(tp({"init", "--size", "64M", "--block-size", "4K"}).status, kExitUsage);
  EXPECT_EQ(tp({"init", "--size", "1.5"}).status, kExitUsage);
  EXPECT_FALSE(fs::exists(pool_));
}

TEST_F(CliTest, NoPoolGivenIsUsageError) {
  Outcome r = invoke({"info"});
  EXPECT_EQ(r.status, kExitUsage);
  expect_one_line(r);
}

TEST_F(CliTest, PoolFromEnvironment) {
  init();
  ::setenv("THINPOOL_POOL", pool_.c_str(), 1);
  Outcome r = invoke({"info", "--json"});
  ::unsetenv("THINPOOL_POOL");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["size_bytes"], 64u << 20);
}

TEST_F(CliTest, NotAPoolExitsThree) {
  fs::create_directories(pool_);
  Outcome r = tp({"info"});
  EXPECT_EQ(r.status, kExitDamaged);
  expect_one_line(r);
  EXPECT_EQ(tp({"list"}).status, kExitDamaged);
  EXPECT_TRUE(fs::is_empty(pool_)) << "opening a non-pool must not create files in it";
  EXPECT_EQ(invoke({"-p", tmp_ + "/missing", "info"}).status, kExitDamaged);
}

TEST_F(CliTest, InitInfoJsonFields) {
  Outcome r = tp({"--json", "init", "--size", "64M"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["block_bytes"], 65536u);
  EXPECT_EQ(j["size_bytes"], 64u << 20);
  Outcome info = tp({"info", "--json"});
  ASSERT_EQ(info.status, 0) << info.err;
  j = nlohmann::json::parse(info.out);
  for (const char* k :
       {"block_bytes", "size_bytes", "used_bytes", "free_bytes", "reserved_bytes",
        "unreserved_bytes", "metadata_bytes", "metadata_used_bytes", "transaction_id", "state",
        "low_water_percent", "volumes", "journal_bytes", "journal_used_bytes", "journal_batches",
        "journal_replayed_batches", "checkpoints", "journal_commits"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
  EXPECT_EQ(j["state"], "ok");
  EXPECT_EQ(j["volumes"], 0u);
  Outcome text = tp({"info"});
  EXPECT_EQ(text.status, 0);
  EXPECT_NE(text.out.find("64.00 MiB"), std::string::npos) << text.out;
}

TEST_F(CliTest, InitTwiceFails) {
  init();
  Outcome r = tp({"init", "--size", "64M"});
  EXPECT_EQ(r.status, kExitFailed);
  expect_one_line(r);
}

TEST_F(CliTest, CreateListRemove) {
  init();
  ASSERT_EQ(tp({"create", "vol", "--size", "16M"}).status, 0);
  Outcome dup = tp({"create", "vol", "--size", "16M"});
  EXPECT_EQ(dup.status, kExitFailed);
  expect_one_line(dup);
  EXPECT_NE(dup.err.find("vol"), std::string::npos);
  EXPECT_EQ(tp({"create", "-bad", "--size", "1M"}).status, kExitUsage);
  EXPECT_EQ(tp({"create", "big", "--size", "2E"}).status, kExitUsage);

  Outcome list = tp({"list", "--json"});
  ASSERT_EQ(list.status, 0) << list.err;
  auto j = nlohmann::json::parse(list.out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["name"], "vol");
  EXPECT_EQ(j[0]["size_bytes"], 16u << 20);
  EXPECT_EQ(j[0]["writable"], true);

  ASSERT_EQ(tp({"snapshot", "vol", "snap"}).status, 0);
  Outcome busy = tp({"remove", "vol"});
  EXPECT_EQ(busy.status, kExitFailed);
  expect_one_line(busy);
  Outcome rm = tp({"remove", "vol", "--recursive", "--json"});
  ASSERT_EQ(rm.status, 0) << rm.err;
  EXPECT_EQ(nlohmann::json::parse(rm.out)["removed"].size(), 2u);
  Outcome missing = tp({"remove", "vol"});
  EXPECT_EQ(missing.status, kExitFailed);
  expect_one_line(missing);
}

TEST_F(CliTest, WriteReadRoundTripKeepsZeroBlocksUnmapped) {
  init();
  ASSERT_EQ(tp({"create", "vol", "--size", "8M"}).status, 0);
  // 3 MiB + 1000 bytes: random, a zero MiB, random, and a short tail.
  std::vector<char> data((3 << 20) + 1000);
  std::mt19937_64 rng(7);
  for (size_t i = 0; i < data.size(); i += 8) {
    const uint64_t word = rng();
    std::memcpy(data.data() + i, &word, std::min<size_t>(8, data.size() - i));
  }
  std::fill(data.begin() + (1 << 20), data.begin() + (2 << 20), 0);
  const std::string in = tmp_ + "/in.img", out = tmp_ + "/out.img";
  std::ofstream(in, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));

  Outcome w = tp({"write", "vol", in});
  ASSERT_EQ(w.status, 0) << w.err;
  Outcome list = tp({"list", "--json"});
  auto j = nlohmann::json::parse(list.out);
  EXPECT_EQ(j[0]["mapped_bytes"], (2u << 20) + 65536u);  // the tail block is mapped

  Outcome r = tp({"read", "vol", out});
  ASSERT_EQ(r.status, 0) << r.err;
  const std::vector<char> back = read_file(out);
  ASSERT_EQ(back.size(), 8u << 20);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), back.begin()));
  EXPECT_TRUE(std::all_of(back.begin() + static_cast<long>(data.size()), back.end(),
                          [](char c) { return c == 0; }));

  // Writing all zeros over it unmaps what was mapped.
  std::vector<char> zeros(data.size(), 0);
  std::ofstream(in, std::ios::binary | std::ios::trunc)
      .write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
  ASSERT_EQ(tp({"write", "vol", in}).status, 0);
  j = nlohmann::json::parse(tp({"list", "--json"}).out);
  EXPECT_EQ(j[0]["mapped_bytes"], 65536u);  // the partial tail block keeps its other bytes
  ASSERT_EQ(tp({"read", "vol", out}).status, 0);
  const std::vector<char> back2 = read_file(out);
  EXPECT_TRUE(std::all_of(back2.begin(), back2.end(), [](char c) { return c == 0; }));
}

// Rewrites a volume with images whose zero runs fall on, inside and across block
// boundaries, for block sizes below, at and above the 1 MiB I/O window (1088 KiB = 17 x
// 64 KiB is read in 64 KiB windows). After each write the volume holds the image followed
// by what was there before, and exactly the blocks with a non-zero byte are mapped.
class CliBlockSizeTest : public CliTest, public ::testing::WithParamInterface<uint64_t> {};

TEST_P(CliBlockSizeTest, RewritesMatchTheImageAndMapOnlyNonZeroBlocks) {
  const uint64_t bb = GetParam();
  ASSERT_EQ(tp({"init", "--size", "256M", "--block-size", std::to_string(bb)}).status, 0);
  const uint64_t vol_bytes = 6 * bb + (1 << 20);
  ASSERT_EQ(tp({"create", "v", "--size", std::to_string(vol_bytes)}).status, 0);
  std::mt19937_64 rng(bb);
  std::vector<char> expect(vol_bytes, 0);
  const std::string in = tmp_ + "/in.img", out = tmp_ + "/out.img";
  for (int round = 0; round < 4; round++) {
    const uint64_t len = vol_bytes - rng() % (3 * bb);  // not block aligned
    std::vector<char> img(len);
    for (size_t i = 0; i < len; i += 8) {  // random, no zero bytes
      const uint64_t word = rng() | 0x0101010101010101ull;
      std::memcpy(img.data() + i, &word, std::min<size_t>(8, len - i));
    }
    for (int z = 0; z < 6; z++) {  // zero runs: whole blocks, partial blocks, straddling
      const uint64_t at = rng() % len;
      const uint64_t n =
          std::min<uint64_t>(len - at, (z % 2 ? bb : 1) * (1 + rng() % 3) + (z == 3 ? bb / 2 : 0));
      std::fill(img.begin() + static_cast<long>(at), img.begin() + static_cast<long>(at + n), 0);
    }
    if (round == 2) {
      std::fill(img.begin(), img.begin() + static_cast<long>(2 * bb), 0);  // unmap blocks 0-1
    }
    std::copy(img.begin(), img.end(), expect.begin());
    std::ofstream(in, std::ios::binary | std::ios::trunc)
        .write(img.data(), static_cast<std::streamsize>(img.size()));
    Outcome w = tp({"write", "v", in});
    ASSERT_EQ(w.status, 0) << w.err;
    ASSERT_EQ(tp({"read", "v", out}).status, 0);
    const std::vector<char> back = read_file(out);
    ASSERT_EQ(back.size(), expect.size());
    ASSERT_TRUE(back == expect) << "round " << round;

    uint64_t nonzero_blocks = 0;
    for (uint64_t b = 0; b < vol_bytes; b += bb) {
      const uint64_t n = std::min(bb, vol_bytes - b);
      nonzero_blocks += std::memcmp(expect.data() + b, std::vector<char>(n).data(), n) != 0;
    }
    auto j = nlohmann::json::parse(tp({"list", "--json"}).out);
    // A partially written block whose image part is zero keeps the old tail: mapped too.
    EXPECT_GE(j[0]["mapped_blocks"].get<uint64_t>(), nonzero_blocks) << "round " << round;
    EXPECT_LE(j[0]["mapped_blocks"].get<uint64_t>(), nonzero_blocks + 1) << "round " << round;
  }
  EXPECT_EQ(tp({"check"}).status, 0);
}

INSTANTIATE_TEST_SUITE_P(BlockSizes, CliBlockSizeTest,
                         ::testing::Values(64u << 10, 192u << 10, 1u << 20, 1088u << 10, 2u << 20));

TEST_F(CliTest, WriteLargerThanVolumeFails) {
  init();
  ASSERT_EQ(tp({"create", "vol", "--size", "64K"}).status, 0);
  const std::string in = tmp_ + "/in.img";
  std::ofstream(in, std::ios::binary) << std::string(65537, 'x');
  Outcome w = tp({"write", "vol", in});
  EXPECT_EQ(w.status, kExitFailed);
  expect_one_line(w);
  Outcome missing = tp({"write", "vol", tmp_ + "/nope"});
  EXPECT_EQ(missing.status, kExitFailed);
  expect_one_line(missing);
}

TEST_F(CliTest, DeltaAndCheck) {
  init();
  ASSERT_EQ(tp({"create", "a", "--size", "1M"}).status, 0);
  ASSERT_EQ(tp({"snapshot", "a", "b", "--writable"}).status, 0);
  const std::string in = tmp_ + "/in.img";
  std::ofstream(in, std::ios::binary) << std::string(70000, 'x');
  ASSERT_EQ(tp({"write", "b", in}).status, 0);
  Outcome d = tp({"delta", "a", "b", "--json"});
  ASSERT_EQ(d.status, 0) << d.err;
  auto j = nlohmann::json::parse(d.out);
  ASSERT_FALSE(j.empty());
  EXPECT_EQ(j[0]["offset"], 0u);
  Outcome unknown = tp({"delta", "a", "zz"});
  EXPECT_EQ(unknown.status, kExitFailed);
  EXPECT_NE(unknown.err.find("zz"), std::string::npos) << unknown.err;

  Outcome c = tp({"check", "--json"});
  EXPECT_EQ(c.status, 0) << c.err << c.out;
  j = nlohmann::json::parse(c.out);
  EXPECT_EQ(j["ok"], true);
  EXPECT_NE(j["thin_check"], "failed");
}

// A pool whose process died after journal commits: check says the journal was replayed and
// checkpointed; a second check finds it empty. The metadata file alone (thin_check) was
// consistent all along.
TEST_F(CliTest, CheckReportsAReplayedJournal) {
  init();
  ASSERT_EQ(tp({"create", "v", "--size", "1M"}).status, 0);
  {
    auto p = thin::Pool::open(pool_);
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    const uint64_t v = *(*p)->dev_id("v");
    std::vector<std::byte> buf(4096, std::byte{'j'});
    ASSERT_TRUE((*p)->write(v, 400000, buf).ok());
    ASSERT_TRUE((*p)->flush().ok());  // a checkpoint that sets needs_check: the journal starts
    ASSERT_TRUE((*p)->write(v, 0, buf).ok());
    ASSERT_TRUE((*p)->flush().ok());
    ASSERT_TRUE((*p)->write(v, 200000, buf).ok());
    ASSERT_TRUE((*p)->flush().ok());
    ASSERT_EQ((*p)->info().journal_batches, 2u);
    // The process dies here: no close, no checkpoint.
  }
  // What thin_dump sees: the checkpoint, flagged needs_check.
  EXPECT_EQ(testing::thin_dump(pool_ + "/metadata")->flags, pdata::kNeedsCheckFlag);
  Outcome c = tp({"check", "--json"});
  ASSERT_EQ(c.status, 0) << c.err << c.out;
  auto j = nlohmann::json::parse(c.out);
  EXPECT_EQ(j["ok"], true);
  EXPECT_EQ(j["journal_replayed_batches"], 2u);
  EXPECT_EQ(j["journal_replayed_records"], 2u);
  Outcome again = tp({"check"});
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_NE(again.out.find("journal: empty"), std::string::npos) << again.out;
  EXPECT_EQ(testing::thin_dump(pool_ + "/metadata")->flags, 0u);
  Outcome info = tp({"info", "--json"});
  ASSERT_EQ(info.status, 0) << info.err;
  EXPECT_EQ(nlohmann::json::parse(info.out)["needs_check"], false);
  Outcome rd = tp({"read", "v", tmp_ + "/out.img"});
  ASSERT_EQ(rd.status, 0) << rd.err;
  auto img = read_file(tmp_ + "/out.img");
  ASSERT_EQ(img.size(), 1u << 20);
  EXPECT_EQ(img[0], 'j');
  EXPECT_EQ(img[200000 + 4095], 'j');
}

TEST_F(CliTest, FailingThinCheckIsDamage) {
  init();
  const std::string bin = tmp_ + "/bin";
  fs::create_directories(bin);
  std::ofstream(bin + "/thin_check") << "#!/bin/sh\necho complaint\nexit 1\n";
  fs::permissions(bin + "/thin_check", fs::perms::owner_all);
  const std::string old_path = std::getenv("PATH") ? std::getenv("PATH") : "";
  ::setenv("PATH", (bin + ":" + old_path).c_str(), 1);
  Outcome c = tp({"check", "--json"});
  ::setenv("PATH", "/nonexistent", 1);
  Outcome missing = tp({"check", "--json"});
  ::setenv("PATH", old_path.c_str(), 1);

  EXPECT_EQ(c.status, kExitDamaged);
  auto j = nlohmann::json::parse(c.out);  // stdout is only the JSON document
  EXPECT_EQ(j["ok"], false);
  EXPECT_EQ(j["thin_check"], "failed");
  EXPECT_NE(c.err.find("thinpool: check: "), std::string::npos) << c.err;

  EXPECT_EQ(missing.status, 0) << missing.err;
  EXPECT_EQ(nlohmann::json::parse(missing.out)["thin_check"], "not installed");
}

TEST_F(CliTest, ResizeAndExtend) {
  init();
  ASSERT_EQ(tp({"create", "v", "--size", "1M"}).status, 0);
  Outcome r = tp({"resize", "v", "--size", "2M", "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["size_bytes"], 2u << 20);
  Outcome e = tp({"extend", "--size", "128M", "--json"});
  ASSERT_EQ(e.status, 0) << e.err;
  EXPECT_EQ(nlohmann::json::parse(e.out)["size_bytes"], 128u << 20);
}

// --- guaranteed space, merge/rollback, diff/update ----------------------------------------

// Writes bytes to a file.
void write_file(const std::string& path, const std::vector<char>& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(data.data(), static_cast<std::streamsize>(data.size()));
}

std::vector<char> random_bytes(size_t n, uint64_t seed) {
  std::vector<char> v(n);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t word = rng();
    std::memcpy(v.data() + i, &word, std::min<size_t>(8, n - i));
  }
  return v;
}

TEST_F(CliTest, HelpListsSpaceAndUpdateCommands) {
  Outcome r = invoke({"--help"});
  EXPECT_EQ(r.status, 0);
  for (const char* c :
       {"provision", "unprovision", "reserve", "merge", "rollback", "diff", "update"}) {
    EXPECT_NE(r.out.find(c), std::string::npos) << c;
  }
  Outcome sub = invoke({"provision", "--help"});
  EXPECT_EQ(sub.status, 0);
  EXPECT_NE(sub.out.find("--class"), std::string::npos) << sub.out;
  EXPECT_NE(invoke({"snapshot", "--help"}).out.find("--reserve"), std::string::npos);
  EXPECT_NE(invoke({"create", "--help"}).out.find("--provision"), std::string::npos);
  EXPECT_NE(invoke({"update", "--help"}).out.find("--stage"), std::string::npos);
  EXPECT_NE(invoke({"diff", "--help"}).out.find("--block-size"), std::string::npos);
}

TEST_F(CliTest, SpaceAndUpdateArgumentErrorsAreUsageErrorsBeforeThePool) {
  const std::string long_name(128, 'n');  // valid, but NAME.next is not
  for (auto args : std::vector<std::vector<std::string>>{
           {"create", "v", "--size", "1M", "--provision=maybe"},
           {"snapshot", "a", "b", "--reserve", "lots"},
           {"snapshot", "a", "b", "--reserve", "2E"},
           {"provision"},
           {"provision", "v", "--class", "bulk"},
           {"provision", "v", "--offset", "x"},
           {"provision", "v", "--length", "0"},
           {"provision", "v", "--length", "1.5"},
           {"provision", "-v"},
           {"unprovision"},
           {"unprovision", "v", "--offset", "-1"},
           {"unprovision", "v", "--class", "meta"},
           {"reserve", "v"},
           {"reserve", "v", "lots"},
           {"reserve", "v", "1M", "2M"},
           {"merge"},
           {"merge", ".hidden"},
           {"rollback", "v"},
           {"rollback", "v", "--to"},
           {"rollback", "v", "--to", "-x"},
           {"diff", "a", "b"},
           {"diff", "a", "--output", "d"},
           {"diff", "a", "b", "--output", "d", "--block-size", "1000"},
           {"diff", "a", "b", "--output", "d", "--block-size", "128M"},
           {"diff", "a", "b", "--output", "d", "--block-size", "0"},
           {"diff", "a b", "c", "--output", "d"},
           {"update", "v"},
           {"update", "--delta", "d"},
           {"update", "-v", "--delta", "d"},
           {"update", long_name, "--delta", "d"},
       }) {
    Outcome r = tp(args);
    EXPECT_EQ(r.status, kExitUsage) << args[0] << " " << (args.size() > 1 ? args[1] : "");
    expect_one_line(r);
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  EXPECT_FALSE(fs::exists(pool_)) << "a usage error must not touch the pool";
}

TEST_F(CliTest, SpaceAndUpdateFailuresExitOne) {
  init();
  ASSERT_EQ(tp({"create", "v", "--size", "1M"}).status, 0);
  const std::string junk = tmp_ + "/junk.delta";
  std::ofstream(junk, std::ios::binary) << std::string(4096, 'j');
  for (auto args : std::vector<std::vector<std::string>>{
           {"create", "big", "--size", "1G", "--provision"},
           {"snapshot", "v", "s", "--reserve", "1G"},
           {"snapshot", "nosuch", "s"},
           {"provision", "nosuch"},
           {"provision", "v", "--offset", "2M"},
           {"provision", "v", "--offset", "512K", "--length", "1M"},
           {"unprovision", "nosuch"},
           {"reserve", "nosuch", "1M"},
           {"reserve", "v", "1G"},
           {"merge", "v"},
           {"merge", "nosuch"},
           {"rollback", "v", "--to", "nosuch"},
           {"rollback", "nosuch", "--to", "v"},
           {"rollback", "v", "--to", "v"},
           {"diff", "v", "nosuch", "--output", tmp_ + "/d"},
           {"update", "v", "--delta", tmp_ + "/missing.delta"},
           {"update", "v", "--delta", junk},  // corrupt: exit 1, the pool is fine
           {"update", "nosuch", "--delta", junk},
       }) {
    Outcome r = tp(args);
    EXPECT_EQ(r.status, kExitFailed) << args[0] << " " << args[1] << ": " << r.err;
    expect_one_line(r);
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  Outcome missing = tp({"rollback", "v", "--to", "nosuch"});
  EXPECT_NE(missing.err.find("nosuch"), std::string::npos) << missing.err;
  Outcome full = tp({"create", "big", "--size", "1G", "--provision"});
  EXPECT_NE(full.err.find("out of space"), std::string::npos) << full.err;
  // Files: no pool needed, and a missing file is a failure, not a usage error.
  Outcome nofile = invoke({"diff", "--files", tmp_ + "/a", tmp_ + "/b", "--output", tmp_ + "/d"});
  EXPECT_EQ(nofile.status, kExitFailed);
  expect_one_line(nofile);
  EXPECT_NE(nofile.err.find(tmp_ + "/a"), std::string::npos) << nofile.err;
  // Nothing was created or left behind by the failures.
  auto j = nlohmann::json::parse(tp({"list", "--json"}).out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["guaranteed_bytes"], 0u);
  EXPECT_EQ(j[0]["reserved_bytes"], 0u);
  EXPECT_FALSE(fs::exists(tmp_ + "/d"));
  EXPECT_EQ(tp({"check"}).status, 0);
}

TEST_F(CliTest, GuaranteeJsonFieldsPerClass) {
  init();
  Outcome c = tp({"create", "base", "--size", "4M", "--provision", "--json"});
  ASSERT_EQ(c.status, 0) << c.err;
  auto j = nlohmann::json::parse(c.out);
  EXPECT_EQ(j["guaranteed_bytes"], 4u << 20);
  EXPECT_EQ(j["guaranteed_data_bytes"], 4u << 20);
  EXPECT_EQ(j["guaranteed_meta_bytes"], 0u);
  EXPECT_EQ(j["mapped_bytes"], 4u << 20);
  EXPECT_EQ(j["reserved_bytes"], 0u);

  ASSERT_EQ(tp({"create", "fs", "--size", "8M"}).status, 0);
  Outcome p =
      tp({"provision", "fs", "--offset", "1M", "--length", "1M", "--class", "meta", "--json"});
  ASSERT_EQ(p.status, 0) << p.err;
  j = nlohmann::json::parse(p.out);
  EXPECT_EQ(j["name"], "fs");
  EXPECT_EQ(j["guaranteed_meta_bytes"], 1u << 20);
  EXPECT_EQ(j["guaranteed_data_bytes"], 0u);
  ASSERT_EQ(tp({"provision", "fs", "--offset", "4M"}).status, 0);  // to the end, class data
  j = nlohmann::json::parse(tp({"list", "--json"}).out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[1]["name"], "fs");
  EXPECT_EQ(j[1]["guaranteed_data_bytes"], 4u << 20);
  EXPECT_EQ(j[1]["mapped_bytes"], 5u << 20);

  ASSERT_EQ(tp({"reserve", "fs", "100K"}).status, 0);  // rounded up to whole blocks
  // base's blocks become shared: it reserves a copy of each; the snapshot has its budget.
  Outcome s = tp({"snapshot", "base", "next", "--writable", "--reserve", "1M", "--json"});
  ASSERT_EQ(s.status, 0) << s.err;
  j = nlohmann::json::parse(s.out);
  EXPECT_EQ(j["explicit_reserved_bytes"], 1u << 20);
  EXPECT_EQ(j["reserved_bytes"], 1u << 20);
  EXPECT_EQ(j["origin"], "base");

  Outcome info = tp({"info", "--json"});
  ASSERT_EQ(info.status, 0) << info.err;
  j = nlohmann::json::parse(info.out);
  for (const char* k :
       {"guaranteed_data_bytes", "guaranteed_meta_bytes", "reserved_data_bytes",
        "reserved_meta_bytes", "explicit_reserved_bytes", "low_water_crossings", "state"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
  EXPECT_EQ(j["guaranteed_data_bytes"], 8u << 20);
  EXPECT_EQ(j["guaranteed_meta_bytes"], 1u << 20);
  EXPECT_EQ(j["reserved_data_bytes"], 4u << 20);  // base's shared blocks
  EXPECT_EQ(j["reserved_meta_bytes"], 0u);
  EXPECT_EQ(j["explicit_reserved_bytes"], (1u << 20) + 2 * 65536);
  EXPECT_EQ(j["reserved_bytes"], (5u << 20) + 2 * 65536);
  EXPECT_EQ(j["state"], "ok");

  Outcome text = tp({"info"});
  EXPECT_NE(text.out.find("GUARANTEED"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("RESERVED"), std::string::npos) << text.out;
  Outcome list = tp({"list"});
  EXPECT_NE(list.out.find("GUARANTEED"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("RESERVED"), std::string::npos) << list.out;

  Outcome u = tp({"unprovision", "fs", "--json"});
  ASSERT_EQ(u.status, 0) << u.err;
  j = nlohmann::json::parse(u.out);
  EXPECT_EQ(j["guaranteed_bytes"], 0u);
  EXPECT_EQ(j["mapped_bytes"], 5u << 20);  // the data stays
  Outcome r0 = tp({"reserve", "fs", "0", "--json"});
  ASSERT_EQ(r0.status, 0) << r0.err;
  EXPECT_EQ(nlohmann::json::parse(r0.out)["explicit_reserved_bytes"], 0u);
  EXPECT_EQ(tp({"check"}).status, 0);
}

// --- space refusals and plans (issue 13) -------------------------------------------------

TEST_F(CliTest, SpaceRefusalSaysWhatWasNeededAndAvailable) {
  init();  // 1024 blocks of 64 KiB
  ASSERT_EQ(tp({"create", "v", "--size", "1M"}).status, 0);
  Outcome r = tp({"reserve", "v", "65M"});
  EXPECT_EQ(r.status, kExitFailed);
  expect_one_line(r);
  EXPECT_NE(r.err.find("thinpool: reserve: v: out of space: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("needs 65.00 MiB (1040 blocks) for the reservation of v, "
                       "64.00 MiB (1024 blocks) available"),
            std::string::npos)
      << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST_F(CliTest, JsonSpaceRefusalIsAnErrorDocumentWithTheNumbers) {
  init();
  ASSERT_EQ(tp({"create", "v", "--size", "1M"}).status, 0);
  Outcome r = tp({"reserve", "v", "65M", "--json"});
  EXPECT_EQ(r.status, kExitFailed);
  expect_one_line(r);
  auto e = nlohmann::json::parse(r.out)["error"];
  EXPECT_EQ(e["command"], "reserve");
  EXPECT_EQ(e["subject"], "v");
  EXPECT_EQ(e["code"], "out of space");
  EXPECT_EQ(e["exit_status"], kExitFailed);
  EXPECT_EQ(e["needed_bytes"], 65u << 20);
  EXPECT_EQ(e["needed_blocks"], 1040u);
  EXPECT_EQ(e["available_bytes"], 64u << 20);
  EXPECT_EQ(e["available_blocks"], 1024u);
  EXPECT_EQ(e["short_blocks"], 16u);
  EXPECT_EQ(e["unit_bytes"], 65536u);
  EXPECT_EQ(e["for"], "reservation");
  EXPECT_EQ(e["volume"], "v");
  EXPECT_TRUE(e["shared_with"].is_null());
}

TEST_F(CliTest, JsonErrorOfAnyFailureIsOneDocument) {
  init();
  Outcome r = tp({"remove", "nosuch", "--json"});
  EXPECT_EQ(r.status, kExitFailed);
  auto e = nlohmann::json::parse(r.out)["error"];
  EXPECT_EQ(e["code"], "not found");
  EXPECT_EQ(e["subject"], "nosuch");
  EXPECT_FALSE(e.contains("needed_bytes"));
}

TEST_F(CliTest, PlanSaysWhetherItFitsAndChangesNothing) {
  init();
  ASSERT_EQ(tp({"create", "v", "--size", "1M"}).status, 0);
  const std::string before = tp({"list", "--json"}).out;
  Outcome fits = tp({"plan", "snapshot", "v", "s", "--reserve", "64M"});
  ASSERT_EQ(fits.status, 0) << fits.err;
  EXPECT_NE(fits.out.find("snapshot fits: needs 64.00 MiB (1024 blocks)"), std::string::npos)
      << fits.out;
  EXPECT_NE(fits.out.find("0 B (0 blocks) to spare"), std::string::npos) << fits.out;
  Outcome no = tp({"plan", "snapshot", "v", "s", "--reserve", "65M", "--json"});
  EXPECT_EQ(no.status, kExitFailed);
  expect_one_line(no);  // the refusal snapshot itself would print
  EXPECT_NE(no.err.find("thinpool: snapshot: s: out of space"), std::string::npos) << no.err;
  auto j = nlohmann::json::parse(no.out);  // the plan, not an error document
  EXPECT_EQ(j["fits"], false);
  EXPECT_EQ(j["short_bytes"], 1u << 20);
  EXPECT_EQ(j["needed_blocks"], 1040u);
  EXPECT_EQ(tp({"list", "--json"}).out, before);
  Outcome missing = tp({"plan", "rollback", "v", "--to", "nosuch"});
  EXPECT_EQ(missing.status, kExitFailed);
  EXPECT_NE(missing.err.find("nosuch"), std::string::npos) << missing.err;
  EXPECT_TRUE(missing.out.empty()) << missing.out;
  EXPECT_EQ(tp({"plan", "write", "v", tmp_ + "/x"}).status, kExitUsage);  // not plannable
}

TEST_F(CliTest, MergeAndRollbackReportTheOrigin) {
  init();
  ASSERT_EQ(tp({"create", "v", "--size", "1M"}).status, 0);
  const std::string a = tmp_ + "/a.img", b = tmp_ + "/b.img", out = tmp_ + "/out.img";
  write_file(a, random_bytes(1 << 20, 1));
  write_file(b, random_bytes(1 << 20, 2));
  ASSERT_EQ(tp({"write", "v", a}).status, 0);
  ASSERT_EQ(tp({"snapshot", "v", "pre"}).status, 0);
  ASSERT_EQ(tp({"write", "v", b}).status, 0);
  Outcome r = tp({"rollback", "v", "--to", "pre", "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["name"], "v");
  ASSERT_EQ(tp({"read", "v", out}).status, 0);
  EXPECT_TRUE(read_file(out) == read_file(a));

  ASSERT_EQ(tp({"snapshot", "v", "next", "--writable"}).status, 0);
  ASSERT_EQ(tp({"write", "next", b}).status, 0);
  Outcome m = tp({"merge", "next"});
  ASSERT_EQ(m.status, 0) << m.err;
  EXPECT_NE(m.out.find("merged next into v"), std::string::npos) << m.out;
  ASSERT_EQ(tp({"read", "v", out}).status, 0);
  EXPECT_TRUE(read_file(out) == read_file(b));
  auto j = nlohmann::json::parse(tp({"list", "--json"}).out);
  ASSERT_EQ(j.size(), 2u);  // v and pre
  EXPECT_EQ(tp({"check"}).status, 0);
}

TEST_F(CliTest, DiffFilesAndUpdateJson) {
  const std::string v1 = tmp_ + "/v1.img", v2 = tmp_ + "/v2.img", delta = tmp_ + "/v2.delta";
  std::vector<char> img = random_bytes(1 << 20, 3);
  img.resize(2 << 20);  // 1 MiB of data, 1 MiB of zeros
  write_file(v1, img);
  std::fill(img.begin(), img.begin() + 65536, 0);  // block 0: zeros now
  const std::vector<char> extra = random_bytes(100, 4);
  std::copy(extra.begin(), extra.end(), img.begin() + 3 * 65536 + 7);      // block 3
  std::copy(extra.begin(), extra.end(), img.begin() + (1 << 20) + 65536);  // block 17
  write_file(v2, img);

  // No pool needed for files.
  Outcome d = invoke({"diff", "--files", v1, v2, "--output", delta, "--json"});
  ASSERT_EQ(d.status, 0) << d.err;
  auto j = nlohmann::json::parse(d.out);
  EXPECT_EQ(j["entries"], 3u);
  EXPECT_EQ(j["data_entries"], 2u);
  EXPECT_EQ(j["zero_entries"], 1u);
  EXPECT_EQ(j["bytes"], fs::file_size(delta));
  EXPECT_EQ(j["block_bytes"], 65536u);
  Outcome d4 = invoke(
      {"diff", "--files", v1, v2, "--output", tmp_ + "/4k.delta", "--block-size", "4K", "--json"});
  ASSERT_EQ(d4.status, 0) << d4.err;
  EXPECT_EQ(nlohmann::json::parse(d4.out)["entries"], 16u + 1 + 1);
  Outcome text = invoke({"diff", "--files", v1, v2, "--output", delta});
  EXPECT_NE(text.out.find("3 entries"), std::string::npos) << text.out;

  init();
  ASSERT_EQ(tp({"create", "base", "--size", "2M", "--provision"}).status, 0);
  ASSERT_EQ(tp({"write", "base", v1}).status, 0);
  Outcome st = tp({"update", "base", "--delta", delta, "--stage", "--json"});
  ASSERT_EQ(st.status, 0) << st.err;
  j = nlohmann::json::parse(st.out);
  EXPECT_EQ(j["volume"], "base");
  EXPECT_EQ(j["next"], "base.next");
  EXPECT_EQ(j["staged"], true);
  EXPECT_EQ(j["merged"], false);
  EXPECT_EQ(j["used_existing_next"], false);
  EXPECT_EQ(j["entries_applied"], 3u);
  EXPECT_GE(j["reserved_blocks"].get<uint64_t>(), 2u);
  EXPECT_EQ(j["reserved_bytes"], j["reserved_blocks"].get<uint64_t>() * 65536);
  const std::string out = tmp_ + "/out.img";
  ASSERT_EQ(tp({"read", "base.next", out}).status, 0);
  EXPECT_TRUE(read_file(out) == read_file(v2));
  ASSERT_EQ(tp({"read", "base", out}).status, 0);
  EXPECT_TRUE(read_file(out) == read_file(v1));

  // NAME.next exists: the update uses it, and merges this time.
  ASSERT_EQ(tp({"remove", "base.next"}).status, 0);
  ASSERT_EQ(tp({"snapshot", "base", "base.next", "--writable", "--reserve", "1M"}).status, 0);
  Outcome up = tp({"update", "base", "--delta", delta});
  ASSERT_EQ(up.status, 0) << up.err;
  EXPECT_NE(up.out.find("using the reserved snapshot base.next"), std::string::npos) << up.out;
  EXPECT_NE(up.out.find("merged base.next into base"), std::string::npos) << up.out;
  ASSERT_EQ(tp({"read", "base", out}).status, 0);
  EXPECT_TRUE(read_file(out) == read_file(v2));
  j = nlohmann::json::parse(tp({"list", "--json"}).out);
  EXPECT_EQ(j.size(), 1u);

  // The same delta again: base no longer matches its base checksum.
  Outcome again = tp({"update", "base", "--delta", delta});
  EXPECT_EQ(again.status, kExitFailed);
  expect_one_line(again);
  EXPECT_EQ(again.err.rfind("thinpool: update: base: ", 0), 0u) << again.err;
  EXPECT_EQ(tp({"check"}).status, 0);
}

TEST_F(CliTest, DiffOfVolumesMatchesDiffOfTheirImages) {
  init();
  const std::string v1 = tmp_ + "/v1.img", v2 = tmp_ + "/v2.img";
  std::vector<char> img = random_bytes(3 << 20, 5);
  write_file(v1, img);
  const std::vector<char> extra = random_bytes(200000, 6);
  std::copy(extra.begin(), extra.end(), img.begin() + 1234567);
  write_file(v2, img);
  ASSERT_EQ(tp({"create", "a", "--size", "3M"}).status, 0);
  ASSERT_EQ(tp({"write", "a", v1}).status, 0);
  ASSERT_EQ(tp({"snapshot", "a", "b", "--writable"}).status, 0);
  ASSERT_EQ(tp({"write", "b", v2}).status, 0);  // rewrites (and so unshares) every block
  for (const char* bs : {"64K", "16K", "128K"}) {
    const std::string vd = tmp_ + "/vol.delta", fd = tmp_ + "/file.delta";
    Outcome dv = tp({"diff", "a", "b", "--output", vd, "--block-size", bs, "--json"});
    ASSERT_EQ(dv.status, 0) << dv.err;
    Outcome df = invoke({"diff", "--files", v1, v2, "--output", fd, "--block-size", bs});
    ASSERT_EQ(df.status, 0) << df.err;
    EXPECT_TRUE(read_file(vd) == read_file(fd)) << bs;
    EXPECT_GT(nlohmann::json::parse(dv.out)["data_entries"].get<uint64_t>(), 0u);
  }
}

}  // namespace
}  // namespace tp::cli
