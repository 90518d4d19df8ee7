// Crash-point replay at the pool level (issue 7). A seeded mixed workload (writes of random
// size and alignment, trims, write-zeroes, provision, snapshots, merge, rollback, remove, delta
// updates, flushes at random points) runs on a pool whose data and metadata devices record
// every write, discard, write-zeroes and flush they receive, and whose catalog file is logged
// each time it changes. Then, for crash points along that log, the device images a power
// cut could leave are rebuilt and the pool is opened on them:
//   - every prefix of the log (a sample of them in make test, every one with TP_LONG=1),
//   - the same with its last write torn (only a prefix of its 512-byte sectors landed),
//   - the same with a random subset of each device's unflushed writes (reordering).
// Each image must open at the transaction its superblock names, which must be no older than
// the last commit that returned; pass thin_check (on a sample of the points, see
// kThinCheckEvery) and Pool::check (space invariant included); hold exactly the volumes of
// a committed state (merge, rollback, remove, update all-or-nothing); and every 512-byte
// sector of every volume must read back as zeros or a pattern that this volume (or its
// lineage) wrote there, no older than the committed state: durable writes survive, and no
// block shows bytes its volume never wrote.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "pdata/format.h"
#include "support/test_util.h"
#include "thin/pool.h"
#include "thin/update.h"

namespace tp::thin {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kB = 64 * 1024;
constexpr uint64_t kSector = 512;
constexpr uint64_t kSpb = kB / kSector;  // sectors per block
constexpr uint64_t kDataBytes = 8ull << 20;
constexpr uint64_t kMetaBytes = 2ull << 20;
constexpr uint32_t kMagic = 0x54505752;  // "RWPT"
constexpr uint32_t kGarbage = ~uint32_t{0};

// ------------------------------------------------------------------ sector patterns

uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Sector `sector` of a volume as write `w` leaves it: magic, w, the sector index, filler.
void fill_sector(std::byte* p, uint32_t w, uint64_t sector) {
  uint64_t words[kSector / 8];
  words[0] = uint64_t{kMagic} | uint64_t{w} << 32;
  words[1] = sector;
  uint64_t seed = mix(uint64_t{w} << 32 ^ sector);
  for (size_t i = 2; i < kSector / 8; i++) words[i] = mix(seed + i);
  std::memcpy(p, words, kSector);
}

// The write id a sector read back holds: 0 for zeros, kGarbage for anything no write left.
uint32_t decode_sector(const std::byte* p, uint64_t sector) {
  uint64_t w0, w1;
  std::memcpy(&w0, p, 8);
  std::memcpy(&w1, p + 8, 8);
  if (static_cast<uint32_t>(w0) != kMagic || w1 != sector) {
    for (size_t i = 0; i < kSector; i++) {
      if (p[i] != std::byte{0}) return kGarbage;
    }
    return 0;
  }
  uint32_t w = static_cast<uint32_t>(w0 >> 32);
  std::byte expect[kSector];
  fill_sector(expect, w, sector);
  return std::memcmp(expect, p, kSector) == 0 ? w : kGarbage;
}

// ------------------------------------------------------------------ the model

struct Vol {
  uint64_t size = 0;        // bytes, a multiple of 512
  std::vector<uint32_t> s;  // per sector: the write id it holds (0: zeros)
  bool writable = true;
  std::string origin;
  bool operator==(const Vol&) const = default;
};
using Model = std::map<std::string, Vol>;

std::string image_of(const Vol& v) {
  std::string out(v.size, '\0');
  for (uint64_t i = 0; i < v.s.size(); i++) {
    if (v.s[i]) fill_sector(reinterpret_cast<std::byte*>(out.data()) + i * kSector, v.s[i], i);
  }
  return out;
}

// ------------------------------------------------------------------ recording devices

enum class Dev : uint8_t { kData, kMeta };
enum class Kind : uint8_t { kWrite, kZero, kFlush, kCatalog };

struct Entry {
  Kind kind = Kind::kWrite;
  Dev dev = Dev::kData;
  uint64_t off = 0, len = 0;
  std::vector<std::byte> bytes;  // kWrite: what the range holds after the call
  std::string catalog;           // kCatalog: the whole file after the change
  int op = 0;                    // workload op that issued it
};

class Recorder {
 public:
  explicit Recorder(std::string catalog_path) : catalog_path_(std::move(catalog_path)) {}

