// The metadata journal (thin/journal.h): the batch format on its own, and the pool's use of
// it (journal commits, replay after a crash, checkpoints that empty it).
#include "thin/journal.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "support/forwarding_device.h"
#include "support/pool_workload.h"
#include "support/test_util.h"
#include "thin/pool.h"

namespace tp::thin {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
constexpr uint64_t kB = 64 * 1024;

std::vector<JournalRecord> records(uint32_t dev, uint64_t first, size_t n) {
  std::vector<JournalRecord> out;
  for (size_t i = 0; i < n; i++) {
    JournalRecord r;
    r.kind = i % 3 == 2 ? JournalRecord::kUnmap : JournalRecord::kMap;
    r.flags = i % 5 == 0 ? JournalRecord::kFromReserve : 0;
    r.dev = dev;
    r.vb = first + i;
    r.block = r.kind == JournalRecord::kMap ? 1000 + first + i : 0;
    out.push_back(r);
  }
  return out;
}

bool same(const JournalRecord& a, const JournalRecord& b) {
  return a.kind == b.kind && a.flags == b.flags && a.dev == b.dev && a.vb == b.vb &&
         a.block == b.block;
}

// Replays into a vector.
Result<Journal::Replayed> replay_all(Journal& j, uint64_t trans, uint32_t csum,
                                     std::vector<JournalRecord>* out, uint64_t pool = 42) {
  return j.replay({pool, trans, csum}, [&](const JournalRecord& r) -> Result<void> {
    out->push_back(r);
    return {};
  });
}

TEST(Journal, BatchesReplayInOrderAfterTheirCheckpoint) {
  auto mem = io::make_mem_device(1 << 20);
  io::BlockDevice* dev = mem.get();
  Journal j(std::move(mem));
  j.reset({42, 7, 0xabcd});
  auto a = records(3, 0, 1), b = records(3, 100, 200), c = records(4, 9, 17);
  for (auto* batch : {&a, &b, &c}) ASSERT_TRUE(j.append(*batch).ok());
  EXPECT_EQ(j.batches(), 3u);
  EXPECT_EQ(j.used_bytes(),
            Journal::batch_bytes(1) + Journal::batch_bytes(200) + Journal::batch_bytes(17));
  EXPECT_EQ(Journal::batch_bytes(200) % Journal::kAlign, 0u);

  // A second reader of the same device, as open() after a crash.
  Journal k(std::make_unique<testing::ForwardingDevice>(*dev));
  std::vector<JournalRecord> got;
  auto r = replay_all(k, 7, 0xabcd, &got);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->batches, 3u);
  EXPECT_EQ(r->records, 218u);
  std::vector<JournalRecord> want = a;
  want.insert(want.end(), b.begin(), b.end());
  want.insert(want.end(), c.begin(), c.end());
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); i++) EXPECT_TRUE(same(got[i], want[i])) << i;
  // Appends go on after the replayed batches, continuing the sequence.
  EXPECT_EQ(k.used_bytes(), j.used_bytes());
  EXPECT_EQ(k.batches(), 3u);
}

TEST(Journal, AnotherCheckpointsBatchesAreNotReplayed) {
  auto mem = io::make_mem_device(1 << 20);
  io::BlockDevice* dev = mem.get();
  Journal j(std::move(mem));
  j.reset({42, 7, 0xabcd});
  ASSERT_TRUE(j.append(records(1, 0, 5)).ok());
  struct Other {
    uint64_t trans;
    uint32_t csum;
    uint64_t pool;
  };
  for (Other o :
       {Other{6, 0xabcd, 42}, Other{8, 0xabcd, 42}, Other{7, 0xabce, 42}, Other{7, 0xabcd, 43}}) {
    Journal k(std::make_unique<testing::ForwardingDevice>(*dev));
    std::vector<JournalRecord> got;
    auto r = replay_all(k, o.trans, o.csum, &got, o.pool);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->batches, 0u) << o.trans << " " << o.csum << " " << o.pool;
    EXPECT_TRUE(got.empty());
  }
  // The right one.
  Journal k(std::make_unique<testing::ForwardingDevice>(*dev));
  std::vector<JournalRecord> got;
  auto r = replay_all(k, 7, 0xabcd, &got);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->batches, 1u);
}

