// Randomized test of the space rules against a model (SEMANTICS.md "The space invariant"):
// provision, reserve, snapshots with a budget, writes from several volumes, trims, merge,
// rollback, remove, and runs of writes that fill the pool. After every step the engine's
// free and reserved counts equal the model's, the invariant holds, and ENOSPC happens
// exactly when the model says it must -- never for a write inside a guarantee. Merge,
// rollback and remove (which free blocks and change reservations in one step) are refused
// exactly when the state after them would break reserved <= free, and they run on a full
// pool too.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "support/test_util.h"
#include "thin/pool.h"

namespace tp::thin {
namespace {

constexpr uint64_t kB = 64 * 1024;
constexpr uint64_t kPoolBlocks = 160;

std::span<const std::byte> bytes_of(const std::string& s, size_t n) {
  return {reinterpret_cast<const std::byte*>(s.data()), n};
}

struct MVol {
  uint64_t size = 0;                  // blocks
  std::map<uint64_t, uint64_t> maps;  // vb -> model block id
  std::set<uint64_t> guar;
  uint64_t e = 0;
  bool ro = false;
  std::string origin;
};

class SpaceModel {
 public:
  std::map<std::string, MVol> vols;
  std::map<uint64_t, int> ref;  // block id -> references
  uint64_t next_id = 1;