  // Logs the catalog file if it changed since the last look (the pool writes it with plain
  // syscalls and fdatasync: durable as soon as the call returns).
  void note_catalog() {
    struct stat st;
    if (::stat(catalog_path_.c_str(), &st) != 0) return;
    auto key = std::tuple(st.st_ino, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    if (key == last_) return;
    last_ = key;
    std::string c = testing::read_file(catalog_path_);
    if (c == last_content_) return;
    last_content_ = c;
    Entry e;
    e.kind = Kind::kCatalog;
    e.catalog = std::move(c);
    e.op = op;
    log.push_back(std::move(e));
  }
  void add(Entry e) {
    note_catalog();
    e.op = op;
    log.push_back(std::move(e));
  }

  int op = 0;
  std::vector<Entry> log;

 private:
  std::string catalog_path_;
  std::tuple<ino_t, off_t, time_t, long> last_{};
  std::string last_content_;
};

class RecordingDevice final : public io::BlockDevice {
 public:
  RecordingDevice(std::unique_ptr<io::BlockDevice> inner, Dev dev, Recorder& rec)
      : inner_(std::move(inner)), dev_(dev), rec_(rec) {}
  uint64_t size() const override { return inner_->size(); }
  uint64_t allocated_bytes() const override { return inner_->allocated_bytes(); }
  Result<void> read(uint64_t off, std::span<std::byte> buf) override {
    return inner_->read(off, buf);
  }
  Result<void> write(uint64_t off, std::span<const std::byte> buf) override {
    TP_TRY(inner_->write(off, buf));
    log_write(off, buf);
    return {};
  }
  Result<void> flush() override {
    TP_TRY(inner_->flush());
    Entry e;
    e.kind = Kind::kFlush;
    e.dev = dev_;
    rec_.add(std::move(e));
    return {};
  }
  Result<void> discard(uint64_t off, uint64_t len) override {
    TP_TRY(inner_->discard(off, len));
    log_zero(off, len);
    return {};
  }
  Result<void> write_zeroes(uint64_t off, uint64_t len) override {
    TP_TRY(inner_->write_zeroes(off, len));
    log_zero(off, len);
    return {};
  }
  Result<void> provision(uint64_t off, uint64_t len) override {
    return inner_->provision(off, len);
  }
  Result<void> copy(uint64_t src, uint64_t dst, uint64_t len) override {
    TP_TRY(inner_->copy(src, dst, len));
    std::vector<std::byte> b(len);
    TP_TRY(inner_->read(dst, b));
    log_write(dst, b);
    return {};
  }
  Result<void> resize(uint64_t) override {
    ADD_FAILURE() << "the replay workload never resizes a device";
    return make_error(Errc::kUnsupported, "resize not recorded");
  }

 private:
  void log_write(uint64_t off, std::span<const std::byte> b) {
    Entry e;
    e.kind = Kind::kWrite;
    e.dev = dev_;
    e.off = off;
    e.len = b.size();
    e.bytes.assign(b.begin(), b.end());
    rec_.add(std::move(e));
  }
  void log_zero(uint64_t off, uint64_t len) {
    Entry e;
    e.kind = Kind::kZero;
    e.dev = dev_;
    e.off = off;
    e.len = len;
    rec_.add(std::move(e));
  }

  std::unique_ptr<io::BlockDevice> inner_;
  Dev dev_;
  Recorder& rec_;
};

std::unique_ptr<io::BlockDevice> mem_from(const std::vector<std::byte>& img) {
  auto m = io::make_mem_device(img.size());
  // Only non-zero pages: the mem device stays sparse.
  static const std::vector<std::byte> zero(4096);
  for (uint64_t off = 0; off < img.size(); off += 4096) {
    auto page = std::span(img).subspan(off, std::min<uint64_t>(4096, img.size() - off));
    if (std::memcmp(page.data(), zero.data(), page.size()) == 0) continue;
    if (!m->write(off, page).ok()) std::abort();
  }
  return m;
}

std::vector<std::byte> file_bytes(const std::string& path) {
  std::string s = testing::read_file(path);
  std::vector<std::byte> v(s.size());
  std::memcpy(v.data(), s.data(), s.size());
  return v;
}

// ------------------------------------------------------------------ the workload

enum class OpKind {
  kWrite,
  kTrim,
  kZeroes,
  kProvisionZero,
  kFlush,
  kCreate,
  kSnapshot,
  kRemove,
  kMerge,
  kRollback,
  kProvision,
  kUnprovision,
  kReserve,
  kUpdate,
};

bool is_data_op(OpKind k) {
  return k == OpKind::kWrite || k == OpKind::kTrim || k == OpKind::kZeroes ||
         k == OpKind::kProvisionZero;
}

struct OpRec {
  OpKind kind = OpKind::kFlush;
  std::string what;
  uint64_t trans_before = 0, trans_after = 0;
  Model after;              // the model once the op returned
  std::vector<Model> mids;  // states a commit inside the op may hold (update only)
};

class Workload {
 public:
  Workload(Pool& p, uint64_t seed, Recorder& rec, const std::string& tmpdir)
      : p_(p), rng_(seed), rec_(rec), tmpdir_(tmpdir) {}

  void run(int nr_ops) {
    for (int i = 0; i < nr_ops && !::testing::Test::HasFatalFailure(); i++) step();
    rec_.note_catalog();
  }

  std::vector<OpRec> ops;
  uint64_t trans0 = 0;
  std::map<std::string, int> done;  // ops that changed something, by name

 private:
  uint64_t rnd(uint64_t n) { return n ? rng_() % n : 0; }
  bool chance(int pct) { return static_cast<int>(rnd(100)) < pct; }
  uint64_t trans() { return p_.metadata().trans_id(); }
  uint64_t dev(const std::string& n) { return *p_.dev_id(n); }

