#pragma once
// Reads a ThinMetadata (our own reader) into the XmlPool model that thin_dump output is
// parsed into, so both views can be compared.

#include "pdata/thin_metadata.h"
#include "support/thin_xml.h"

namespace tp::testing {

// uuid "", flags/version from the superblock, every device with all its mappings.
// Aborts the test (gtest ADD_FAILURE + empty pool) on a read error.
XmlPool read_pool(pdata::ThinMetadata& md);

}  // namespace tp::testing
