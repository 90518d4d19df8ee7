#include "pdata/thin_metadata.h"

#include <algorithm>
#include <cstring>

namespace tp::pdata {

namespace {
const ValueType kDetailsVt{kDeviceDetailsSize, nullptr, nullptr, nullptr};

void encode_details(const DeviceDetails& d, std::byte* p) {
  store_le64(p, d.mapped_blocks);
  store_le64(p + 8, d.transaction_id);
  store_le32(p + 16, d.creation_time);
  store_le32(p + 20, d.snapshotted_time);
}
DeviceDetails decode_details(const std::byte* p) {
  return {load_le64(p), load_le64(p + 8), load_le32(p + 16), load_le32(p + 20)};
}
}  // namespace

const ValueType& ThinMetadata::details_vt() {
  return kDetailsVt;
}

ThinMetadata::~ThinMetadata() = default;

Result<void> ThinMetadata::mapping_inc(void* ctx, const std::byte* v) {
  auto* md = static_cast<ThinMetadata*>(ctx);
  return md->dsm_->inc(bt_block(load_le64(v)));
}

Result<void> ThinMetadata::mapping_dec(void* ctx, const std::byte* v) {
  auto* md = static_cast<ThinMetadata*>(ctx);
  return md->dec_data_block(bt_block(load_le64(v)));
}

Result<void> ThinMetadata::top_inc(void* ctx, const std::byte* v) {
  auto* md = static_cast<ThinMetadata*>(ctx);
  return md->tm_->inc(load_le64(v));
}

Result<void> ThinMetadata::dec_data_block(uint64_t b) {
  TP_ASSIGN_OR_RETURN(uint32_t left, changed(dsm_->dec(b)));
  if (left == 0) {
    freed_.push_back(b);
  }
  return {};
}

Result<std::unique_ptr<ThinMetadata>> ThinMetadata::format(io::BlockDevice& dev,
                                                           uint32_t data_block_sectors,
                                                           uint64_t nr_data_blocks,
                                                           size_t cache_blocks) {
  if (data_block_sectors < kMinDataBlockSectors || data_block_sectors > kMaxDataBlockSectors ||
      data_block_sectors % kMinDataBlockSectors != 0) {
    return make_error(Errc::kInvalidArgument,
                      "data block size must be 64 KiB..1 GiB, a multiple of 64 KiB");
  }
  if (nr_data_blocks > kMaxDataBlock) {
    return make_error(Errc::kInvalidArgument, "too many data blocks for the format");
  }
  uint64_t nr_meta = std::min<uint64_t>(dev.size() / kBlockSize, kMaxMetadataBlocks);
  if (nr_meta < 64) {
    return make_error(Errc::kInvalidArgument, "metadata device too small (at least 256 KiB)");
  }
  std::unique_ptr<ThinMetadata> md(new ThinMetadata());
  md->bm_ = std::make_unique<BlockManager>(dev, cache_blocks);
  md->msm_ = SpaceMap::create(SpaceMap::Kind::kMetadata, nr_meta);
  md->tm_ = std::make_unique<TransactionManager>(*md->bm_, *md->msm_);
  TP_TRY(md->msm_->set_count(kSuperblockLocation, 1));
  md->dsm_ = SpaceMap::create(SpaceMap::Kind::kData, nr_data_blocks);
  md->dsm_->bind(md->tm_.get());
  md->mapping_vt_ = ValueType{8, md.get(), &ThinMetadata::mapping_inc, &ThinMetadata::mapping_dec};
  md->top_vt_ = ValueType{8, md.get(), &ThinMetadata::top_inc, nullptr};
  Superblock& sb = md->sb_;
  sb = Superblock{};
  sb.data_block_size = data_block_sectors;
  sb.metadata_nr_blocks = nr_meta;
  TP_ASSIGN_OR_RETURN(sb.data_mapping_root, Btree::create_empty(*md->tm_, md->top_vt_));
  TP_ASSIGN_OR_RETURN(sb.device_details_root, Btree::create_empty(*md->tm_, kDetailsVt));
  TP_TRY(md->commit());
  return md;
}

Result<std::unique_ptr<ThinMetadata>> ThinMetadata::open(io::BlockDevice& dev,
                                                         size_t cache_blocks) {
  if (dev.size() < kBlockSize) {
    return make_error(Errc::kCorruption, "metadata file is too small to hold a superblock", 0);
  }
  std::unique_ptr<ThinMetadata> md(new ThinMetadata());
  md->bm_ = std::make_unique<BlockManager>(dev, cache_blocks);
  {
    TP_ASSIGN_OR_RETURN(ReadRef r, md->bm_->read_lock(kSuperblockLocation, kSuperblockValidator));
    TP_ASSIGN_OR_RETURN(md->sb_, decode_superblock(r.data()));
    md->sb_csum_ = load_le32(r.data().data());
  }
  const Superblock& sb = md->sb_;
  uint64_t dev_blocks = dev.size() / kBlockSize;
  if (sb.metadata_nr_blocks > dev_blocks) {
    return make_error(Errc::kCorruption, "metadata file is shorter than the superblock says", 0);
  }
  if (sb.metadata_sm_root.nr_blocks != sb.metadata_nr_blocks) {
    return make_error(Errc::kCorruption, "metadata space map size disagrees with superblock", 0);
  }
  for (uint64_t root : {sb.data_mapping_root, sb.device_details_root,
                        sb.metadata_sm_root.bitmap_root, sb.metadata_sm_root.ref_count_root,
                        sb.data_sm_root.bitmap_root, sb.data_sm_root.ref_count_root}) {
    if (root == 0 || root >= sb.metadata_nr_blocks) {
      return make_error(Errc::kCorruption, "superblock root points outside the metadata", 0);
    }
  }
  TP_ASSIGN_OR_RETURN(md->msm_,
                      SpaceMap::open(SpaceMap::Kind::kMetadata, *md->bm_, sb.metadata_sm_root));
  md->tm_ = std::make_unique<TransactionManager>(*md->bm_, *md->msm_);
  TP_ASSIGN_OR_RETURN(md->dsm_, SpaceMap::open(SpaceMap::Kind::kData, *md->bm_, sb.data_sm_root));
  md->dsm_->bind(md->tm_.get());
  md->mapping_vt_ = ValueType{8, md.get(), &ThinMetadata::mapping_inc, &ThinMetadata::mapping_dec};
  md->top_vt_ = ValueType{8, md.get(), &ThinMetadata::top_inc, nullptr};
  TP_TRY(md->load_devices());
  return md;
}

Result<void> ThinMetadata::load_devices() {
  TransactionManager& tm = *tm_;
  TP_TRY(Btree::walk(tm, sb_.device_details_root, kDetailsVt, 0, ~uint64_t{0},
                     [&](uint64_t key, const std::byte* v) -> Result<bool> {
                       devices_[key].details = decode_details(v);
                       return true;
                     }));
  size_t with_root = 0;
  Result<void> bad = {};
  TP_TRY(Btree::walk(tm, sb_.data_mapping_root, top_vt_, 0, ~uint64_t{0},
                     [&](uint64_t key, const std::byte* v) -> Result<bool> {
                       auto it = devices_.find(key);
                       if (it == devices_.end()) {
                         bad = make_error(Errc::kCorruption,
                                          "mapping tree has a device with no details",
                                          sb_.data_mapping_root);
                         return false;
                       }
                       it->second.root = load_le64(v);
                       with_root++;
                       return true;
                     }));
  TP_TRY(bad);
  if (with_root != devices_.size()) {
    return make_error(Errc::kCorruption, "device details for a device with no mappings",
                      sb_.device_details_root);
  }
  return {};
}

std::vector<uint64_t> ThinMetadata::devices() const {
  std::vector<uint64_t> out;
  for (auto& [id, st] : devices_) out.push_back(id);
  return out;
}

Result<ThinMetadata::DevState*> ThinMetadata::dev_state(uint64_t dev) {
  auto it = devices_.find(dev);
  if (it == devices_.end()) {
    return make_error(Errc::kNotFound, "no such thin device", dev);
  }
  return &it->second;
}

Result<DeviceDetails> ThinMetadata::details(uint64_t dev) const {
  auto it = devices_.find(dev);
  if (it == devices_.end()) {
    return make_error(Errc::kNotFound, "no such thin device", dev);
  }
  return it->second.details;
}

Result<uint64_t> ThinMetadata::device_root(uint64_t dev) const {
  auto it = devices_.find(dev);
  if (it == devices_.end()) {
    return make_error(Errc::kNotFound, "no such thin device", dev);
  }
  return it->second.root;
}

Result<void> ThinMetadata::create_thin(uint64_t dev) {
  if (dev > kMaxDevId) {
    return make_error(Errc::kInvalidArgument, "thin device id too large", dev);
  }
  if (devices_.count(dev)) {
    return make_error(Errc::kExists, "thin device already exists", dev);
  }
  TP_ASSIGN_OR_RETURN(uint64_t root, changed(Btree::create_empty(*tm_, mapping_vt_)));
  DevState st;
  st.root = root;
  st.details = DeviceDetails{0, sb_.trans_id, sb_.time, sb_.time};
  st.root_changed = st.details_changed = true;
  devices_[dev] = st;
  return {};
}

Result<void> ThinMetadata::create_snap(uint64_t dev, uint64_t origin) {
  if (dev > kMaxDevId) {
    return make_error(Errc::kInvalidArgument, "thin device id too large", dev);
  }
  if (devices_.count(dev)) {
    return make_error(Errc::kExists, "thin device already exists", dev);
  }
  if (sb_.time >= kMaxTime) {
    return make_error(Errc::kNoSpace, "pool snapshot clock exhausted");
  }
  TP_ASSIGN_OR_RETURN(DevState * o, dev_state(origin));
  TP_TRY(changed(tm_->inc(o->root)));
  sb_.time++;
  o->details.snapshotted_time = sb_.time;
  o->details_changed = true;
  DevState st;
  st.root = o->root;
  st.details = DeviceDetails{o->details.mapped_blocks, sb_.trans_id, sb_.time, sb_.time};
  st.root_changed = st.details_changed = true;
  devices_[dev] = st;
  return {};
}

Result<void> ThinMetadata::delete_device(uint64_t dev) {
  TP_ASSIGN_OR_RETURN(DevState * st, dev_state(dev));
  TP_TRY(changed(Btree::del(*tm_, st->root, mapping_vt_)));
  devices_.erase(dev);
  deleted_.push_back(dev);
  return {};
}

Result<void> ThinMetadata::clone_tree_into(uint64_t dev, uint64_t src) {
  TP_ASSIGN_OR_RETURN(DevState * d, dev_state(dev));
  TP_ASSIGN_OR_RETURN(DevState * s, dev_state(src));
  if (d == s) {
    return {};
  }
  if (sb_.time >= kMaxTime) {
    return make_error(Errc::kNoSpace, "pool snapshot clock exhausted");
  }
  TP_TRY(changed(tm_->inc(s->root)));
  TP_TRY(changed(Btree::del(*tm_, d->root, mapping_vt_)));
  d->root = s->root;
  d->details.mapped_blocks = s->details.mapped_blocks;
  // Both now share every mapping: mark them so dm-thin's time rule agrees.
  sb_.time++;
  d->details.snapshotted_time = sb_.time;
  s->details.snapshotted_time = sb_.time;
  d->root_changed = d->details_changed = s->details_changed = true;
  return {};
}

Result<void> ThinMetadata::restore_device(uint64_t dev, const DeviceDetails& d,
                                          std::optional<uint64_t> share_with) {
  if (dev > kMaxDevId) {
    return make_error(Errc::kInvalidArgument, "thin device id too large", dev);
  }
  if (devices_.count(dev)) {
    return make_error(Errc::kExists, "thin device already exists", dev);
  }
  DevState st;
  if (share_with) {
    TP_ASSIGN_OR_RETURN(DevState * o, dev_state(*share_with));
    TP_TRY(changed(tm_->inc(o->root)));
    st.root = o->root;
  } else {
    TP_ASSIGN_OR_RETURN(st.root, changed(Btree::create_empty(*tm_, mapping_vt_)));
  }
  st.details = d;
  st.root_changed = st.details_changed = true;
  devices_[dev] = st;
  return {};
}

Result<void> ThinMetadata::restore_mapping(uint64_t dev, uint64_t vblock, uint64_t data_block,
                                           uint32_t time) {
  TP_ASSIGN_OR_RETURN(DevState * st, dev_state(dev));
  std::array<std::byte, 8> v;
  store_le64(v.data(), pack_block_time(data_block, time));
  TP_ASSIGN_OR_RETURN(st->root,
                      changed(Btree::insert(*tm_, st->root, vblock, v.data(), mapping_vt_)));
  st->root_changed = true;
  return {};
}

Result<std::optional<Mapping>> ThinMetadata::lookup(uint64_t dev, uint64_t vblock) {
  TP_ASSIGN_OR_RETURN(DevState * st, dev_state(dev));
  uint64_t b = st->root;
  bool shared = false;
  for (int depth = 0; depth < 64; depth++) {
    TP_ASSIGN_OR_RETURN(uint32_t count, tm_->ref_count(b));
    shared = shared || count > 1;
    TP_ASSIGN_OR_RETURN(ReadRef r, tm_->read_lock(b, kNodeValidator));
    NodeView n(const_cast<std::byte*>(r.data().data()));
    if (n.value_size() != 8) {
      return make_error(Errc::kCorruption, "mapping tree node has the wrong value size", b);
    }
    int i = n.lower_bound(vblock);
    if (i < 0) {
      return std::optional<Mapping>{};
    }
    if (n.is_leaf()) {
      if (n.key(i) != vblock) {
        return std::optional<Mapping>{};
      }
      uint64_t v = n.value64(i);
      Mapping m{bt_block(v), bt_time(v), shared};
      if (m.data_block >= dsm_->nr_blocks()) {
        return make_error(Errc::kCorruption, "mapping points beyond the data device", b);
      }
      if (!m.shared) {
        TP_ASSIGN_OR_RETURN(uint32_t dc, dsm_->get_count(m.data_block));
        m.shared = dc > 1;
      }
      return std::optional<Mapping>{m};
    }
    b = n.value64(i);
  }
  return make_error(Errc::kCorruption, "mapping tree too deep", st->root);
}

Result<void> ThinMetadata::insert(uint64_t dev, uint64_t vblock, uint64_t data_block) {
  TP_ASSIGN_OR_RETURN(DevState * st, dev_state(dev));
  std::array<std::byte, 8> v;
  store_le64(v.data(), pack_block_time(data_block, sb_.time));
  bool inserted = false;
  TP_ASSIGN_OR_RETURN(
      st->root, changed(Btree::insert(*tm_, st->root, vblock, v.data(), mapping_vt_, &inserted)));
  st->root_changed = true;
  if (inserted) {
    st->details.mapped_blocks++;
    st->details_changed = true;
  }
  return {};
}

Result<bool> ThinMetadata::remove(uint64_t dev, uint64_t vblock) {
  TP_ASSIGN_OR_RETURN(DevState * st, dev_state(dev));
  bool removed = false;
  TP_ASSIGN_OR_RETURN(uint64_t root,
                      changed(Btree::remove(*tm_, st->root, vblock, mapping_vt_, &removed)));
  if (removed) {
    st->root = root;
    st->root_changed = true;
    st->details.mapped_blocks--;
    st->details_changed = true;
  }
  return removed;
}

Result<void> ThinMetadata::walk(uint64_t dev, uint64_t lo, uint64_t hi, const MappingVisitor& fn) {
  TP_ASSIGN_OR_RETURN(DevState * st, dev_state(dev));
  return Btree::walk(*tm_, st->root, mapping_vt_, lo, hi,
                     [&](uint64_t key, const std::byte* v) -> Result<bool> {
                       uint64_t bt = load_le64(v);
                       return fn(key, Mapping{bt_block(bt), bt_time(bt), false});
                     });
}

Result<bool> ThinMetadata::walk_exact_node(uint64_t b, bool shared, uint64_t lo, uint64_t hi,
                                           const MappingVisitor& fn, int depth) {
  if (depth > 64) {
    return make_error(Errc::kCorruption, "mapping tree too deep", b);
  }
  TP_ASSIGN_OR_RETURN(uint32_t count, tm_->ref_count(b));
  shared = shared || count > 1;
  std::array<std::byte, kBlockSize> copy;
  {
    TP_ASSIGN_OR_RETURN(ReadRef r, tm_->read_lock(b, kNodeValidator));
    std::memcpy(copy.data(), r.data().data(), kBlockSize);
  }
  NodeView n(copy.data());
  if (n.value_size() != 8) {
    return make_error(Errc::kCorruption, "mapping tree node has the wrong value size", b);
  }
  uint32_t nr = n.nr_entries();
  if (n.is_leaf()) {
    for (uint32_t i = n.upper_index(lo); i < nr && n.key(i) <= hi; i++) {
      uint64_t v = n.value64(i);
      Mapping m{bt_block(v), bt_time(v), shared};
      if (!m.shared) {
        TP_ASSIGN_OR_RETURN(uint32_t dc, dsm_->get_count(m.data_block));
        m.shared = dc > 1;
      }
      TP_ASSIGN_OR_RETURN(bool more, fn(n.key(i), m));
      if (!more) return false;
    }
    return true;
  }
  int start = std::max(n.lower_bound(lo), 0);
  for (uint32_t i = static_cast<uint32_t>(start); i < nr && n.key(i) <= hi; i++) {
    TP_ASSIGN_OR_RETURN(bool more, walk_exact_node(n.value64(i), shared, lo, hi, fn, depth + 1));
    if (!more) return false;
  }
  return true;
}

Result<void> ThinMetadata::walk_exact(uint64_t dev, uint64_t lo, uint64_t hi,
                                      const MappingVisitor& fn) {
  TP_ASSIGN_OR_RETURN(DevState * st, dev_state(dev));
  TP_TRY(walk_exact_node(st->root, false, lo, hi, fn, 0));
  return {};
}

Result<uint64_t> ThinMetadata::alloc_data_block() {
  auto b = dsm_->new_block();
  if (!b.ok() && b.error().code != Errc::kNoSpace) broken_ = true;  // full: nothing changed
  return b;
}

Result<uint64_t> ThinMetadata::hold_data_block() {
  auto b = dsm_->hold();
  if (!b.ok() && b.error().code != Errc::kNoSpace) broken_ = true;
  return b;
}

Result<void> ThinMetadata::insert_held(uint64_t dev, uint64_t vblock, uint64_t data_block) {
  TP_TRY(dev_state(dev));
  TP_TRY(changed(dsm_->commit_held(data_block)));
  return insert(dev, vblock, data_block);
}

Result<void> ThinMetadata::insert_free(uint64_t dev, uint64_t vblock, uint64_t data_block) {
  TP_TRY(dev_state(dev));
  if (data_block >= dsm_->nr_blocks()) {
    return make_error(Errc::kCorruption, "data block beyond the pool", data_block);
  }
  TP_ASSIGN_OR_RETURN(uint32_t count, dsm_->get_count(data_block));
  if (count != 0) return make_error(Errc::kCorruption, "data block is already in use", data_block);
  TP_TRY(changed(dsm_->set_count(data_block, 1)));
  return insert(dev, vblock, data_block);
}

Result<void> ThinMetadata::resize_data(uint64_t nr_data_blocks) {
  if (nr_data_blocks > kMaxDataBlock) {
    return make_error(Errc::kInvalidArgument, "too many data blocks for the format");
  }
  return changed(dsm_->extend(nr_data_blocks));
}

Result<void> ThinMetadata::commit() {
  TP_ASSIGN_OR_RETURN(CommitTicket t, begin_commit());
  Result<void> r = write_commit(t);
  end_commit(t, r.ok());
  if (r.ok()) release_freed(t);
  return r;
}

Result<ThinMetadata::CommitTicket> ThinMetadata::begin_commit() {
  if (broken_) {
    return make_error(Errc::kReadOnly, "a metadata update failed half way: not committed");
  }
  broken_ = true;  // until the cut is complete
  TransactionManager& tm = *tm_;
  // Deleted devices leave both trees (their mappings were freed already).
  for (uint64_t dev : deleted_) {
    if (devices_.count(dev)) continue;  // re-created in the same transaction: overwritten below
    TP_ASSIGN_OR_RETURN(sb_.data_mapping_root,
                        Btree::remove(tm, sb_.data_mapping_root, dev, top_vt_));
    TP_ASSIGN_OR_RETURN(sb_.device_details_root,
                        Btree::remove(tm, sb_.device_details_root, dev, kDetailsVt));
  }
  deleted_.clear();
  for (auto& [dev, st] : devices_) {
    if (st.root_changed) {
      std::array<std::byte, 8> v;
      store_le64(v.data(), st.root);
      // The old root already lost its reference when it was shadowed: no dec here.
      TP_ASSIGN_OR_RETURN(sb_.data_mapping_root,
                          Btree::insert(tm, sb_.data_mapping_root, dev, v.data(), top_vt_));
      st.root_changed = false;
    }
    if (st.details_changed) {
      std::array<std::byte, kDeviceDetailsSize> v;
      encode_details(st.details, v.data());
      TP_ASSIGN_OR_RETURN(sb_.device_details_root,
                          Btree::insert(tm, sb_.device_details_root, dev, v.data(), kDetailsVt));
      st.details_changed = false;
    }
  }
  TP_TRY(dsm_->flush());
  TP_TRY(msm_->flush());
  sb_.data_sm_root = dsm_->root();
  sb_.metadata_sm_root = msm_->root();
  CommitTicket t;
  TP_ASSIGN_OR_RETURN(t.tm, tm.begin_commit(sb_));
  t.freed = std::exchange(freed_, {});
  t.trans_id = sb_.trans_id;
  broken_ = false;
  return t;
}

void ThinMetadata::end_commit(CommitTicket& t, bool written) {
  tm_->end_commit(t.tm, written);
  if (!written) {
    broken_ = true;
    return;
  }
  sb_csum_ = t.tm.sb_csum;
  dsm_->on_commit();
}

void ThinMetadata::release_freed(const CommitTicket& t) {
  release_freed(t.freed);
}

}  // namespace tp::pdata
