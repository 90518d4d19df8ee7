#pragma once
// Delta files and the one-step A/B update (docs/SEMANTICS.md "A/B updates").
//
// A delta file is self-describing (all integers little-endian):
//   header, 128 bytes:
//     0   8  magic "TPDELTA1"
//     8   4  version (1)
//     12  4  block_bytes: the granularity of the entries
//     16  8  base_size: size in bytes of the image the delta applies to
//     24  8  result_size: size in bytes of the image it produces
//     32  8  nr_entries
//     40 32  base_sha256: SHA-256 of the whole base image
//     72 32  result_sha256: SHA-256 of the whole result image
//     104 20 zero
//     124 4  crc32c of bytes 0..123
//   entries, in increasing block order, each:
//     le64 block index, bit 63 set = the block is all zeros in the result (no data follows);
//     otherwise block_bytes of data (the last block of the result: only up to result_size).
//   trailer, 16 bytes: "TPDEND01", le32 crc32c of every byte before the trailer, le32 0.
//
// Reading validates the header, the entry order and bounds, the length and the trailer
// before anything is applied, so a truncated or corrupt file is refused up front; the
// result's SHA-256 is verified after applying, before the merge.

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "thin/pool.h"

namespace tp::thin {

using Sha256 = std::array<uint8_t, 32>;

struct DeltaHeader {
  uint32_t block_bytes = 0;
  uint64_t base_size = 0;
  uint64_t result_size = 0;
  uint64_t nr_entries = 0;
  Sha256 base_sha256{};
  Sha256 result_sha256{};
};

struct DeltaEntry {
  uint64_t block = 0;
  bool zero = false;
  uint64_t data_offset = 0;  // in the file; valid when !zero
  uint32_t length = 0;       // bytes of data (or of zeros) this entry covers
};

// A validated delta file, opened for reading.
struct DeltaFile {
  std::string path;
  DeltaHeader header;
  std::vector<DeltaEntry> entries;
};

// Reads and validates the whole file structure (not the result checksum).
Result<DeltaFile> read_delta(const std::string& path);
// Decodes a delta held in memory (for the fuzzer and tests).
Result<DeltaFile> parse_delta(std::span<const std::byte> bytes);

// Source of an image for diff: size and a reader.
struct ImageSource {
  uint64_t size = 0;
  std::function<Result<void>(uint64_t off, std::span<std::byte> buf)> read;
  // Optional: block indexes that may differ (e.g. from Pool::delta); nullptr = compare all.
  const std::vector<uint64_t>* candidates = nullptr;
};

struct DiffStats {
  uint64_t entries = 0, data_entries = 0, zero_entries = 0;
  uint64_t bytes = 0;  // file size
};

// Writes a delta from old to new with the given granularity (a multiple of 4096).
Result<DiffStats> write_delta(const std::string& out_path, const ImageSource& old_img,
                              const ImageSource& new_img, uint32_t block_bytes);

// Sources over a volume of an open pool, and over an image file.
ImageSource volume_source(Pool& pool, uint64_t dev);
Result<ImageSource> file_source(const std::string& path, int* fd_out);

Result<Sha256> sha256_of(const ImageSource& src);

struct UpdateResult {
  bool staged = false;  // stopped before the merge
  bool used_existing_next = false;
  uint64_t entries_applied = 0;
  uint64_t reserved_blocks = 0;  // reservation of the snapshot it created
};

// Applies the delta into NAME.next (created with exactly the reservation the delta needs
// when it does not exist), verifies the result's SHA-256, and merges it into NAME unless
// stage. On any failure NAME.next is removed and NAME is left as it was.
Result<UpdateResult> apply_update(Pool& pool, const std::string& name, const std::string& delta,
                                  bool stage);

}  // namespace tp::thin