  std::vector<std::string> names(bool writable_only) {
    std::vector<std::string> out;
    for (auto& [n, v] : m_) {
      if (!writable_only || v.writable) out.push_back(n);
    }
    return out;
  }
  std::string pick(const std::vector<std::string>& v) { return v[rnd(v.size())]; }

  // Reads vol from the pool and checks it holds exactly the model.
  void verify(const std::string& name) {
    const Vol& v = m_.at(name);
    std::vector<std::byte> buf(v.size);
    ASSERT_TRUE(p_.read(dev(name), 0, buf).ok());
    for (uint64_t i = 0; i < v.s.size(); i++) {
      uint32_t got = decode_sector(buf.data() + i * kSector, i);
      ASSERT_EQ(got, v.s[i]) << name << " sector " << i << " after op " << ops.size();
    }
  }
  // After a data op that failed part-way: every sector of [a, b) holds its old value or w;
  // the model takes what is there.
  void resync(const std::string& name, uint64_t a, uint64_t b, uint32_t w) {
    Vol& v = m_.at(name);
    std::vector<std::byte> buf((b - a) * kSector);
    ASSERT_TRUE(p_.read(dev(name), a * kSector, buf).ok());
    for (uint64_t i = a; i < b; i++) {
      uint32_t got = decode_sector(buf.data() + (i - a) * kSector, i);
      ASSERT_TRUE(got == v.s[i] || got == w) << name << " sector " << i;
      v.s[i] = got;
    }
  }
  void expect_ok_or_nospace(const Result<void>& r, const std::string& what) {
    ASSERT_TRUE(r.ok() || r.error().code == Errc::kNoSpace)
        << what << ": " << r.error().to_string();
  }
  // A random sector range of v: mostly small, sometimes several blocks.
  std::pair<uint64_t, uint64_t> range(const Vol& v) {
    uint64_t n = v.s.size();
    uint64_t len;
    int r = static_cast<int>(rnd(100));
    if (r < 60) {
      len = 1 + rnd(16);
    } else if (r < 90) {
      len = 1 + rnd(2 * kSpb);
    } else {
      len = 1 + rnd(4 * kSpb);
    }
    uint64_t a = chance(30) ? rnd(n / kSpb + 1) * kSpb : rnd(n);
    if (a >= n) a = n - 1;
    return {a, std::min(n, a + len)};
  }

  void step() {
    OpRec rec;
    rec.trans_before = trans();
    if (ops.empty()) trans0 = rec.trans_before;
    rec_.op = static_cast<int>(ops.size());
    Model before = m_;
    int r = static_cast<int>(rnd(100));
    auto writable = names(true);
    if (m_.size() < 2 || (r < 4 && m_.size() < 8)) {
      do_create(rec);
    } else if (r < 38 && !writable.empty()) {
      do_write(rec, pick(writable));
    } else if (r < 48) {
      rec.kind = OpKind::kFlush;
      rec.what = "flush";
      ASSERT_TRUE(p_.flush().ok());
    } else if (r < 53 && !writable.empty()) {
      do_trim(rec, pick(writable), false);
    } else if (r < 58 && !writable.empty()) {
      do_trim(rec, pick(writable), true);
    } else if (r < 61 && !writable.empty()) {
      do_provision_zero(rec, pick(writable));
    } else if (r < 65 && !writable.empty()) {
      do_provision(rec, pick(writable));
    } else if (r < 67) {
      do_unprovision(rec, pick(names(false)));
    } else if (r < 69) {
      do_reserve(rec, pick(names(false)));
    } else if (r < 77 && m_.size() < 9) {
      do_snapshot(rec, pick(names(false)));
    } else if (r < 82) {
      do_merge(rec);
    } else if (r < 86) {
      do_rollback(rec);
    } else if (r < 91) {
      do_remove(rec, pick(names(false)));
    } else if (r < 96 && !writable.empty()) {
      do_update(rec, pick(writable), before);
    } else {
      rec.kind = OpKind::kFlush;
      rec.what = "flush";
      ASSERT_TRUE(p_.flush().ok());
    }
    rec_.note_catalog();
    rec.trans_after = trans();
    rec.after = m_;
    if (rec.trans_after != rec.trans_before || m_ != before)
      done[rec.what.substr(0, rec.what.find(' '))]++;
    ops.push_back(std::move(rec));
  }

  void do_create(OpRec& rec) {
    rec.kind = OpKind::kCreate;
    std::string name = "v" + std::to_string(next_name_++);
    uint64_t size = (4 + rnd(13)) * kB;
    if (chance(25)) size -= (1 + rnd(kSpb - 1)) * kSector;
    bool prov = chance(30);
    rec.what = "create " + name;
    auto r = p_.create_volume(name, size, prov);
    ASSERT_NO_FATAL_FAILURE(expect_ok_or_nospace(r, rec.what));
    if (!r.ok()) return;
    Vol v;
    v.size = size;
    v.s.assign(size / kSector, 0);
    m_[name] = v;
  }

