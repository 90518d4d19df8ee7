#include "thin/journal.h"

#include <algorithm>
#include <cstring>

#include "pdata/crc32c.h"
#include "pdata/endian.h"

namespace tp::thin {

namespace {

constexpr char kMagic[8] = {'T', 'P', 'J', 'R', 'N', 'L', '0', '1'};
// Batches larger than this are not accepted by replay (a damaged nr_records).
constexpr uint64_t kMaxRecords = 1 << 24;

constexpr size_t kCrcAt = 40;

uint32_t batch_crc(std::span<const std::byte> batch) {
  // The crc field itself counts as zero.
  uint32_t c = pdata::crc32c_raw(0xFFFFFFFFu, batch.first(kCrcAt));
  static constexpr std::byte kZero4[4] = {};
  c = pdata::crc32c_raw(c, kZero4);
  c = pdata::crc32c_raw(c, batch.subspan(kCrcAt + 4));
  return ~c;
}

}  // namespace

uint64_t Journal::default_bytes(uint64_t metadata_bytes) {
  return std::clamp<uint64_t>(metadata_bytes, 1 << 20, 16 << 20) / kAlign * kAlign;
}

Result<void> Journal::create_file(const std::string& path, uint64_t bytes) {
  TP_ASSIGN_OR_RETURN(auto dev, io::create_file(path, bytes));
  // Written zeros (not a sparse file, not fallocated extents): an append then only
  // overwrites data, so its sync does not wait for the file system's own journal.
  std::vector<std::byte> zeros(std::min<uint64_t>(bytes, 1 << 20));
  for (uint64_t off = 0; off < bytes; off += zeros.size()) {
    TP_TRY(dev->write(off, std::span(zeros).first(std::min<uint64_t>(zeros.size(), bytes - off))));
  }
  return dev->flush();
}

Journal::Journal(std::unique_ptr<io::BlockDevice> dev) : dev_(std::move(dev)) {}

uint64_t Journal::batch_bytes(size_t n) {
  return (kHeaderBytes + n * kRecordBytes + kAlign - 1) / kAlign * kAlign;
}

void Journal::reset(const Base& base) {
  base_ = base;
  pos_ = 0;
  seq_ = 0;
}

Result<void> Journal::append(std::span<const JournalRecord> records) {
  const uint64_t bytes = batch_bytes(records.size());
  if (records.empty() || pos_ + bytes > dev_->size()) {
    return make_error(Errc::kInvalidArgument, "journal batch does not fit");
  }
  buf_.assign(bytes, std::byte{0});
  std::byte* p = buf_.data();
  std::memcpy(p, kMagic, 8);
  pdata::store_le64(p + 8, base_.pool_id);
  pdata::store_le64(p + 16, base_.trans_id);
  pdata::store_le32(p + 24, base_.sb_csum);
  pdata::store_le32(p + 28, static_cast<uint32_t>(records.size()));
  pdata::store_le64(p + 32, seq_ + 1);
  std::byte* r = p + kHeaderBytes;
  for (const JournalRecord& rec : records) {
    r[0] = std::byte{rec.kind};
    r[1] = std::byte{rec.flags};
    pdata::store_le32(r + 4, rec.dev);
    pdata::store_le64(r + 8, rec.vb);
    pdata::store_le64(r + 16, rec.block);
    r += kRecordBytes;
  }
  const uint64_t used = kHeaderBytes + records.size() * kRecordBytes;
  pdata::store_le32(p + kCrcAt, batch_crc(std::span(buf_).first(used)));
  TP_TRY(dev_->write(pos_, buf_));
  TP_TRY(dev_->flush());
  pos_ += bytes;
  seq_++;
  return {};
}

Result<Journal::Replayed> Journal::replay(
    const Base& base, const std::function<Result<void>(const JournalRecord&)>& apply) {
  reset(base);
  Replayed out;
  std::vector<std::byte> head(kAlign);
  while (pos_ + kAlign <= dev_->size()) {
    TP_TRY(dev_->read(pos_, head));
    const std::byte* p = head.data();
    if (std::memcmp(p, kMagic, 8) != 0) break;
    if (pdata::load_le64(p + 8) != base.pool_id || pdata::load_le64(p + 16) != base.trans_id ||
        pdata::load_le32(p + 24) != base.sb_csum) {
      break;
    }
    if (pdata::load_le64(p + 32) != seq_ + 1) break;
    const uint64_t n = pdata::load_le32(p + 28);
    if (n == 0 || n > kMaxRecords) break;
    const uint64_t bytes = batch_bytes(n);
    if (pos_ + bytes > dev_->size()) break;
    std::vector<std::byte> batch(bytes);
    std::memcpy(batch.data(), head.data(), kAlign);
    if (bytes > kAlign) {
      TP_TRY(dev_->read(pos_ + kAlign, std::span(batch).subspan(kAlign)));
    }
    const uint64_t used = kHeaderBytes + n * kRecordBytes;
    if (pdata::load_le32(batch.data() + kCrcAt) != batch_crc(std::span(batch).first(used))) break;
    const std::byte* r = batch.data() + kHeaderBytes;
    for (uint64_t i = 0; i < n; i++, r += kRecordBytes) {
      JournalRecord rec;
      rec.kind = static_cast<uint8_t>(r[0]);
      rec.flags = static_cast<uint8_t>(r[1]);
      rec.dev = pdata::load_le32(r + 4);
      rec.vb = pdata::load_le64(r + 8);
      rec.block = pdata::load_le64(r + 16);
      if (rec.kind != JournalRecord::kMap && rec.kind != JournalRecord::kUnmap) {
        return make_error(Errc::kCorruption, "journal record of an unknown kind", pos_);
      }
      TP_TRY(apply(rec));
      out.records++;
    }
    out.batches++;
    pos_ += bytes;
    seq_++;
  }
  return out;
}

}  // namespace tp::thin
