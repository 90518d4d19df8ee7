#include "support/md_xml.h"

#include <gtest/gtest.h>

namespace tp::testing {

XmlPool read_pool(pdata::ThinMetadata& md) {
  XmlPool p;
  const auto& sb = md.superblock();
  p.time = sb.time;
  p.transaction = sb.trans_id;
  p.flags = sb.flags;
  p.version = sb.version;
  p.data_block_size = sb.data_block_size;
  p.nr_data_blocks = md.nr_data_blocks();
  for (uint64_t dev : md.devices()) {
    XmlDevice d;
    d.dev_id = dev;
    auto det = md.details(dev);
    if (!det.ok()) {
      ADD_FAILURE() << "details " << dev << ": " << det.error().to_string();
      return {};
    }
    d.mapped_blocks = det->mapped_blocks;
    d.transaction = det->transaction_id;
    d.creation_time = det->creation_time;
    d.snap_time = det->snapshotted_time;
    auto r =
        md.walk(dev, 0, ~uint64_t{0}, [&](uint64_t vb, const pdata::Mapping& m) -> Result<bool> {
          d.mappings.push_back(XmlMapping{vb, m.data_block, m.time});
          return true;
        });
    if (!r.ok()) {
      ADD_FAILURE() << "walk " << dev << ": " << r.error().to_string();
      return {};
    }
    p.devices.push_back(std::move(d));
  }
  return p;
}

}  // namespace tp::testing