TEST(Journal, ATornOrDamagedBatchEndsTheJournal) {
  const uint64_t first = Journal::batch_bytes(3);
  const uint64_t second = Journal::batch_bytes(300);  // spans several 4 KiB blocks
  // Offsets inside the second batch: magic, pool, base, csum, count, sequence, crc, the
  // zero field, a record, the last record byte.
  const uint64_t used2 = Journal::kHeaderBytes + 300 * Journal::kRecordBytes;
  for (uint64_t off : {uint64_t{0}, uint64_t{9}, uint64_t{17}, uint64_t{25}, uint64_t{29},
                       uint64_t{33}, uint64_t{41}, uint64_t{45}, uint64_t{48}, used2 - 1}) {
    auto mem = io::make_mem_device(1 << 20);
    io::BlockDevice* dev = mem.get();
    Journal j(std::move(mem));
    j.reset({42, 1, 2});
    ASSERT_TRUE(j.append(records(1, 0, 3)).ok());
    ASSERT_TRUE(j.append(records(1, 10, 300)).ok());
    ASSERT_TRUE(j.append(records(1, 500, 2)).ok());
    std::byte b;
    ASSERT_TRUE(dev->read(first + off, std::span(&b, 1)).ok());
    b ^= std::byte{0x10};
    ASSERT_TRUE(dev->write(first + off, std::span(&b, 1)).ok());
    Journal k(std::make_unique<testing::ForwardingDevice>(*dev));
    std::vector<JournalRecord> got;
    auto r = replay_all(k, 1, 2, &got);
    ASSERT_TRUE(r.ok()) << off;
    EXPECT_EQ(r->batches, 1u) << off;  // the batches after the damaged one are not taken
    EXPECT_EQ(got.size(), 3u) << off;
    EXPECT_EQ(k.used_bytes(), first) << off;  // and the next append overwrites it
  }
  (void)second;
}

TEST(Journal, BatchesOfAnOlderCheckpointAfterTheNewOnesStopTheScan) {
  auto mem = io::make_mem_device(1 << 20);
  io::BlockDevice* dev = mem.get();
  Journal j(std::move(mem));
  j.reset({42, 1, 2});
  for (int i = 0; i < 5; i++) ASSERT_TRUE(j.append(records(1, i * 10, 4)).ok());
  j.reset({42, 2, 3});  // a checkpoint: the next batches start at offset 0 again
  ASSERT_TRUE(j.append(records(1, 100, 4)).ok());
  Journal k(std::make_unique<testing::ForwardingDevice>(*dev));
  std::vector<JournalRecord> got;
  auto r = replay_all(k, 2, 3, &got);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->batches, 1u);
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].vb, 100u);
}