  void do_write(OpRec& rec, const std::string& name) {
    rec.kind = OpKind::kWrite;
    Vol& v = m_.at(name);
    auto [a, b] = range(v);
    uint32_t w = next_write_++;
    std::vector<std::byte> buf((b - a) * kSector);
    for (uint64_t i = a; i < b; i++) fill_sector(buf.data() + (i - a) * kSector, w, i);
    rec.what = "write " + name + " [" + std::to_string(a) + "," + std::to_string(b) + ")";
    auto r = p_.write(dev(name), a * kSector, buf);
    ASSERT_NO_FATAL_FAILURE(expect_ok_or_nospace(r, rec.what));
    if (r.ok()) {
      for (uint64_t i = a; i < b; i++) v.s[i] = w;
    } else {
      ASSERT_NO_FATAL_FAILURE(resync(name, a, b, w));
    }
    ASSERT_NO_FATAL_FAILURE(verify(name));
  }

  void do_trim(OpRec& rec, const std::string& name, bool zeroes) {
    rec.kind = zeroes ? OpKind::kZeroes : OpKind::kTrim;
    Vol& v = m_.at(name);
    auto [a, b] = range(v);
    if (chance(50)) {  // whole blocks, so that something is unmapped
      a = a / kSpb * kSpb;
      b = std::min<uint64_t>(v.s.size(), a + (1 + rnd(3)) * kSpb);
    }
    rec.what = std::string(zeroes ? "write_zeroes " : "trim ") + name + " [" + std::to_string(a) +
               "," + std::to_string(b) + ")";
    if (zeroes) {
      auto r = p_.write_zeroes(dev(name), a * kSector, (b - a) * kSector);
      ASSERT_NO_FATAL_FAILURE(expect_ok_or_nospace(r, rec.what));
      if (r.ok()) {
        for (uint64_t i = a; i < b; i++) v.s[i] = 0;
      } else {
        ASSERT_NO_FATAL_FAILURE(resync(name, a, b, 0));
      }
    } else {
      ASSERT_TRUE(p_.trim(dev(name), a * kSector, (b - a) * kSector).ok()) << rec.what;
      uint64_t first = (a + kSpb - 1) / kSpb, last = b / kSpb;
      if (b == v.s.size()) last = (b + kSpb - 1) / kSpb;
      for (uint64_t i = first * kSpb; i < std::min<uint64_t>(last * kSpb, v.s.size()); i++) {
        v.s[i] = 0;
      }
    }
    ASSERT_NO_FATAL_FAILURE(verify(name));
  }

  void do_provision_zero(OpRec& rec, const std::string& name) {
    rec.kind = OpKind::kProvisionZero;
    Vol& v = m_.at(name);
    auto [a, b] = range(v);
    rec.what = "provision_zero " + name;
    auto r = p_.provision_zero(dev(name), a * kSector, (b - a) * kSector);
    ASSERT_NO_FATAL_FAILURE(expect_ok_or_nospace(r, rec.what));
    if (r.ok()) {
      for (uint64_t i = a; i < b; i++) v.s[i] = 0;
    } else {
      ASSERT_NO_FATAL_FAILURE(resync(name, a, b, 0));
    }
    ASSERT_NO_FATAL_FAILURE(verify(name));
  }

  void do_provision(OpRec& rec, const std::string& name) {
    rec.kind = OpKind::kProvision;
    auto [a, b] = range(m_.at(name));
    rec.what = "provision " + name;
    auto r =
        p_.provision(name, a * kSector, (b - a) * kSector,
                     chance(30) ? catalog::ProvisionClass::kMeta : catalog::ProvisionClass::kData);
    ASSERT_NO_FATAL_FAILURE(expect_ok_or_nospace(r, rec.what));
    ASSERT_NO_FATAL_FAILURE(verify(name));
  }

  void do_unprovision(OpRec& rec, const std::string& name) {
    rec.kind = OpKind::kUnprovision;
    auto [a, b] = range(m_.at(name));
    rec.what = "unprovision " + name;
    ASSERT_TRUE(p_.unprovision(name, a * kSector, (b - a) * kSector).ok()) << rec.what;
  }

  void do_reserve(OpRec& rec, const std::string& name) {
    rec.kind = OpKind::kReserve;
    rec.what = "reserve " + name;
    ASSERT_NO_FATAL_FAILURE(expect_ok_or_nospace(p_.reserve(name, rnd(4) * kB), rec.what));
  }

  void do_snapshot(OpRec& rec, const std::string& origin) {
    rec.kind = OpKind::kSnapshot;
    std::string name = "s" + std::to_string(next_name_++);
    bool writable = chance(60);
    rec.what = "snapshot " + origin + " " + name;
    auto r = p_.snapshot(origin, name, writable, rnd(3) * kB);
    ASSERT_NO_FATAL_FAILURE(expect_ok_or_nospace(r, rec.what));
    if (!r.ok()) return;
    Vol v = m_.at(origin);
    v.writable = writable;
    v.origin = origin;
    m_[name] = v;
  }

  bool has_children(const std::string& name) {
    for (auto& [n, v] : m_) {
      if (v.origin == name) return true;
    }
    return false;
  }

