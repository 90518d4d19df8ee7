// libFuzzer target: the catalog (catalog/catalog.h). The input is read three ways:
//  - as catalog JSON (Catalog::from_json). Properties: what parses also validates, and
//    to_json() of it parses back to an equal catalog;
//  - as a catalog file, read by CatalogFile::open/records as the pool does on open;
//  - as the same file with every record's checksum (header and payload) fixed up first, so
//    the fuzzer reaches the JSON inside records (and the sequence/trans_id logic) past it.
// An opened file is then written once more (append, compaction), which must reopen.
// Seeds (fuzz/corpus/catalog_fuzz): catalogs of a real pool, as JSON and as files.

#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "catalog/catalog.h"
#include "fuzz_util.h"
#include "pdata/crc32c.h"
#include "pdata/endian.h"

namespace {

using namespace tp;
using namespace tp::catalog;

void fuzz_json(std::string_view text) {
  auto c = Catalog::from_json(text);
  if (!c.ok()) return;
  TP_FUZZ_REQUIRE(c->validate().ok());
  std::string again = c->to_json();
  auto c2 = Catalog::from_json(again);
  TP_FUZZ_REQUIRE(c2.ok());
  TP_FUZZ_REQUIRE(*c2 == *c);
  TP_FUZZ_REQUIRE(c2->to_json() == again);
}

// Record layout (catalog.h): magic[8] trans_id sequence le32 length le32 crc payload; the
// crc32c covers bytes 0..27 of the record and then the payload.
std::vector<std::byte> fix_crcs(std::span<const std::byte> in) {
  std::vector<std::byte> b(in.begin(), in.end());
  size_t pos = 0;
  while (pos + 32 <= b.size() && std::memcmp(b.data() + pos, "TPCATLG2", 8) == 0) {
    uint32_t len = pdata::load_le32(b.data() + pos + 24);
    if (len > b.size() - pos - 32) break;
    uint32_t crc = pdata::crc32c_raw(0xFFFFFFFFu, std::span(b).subspan(pos, 28));
    crc = ~pdata::crc32c_raw(crc, std::span(b).subspan(pos + 32, len));
    pdata::store_le32(b.data() + pos + 28, crc);
    pos += 32 + len;
  }
  return b;
}

void fuzz_file(std::span<const std::byte> bytes) {
  const std::string path = fuzz::scratch_dir() + "/catalog";
  fuzz::write_file(path, bytes);
  std::set<uint64_t> ids{0, 1};
  {
    // Constructing a CatalogFile needs a readable file; records() describes what is in it.
    auto f = CatalogFile::open(path, 0);
    if (f.ok()) {
      auto recs = f->records();
      if (recs.ok()) {
        for (const auto& r : *recs) ids.insert(r.trans_id);
      }
    }
  }
  // Trans ids straight from the record headers too (records() needs an open file).
  for (size_t pos = 0; pos + 16 <= bytes.size() && ids.size() < 8; pos += 8) {
    if (std::memcmp(bytes.data() + pos, "TPCATLG2", 8) == 0) {
      ids.insert(pdata::load_le64(bytes.data() + pos + 8));
    }
  }
  for (uint64_t id : ids) {
    auto f = CatalogFile::open(path, id);
    if (!f.ok()) continue;
    TP_FUZZ_REQUIRE(f->trans_id() <= id);  // the newest generation not after the metadata
    TP_FUZZ_REQUIRE(f->current().validate().ok());
    (void)f->records();
    Catalog c = f->current();
    if (f->write(c, id + 1).ok()) {
      // The generation just written opens, and so does the one before it when it was the
      // newest transaction in the file (the pool's case).
      auto again = CatalogFile::open(path, id + 1);
      TP_FUZZ_REQUIRE(again.ok());
      TP_FUZZ_REQUIRE(again->current() == c);
      if (*ids.rbegin() <= id && id + 1 != 0) TP_FUZZ_REQUIRE(CatalogFile::open(path, id).ok());
    }
    break;  // the file has changed
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto in = fuzz::as_bytes(data, size);
  fuzz_json(std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz_file(in);
  auto fixed = fix_crcs(in);
  if (fixed != std::vector<std::byte>(in.begin(), in.end())) fuzz_file(fixed);
  return 0;
}
