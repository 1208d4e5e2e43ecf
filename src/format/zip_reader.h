// A strict reader of the zip archives torch.save writes: stored (never
// compressed) entries, ZIP64 where sizes or offsets need it, one root folder
// shared by every entry. Only the central directory and local headers are
// read when opening; entry data is read on demand.
#ifndef CKPT_FORMAT_ZIP_READER_H_
#define CKPT_FORMAT_ZIP_READER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt {

struct ZipEntry {
  std::string name;          // full name, "<root>/data/0"
  uint64_t data_offset = 0;  // absolute offset of the entry's bytes in the file
  uint64_t size = 0;
  uint32_t crc32 = 0;
  uint16_t method = 0;  // 0: stored
  uint16_t flags = 0;   // general-purpose bits (bit 0: encrypted)
};

// Limits on what an archive may declare before anything is allocated.
struct ZipLimits {
  uint64_t max_entries = 1'000'000;
  uint64_t max_central_directory = 256ull << 20;
};

class ZipArchive {
 public:
  // Parses the end record (ZIP64 when present), the central directory and
  // every local header. Refused: multi-disk archives;
  // names that are empty, absolute, hold a backslash, "." or ".." components
  // or control bytes; duplicate names; entries outside the file or
  // overlapping another entry or the central directory; entries not under one
  // common root folder.
  static Result<std::unique_ptr<ZipArchive>> Open(std::unique_ptr<ReadableFile> file,
                                                  const ZipLimits& limits = {});

  const std::string& path() const { return file_->path(); }
  const ReadableFile& file() const { return *file_; }
  // The common root folder, without the trailing '/'.
  const std::string& root() const { return root_; }
  // Entries by name relative to the root ("data.pkl", "data/0").
  const std::map<std::string, ZipEntry>& entries() const { return entries_; }
  const ZipEntry* Find(std::string_view relative_name) const;
  // InvalidArgument naming the first compressed or encrypted entry: readers
  // call it once they have looked at the entry names.
  Status CheckStored() const;

  // Reads a whole entry (at most `max_size` bytes, else InvalidArgument) and
  // checks its CRC-32.
  Result<std::string> ReadEntry(const ZipEntry& e, uint64_t max_size) const;
  // Reads `dst.size()` bytes of the entry from `offset`.
  Status ReadEntryRange(const ZipEntry& e, uint64_t offset, std::span<std::byte> dst) const;
  // Reads the whole entry in pieces and compares its CRC-32.
  Status CheckCrc(const ZipEntry& e) const;

 private:
  explicit ZipArchive(std::unique_ptr<ReadableFile> file) : file_(std::move(file)) {}
  Status Parse(const ZipLimits& limits);

  std::unique_ptr<ReadableFile> file_;
  std::string root_;
  std::map<std::string, ZipEntry> entries_;
};

// CRC-32 (ISO-HDLC, as zip uses it) continued from `crc`.
uint32_t Crc32(uint32_t crc, std::span<const std::byte> data);

}  // namespace ckpt

#endif  // CKPT_FORMAT_ZIP_READER_H_