  void do_merge(OpRec& rec) {
    rec.kind = OpKind::kMerge;
    std::vector<std::string> c;
    for (auto& [n, v] : m_) {
      if (!v.origin.empty() && m_.count(v.origin) && !has_children(n)) c.push_back(n);
    }
    if (c.empty()) {
      rec.kind = OpKind::kFlush;
      rec.what = "flush";
      ASSERT_TRUE(p_.flush().ok());
      return;
    }
    std::string s = pick(c);
    std::string o = m_.at(s).origin;
    rec.what = "merge " + s + " into " + o;
    auto r = p_.merge(s);
    ASSERT_NO_FATAL_FAILURE(expect_ok_or_nospace(r, rec.what));
    if (!r.ok()) return;
    m_.at(o).s = m_.at(s).s;
    m_.erase(s);
    ASSERT_NO_FATAL_FAILURE(verify(o));
  }

  void do_rollback(OpRec& rec) {
    rec.kind = OpKind::kRollback;
    std::vector<std::pair<std::string, std::string>> c;
    for (auto& [n, v] : m_) {
      if (!v.writable) continue;
      for (auto& [sn, sv] : m_) {
        if (sn != n && sv.size == v.size && (sv.origin == n || v.origin == sn)) {
          c.emplace_back(n, sn);
        }
      }
    }
    if (c.empty()) {
      rec.kind = OpKind::kFlush;
      rec.what = "flush";
      ASSERT_TRUE(p_.flush().ok());
      return;
    }
    auto [v, s] = c[rnd(c.size())];
    rec.what = "rollback " + v + " to " + s;
    auto r = p_.rollback(v, s);
    ASSERT_NO_FATAL_FAILURE(expect_ok_or_nospace(r, rec.what));
    if (!r.ok()) return;
    m_.at(v).s = m_.at(s).s;
    ASSERT_NO_FATAL_FAILURE(verify(v));
  }

  void do_remove(OpRec& rec, const std::string& name) {
    rec.kind = OpKind::kRemove;
    bool recursive = has_children(name);
    rec.what = "remove " + name;
    ASSERT_TRUE(p_.remove(name, recursive).ok()) << rec.what;
    std::vector<std::string> gone{name};
    for (size_t i = 0; i < gone.size(); i++) {
      for (auto& [n, v] : m_) {
        if (v.origin == gone[i]) gone.push_back(n);
      }
    }
    for (auto& n : gone) m_.erase(n);
  }

  void do_update(OpRec& rec, const std::string& name, const Model& before) {
    rec.kind = OpKind::kUpdate;
    std::string next = name + ".next";
    if (m_.count(next) || name.find('.') != std::string::npos) {
      rec.kind = OpKind::kFlush;
      rec.what = "flush";
      ASSERT_TRUE(p_.flush().ok());
      return;
    }
    rec.what = "update " + name;
    Vol old = m_.at(name);
    Vol neu = old;
    uint32_t w = next_write_++;
    for (int k = 0, n = 1 + static_cast<int>(rnd(3)); k < n; k++) {
      auto [a, b] = range(neu);
      bool zero = chance(25);
      for (uint64_t i = a; i < b; i++) neu.s[i] = zero ? 0 : w;
    }
    std::string old_f = tmpdir_ + "/old.img", new_f = tmpdir_ + "/new.img";
    std::string delta_f = tmpdir_ + "/delta";
    testing::write_file(old_f, image_of(old));
    testing::write_file(new_f, image_of(neu));
    int fa = -1, fb = -1;
    auto sa = file_source(old_f, &fa);
    auto sb = file_source(new_f, &fb);
    ASSERT_TRUE(sa.ok() && sb.ok());
    auto d = write_delta(delta_f, *sa, *sb, 4096);
    if (fa >= 0) ::close(fa);
    if (fb >= 0) ::close(fb);
    ASSERT_TRUE(d.ok()) << d.error().to_string();
    // A commit inside the update holds NAME as it was and NAME.next part-way.
    for (const Vol* nv : {&old, &neu}) {
      Model mid = before;
      Vol n = *nv;
      n.origin = name;
      mid[next] = n;
      rec.mids.push_back(std::move(mid));
    }
    auto r = apply_update(p_, name, delta_f, false);
    ASSERT_TRUE(r.ok() || r.error().code == Errc::kNoSpace) << r.error().to_string();
    ASSERT_FALSE(p_.volume(next).ok()) << "update left " << next << " behind";
    if (r.ok()) m_.at(name).s = neu.s;
    ASSERT_NO_FATAL_FAILURE(verify(name));
  }

  Pool& p_;
  std::mt19937_64 rng_;
  Recorder& rec_;
  std::string tmpdir_;
  Model m_;
  uint32_t next_write_ = 1;
  int next_name_ = 1;
};

// ------------------------------------------------------------------ replay

enum class Mode { kAll, kTorn, kSubset };

struct Replay {
  std::vector<std::byte> data0, meta0;
  std::string cat0;
  const std::vector<Entry>* log = nullptr;
  const std::vector<OpRec>* ops = nullptr;
  uint64_t trans0 = 0;
  std::string dir;  // scratch pool directory
  std::string seed_name;

  int points = 0, failures = 0, thin_checks = 0;
  uint64_t thin_check_every = 1;

