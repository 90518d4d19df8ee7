// Writes the seed corpora of the fuzz targets into DIR/<target>/ (fuzz/corpus in the repo):
// everything is made by the engine itself, on a real pool in a scratch directory, so seeds
// follow the formats as the code writes them. Deterministic apart from time stamps and
// uuids in the pool. Run by hand after a format change (`make fuzz-corpus`), then commit.
//
// Usage: gen_corpus DIR

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "fuzz_util.h"
#include "nbd/protocol.h"
#include "nbd/wire.h"
#include "pdata/btree.h"
#include "pdata/crc32c.h"
#include "pdata/format.h"
#include "thin/pool.h"
#include "thin/update.h"

namespace {

using namespace tp;
namespace fs = std::filesystem;

std::string g_out;

void must(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "gen_corpus: %s failed\n", what);
    std::exit(1);
  }
}

void put(const std::string& target, const std::string& name, std::span<const std::byte> b) {
  fs::create_directories(g_out + "/" + target);
  fuzz::write_file(g_out + "/" + target + "/" + name, b);
}
void put(const std::string& target, const std::string& name, std::string_view s) {
  put(target, name, std::as_bytes(std::span(s.data(), s.size())));
}

std::vector<std::byte> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  must(f.good() || f.eof(), "read");
  auto b = std::as_bytes(std::span(c));
  return {b.begin(), b.end()};
}

// ---------------------------------------------------------------- a real pool

void make_pool(const std::string& dir) {
  thin::PoolOptions o;
  o.data_bytes = 64ull << 20;
  auto p = thin::Pool::create(dir, o);
  must(p.ok(), "pool create");
  thin::Pool& pool = **p;
  must(pool.create_volume("base", 4 << 20).ok(), "create");
  must(pool.create_volume("db", 8 << 20, true).ok(), "create --provision");
  uint64_t dev = *pool.dev_id("base");
  std::vector<std::byte> buf(64 * 1024);
  for (uint64_t i = 0; i < 40; i++) {
    std::memset(buf.data(), static_cast<int>(i + 1), buf.size());
    must(pool.write(dev, i * 96 * 1024, buf).ok(), "write");
  }
  must(pool.flush().ok(), "flush");
  must(pool.snapshot("base", "base.snap", false).ok(), "snapshot");
  must(pool.snapshot("base", "base.next", true, 1 << 20).ok(), "snapshot --writable");
  must(pool.provision("base", 0, 256 * 1024, catalog::ProvisionClass::kMeta).ok(), "provision");
  must(pool.close().ok(), "close");
}

void metadata_blocks(const std::string& dir) {
  using namespace pdata;
  auto image = read_all(dir + "/metadata");
  std::map<std::string, int> seen;
  for (uint64_t nr = 0; nr * kBlockSize < image.size(); nr++) {
    ConstBlock b(image.data() + nr * kBlockSize, kBlockSize);
    std::string kind;
    auto sealed = [&](uint32_t salt) {
      return load_le32(b.data()) == block_checksum(b, salt) && load_le64(b.data() + 8) == nr;
    };
    if (sealed(kSuperblockSalt)) {
      kind = "superblock";
    } else if (sealed(kBtreeNodeSalt)) {
      uint32_t flags = load_le32(b.data() + 4), vs = load_le32(b.data() + 24);
      kind = (flags == kInternalNode ? "node-internal-v" : "node-leaf-v") + std::to_string(vs);
    } else if (sealed(kBitmapSalt)) {
      kind = "bitmap";
    } else if (sealed(kIndexSalt)) {
      kind = "metadata-index";
    } else {
      continue;
    }
    int& n = seen[kind];
    if (n++ >= 2) continue;  // a few of each kind
    put("pdata_fuzz_block", kind + "-" + std::to_string(n), b);
  }
  must(seen.count("superblock") && seen.count("bitmap") && seen.count("metadata-index"),
       "finding every kind of metadata block");
}

// Patch lists for pdata_fuzz_metadata: {sel, le16 offset, len, bytes}.
void metadata_patches() {
  auto patch = [](std::vector<uint8_t>& v, uint8_t sel, uint16_t off, std::vector<uint8_t> bytes) {
    v.push_back(sel);
    v.push_back(static_cast<uint8_t>(off));
    v.push_back(static_cast<uint8_t>(off >> 8));
    v.push_back(static_cast<uint8_t>(bytes.size()));
    v.insert(v.end(), bytes.begin(), bytes.end());
  };
  auto emit = [](const char* name, const std::vector<uint8_t>& v) {
    put("pdata_fuzz_metadata", name, std::as_bytes(std::span(v)));
  };
  std::vector<uint8_t> v;
  emit("unchanged", v);
  patch(v, 0, 0x158, {0x01, 0x00});  // superblock: metadata_nr_blocks
  emit("sb-metadata-size", v);
  v.clear();
  patch(v, 0, 0x040, {0xff, 0xff, 0xff, 0xff, 0x0f});  // data sm nr_blocks
  emit("sb-data-sm-size", v);
  v.clear();
  patch(v, 0, 0x140, {0x02});  // data mapping root points elsewhere
  emit("sb-mapping-root", v);
  for (uint8_t sel = 1; sel < 8; sel++) {
    v.clear();
    patch(v, sel, 16, {0x07, 0x01});                                      // nr_entries
    patch(v, sel, 40, {0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00});  // a key / entry
    emit(("block" + std::to_string(sel) + "-entries").c_str(), v);
  }
  v.clear();
  patch(v, 0x83, 100, {0xde, 0xad});  // no reseal: a checksum error
  emit("bad-checksum", v);
}