TEST(Journal, AppendRefusesWhatDoesNotFit) {
  Journal j(io::make_mem_device(2 * Journal::kAlign));
  j.reset({42, 1, 1});
  EXPECT_TRUE(j.fits(100));
  EXPECT_FALSE(j.fits(400));  // 48 + 400 * 24 bytes: three blocks
  EXPECT_EQ(j.append(records(1, 0, 400)).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(j.append({}).error().code, Errc::kInvalidArgument);
  ASSERT_TRUE(j.append(records(1, 0, 100)).ok());
  ASSERT_TRUE(j.append(records(1, 0, 100)).ok());
  EXPECT_FALSE(j.fits(1));
}

// ------------------------------------------------------------------ the pool's journal

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::string read(Pool& p, const std::string& vol, uint64_t off, size_t n) {
  std::string out(n, '\0');
  auto r = p.read(*p.dev_id(vol), off, {reinterpret_cast<std::byte*>(out.data()), n});
  EXPECT_TRUE(r.ok()) << r.error().to_string();
  return out;
}

std::unique_ptr<Pool> make_pool(const std::string& dir) {
  PoolOptions o;
  o.data_bytes = 16ull << 20;
  auto p = Pool::create(dir, o);
  EXPECT_TRUE(p.ok()) << p.error().to_string();
  return p.ok() ? std::move(*p) : nullptr;
}

// The journal's first batch after a checkpoint without needs_check is a checkpoint that
// sets the flag (commit.cc): a write at `off` of vol and a flush, so that the flushes after
// it are journal commits.
void start_journaling(Pool& p, const std::string& vol, uint64_t off) {
  ASSERT_FALSE(p.info().needs_check);
  const uint64_t checkpoints = p.info().checkpoints;
  ASSERT_TRUE(p.write(*p.dev_id(vol), off, bytes_of("starts the journal")).ok());
  ASSERT_TRUE(p.flush().ok());
  ASSERT_EQ(p.info().checkpoints, checkpoints + 1);
  ASSERT_TRUE(p.info().needs_check);
}

TEST(PoolJournal, FlushAfterWritesIsAJournalCommitNotACheckpoint) {
  TempDir tmp;
  const std::string dir = tmp.file("pool");
  auto p = make_pool(dir);
  ASSERT_TRUE(p->create_volume("v", 4 << 20).ok());
  ASSERT_NO_FATAL_FAILURE(start_journaling(*p, "v", 10 * kB));
  EXPECT_EQ(testing::thin_dump(dir + "/metadata")->flags, pdata::kNeedsCheckFlag);
  const uint64_t trans = p->info().trans_id;
  const uint64_t checkpoints = p->info().checkpoints;
  const uint64_t dev = *p->dev_id("v");
  for (int i = 0; i < 4; i++) {
    ASSERT_TRUE(p->write(dev, i * kB + 512, bytes_of("abc")).ok());
    ASSERT_TRUE(p->flush().ok());
  }
  PoolInfo i = p->info();
  EXPECT_EQ(i.trans_id, trans);  // the metadata file did not change
  EXPECT_EQ(i.checkpoints, checkpoints);
  EXPECT_EQ(i.journal_commits, 4u);
  EXPECT_EQ(i.journal_batches, 4u);
  EXPECT_GT(i.journal_used_bytes, 0u);
  // A volume operation checkpoints: the journal starts over.
  ASSERT_TRUE(p->snapshot("v", "s", false).ok());
  i = p->info();
  EXPECT_EQ(i.trans_id, trans + 1);
  EXPECT_EQ(i.journal_used_bytes, 0u);
  EXPECT_EQ(i.journal_batches, 0u);
  EXPECT_TRUE(i.needs_check);  // kept while the pool is open
  ASSERT_TRUE(p->close().ok());
  // The checkpoint at close clears it: the metadata file is the whole pool again.
  EXPECT_EQ(testing::thin_dump(dir + "/metadata")->flags, 0u);
  EXPECT_EQ(testing::thin_check(dir + "/metadata"), "");
}

// A pool that is opened, read and closed, or changed by volume operations only, never
// sets needs_check (no journal batch): a command line tool's open costs no extra commit.
TEST(PoolJournal, OnlyAJournalBatchSetsNeedsCheck) {
  TempDir tmp;
  const std::string dir = tmp.file("pool");
  {
    auto p = make_pool(dir);
    ASSERT_TRUE(p->create_volume("v", 4 << 20).ok());
    ASSERT_TRUE(p->write(*p->dev_id("v"), 0, bytes_of("x")).ok());
    ASSERT_TRUE(p->snapshot("v", "s", false).ok());  // a checkpoint with the write in it
    EXPECT_FALSE(p->info().needs_check);
    ASSERT_TRUE(p->flush().ok());
    EXPECT_FALSE(p->info().needs_check);
    ASSERT_TRUE(p->close().ok());
  }
  const std::string before = testing::read_file(dir + "/metadata");
  auto p = Pool::open(dir);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  EXPECT_FALSE((*p)->info().needs_check);
  ASSERT_TRUE((*p)->close().ok());
  EXPECT_EQ(testing::read_file(dir + "/metadata"), before);  // nothing written
  EXPECT_EQ(testing::thin_check(dir + "/metadata"), "");
}

TEST(PoolJournal, FlushedWritesSurviveACrashAndAreReplayed) {
  TempDir tmp;
  std::string dir = tmp.file("pool");
  std::string pre_crash_metadata;
  {
    auto p = make_pool(dir);
    ASSERT_TRUE(p->create_volume("v", 4 << 20).ok());
    ASSERT_TRUE(p->create_volume("w", 4 << 20).ok());
    ASSERT_TRUE(p->reserve("w", 2 * kB).ok());
    ASSERT_NO_FATAL_FAILURE(start_journaling(*p, "v", 10 * kB));
    const uint64_t v = *p->dev_id("v"), w = *p->dev_id("w");
    ASSERT_TRUE(p->write(v, 0, bytes_of(std::string(kB, 'a'))).ok());     // whole block
    ASSERT_TRUE(p->write(v, 3 * kB + 7, bytes_of("partial")).ok());       // partial, fresh
    ASSERT_TRUE(p->write(w, 5 * kB, bytes_of("from the reserve")).ok());  // drawn from E
    ASSERT_TRUE(p->flush().ok());
    ASSERT_TRUE(p->trim(v, 0, kB).ok());
    ASSERT_TRUE(p->write(v, 2 * kB, bytes_of("second batch")).ok());
    ASSERT_TRUE(p->flush().ok());
    EXPECT_EQ(p->info().journal_batches, 2u);
    pre_crash_metadata = testing::read_file(dir + "/metadata");
    // The process dies: no close (the destructor neither commits nor checkpoints).
  }
  // The metadata file alone is the last checkpoint: consistent, without those writes, and
  // it says that a journal may follow it.
  EXPECT_EQ(testing::thin_check(dir + "/metadata"), "");
  auto dump = testing::thin_dump(dir + "/metadata");
  ASSERT_TRUE(dump.has_value());
  EXPECT_EQ(dump->flags, pdata::kNeedsCheckFlag);
  size_t before = 0;
  for (const auto& d : dump->devices) before += d.mappings.size();
  EXPECT_EQ(before, 1u);  // the block that started the journal
  auto p = Pool::open(dir);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  PoolInfo i = (*p)->info();
  EXPECT_EQ(i.journal_replayed_batches, 2u);
  EXPECT_EQ(i.journal_replayed_records, 5u);  // map, map, map, unmap, map
  EXPECT_EQ(testing::read_file(dir + "/metadata"), pre_crash_metadata);  // open wrote nothing
  EXPECT_EQ(read(**p, "v", 0, 3), std::string(3, '\0'));                 // trimmed
  EXPECT_EQ(read(**p, "v", 3 * kB + 7, 7), "partial");
  EXPECT_EQ(read(**p, "v", 2 * kB, 12), "second batch");
  EXPECT_EQ(read(**p, "w", 5 * kB, 16), "from the reserve");
  auto vols = (*p)->list();
  for (const VolumeInfo& vi : vols) {
    if (vi.name == "w") {
      EXPECT_EQ(vi.explicit_reserve_blocks, 1u);  // one of two drawn
    }
  }
  auto c = (*p)->check();  // checkpoints first: the metadata file then holds everything
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  EXPECT_TRUE(c->ok()) << c->damage.front();
  EXPECT_EQ((*p)->info().journal_used_bytes, 0u);
  EXPECT_EQ(testing::thin_check(dir + "/metadata"), "");
  ASSERT_TRUE((*p)->close().ok());
  dump = testing::thin_dump(dir + "/metadata");
  ASSERT_TRUE(dump.has_value());
  EXPECT_EQ(dump->flags, 0u);
  size_t mappings = 0;
  for (const auto& d : dump->devices) mappings += d.mappings.size();
  EXPECT_EQ(mappings, 4u);
}

TEST(PoolJournal, AJournalBesideOtherMetadataIsIgnored) {
  // Pool b's metadata is at the same transaction as pool a's (another checkpoint: other
  // mappings), but the journal beside it is a's.
  TempDir tmp;
  std::string a = tmp.file("a"), b = tmp.file("b");
  for (const std::string& d : {a, b}) {
    auto p = make_pool(d);
    ASSERT_TRUE(p->create_volume("v", 4 << 20).ok());
    ASSERT_TRUE(p->write(*p->dev_id("v"), d == a ? 0 : 3 * kB, bytes_of("some bytes")).ok());
    if (d == a) {
      ASSERT_TRUE(p->flush().ok());  // the checkpoint that starts the journal
      ASSERT_TRUE(p->write(*p->dev_id("v"), kB, bytes_of("journaled in a")).ok());
      ASSERT_TRUE(p->flush().ok());
      ASSERT_EQ(p->info().journal_batches, 1u);
    } else {
      ASSERT_TRUE(p->checkpoint().ok());
    }
    ASSERT_EQ(p->info().trans_id, 2u);  // (skip the close: a keeps its journal)
  }
  fs::copy_file(a + "/journal", b + "/journal", fs::copy_options::overwrite_existing);
  auto p = Pool::open(b);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  EXPECT_EQ((*p)->info().journal_replayed_batches, 0u);
  EXPECT_EQ(read(**p, "v", kB, 14), std::string(14, '\0'));
  auto c = (*p)->check();
  ASSERT_TRUE(c.ok() && c->ok());
  ASSERT_TRUE((*p)->close().ok());
  EXPECT_EQ(testing::thin_check(b + "/metadata"), "");
}

// Open options that log the data device's and the journal's calls to rec.
Pool::OpenOptions recording_data_and_journal(testing::workload::Recorder& rec) {
  using testing::workload::Dev;
  using testing::workload::RecordingDevice;
  Pool::OpenOptions oo;
  oo.wrap_data = [&rec](std::unique_ptr<io::BlockDevice> d) -> std::unique_ptr<io::BlockDevice> {
    return std::make_unique<RecordingDevice>(std::move(d), Dev::kData, rec);
  };
  oo.wrap_journal = [&rec](std::unique_ptr<io::BlockDevice> d) -> std::unique_ptr<io::BlockDevice> {
    return std::make_unique<RecordingDevice>(std::move(d), Dev::kJournal, rec);
  };
  return oo;
}

// A closed pool: volume v whose block 0 holds 'o' and is shared with snapshot s.
void make_pool_with_a_shared_block(const std::string& dir) {
  auto p = make_pool(dir);
  ASSERT_TRUE(p->create_volume("v", 4 << 20).ok());
  ASSERT_TRUE(p->write(*p->dev_id("v"), 0, bytes_of(std::string(kB, 'o'))).ok());
  ASSERT_TRUE(p->snapshot("v", "s", false).ok());
  ASSERT_TRUE(p->close().ok());
}

// How many calls of this kind to this device the log holds from entry `from` on.
size_t count_calls(const testing::workload::Recorder& rec, size_t from, testing::workload::Dev dev,
                   testing::workload::Kind kind) {
  size_t n = 0;
  for (size_t i = from; i < rec.log.size(); i++)
    n += rec.log[i].dev == dev && rec.log[i].kind == kind;
  return n;
}

TEST(PoolJournal, CopyOnWriteBatchIsWrittenOnlyAfterTheDataSync) {
  // A copy-on-write maps a block whose bytes must be durable first (the old content it
  // carries); a write into a block known to be a hole may go to the journal in parallel.
  TempDir tmp;
  std::string dir = tmp.file("pool");
  ASSERT_NO_FATAL_FAILURE(make_pool_with_a_shared_block(dir));
  using namespace testing::workload;  // NOLINT: Recorder, Entry, Dev, Kind
  Recorder rec(dir + "/catalog");
  Pool::OpenOptions oo = recording_data_and_journal(rec);
  auto p = Pool::open(dir, oo);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  ASSERT_NO_FATAL_FAILURE(start_journaling(**p, "v", 10 * kB));
  const uint64_t v = *(*p)->dev_id("v");
  auto journal_write_before_data_flush = [&](size_t from) {
    // Entries from `from`: is the journal written before the data device's flush?
    size_t data_flush = rec.log.size(), journal_write = rec.log.size();
    for (size_t i = from; i < rec.log.size(); i++) {
      const Entry& e = rec.log[i];
      if (e.dev == Dev::kData && e.kind == Kind::kFlush && data_flush == rec.log.size()) {
        data_flush = i;
      }
      if (e.dev == Dev::kJournal && e.kind == Kind::kWrite && journal_write == rec.log.size()) {
        journal_write = i;
      }
    }
    EXPECT_LT(journal_write, rec.log.size());
    EXPECT_LT(data_flush, rec.log.size());
    return journal_write < data_flush;
  };
  size_t mark = rec.log.size();
  ASSERT_TRUE((*p)->write(v, 100, bytes_of("cow")).ok());  // shared with s: copy-on-write
  ASSERT_TRUE((*p)->flush().ok());
  EXPECT_FALSE(journal_write_before_data_flush(mark));
  // Parallel journaling may put the journal write before or after the data flush; only the
  // dependent order is promised. Check the batch was written at all.
  mark = rec.log.size();
  ASSERT_TRUE((*p)->write(v, 5 * kB + 100, bytes_of("hole")).ok());  // fresh block, a hole
  ASSERT_TRUE((*p)->flush().ok());
  EXPECT_GT(count_calls(rec, mark, Dev::kJournal, Kind::kWrite), 0u);
  ASSERT_TRUE((*p)->close().ok());
  EXPECT_EQ(testing::thin_check(dir + "/metadata"), "");
}

// The background commit (a server whose clients do not flush): the mapping changes that need
// no data sync go to the journal with no data sync; a copy-on-write and what follows it wait
// for a FLUSH. After a crash the journaled ones are replayed, the rest reads as before.
TEST(PoolJournal, BackgroundCommitJournalsWithoutADataSync) {
  TempDir tmp;
  std::string dir = tmp.file("pool");
  ASSERT_NO_FATAL_FAILURE(make_pool_with_a_shared_block(dir));
  using namespace testing::workload;  // NOLINT: Recorder, Entry, Dev, Kind
  Recorder rec(dir + "/catalog");
  Pool::OpenOptions oo = recording_data_and_journal(rec);
  {
    auto p = Pool::open(dir, oo);
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    ASSERT_NO_FATAL_FAILURE(start_journaling(**p, "v", 10 * kB));
    const uint64_t v = *(*p)->dev_id("v");
    ASSERT_TRUE((*p)->write(v, 5 * kB, bytes_of("five")).ok());  // fresh blocks: holes
    ASSERT_TRUE((*p)->write(v, 6 * kB, bytes_of("six")).ok());
    ASSERT_TRUE((*p)->write(v, 100, bytes_of("cow")).ok());       // copy-on-write
    ASSERT_TRUE((*p)->write(v, 7 * kB, bytes_of("seven")).ok());  // after the copy
    const size_t mark = rec.log.size();
    auto again = (*p)->background_commit();
    ASSERT_TRUE(again.ok()) << again.error().to_string();
    EXPECT_TRUE(*again);  // the copy and the write after it wait for a FLUSH
    EXPECT_EQ(count_calls(rec, mark, Dev::kData, Kind::kFlush), 0u);
    EXPECT_EQ(count_calls(rec, mark, Dev::kJournal, Kind::kWrite), 1u);
    PoolInfo i = (*p)->info();
    EXPECT_EQ(i.background_commits, 1u);
    EXPECT_EQ(i.journal_batches, 1u);
    EXPECT_EQ(i.journal_commits, 0u);
    // Nothing more that needs no data sync: a second call appends nothing.
    again = (*p)->background_commit();
    ASSERT_TRUE(again.ok());
    EXPECT_TRUE(*again);
    EXPECT_EQ((*p)->info().journal_batches, 1u);
    // The process dies: no flush, no close.
  }
  EXPECT_EQ(testing::thin_check(dir + "/metadata"), "");
  auto p = Pool::open(dir);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  EXPECT_EQ((*p)->info().journal_replayed_records, 2u);
  EXPECT_EQ(read(**p, "v", 5 * kB, 4), "five");  // the page cache kept the data here
  EXPECT_EQ(read(**p, "v", 6 * kB, 3), "six");
  EXPECT_EQ(read(**p, "v", 100, 3), "ooo");                    // the copy was not journaled
  EXPECT_EQ(read(**p, "v", 7 * kB, 5), std::string(5, '\0'));  // nor what came after it
  EXPECT_EQ(read(**p, "s", 100, 3), "ooo");
  auto c = (*p)->check();
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  EXPECT_TRUE(c->ok());
  ASSERT_TRUE((*p)->close().ok());
  EXPECT_EQ(testing::thin_check(dir + "/metadata"), "");
}

}  // namespace
}  // namespace tp::thin