  void fail(const std::string& msg) {
    failures++;
    if (failures <= 10) ADD_FAILURE() << seed_name << ": " << msg;
  }

  // One crash image: durable state + the chosen unflushed entries.
  void point(uint64_t p, Mode mode, const std::vector<std::byte>& dd,
             const std::vector<std::byte>& dm, const std::vector<size_t>& pend_d,
             const std::vector<size_t>& pend_m, const std::string& cat, const std::string& prev_cat,
             std::mt19937_64& rng) {
    const auto& L = *log;
    std::string where =
        "crash point " + std::to_string(p) + " mode " + std::to_string(static_cast<int>(mode));
    auto data = mem_from(dd);
    auto meta = mem_from(dm);
    std::string catalog = cat;
    // The torn entry, if any: the last one of the prefix.
    size_t torn = ~size_t{0};
    if (mode == Mode::kTorn) torn = p - 1;
    auto apply = [&](const std::vector<size_t>& pend, io::BlockDevice& d) {
      for (size_t i : pend) {
        if (mode == Mode::kSubset && (rng() & 1)) continue;
        const Entry& e = L[i];
        uint64_t len = e.len;
        if (i == torn) {
          uint64_t sectors = (len + kSector - 1) / kSector;
          len = std::min(len, (1 + rng() % (sectors - 1)) * kSector);
        }
        Result<void> r = e.kind == Kind::kZero ? d.write_zeroes(e.off, len)
                                               : d.write(e.off, std::span(e.bytes).first(len));
        if (!r.ok()) std::abort();
      }
    };
    apply(pend_d, *data);
    apply(pend_m, *meta);
    if (torn != ~size_t{0} && L[torn].kind == Kind::kCatalog) {
      // A torn append: the old file plus part of the new record.
      uint64_t extra = L[torn].catalog.size() - prev_cat.size();
      catalog = prev_cat + L[torn].catalog.substr(prev_cat.size(), 1 + rng() % (extra - 1));
    }
    points++;
    // What the superblock in the image says.
    std::vector<std::byte> sbb(pdata::kBlockSize);
    if (!meta->read(0, sbb).ok()) std::abort();
    auto sb = pdata::decode_superblock(pdata::ConstBlock(sbb.data(), pdata::kBlockSize));
    if (!sb.ok()) return fail(where + ": superblock does not decode: " + sb.error().to_string());
    uint64_t t_image = sb->trans_id;
    // Every op before the one that issued the last entry returned: its commits are durable.
    int last_op = p == 0 ? -1 : L[p - 1].op;
    uint64_t t_min = last_op <= 0 ? trans0 : (*ops)[last_op - 1].trans_after;
    if (t_image < t_min) {
      return fail(where + ": image superblock at transaction " + std::to_string(t_image) +
                  ", but transaction " + std::to_string(t_min) + " was committed");
    }
    // Files of the scratch pool: the catalog, and the metadata image for thin_check.
    fs::remove(dir + "/catalog.tmp");
    testing::write_file(dir + "/catalog", catalog);
    if (points % thin_check_every == 0) {
      std::string img(dm.size(), '\0');
      if (!meta->read(0, std::as_writable_bytes(std::span(img))).ok()) std::abort();
      testing::write_file(dir + "/metadata", img);
      thin_checks++;
      std::string tc = testing::thin_check(dir + "/metadata");
      if (!tc.empty()) return fail(where + ": " + tc);
    }
    auto pr = Pool::open(
        dir, [&](std::unique_ptr<io::BlockDevice>) { return std::move(meta); },
        [&](std::unique_ptr<io::BlockDevice>) { return std::move(data); });
    if (!pr.ok()) return fail(where + ": open failed: " + pr.error().to_string());
    Pool& pool = **pr;
    uint64_t t = pool.metadata().trans_id();
    if (t != t_image) {
      return fail(where + ": opened at transaction " + std::to_string(t) + ", image holds " +
                  std::to_string(t_image));
    }
    check_content(pool, t, p, where);
    // New blocks must not show what free blocks held (a lost discard of a freed block):
    // a probe volume gets one sector per block and must read zeros around it.
    if (pool.create_volume("probe", 8 * kB).ok()) {
      uint64_t pdev = *pool.dev_id("probe");
      std::vector<std::byte> buf(8 * kB);
      for (uint64_t b = 0; b < 8; b++) {
        uint64_t s = b * kSpb + 1 + b;
        fill_sector(buf.data(), 1, s);
        auto r = pool.write(pdev, s * kSector, std::span(buf).first(kSector));
        if (!r.ok() && r.error().code != Errc::kNoSpace) {
          return fail(where + ": probe write: " + r.error().to_string());
        }
      }
      if (!pool.read(pdev, 0, buf).ok()) return fail(where + ": probe read");
      for (uint64_t s = 0; s < 8 * kSpb; s++) {
        uint32_t w = decode_sector(buf.data() + s * kSector, s);
        if (w != 0 && !(w == 1 && s % kSpb == 1 + s / kSpb)) {
          return fail(where + ": a new block shows stale bytes at probe sector " +
                      std::to_string(s));
        }
      }
    }
    auto c = pool.check();
    if (!c.ok()) return fail(where + ": check failed: " + c.error().to_string());
    if (!c->ok()) return fail(where + ": check: " + c->damage.front());
    if (auto r = pool.close(); !r.ok()) return fail(where + ": close: " + r.error().to_string());
  }