void catalog_seeds(const std::string& dir) {
  put("catalog_fuzz", "pool-catalog-file", read_all(dir + "/catalog"));
  // The JSON of the newest record.
  auto bytes = read_all(dir + "/catalog");
  std::string json;
  for (size_t pos = 0; pos + 32 <= bytes.size();) {
    uint32_t len = pdata::load_le32(bytes.data() + pos + 24);
    json.assign(reinterpret_cast<const char*>(bytes.data() + pos + 32), len);
    pos += 32 + len;
  }
  must(catalog::Catalog::from_json(json).ok(), "the pool's catalog JSON parses");
  put("catalog_fuzz", "pool-catalog.json", json);
  // The same file in the first layout (magic TPCATLG1, crc of the payload only): refused.
  auto old = bytes;
  for (size_t pos = 0; pos + 32 <= old.size();) {
    uint32_t len = pdata::load_le32(old.data() + pos + 24);
    old[pos + 7] = std::byte{'1'};
    pdata::store_le32(old.data() + pos + 28, pdata::crc32c(std::span(old).subspan(pos + 32, len)));
    pos += 32 + len;
  }
  put("catalog_fuzz", "old-layout-catalog-file", old);
  catalog::Catalog empty;
  empty.settings.data_bytes = 1 << 30;
  put("catalog_fuzz", "empty.json", empty.to_json());
  put("catalog_fuzz", "not-an-object.json", "[1,2,3]");
}

// ---------------------------------------------------------------- deltas

thin::ImageSource mem_source(const std::vector<std::byte>& img) {
  thin::ImageSource s;
  s.size = img.size();
  s.read = [&img](uint64_t off, std::span<std::byte> out) -> Result<void> {
    std::memcpy(out.data(), img.data() + off, out.size());
    return {};
  };
  return s;
}

void delta_seeds() {
  // The base image of thin_fuzz_delta's pool: 1 MiB, 64 KiB of 0x5a at 128 KiB.
  std::vector<std::byte> base(1 << 20);
  std::memset(base.data() + 128 * 1024, 0x5a, 64 * 1024);
  auto emit = [&](const char* name, const std::vector<std::byte>& next, uint32_t block,
                  std::initializer_list<uint8_t> modes) {
    std::string path = fuzz::scratch_dir() + "/delta";
    must(thin::write_delta(path, mem_source(base), mem_source(next), block).ok(), "write_delta");
    auto d = read_all(path);
    for (uint8_t mode : modes) {
      std::vector<std::byte> seed{std::byte{mode}};
      seed.insert(seed.end(), d.begin(), d.end());
      put("thin_fuzz_delta", std::string(name) + "-mode" + std::to_string(mode), seed);
    }
  };
  std::vector<std::byte> next = base;
  std::memset(next.data() + 4096, 0x11, 8192);          // data entries
  std::memset(next.data() + 128 * 1024, 0, 64 * 1024);  // a zero entry
  emit("changes", next, 4096, {0, 4, 12});
  emit("changes-64k", next, 65536, {0, 4});
  std::vector<std::byte> grown = next;
  grown.resize((1 << 20) + 5000, std::byte{0x22});
  emit("grown", grown, 4096, {0, 4});
  std::vector<std::byte> shrunk(base.begin(), base.begin() + 300 * 1024);
  emit("shrunk", shrunk, 4096, {0, 12});
  emit("same", base, 4096, {0, 4});
}

// ---------------------------------------------------------------- NBD

using Bytes = std::vector<std::byte>;
void append(Bytes& v, std::span<const std::byte> b) {
  v.insert(v.end(), b.begin(), b.end());
}
Bytes client_flags() {
  Bytes b(4);
  nbd::wire::store_be32(b.data(), nbd::kClientFixedNewstyle | nbd::kClientNoZeroes);
  return b;
}
void option(Bytes& v, uint32_t opt, std::span<const std::byte> data = {}) {
  append(v, nbd::wire::encode_option(opt, data));
}
void request(Bytes& v, uint16_t type, uint64_t off, uint32_t len, uint16_t flags = 0) {
  static uint64_t cookie = 1;
  append(v, nbd::wire::encode_request({flags, type, cookie++, off, len}));
  if (type == nbd::kCmdWrite) v.insert(v.end(), len, std::byte{0x42});
}

