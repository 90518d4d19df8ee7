#pragma once
// A seeded mixed workload on a thin pool with a model of what every volume holds, for the
// crash-replay and I/O error tests (tests/thin/replay_test.cc, tests/thin/ioerror_test.cc).
//
// Every write writes, in each 512-byte sector, a pattern naming the write (a number unique
// in the run) and the sector's index in the volume, so a sector read back tells which write
// left it there, or that none did (zeros, or garbage). The model keeps, per volume, which
// write each sector holds; OpRec keeps the model after every op and the metadata
// transaction ids around it, so check_pool_content() can tell, for the transaction a pool
// opened at, which states it may hold.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "io/block_device.h"
#include "support/test_util.h"
#include "thin/pool.h"
#include "thin/update.h"

namespace tp::testing::workload {

using thin::Pool;
constexpr uint64_t kB = 64 * 1024;
constexpr uint64_t kSector = 512;
constexpr uint64_t kSpb = kB / kSector;  // sectors per block
constexpr uint32_t kMagic = 0x54505752;  // "RWPT"
constexpr uint32_t kGarbage = ~uint32_t{0};

// ------------------------------------------------------------------ sector patterns

inline uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Sector `sector` of a volume as write `w` leaves it: magic, w, the sector index, filler.
inline void fill_sector(std::byte* p, uint32_t w, uint64_t sector) {
  uint64_t words[kSector / 8];
  words[0] = uint64_t{kMagic} | uint64_t{w} << 32;
  words[1] = sector;
  uint64_t seed = mix(uint64_t{w} << 32 ^ sector);
  for (size_t i = 2; i < kSector / 8; i++) words[i] = mix(seed + i);
  std::memcpy(p, words, kSector);
}

// The write id a sector read back holds: 0 for zeros, kGarbage for anything no write left.
inline uint32_t decode_sector(const std::byte* p, uint64_t sector) {
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

inline std::string image_of(const Vol& v) {
  std::string out(v.size, '\0');
  for (uint64_t i = 0; i < v.s.size(); i++) {
    if (v.s[i]) fill_sector(reinterpret_cast<std::byte*>(out.data()) + i * kSector, v.s[i], i);
  }
  return out;
}

// ------------------------------------------------------------------ recording devices

enum class Dev : uint8_t { kData, kMeta, kJournal };
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
  // Thread-safe: a commit syncs the data device on another thread while it writes metadata.
  void add(Entry e) {
    std::lock_guard lk(mu_);
    note_catalog();
    e.op = op;
    log.push_back(std::move(e));
  }

  int op = 0;
  std::vector<Entry> log;

 private:
  std::mutex mu_;
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
  Result<uint64_t> next_data(uint64_t o, uint64_t e) override { return inner_->next_data(o, e); }
  Result<uint64_t> next_hole(uint64_t o, uint64_t e) override { return inner_->next_hole(o, e); }
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

inline std::unique_ptr<io::BlockDevice> mem_from(const std::vector<std::byte>& img) {
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

inline std::vector<std::byte> file_bytes(const std::string& path) {
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

inline bool is_data_op(OpKind k) {
  return k == OpKind::kWrite || k == OpKind::kTrim || k == OpKind::kZeroes ||
         k == OpKind::kProvisionZero;
}

struct OpRec {
  OpKind kind = OpKind::kFlush;
  std::string what;
  uint64_t trans_before = 0, trans_after = 0;
  Model after;              // the model once the op returned (as if it succeeded, if it failed)
  std::vector<Model> mids;  // states a commit inside the op may hold (update; a failed op)
  // An op that failed with an I/O error: its final commit (if any) holds exactly one of these.
  std::vector<Model> alts;
};

// Runs random operations on a pool and keeps the model. With tolerate_io, an operation that
// fails with kIo or kReadOnly (fault injection) ends the run: `faulted` is set, and the op's
// record allows both the state before and the state it would have produced.
class Workload {
 public:
  Workload(Pool& p, uint64_t seed, Recorder* rec, const std::string& tmpdir, Model init = {},
           uint32_t next_write = 1, int next_name = 1)
      : p_(p),
        rng_(seed),
        rec_(rec),
        tmpdir_(tmpdir),
        m_(std::move(init)),
        next_write_(next_write),
        next_name_(next_name) {
    trans0 = trans();
    since_sync_.push_back(m_);
  }

  void run(int nr_ops) {
    for (int i = 0; i < nr_ops && !faulted && !::testing::Test::HasFatalFailure(); i++) {
      if (before_step) before_step(i);
      step();
    }
    if (rec_) rec_->note_catalog();
  }

  bool tolerate_io = false;
  bool faulted = false;  // an op failed with an injected error (tolerate_io)
  Error fault{};         // that error
  std::function<void(int)> before_step;
  std::vector<OpRec> ops;
  uint64_t trans0 = 0;
  std::map<std::string, int> done;  // ops that changed something, by name
  const Model& model() const { return m_; }
  uint32_t next_write() const { return next_write_; }
  int next_name() const { return next_name_; }

 private:
  uint64_t rnd(uint64_t n) { return n ? rng_() % n : 0; }
  bool chance(int pct) { return static_cast<int>(rnd(100)) < pct; }
  uint64_t trans() { return p_.commit_id(); }
  uint64_t dev(const std::string& n) { return *p_.dev_id(n); }

  std::vector<std::string> names(bool writable_only) {
    std::vector<std::string> out;
    for (auto& [n, v] : m_) {
      if (!writable_only || v.writable) out.push_back(n);
    }
    return out;
  }
  std::string pick(const std::vector<std::string>& v) { return v[rnd(v.size())]; }

  // ok: true. kNoSpace: false (nothing changed). An injected error with tolerate_io: false
  // and faulted. Anything else fails the test.
  bool outcome(const Result<void>& r, const std::string& what) {
    if (r.ok()) return true;
    Errc c = r.error().code;
    if (c == Errc::kNoSpace) return false;
    if (tolerate_io && (c == Errc::kIo || c == Errc::kReadOnly)) {
      faulted = true;
      fault = r.error();
      return false;
    }
    ADD_FAILURE() << what << ": " << r.error().to_string();
    faulted = true;
    return false;
  }

  // Reads vol from the pool and checks it holds exactly the model.
  void verify(const std::string& name) {
    if (faulted) return;
    const Vol& v = m_.at(name);
    std::vector<std::byte> buf(v.size);
    if (!outcome(p_.read(dev(name), 0, buf), "read " + name)) return;
    for (uint64_t i = 0; i < v.s.size(); i++) {
      uint32_t got = decode_sector(buf.data() + i * kSector, i);
      ASSERT_EQ(got, v.s[i]) << name << " sector " << i << " after op " << ops.size();
    }
  }
  // After a data op that ran out of space part-way: every sector of [a, b) holds its old
  // value or w; the model takes what is there.
  void resync(const std::string& name, uint64_t a, uint64_t b, uint32_t w) {
    Vol& v = m_.at(name);
    std::vector<std::byte> buf((b - a) * kSector);
    if (!outcome(p_.read(dev(name), a * kSector, buf), "read " + name)) return;
    for (uint64_t i = a; i < b; i++) {
      uint32_t got = decode_sector(buf.data() + (i - a) * kSector, i);
      ASSERT_TRUE(got == v.s[i] || got == w) << name << " sector " << i;
      v.s[i] = got;
    }
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

  // Applies the result of an op: on success the model becomes want; on an injected error
  // the record allows both (data ops: any mix of the two, sector by sector).
  void settle(OpRec& rec, const Result<void>& r, Model want) {
    if (outcome(r, rec.what)) {
      m_ = std::move(want);
    } else if (faulted) {
      if (is_data_op(rec.kind)) {
        rec.mids = {m_, want};
      } else {
        rec.alts = {m_, want};
      }
      m_ = std::move(want);
    }
  }

  void flush_op(OpRec& rec) {
    rec.kind = OpKind::kFlush;
    rec.what = "flush";
    settle(rec, p_.flush(), m_);
  }

  // Pool::background_commit (a server whose clients do not flush): it journals mapping
  // changes without a data sync, so a crash after it may show any sector as any state since
  // the last commit that synced the data (a data op in the model's terms, with those states
  // as the ones a commit inside it may hold).
  void background_op(OpRec& rec) {
    rec.kind = OpKind::kWrite;
    rec.what = "background commit";
    rec.mids = since_sync_;
    auto r = p_.background_commit();
    (void)outcome(r.ok() ? Result<void>{} : Result<void>(r.error()), rec.what);
  }

  void step() {
    OpRec rec;
    rec.trans_before = trans();
    if (rec_) rec_->op = static_cast<int>(ops.size());
    Model before = m_;
    int r = static_cast<int>(rnd(100));
    auto writable = names(true);
    if (m_.size() < 2 || (r < 4 && m_.size() < 8)) {
      do_create(rec);
    } else if (r < 38 && !writable.empty()) {
      do_write(rec, pick(writable));
    } else if (r < 45) {
      flush_op(rec);
    } else if (r < 48) {
      background_op(rec);
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
      flush_op(rec);
    }
    if (rec_) rec_->note_catalog();
    rec.trans_after = trans();
    rec.after = m_;
    // Every commit but the background one syncs the data device first.
    if (rec.what == "background commit" ||
        (is_data_op(rec.kind) && rec.trans_after == rec.trans_before)) {
      since_sync_.push_back(m_);
    } else if (is_data_op(rec.kind)) {
      since_sync_ = {before, m_};  // it committed part way
    } else {
      since_sync_.assign(1, m_);
    }
    if (!faulted && (rec.trans_after != rec.trans_before || m_ != before)) {
      done[rec.what.substr(0, rec.what.find(' '))]++;
    }
    ops.push_back(std::move(rec));
  }

  void do_create(OpRec& rec) {
    rec.kind = OpKind::kCreate;
    std::string name = "v" + std::to_string(next_name_++);
    uint64_t size = (4 + rnd(13)) * kB;
    if (chance(25)) size -= (1 + rnd(kSpb - 1)) * kSector;
    bool prov = chance(30);
    rec.what = "create " + name;
    Model want = m_;
    Vol v;
    v.size = size;
    v.s.assign(size / kSector, 0);
    want[name] = v;
    settle(rec, p_.create_volume(name, size, prov), std::move(want));
  }

  void do_write(OpRec& rec, const std::string& name) {
    rec.kind = OpKind::kWrite;
    auto [a, b] = range(m_.at(name));
    uint32_t w = next_write_++;
    std::vector<std::byte> buf((b - a) * kSector);
    for (uint64_t i = a; i < b; i++) fill_sector(buf.data() + (i - a) * kSector, w, i);
    rec.what = "write " + name + " [" + std::to_string(a) + "," + std::to_string(b) + ")";
    Model want = m_;
    for (uint64_t i = a; i < b; i++) want.at(name).s[i] = w;
    auto r = p_.write(dev(name), a * kSector, buf);
    settle(rec, r, std::move(want));
    if (!r.ok() && !faulted) {
      ASSERT_NO_FATAL_FAILURE(resync(name, a, b, w));
    }
    ASSERT_NO_FATAL_FAILURE(verify(name));
  }

  void do_trim(OpRec& rec, const std::string& name, bool zeroes) {
    rec.kind = zeroes ? OpKind::kZeroes : OpKind::kTrim;
    const Vol& v = m_.at(name);
    auto [a, b] = range(v);
    if (chance(50)) {  // whole blocks, so that something is unmapped
      a = a / kSpb * kSpb;
      b = std::min<uint64_t>(v.s.size(), a + (1 + rnd(3)) * kSpb);
    }
    rec.what = std::string(zeroes ? "write_zeroes " : "trim ") + name + " [" + std::to_string(a) +
               "," + std::to_string(b) + ")";
    Model want = m_;
    auto& ws = want.at(name).s;
    if (zeroes) {
      for (uint64_t i = a; i < b; i++) ws[i] = 0;
      auto r = p_.write_zeroes(dev(name), a * kSector, (b - a) * kSector);
      settle(rec, r, std::move(want));
      if (!r.ok() && !faulted) {
        ASSERT_NO_FATAL_FAILURE(resync(name, a, b, 0));
      }
    } else {
      uint64_t first = (a + kSpb - 1) / kSpb, last = b / kSpb;
      if (b == ws.size()) last = (b + kSpb - 1) / kSpb;
      for (uint64_t i = first * kSpb; i < std::min<uint64_t>(last * kSpb, ws.size()); i++) {
        ws[i] = 0;
      }
      auto r = p_.trim(dev(name), a * kSector, (b - a) * kSector);
      if (r.ok() || r.error().code != Errc::kNoSpace) settle(rec, r, std::move(want));
    }
    ASSERT_NO_FATAL_FAILURE(verify(name));
  }

  void do_provision_zero(OpRec& rec, const std::string& name) {
    rec.kind = OpKind::kProvisionZero;
    auto [a, b] = range(m_.at(name));
    rec.what = "provision_zero " + name;
    Model want = m_;
    for (uint64_t i = a; i < b; i++) want.at(name).s[i] = 0;
    auto r = p_.provision_zero(dev(name), a * kSector, (b - a) * kSector);
    settle(rec, r, std::move(want));
    if (!r.ok() && !faulted) {
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
    settle(rec, r, m_);
    ASSERT_NO_FATAL_FAILURE(verify(name));
  }

  void do_unprovision(OpRec& rec, const std::string& name) {
    rec.kind = OpKind::kUnprovision;
    auto [a, b] = range(m_.at(name));
    rec.what = "unprovision " + name;
    settle(rec, p_.unprovision(name, a * kSector, (b - a) * kSector), m_);
  }

  void do_reserve(OpRec& rec, const std::string& name) {
    rec.kind = OpKind::kReserve;
    rec.what = "reserve " + name;
    settle(rec, p_.reserve(name, rnd(4) * kB), m_);
  }

  void do_snapshot(OpRec& rec, const std::string& origin) {
    rec.kind = OpKind::kSnapshot;
    std::string name = "s" + std::to_string(next_name_++);
    bool writable = chance(60);
    rec.what = "snapshot " + origin + " " + name;
    Model want = m_;
    Vol v = m_.at(origin);
    v.writable = writable;
    v.origin = origin;
    want[name] = v;
    settle(rec, p_.snapshot(origin, name, writable, rnd(3) * kB), std::move(want));
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
    if (c.empty()) return flush_op(rec);
    std::string s = pick(c);
    std::string o = m_.at(s).origin;
    rec.what = "merge " + s + " into " + o;
    Model want = m_;
    want.at(o).s = want.at(s).s;
    want.erase(s);
    settle(rec, p_.merge(s), std::move(want));
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
    if (c.empty()) return flush_op(rec);
    auto [v, s] = c[rnd(c.size())];
    rec.what = "rollback " + v + " to " + s;
    Model want = m_;
    want.at(v).s = want.at(s).s;
    settle(rec, p_.rollback(v, s), std::move(want));
    ASSERT_NO_FATAL_FAILURE(verify(v));
  }

  void do_remove(OpRec& rec, const std::string& name) {
    rec.kind = OpKind::kRemove;
    bool recursive = has_children(name);
    rec.what = "remove " + name;
    Model want = m_;
    std::vector<std::string> gone{name};
    for (size_t i = 0; i < gone.size(); i++) {
      for (auto& [n, v] : m_) {
        if (v.origin == gone[i]) gone.push_back(n);
      }
    }
    for (auto& n : gone) want.erase(n);
    auto r = p_.remove(name, recursive);
    if (!r.ok() && r.error().code == Errc::kNoSpace) ADD_FAILURE() << rec.what << ": ENOSPC";
    settle(rec, r, std::move(want));
  }

  void do_update(OpRec& rec, const std::string& name, const Model& before) {
    rec.kind = OpKind::kUpdate;
    std::string next = name + ".next";
    if (m_.count(next) || name.find('.') != std::string::npos) return flush_op(rec);
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
    auto sa = thin::file_source(old_f, &fa);
    auto sb = thin::file_source(new_f, &fb);
    ASSERT_TRUE(sa.ok() && sb.ok());
    auto d = thin::write_delta(delta_f, *sa, *sb, 4096);
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
    auto r = thin::apply_update(p_, name, delta_f, false);
    Model want = m_;
    want.at(name).s = neu.s;
    if (!r.ok() && r.error().code == Errc::kCorruption && tolerate_io) {
      // A read error while verifying the result: the update is dropped.
      settle(rec, make_error(Errc::kIo, "update verification failed"), std::move(want));
    } else {
      settle(rec, r.ok() ? Result<void>{} : Result<void>(r.error()), std::move(want));
    }
    if (faulted) {
      rec.mids.push_back(before);  // NAME.next removed again
      return;
    }
    ASSERT_FALSE(p_.volume(next).ok()) << "update left " << next << " behind";
    ASSERT_NO_FATAL_FAILURE(verify(name));
  }

  Pool& p_;
  std::mt19937_64 rng_;
  Recorder* rec_;
  std::string tmpdir_;
  Model m_;
  std::vector<Model> since_sync_;  // the model after each op since the last data sync
  uint32_t next_write_ = 1;
  int next_name_ = 1;
};

// Checks a pool that opened at transaction t against the workload's records: it must hold
// exactly the volumes of the state t committed (with the sizes and modes of the model), and
// every sector a value of that state or of a data op after it, up to op last_op (whose
// in-place writes may have reached the device without a commit). "" when it does.
inline std::string check_pool_content(Pool& pool, uint64_t t, const std::vector<OpRec>& O,
                                      uint64_t trans0, const Model& init, int last_op) {
  // The op whose commit produced t, and the states that commit may hold.
  struct Candidate {
    const Model* names;
    std::vector<const Model*> versions;
  };
  std::vector<Candidate> cands;
  int i = -1;
  if (t != trans0) {
    for (size_t j = 0; j < O.size(); j++) {
      if (O[j].trans_after >= t) {
        i = static_cast<int>(j);
        break;
      }
    }
    if (i < 0) return "transaction " + std::to_string(t) + " was never committed";
  }
  const Model& prev = i <= 0 ? init : O[i - 1].after;
  if (i < 0) {
    cands.push_back({&init, {&init}});
  } else if (!is_data_op(O[i].kind) && t == O[i].trans_after) {
    if (O[i].alts.empty()) {
      cands.push_back({&O[i].after, {&O[i].after}});  // the op's final commit: its result
    } else {
      for (auto& m : O[i].alts) cands.push_back({&m, {&m}});
    }
  } else if (!O[i].mids.empty()) {
    cands.push_back({&O[i].mids[0], {}});
    for (auto& m : O[i].mids) cands.back().versions.push_back(&m);
  } else {
    cands.push_back({&prev, {&prev, &O[i].after}});  // a commit inside a data op
  }
  // A journal commit (commit ids not a multiple of 2^24: a batch after a checkpoint) in
  // flight at the crash: its batch may be durable while some of the data it maps is not
  // (pool.h: only blocks that then read as they did before the batch), so any sector may
  // also hold a value of the states since the previous commit.
  std::vector<const Model*> before_batch;
  if (i >= 0 && i == last_op && (t & ((uint64_t{1} << 24) - 1)) != 0) {
    // Back to the op that made the previous commit (the ops after it did not commit).
    const uint64_t prev = i > 0 ? O[i - 1].trans_after : trans0;
    int j = i - 1;
    for (; j >= 0 && O[j].trans_after == prev; j--) before_batch.push_back(&O[j].after);
    if (j < 0) before_batch.push_back(&init);
  }
  std::string first_err;
  for (Candidate& c : cands) {
    for (int j = i + 1; j <= last_op && j < static_cast<int>(O.size()); j++) {
      if (is_data_op(O[j].kind)) c.versions.push_back(&O[j].after);
    }
    c.versions.insert(c.versions.end(), before_batch.begin(), before_batch.end());
    std::string err = [&]() -> std::string {
      std::string ctx = " (transaction " + std::to_string(t) + ", op " + std::to_string(i) + " " +
                        (i >= 0 ? O[i].what : std::string("-")) + ")";
      auto got = pool.list(false);
      std::set<std::string> have, want;
      for (auto& v : got) have.insert(v.name);
      for (auto& [n, v] : *c.names) want.insert(n);
      if (have != want) {
        std::string h, w;
        for (auto& n : have) h += " " + n;
        for (auto& n : want) w += " " + n;
        return "volumes {" + h + " }, expected {" + w + " }" + ctx;
      }
      for (auto& vi : got) {
        const Vol& mv = c.names->at(vi.name);
        if (vi.size_bytes != mv.size || vi.read_only == mv.writable) {
          return "volume " + vi.name + " has the wrong size or mode" + ctx;
        }
        std::vector<const std::vector<uint32_t>*> allowed;
        for (const Model* m : c.versions) {
          auto it = m->find(vi.name);
          if (it != m->end() && it->second.size == mv.size) allowed.push_back(&it->second.s);
        }
        std::vector<std::byte> buf(vi.size_bytes);
        if (auto r = pool.read(vi.dev_id, 0, buf); !r.ok()) {
          return "read " + vi.name + ": " + r.error().to_string();
        }
        for (uint64_t s = 0; s < vi.size_bytes / kSector; s++) {
          uint32_t w = decode_sector(buf.data() + s * kSector, s);
          bool ok = false;
          for (auto* a : allowed) ok = ok || (*a)[s] == w;
          if (!ok) {
            return "volume " + vi.name + " sector " + std::to_string(s) +
                   (w == kGarbage ? " holds bytes no write of it left there"
                                  : " holds write " + std::to_string(w) +
                                        ", not a value of a committed or later state") +
                   ctx;
          }
        }
      }
      return "";
    }();
    if (err.empty()) return "";
    if (first_err.empty()) first_err = err;
  }
  return first_err;
}

// New blocks must never show what free blocks held (say a freed block whose discard was lost,
// or a block whose write failed): a fresh volume gets one sector written in each of its 8
// blocks and must read zeros around them. "" when it does (or when the pool is full).
inline std::string probe_new_blocks(Pool& pool) {
  if (!pool.create_volume("probe", 8 * kB).ok()) return "";
  uint64_t pdev = *pool.dev_id("probe");
  std::vector<std::byte> buf(8 * kB);
  for (uint64_t b = 0; b < 8; b++) {
    uint64_t s = b * kSpb + 1 + b;
    fill_sector(buf.data(), 1, s);
    auto r = pool.write(pdev, s * kSector, std::span(buf).first(kSector));
    if (!r.ok() && r.error().code != Errc::kNoSpace) return "probe write: " + r.error().to_string();
  }
  if (auto r = pool.read(pdev, 0, buf); !r.ok()) return "probe read: " + r.error().to_string();
  for (uint64_t s = 0; s < 8 * kSpb; s++) {
    uint32_t w = decode_sector(buf.data() + s * kSector, s);
    if (w != 0 && !(w == 1 && s % kSpb == 1 + s / kSpb)) {
      return "a new block shows stale bytes at probe sector " + std::to_string(s);
    }
  }
  return "";
}

}  // namespace tp::testing::workload