  void check_content(Pool& pool, uint64_t t, uint64_t p, const std::string& where) {
    const auto& O = *ops;
    static const Model kEmpty;
    // The op whose commit produced t, and the states that commit may hold.
    const Model* names = nullptr;
    std::vector<const Model*> versions;
    int i = -1;
    if (t != trans0) {
      for (size_t j = 0; j < O.size(); j++) {
        if (O[j].trans_after >= t) {
          i = static_cast<int>(j);
          break;
        }
      }
      if (i < 0) return fail(where + ": transaction " + std::to_string(t) + " never committed");
    }
    const Model& prev = i <= 0 ? kEmpty : O[i - 1].after;
    if (i < 0) {
      names = &kEmpty;
      versions.push_back(&kEmpty);
    } else if (!is_data_op(O[i].kind) && t == O[i].trans_after) {
      names = &O[i].after;  // the op's final commit: exactly its result
      versions.push_back(&O[i].after);
    } else if (!O[i].mids.empty()) {
      names = &O[i].mids[0];
      for (auto& m : O[i].mids) versions.push_back(&m);
    } else {
      names = &prev;  // a commit inside a data op (or before a provision)
      versions.push_back(&prev);
      versions.push_back(&O[i].after);
    }
    // Later in-place writes may have landed without a commit: data ops up to the one in
    // progress at the crash.
    int k = p < log->size() ? (*log)[p].op : static_cast<int>(O.size()) - 1;
    for (int j = i + 1; j <= k && j < static_cast<int>(O.size()); j++) {
      if (is_data_op(O[j].kind)) versions.push_back(&O[j].after);
    }
    auto got = pool.list(false);
    std::set<std::string> have;
    for (auto& v : got) have.insert(v.name);
    std::set<std::string> want;
    for (auto& [n, v] : *names) want.insert(n);
    if (have != want) {
      std::string h, w;
      for (auto& n : have) h += " " + n;
      for (auto& n : want) w += " " + n;
      return fail(where + ": volumes {" + h + " } but transaction " + std::to_string(t) + " (op " +
                  std::to_string(i) + ") holds {" + w + " }");
    }
    for (auto& vi : got) {
      const Vol& mv = names->at(vi.name);
      if (vi.size_bytes != mv.size || vi.read_only == mv.writable) {
        return fail(where + ": volume " + vi.name + " has the wrong size or mode");
      }
      std::vector<const std::vector<uint32_t>*> allowed;
      for (const Model* m : versions) {
        auto it = m->find(vi.name);
        if (it != m->end() && it->second.size == mv.size) allowed.push_back(&it->second.s);
      }
      std::vector<std::byte> buf(vi.size_bytes);
      if (!pool.read(vi.dev_id, 0, buf).ok()) return fail(where + ": read " + vi.name);
      for (uint64_t s = 0; s < vi.size_bytes / kSector; s++) {
        uint32_t w = decode_sector(buf.data() + s * kSector, s);
        bool ok = false;
        for (auto* a : allowed) ok = ok || (*a)[s] == w;
        if (!ok) {
          return fail(where + ": volume " + vi.name + " sector " + std::to_string(s) +
                      (w == kGarbage ? " holds bytes no write of it left there"
                                     : " holds write " + std::to_string(w) +
                                           ", not a value of a committed or later state") +
                      " (transaction " + std::to_string(t) + ", op " + std::to_string(i) + " " +
                      (i >= 0 ? O[i].what : "") + ")");
        }
      }
    }
  }