void nbd_seeds() {
  using namespace nbd;
  const std::string t = "nbd_fuzz_handshake";
  {
    Bytes v = client_flags();
    option(v, kOptList);
    option(v, kOptInfo,
           wire::encode_info_request({"snap", {kInfoName, kInfoDescription, kInfoBlockSize}}));
    option(v, kOptListMetaContext, wire::encode_meta_request({"vol", {}}));
    option(v, kOptAbort);
    put(t, "list-info-abort", v);
  }
  Bytes io;  // a session's requests
  request(io, kCmdWrite, 4096, 8192, kCmdFlagFua);
  request(io, kCmdRead, 0, 65536);
  request(io, kCmdRead, 0, 16384, kCmdFlagDf);
  request(io, kCmdBlockStatus, 0, 256 * 1024);
  request(io, kCmdTrim, 65536, 65536);
  request(io, kCmdWriteZeroes, 131072, 4096, kCmdFlagNoHole);
  request(io, kCmdFlush, 0, 0);
  request(io, kCmdDisc, 0, 0);
  {
    Bytes v = client_flags();
    option(v, kOptStructuredReply);
    option(v, kOptSetMetaContext,
           wire::encode_meta_request({"vol", {"base:allocation", "thinpool:delta:base"}}));
    option(v, kOptGo, wire::encode_info_request({"vol", {kInfoBlockSize}}));
    append(v, io);
    put(t, "go-structured-io", v);
  }
  {
    Bytes v = client_flags();
    option(v, kOptGo, wire::encode_info_request({"", {}}));
    append(v, io);
    put(t, "go-default-simple-io", v);
  }
  {
    Bytes v = client_flags();
    option(v, kOptExportName, std::as_bytes(std::span("snap", 4)));
    request(v, kCmdRead, 0, 4096);
    request(v, kCmdWrite, 0, 512);  // refused: read-only
    request(v, kCmdDisc, 0, 0);
    put(t, "export-name-readonly", v);
  }
  // nbd_fuzz_request: 4 bytes of negotiated state, then requests.
  {
    Bytes v{std::byte{0x01}, std::byte{0xff}, std::byte{0x0b}, std::byte{0x40}};
    append(v, io);
    put("nbd_fuzz_request", "session", v);
    put("nbd_fuzz_request", "info-request", wire::encode_info_request({"vol", {kInfoExport}}));
    put("nbd_fuzz_request", "meta-request",
        wire::encode_meta_request({"vol", {"base:allocation"}}));
  }
}

// ---------------------------------------------------------------- control socket

void control_seeds() {
  const std::string t = "daemon_fuzz_control";
  put(t, "status", R"({"op":"status"})");
  put(t, "events", R"({"op":"events"})");
  put(t, "run-list", R"({"op":"run","argv":["list","--json"],"cwd":"/"})");
  put(t, "run-info", R"({"op":"run","argv":["info"]})");
  put(t, "run-lifecycle",
      R"({"op":"run","argv":["create","v1","--size","1M"]})"
      "\n"
      R"({"op":"run","argv":["snapshot","v1","v1.s","--writable","--reserve","64K"]})"
      "\n"
      R"({"op":"run","argv":["provision","v1","--length","128K","--class","meta"]})"
      "\n"
      R"({"op":"run","argv":["delta","v1","v1.s","--json"]})"
      "\n"
      R"({"op":"run","argv":["resize","v1.s","--size","2M"]})"
      "\n"
      R"({"op":"run","argv":["merge","v1.s"]})"
      "\n"
      R"({"op":"run","argv":["reserve","v1","64K"]})"
      "\n"
      R"({"op":"run","argv":["rollback","vol","--to","snap"]})"
      "\n"
      R"({"op":"run","argv":["remove","v1","--recursive"]})");
  put(t, "run-bad-usage", R"({"op":"run","argv":["create"]})");
  put(t, "wrong-types",
      R"({"op":1})"
      "\n"
      R"({"op":"run","argv":"list"})"
      "\n"
      R"({"op":"run","argv":[1,2]})"
      "\n"
      R"({"op":"run","argv":["list"],"cwd":7})"
      "\n"
      R"({"op":"run","argv":["list"],"cwd":"relative"})"
      "\n"
      R"({"op":null})"
      "\n"
      R"({"op":["status"]})");
  put(t, "malformed", "{\"op\":\"status\"\n{\n\n[]\n\"x\"\n{\"op\":\"\\ud800\"}\n\xff\xfe");
  std::string huge = R"({"op":"run","argv":[)";
  for (int i = 0; i < 300; i++) huge += (i ? ",\"list\"" : "\"list\"");
  huge += "]}";
  put(t, "huge-argv", huge);
  std::string deep =
      R"({"op":"run","argv":)" + std::string(5000, '[') + std::string(5000, ']') + "}";
  put(t, "deep-nesting", deep);
  std::string big = R"({"op":"status","pad":[)";
  for (int i = 0; i < 4000; i++) big += (i ? ",0" : "0");
  big += "]}";
  put(t, "big-array", big);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: gen_corpus DIR\n");
    return 2;
  }
  g_out = argv[1];
  const std::string pool = fuzz::scratch_dir() + "/pool";
  make_pool(pool);
  metadata_blocks(pool);
  metadata_patches();
  catalog_seeds(pool);
  delta_seeds();
  nbd_seeds();
  control_seeds();
  std::printf("gen_corpus: seeds written to %s\n", g_out.c_str());
  return 0;
}