  uint64_t free() const { return kPoolBlocks - ref.size(); }
  bool shared(const MVol& v, uint64_t vb) const {
    auto it = v.maps.find(vb);
    return it != v.maps.end() && ref.at(it->second) > 1;
  }
  uint64_t g(const MVol& v) const {
    uint64_t n = 0;
    for (uint64_t vb : v.guar) n += !v.maps.count(vb) || shared(v, vb);
    return n;
  }
  uint64_t reserved() const {
    uint64_t r = 0;
    for (auto& [n, v] : vols) r += g(v) + v.e;
    return r;
  }
  uint64_t unreserved() const { return free() - reserved(); }
  void unref(uint64_t id) {
    if (--ref[id] == 0) ref.erase(id);
  }
  void map_new(MVol& v, uint64_t vb) {
    if (v.maps.count(vb)) unref(v.maps[vb]);
    v.maps[vb] = next_id;
    ref[next_id++] = 1;
  }
  void unmap(MVol& v, uint64_t vb) {
    auto it = v.maps.find(vb);
    if (it == v.maps.end()) return;
    unref(it->second);
    v.maps.erase(it);
  }
  void copy_maps(MVol& dst, const MVol& src) {
    for (auto& [vb, id] : dst.maps) unref(id);
    dst.maps.clear();
    for (auto& [vb, id] : src.maps) {
      if (vb >= dst.size) continue;
      dst.maps[vb] = id;
      ref[id]++;
    }
  }
};

TEST(SpaceModelTest, RandomOperationsFollowTheSpaceRules) {
  testing::TempDir tmp;
  std::string dir = tmp.file("pool");
  PoolOptions o;
  o.data_bytes = kPoolBlocks * kB;
  auto pr = Pool::create(dir, o);
  ASSERT_TRUE(pr.ok());
  auto pool = std::move(*pr);
  SpaceModel m;
  std::mt19937_64 rng(77);
  // At least 4000 even in the sanitizer pass: fewer ops may never reach a refused rollback.
  const uint64_t ops = std::max<uint64_t>(testing::scaled(20000), 4000);
  uint64_t enospc = 0, guaranteed_writes = 0, merges = 0, rollbacks = 0, next_name = 0;
  uint64_t on_full_pool = 0;  // merge/rollback/remove with 0 unreserved
  // Refused on their after-state: merges and removes never are (SEMANTICS.md).
  uint64_t refused_merges = 0, refused_rollbacks = 0, refused_removes = 0;
  auto pick = [&](bool writable_only = false) -> std::string {
    std::vector<std::string> c;
    for (auto& [n, v] : m.vols) {
      if (!writable_only || !v.ro) c.push_back(n);
    }
    return c.empty() ? "" : c[rng() % c.size()];
  };
  auto expect = [&](const Result<void>& r, bool want_ok, const char* what, uint64_t step) {
    if (want_ok) {
      ASSERT_TRUE(r.ok()) << what << " step " << step << ": " << r.error().to_string();
    } else {
      ASSERT_FALSE(r.ok()) << what << " step " << step << " should fail with ENOSPC";
      ASSERT_EQ(r.error().code, Errc::kNoSpace) << what << ": " << r.error().to_string();
      ASSERT_TRUE(r.error().space.present()) << what << ": " << r.error().to_string();
      enospc++;
    }
  };
  // One write of a block (whole or in part), checked against the model; false: ENOSPC.
  std::string blk(kB, 'd');
  auto write_one = [&](const std::string& n, uint64_t vb, bool partial, uint64_t step) {
    MVol& v = m.vols[n];
    bool needs_block = !v.maps.count(vb) || m.shared(v, vb);
    bool in_g = v.guar.count(vb) != 0;
    bool fits = !needs_block || in_g || v.e > 0 || m.unreserved() > 0;
    auto w = partial ? pool->write(*pool->dev_id(n), vb * kB + 1000, bytes_of(blk, 3000))
                     : pool->write(*pool->dev_id(n), vb * kB, bytes_of(blk, kB));
    expect(w, fits, in_g ? "guaranteed write" : "write", step);
    guaranteed_writes += in_g;
    if (fits && needs_block) {
      if (!in_g && v.e > 0) v.e--;
      m.map_new(v, vb);
    }
    return fits;
  };
  for (uint64_t step = 0; step < ops; step++) {
    int op = static_cast<int>(rng() % 100);
    if (m.vols.size() < 2 || (op < 4 && m.vols.size() < 6)) {
      std::string n = "v" + std::to_string(next_name++);
      uint64_t size = 8 + rng() % 56;
      bool prov = rng() % 3 == 0;
      bool fits = !prov || size <= m.unreserved();
      expect(pool->create_volume(n, size * kB, prov), fits, "create", step);
      if (fits) {
        MVol v;
        v.size = size;
        if (prov) {
          for (uint64_t vb = 0; vb < size; vb++) {
            v.guar.insert(vb);
            m.map_new(v, vb);
          }
        }
        m.vols[n] = v;
      }
    } else if (op < 9) {
      std::string on = pick();
      if (m.vols.size() >= 8) continue;
      std::string n = "s" + std::to_string(next_name++);
      uint64_t r = rng() % 3 == 0 ? rng() % 16 : 0;
      bool writable = rng() % 4 != 0;
      MVol& ov = m.vols[on];
      uint64_t need = (ov.guar.size() - m.g(ov)) + r;
      bool fits = need <= m.unreserved();
      expect(pool->snapshot(on, n, writable, r * kB), fits, "snapshot", step);
      if (fits) {
        MVol s;
        s.size = ov.size;
        s.e = r;
        s.ro = !writable;
        s.origin = on;
        m.copy_maps(s, ov);
        m.vols[n] = s;
      }
    } else if (op < 12) {
      std::string n = pick(true);
      if (n.empty()) continue;
      MVol& v = m.vols[n];
      uint64_t a = rng() % v.size, b = std::min(v.size, a + 1 + rng() % 8);
      uint64_t need = 0;
      for (uint64_t vb = a; vb < b; vb++) {
        if (v.guar.count(vb)) continue;
        need += !v.maps.count(vb) || m.shared(v, vb);
      }
      uint64_t unres = m.unreserved();
      bool fits = need <= unres + v.e;
      expect(pool->provision(n, a * kB, (b - a) * kB), fits, "provision", step);
      if (fits) {
        v.e -= need > unres ? need - unres : 0;
        for (uint64_t vb = a; vb < b; vb++) {
          v.guar.insert(vb);
          if (!v.maps.count(vb)) m.map_new(v, vb);
        }
      }
    } else if (op < 14) {
      std::string n = pick();
      MVol& v = m.vols[n];
      uint64_t want = rng() % 12;
      bool fits = want <= v.e || want - v.e <= m.unreserved();
      expect(pool->reserve(n, want * kB), fits, "reserve", step);
      if (fits) v.e = want;
    } else if (op < 16) {
      // Merge a snapshot that has an origin and no snapshots of its own.
      std::vector<std::string> c;
      for (auto& [n, v] : m.vols) {
        bool kids = false;
        for (auto& [n2, v2] : m.vols) kids |= v2.origin == n;
        if (!v.origin.empty() && m.vols.count(v.origin) && !kids) c.push_back(n);
      }
      if (c.empty()) continue;
      std::string sn = c[rng() % c.size()];
      SpaceModel after = m;
      after.copy_maps(after.vols[after.vols[sn].origin], after.vols[sn]);
      for (auto& [vb, id] : after.vols[sn].maps) after.unref(id);
      after.vols.erase(sn);
      bool fits = after.reserved() <= after.free();
      on_full_pool += m.unreserved() == 0;
      expect(pool->merge(sn), fits, "merge", step);
      refused_merges += !fits;
      if (fits) {
        m = std::move(after);
        merges++;
      }
    } else if (op < 18) {
      std::string n = pick(true), s = pick();
      if (n.empty() || n == s) continue;
      // Decided on the state after it: v takes s's blocks (sharing them), v's old blocks
      // are freed where no one else maps them.
      SpaceModel after = m;
      after.copy_maps(after.vols[n], after.vols[s]);
      bool fits = after.reserved() <= after.free();
      on_full_pool += m.unreserved() == 0;
      expect(pool->rollback(n, s), fits, "rollback", step);
      refused_rollbacks += !fits;
      if (fits) {
        m = std::move(after);
        rollbacks++;
      }
    } else if (op < 21) {
      std::string n = pick();
      bool kids = false;
      for (auto& [n2, v2] : m.vols) kids |= v2.origin == n;
      on_full_pool += !kids && m.unreserved() == 0;
      auto r = pool->remove(n, false);
      if (kids) {
        ASSERT_EQ(r.error().code, Errc::kBusy);
        continue;
      }
      SpaceModel after = m;
      for (auto& [vb, id] : after.vols[n].maps) after.unref(id);
      after.vols.erase(n);
      bool fits = after.reserved() <= after.free();
      expect(r, fits, "remove", step);
      refused_removes += !fits;
      if (!fits) continue;
      m = std::move(after);
    } else if (op < 35) {
      std::string n = pick(true);
      if (n.empty()) continue;
      MVol& v = m.vols[n];
      uint64_t a = rng() % v.size, b = std::min(v.size, a + 1 + rng() % 6);
      ASSERT_TRUE(pool->trim(*pool->dev_id(n), a * kB, (b - a) * kB).ok());
      for (uint64_t vb = a; vb < b; vb++) m.unmap(v, vb);
    } else if (op < 37) {
      ASSERT_TRUE(pool->flush().ok());
    } else if (op < 39) {
      // Fill the pool: whole-block writes into one volume until one is refused.
      std::string n = pick(true);
      if (n.empty()) continue;
      for (int i = 0; i < 64; i++) {
        bool ok = write_one(n, rng() % m.vols[n].size, false, step);
        if (::testing::Test::HasFatalFailure() || !ok) break;
      }
    } else {
      std::string n = pick(true);
      if (n.empty()) continue;
      write_one(n, rng() % m.vols[n].size, rng() % 2 == 0, step);
    }
    if (::testing::Test::HasFatalFailure()) return;
    PoolInfo i = pool->info();
    ASSERT_EQ(i.free_blocks, m.free()) << "step " << step;
    ASSERT_EQ(i.reserved_blocks, m.reserved()) << "step " << step;
    ASSERT_LE(i.reserved_blocks, i.free_blocks) << "step " << step << " op " << op;
  }
  auto c = pool->check();
  ASSERT_TRUE(c.ok() && c->ok()) << (c.ok() ? c->damage.front() : c.error().to_string());
  ASSERT_TRUE(pool->close().ok());
  EXPECT_EQ(testing::thin_check(dir + "/metadata"), "");
  std::printf(
      "space model: %llu ops, %llu ENOSPC as predicted, %llu guaranteed writes, "
      "%llu merges, %llu rollbacks, %llu merges/rollbacks/removes on a full pool, %llu "
      "rollbacks refused on their after-state\n",
      static_cast<unsigned long long>(ops), static_cast<unsigned long long>(enospc),
      static_cast<unsigned long long>(guaranteed_writes), static_cast<unsigned long long>(merges),
      static_cast<unsigned long long>(rollbacks), static_cast<unsigned long long>(on_full_pool),
      static_cast<unsigned long long>(refused_rollbacks));
  EXPECT_GT(enospc, 0u);
  EXPECT_GT(on_full_pool, 0u);
  EXPECT_GT(refused_rollbacks, 0u);
  EXPECT_EQ(refused_merges, 0u);
  EXPECT_EQ(refused_removes, 0u);
}

}  // namespace
}  // namespace tp::thin