  // Walks the log; at each chosen prefix, runs the chosen modes.
  void run(uint64_t stride, std::mt19937_64& rng) {
    const auto& L = *log;
    std::vector<std::byte> dd = data0, dm = meta0;
    std::vector<size_t> pend_d, pend_m;
    std::string cat = cat0, prev_cat = cat0;
    auto flush_into = [&](std::vector<size_t>& pend, std::vector<std::byte>& img) {
      for (size_t i : pend) {
        const Entry& e = L[i];
        if (e.kind == Kind::kZero) {
          std::memset(img.data() + e.off, 0, e.len);
        } else {
          std::memcpy(img.data() + e.off, e.bytes.data(), e.len);
        }
      }
      pend.clear();
    };
    uint64_t phase = rng() % stride;
    for (uint64_t p = 0; p <= L.size(); p++) {
      if (p % stride == phase || p == L.size()) {
        point(p, Mode::kAll, dd, dm, pend_d, pend_m, cat, prev_cat, rng);
        point(p, Mode::kSubset, dd, dm, pend_d, pend_m, cat, prev_cat, rng);
        if (p > 0) {
          const Entry& e = L[p - 1];
          bool tearable = (e.kind == Kind::kWrite || e.kind == Kind::kZero) && e.len > kSector;
          if (e.kind == Kind::kCatalog && e.catalog.size() > prev_cat.size() + 1 &&
              e.catalog.compare(0, prev_cat.size(), prev_cat) == 0) {
            tearable = true;
          }
          if (tearable) point(p, Mode::kTorn, dd, dm, pend_d, pend_m, cat, prev_cat, rng);
        }
        if (::testing::Test::HasFatalFailure()) return;
      }
      if (p == L.size()) break;
      const Entry& e = L[p];
      switch (e.kind) {
        case Kind::kWrite:
        case Kind::kZero:
          (e.dev == Dev::kData ? pend_d : pend_m).push_back(p);
          break;
        case Kind::kFlush:
          if (e.dev == Dev::kData) {
            flush_into(pend_d, dd);
          } else {
            flush_into(pend_m, dm);
          }
          break;
        case Kind::kCatalog:
          prev_cat = cat;
          cat = e.catalog;
          break;
      }
    }
  }
};

struct Recording {
  std::vector<std::byte> data0, meta0;
  std::string cat0;
  std::unique_ptr<Recorder> rec;
  std::vector<OpRec> ops;
  uint64_t trans0 = 0;
};

void record(uint64_t seed, int nr_ops, const testing::TempDir& tmp, Recording* out) {
  std::string dir = tmp.file("pool");
  PoolOptions o;
  o.data_bytes = kDataBytes;
  o.metadata_bytes = kMetaBytes;
  {
    auto p = Pool::create(dir, o);
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    ASSERT_TRUE((*p)->close().ok());
  }
  out->data0 = file_bytes(dir + "/data");
  out->meta0 = file_bytes(dir + "/metadata");
  out->cat0 = testing::read_file(dir + "/catalog");
  out->rec = std::make_unique<Recorder>(dir + "/catalog");
  out->rec->note_catalog();
  out->rec->log.clear();
  Recorder& rec = *out->rec;
  auto p = Pool::open(
      dir,
      [&](std::unique_ptr<io::BlockDevice>) -> std::unique_ptr<io::BlockDevice> {
        return std::make_unique<RecordingDevice>(mem_from(out->meta0), Dev::kMeta, rec);
      },
      [&](std::unique_ptr<io::BlockDevice>) -> std::unique_ptr<io::BlockDevice> {
        return std::make_unique<RecordingDevice>(mem_from(out->data0), Dev::kData, rec);
      });
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  Workload wl(**p, seed, rec, tmp.path());
  wl.run(nr_ops);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  out->ops = std::move(wl.ops);
  std::string tally;
  for (auto& [k, n] : wl.done) tally += " " + k + " " + std::to_string(n);
  std::printf("seed %llu: %d ops (done:%s), %zu log entries\n",
              static_cast<unsigned long long>(seed), nr_ops, tally.c_str(), rec.log.size());
  out->trans0 = wl.trans0;
  // The process dies here: no close.
}

TEST(CrashReplay, EveryCrashPointOpensConsistent) {
  const bool long_mode = testing::effort() == testing::Effort::kLong;
  const int nr_ops = static_cast<int>(testing::scaled(300, 1));
  const std::vector<uint64_t> seeds =
      long_mode ? std::vector<uint64_t>{1, 2, 3, 4} : std::vector<uint64_t>{1};
  // Crash prefixes per seed: a spread in make test, every one with TP_LONG=1.
  const uint64_t target_prefixes = testing::scaled(200);
  int points = 0, failures = 0, thin_checks = 0;
  uint64_t log_entries = 0;
  for (uint64_t seed : seeds) {
    testing::TempDir tmp;
    Recording recd;
    ASSERT_NO_FATAL_FAILURE(record(seed, nr_ops, tmp, &recd));
    const auto& log = recd.rec->log;
    log_entries += log.size();
    Replay r;
    r.data0 = std::move(recd.data0);
    r.meta0 = std::move(recd.meta0);
    r.cat0 = recd.cat0;
    r.log = &log;
    r.ops = &recd.ops;
    r.trans0 = recd.trans0;
    r.seed_name = "seed " + std::to_string(seed);
    r.dir = tmp.file("crash");
    fs::create_directory(r.dir);
    testing::write_file(r.dir + "/data", "");
    testing::write_file(r.dir + "/metadata", "");
    r.thin_check_every = long_mode ? 10 : testing::effort() == testing::Effort::kQuick ? 20 : 5;
    uint64_t stride = long_mode ? 1 : std::max<uint64_t>(1, log.size() / target_prefixes);
    std::mt19937_64 rng(seed * 7919);
    r.run(stride, rng);
    points += r.points;
    failures += r.failures;
    thin_checks += r.thin_checks;
  }
  std::printf("crash points: %d, failures: %d (log entries %llu, thin_check runs %d)\n", points,
              failures, static_cast<unsigned long long>(log_entries), thin_checks);
  ::testing::Test::RecordProperty("crash_points", points);
  ::testing::Test::RecordProperty("thin_check_runs", thin_checks);
  EXPECT_EQ(failures, 0);
  if (long_mode) {
    EXPECT_GE(points, 10000);
  } else if (testing::effort() == testing::Effort::kNormal) {
    EXPECT_GE(points, 500);
  }
}

}  // namespace
}  // namespace tp::thin
