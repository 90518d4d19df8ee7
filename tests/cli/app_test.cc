// The command line driven in-process: exit statuses, one-line errors, JSON output.

#include "cli/app.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace tp::cli {
namespace {

namespace fs = std::filesystem;

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
  for (const char* k : {"block_bytes", "size_bytes", "used_bytes", "free_bytes", "reserved_bytes",
                        "unreserved_bytes", "metadata_bytes", "metadata_used_bytes",
                        "transaction_id", "state", "low_water_percent", "volumes"}) {
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
  std::mt19937 rng(7);
  for (auto& c : data) {
    c = static_cast<char>(rng());
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
  std::ifstream f(out, std::ios::binary);
  std::vector<char> back((std::istreambuf_iterator<char>(f)), {});
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
  std::ifstream f2(out, std::ios::binary);
  std::vector<char> back2((std::istreambuf_iterator<char>(f2)), {});
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
  const uint64_t vol_bytes = 8 * bb + 4 * (1 << 20);
  ASSERT_EQ(tp({"create", "v", "--size", std::to_string(vol_bytes)}).status, 0);
  std::mt19937_64 rng(bb);
  std::vector<char> expect(vol_bytes, 0);
  const std::string in = tmp_ + "/in.img", out = tmp_ + "/out.img";
  for (int round = 0; round < 4; round++) {
    const uint64_t len = vol_bytes - rng() % (3 * bb);  // not block aligned
    std::vector<char> img(len);
    for (auto& c : img) {
      c = static_cast<char>(rng() | 1);
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
    std::ifstream f(out, std::ios::binary);
    std::vector<char> back((std::istreambuf_iterator<char>(f)), {});
    ASSERT_EQ(back.size(), expect.size());
    ASSERT_TRUE(back == expect) << "round " << round;

    uint64_t nonzero_blocks = 0;
    for (uint64_t b = 0; b < vol_bytes; b += bb) {
      const auto first = expect.begin() + static_cast<long>(b);
      const auto last = expect.begin() + static_cast<long>(std::min(b + bb, vol_bytes));
      nonzero_blocks += std::any_of(first, last, [](char c) { return c != 0; }) ? 1 : 0;
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

}  // namespace
}  // namespace tp::cli
