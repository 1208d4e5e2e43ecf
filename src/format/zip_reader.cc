#include "format/zip_reader.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "format/json_util.h"

namespace ckpt {
namespace {

constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kLocatorSize = 20;
constexpr uint64_t kZip64EndSize = 56;
constexpr uint64_t kCentralSize = 46;
constexpr uint64_t kLocalSize = 30;
constexpr uint64_t kMaxComment = 0xffff;

// Little-endian fields of a byte buffer, bounds-checked by the caller.
uint16_t U16(const std::byte* p) {
  return static_cast<uint16_t>(static_cast<uint16_t>(p[0]) | static_cast<uint16_t>(p[1]) << 8);
}
uint32_t U32(const std::byte* p) {
  return static_cast<uint32_t>(U16(p)) | static_cast<uint32_t>(U16(p + 2)) << 16;
}
uint64_t U64(const std::byte* p) {
  return static_cast<uint64_t>(U32(p)) | static_cast<uint64_t>(U32(p + 4)) << 32;
}

Status CheckEntryName(std::string_view name) {
  if (name.empty()) return InvalidArgumentError("an entry has an empty name");
  if (name.front() == '/')
    return InvalidArgumentError("entry '" + Printable(name) + "' has an absolute name");
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\\' || u < 0x20 || u == 0x7f) {
      return InvalidArgumentError("entry '" + Printable(name) +
                                  "' has a backslash or control byte in its name");
    }
  }
  size_t start = 0;
  while (true) {
    const size_t slash = name.find('/', start);
    const std::string_view part =
        name.substr(start, slash == std::string_view::npos ? name.npos : slash - start);
    if (part.empty() || part == "." || part == "..") {
      return InvalidArgumentError(
          "entry '" + Printable(name) +
          "' has an empty, '.' or '..' path component (a name that could leave the archive)");
    }
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return Status();
}

// Where the central directory is, from the end record (ZIP64 when present),
// checked against the file and the limits.
struct CentralDirectory {
  uint64_t count = 0;
  uint64_t size = 0;
  uint64_t offset = 0;
};

// The end record sits in the last 22 + 65535 bytes; scans backwards for a
// signature whose comment length reaches exactly the end of the file.
// Returns its offset in the file.
Result<uint64_t> FindEndRecord(const ReadableFile& file, std::vector<std::byte>* tail) {
  const uint64_t size = file.Size();
  if (size < kEndSize)
    return InvalidArgumentError("file of " + std::to_string(size) +
                                " bytes is too small for a zip");
  const uint64_t tail_len = std::min<uint64_t>(size, kEndSize + kMaxComment);
  tail->resize(tail_len);
  CKPT_RETURN_IF_ERROR(file.ReadAt(size - tail_len, *tail));
  for (int64_t i = static_cast<int64_t>(tail_len - kEndSize); i >= 0; --i) {
    const std::byte* p = tail->data() + i;
    if (U32(p) == kEndSig && static_cast<uint64_t>(i) + kEndSize + U16(p + 20) == tail_len) {
      tail->erase(tail->begin(), tail->begin() + i);
      return size - tail_len + static_cast<uint64_t>(i);
    }
  }
  return InvalidArgumentError("no end-of-central-directory record");
}

Result<CentralDirectory> FindCentralDirectory(const ReadableFile& file, const ZipLimits& limits) {
  std::vector<std::byte> tail;
  CKPT_ASSIGN_OR_RETURN(const uint64_t end_abs, FindEndRecord(file, &tail));
  const std::byte* e = tail.data();
  uint64_t disk = U16(e + 4), cd_disk = U16(e + 6);
  uint64_t count_disk = U16(e + 8), count = U16(e + 10);
  uint64_t cd_size = U32(e + 12), cd_offset = U32(e + 16);
  uint64_t cd_end_limit = end_abs;
  const bool wants64 =
      count == 0xffff || count_disk == 0xffff || cd_size == 0xffffffffu || cd_offset == 0xffffffffu;
  if (end_abs >= kLocatorSize) {
    std::byte loc[kLocatorSize];
    CKPT_RETURN_IF_ERROR(file.ReadAt(end_abs - kLocatorSize, loc));
    if (U32(loc) == kZip64LocatorSig) {
      const uint64_t z64 = U64(loc + 8);
      if (U32(loc + 4) != 0 || U32(loc + 16) > 1)
        return InvalidArgumentError("multi-disk ZIP64 archives are not supported");
      if (z64 > end_abs - kLocatorSize || end_abs - kLocatorSize - z64 < kZip64EndSize) {
        return InvalidArgumentError("ZIP64 end record offset " + std::to_string(z64) +
                                    " is outside the file");
      }
      std::byte r[kZip64EndSize];
      CKPT_RETURN_IF_ERROR(file.ReadAt(z64, r));
      if (U32(r) != kZip64EndSig)
        return InvalidArgumentError("no ZIP64 end record at offset " + std::to_string(z64));
      disk = U32(r + 16);
      cd_disk = U32(r + 20);
      count_disk = U64(r + 24);
      count = U64(r + 32);
      cd_size = U64(r + 40);
      cd_offset = U64(r + 48);
      cd_end_limit = z64;
    } else if (wants64) {
      return InvalidArgumentError("the end record asks for ZIP64 but there is no ZIP64 locator");
    }
  }
  if (disk != 0 || cd_disk != 0 || count_disk != count)
    return InvalidArgumentError("multi-disk archives are not supported");
  if (count > limits.max_entries) {
    return InvalidArgumentError(std::to_string(count) + " entries exceed the limit of " +
                                std::to_string(limits.max_entries));
  }
  if (cd_size > limits.max_central_directory) {
    return InvalidArgumentError("central directory of " + std::to_string(cd_size) +
                                " bytes exceeds the limit");
  }
  if (cd_offset > cd_end_limit || cd_size > cd_end_limit - cd_offset) {
    return InvalidArgumentError("central directory [" + std::to_string(cd_offset) + ", +" +
                                std::to_string(cd_size) + ") is outside the file");
  }
  if (count * kCentralSize > cd_size) {
    return InvalidArgumentError(std::to_string(count) +
                                " entries cannot fit a central directory of " +
                                std::to_string(cd_size) + " bytes");
  }
  return CentralDirectory{count, cd_size, cd_offset};
}

// An entry as the central directory records it.
struct RawEntry {
  ZipEntry entry;
  uint64_t local_offset;
};

// The saturated fields of a central directory entry, and the ZIP64 extended
// information that replaces them (their 64-bit values, in order).
struct EntrySizes {
  uint64_t csize, usize, local, disk_start;
};

Status ApplyZip64Extra(std::span<const std::byte> extra, const std::string& label, EntrySizes* v) {
  const std::byte* x = extra.data();
  const std::byte* x_end = x + extra.size();
  while (x_end - x >= 4) {
    const uint16_t id = U16(x), len = U16(x + 2);
    if (static_cast<uint64_t>(x_end - x - 4) < len)
      return InvalidArgumentError(label + " has a truncated extra field");
    if (id == 0x0001) {
      const std::byte* f = x + 4;
      uint64_t left = len;
      auto take = [&](uint64_t* out, uint64_t width) -> Status {
        if (left < width) return InvalidArgumentError(label + " has a short ZIP64 extra field");
        *out = width == 8 ? U64(f) : U32(f);
        f += width;
        left -= width;
        return Status();
      };
      if (v->usize == 0xffffffffu) CKPT_RETURN_IF_ERROR(take(&v->usize, 8));
      if (v->csize == 0xffffffffu) CKPT_RETURN_IF_ERROR(take(&v->csize, 8));
      if (v->local == 0xffffffffu) CKPT_RETURN_IF_ERROR(take(&v->local, 8));
      if (v->disk_start == 0xffff) CKPT_RETURN_IF_ERROR(take(&v->disk_start, 4));
    }
    x += 4 + len;
  }
  return Status();
}

Result<std::vector<RawEntry>> ReadCentralDirectory(const ReadableFile& file,
                                                   const CentralDirectory& cd) {
  std::vector<std::byte> bytes(cd.size);
  CKPT_RETURN_IF_ERROR(file.ReadAt(cd.offset, bytes));
  std::vector<RawEntry> raw;
  raw.reserve(cd.count);
  uint64_t pos = 0;
  for (uint64_t i = 0; i < cd.count; ++i) {
    if (cd.size - pos < kCentralSize)
      return InvalidArgumentError("central directory entry " + std::to_string(i) + " is truncated");
    const std::byte* h = bytes.data() + pos;
    if (U32(h) != kCentralSig) {
      return InvalidArgumentError("central directory entry " + std::to_string(i) +
                                  " has a bad signature");
    }
    const uint16_t flags = U16(h + 8), method = U16(h + 10);
    const uint32_t crc = U32(h + 16);
    EntrySizes v{U32(h + 20), U32(h + 24), U32(h + 42), U16(h + 34)};
    const uint64_t name_len = U16(h + 28), extra_len = U16(h + 30), comment_len = U16(h + 32);
    const uint64_t rec = kCentralSize + name_len + extra_len + comment_len;
    if (cd.size - pos < rec)
      return InvalidArgumentError("central directory entry " + std::to_string(i) + " is truncated");
    std::string name(reinterpret_cast<const char*>(h + kCentralSize), name_len);
    const std::string label = "entry '" + Printable(name) + "'";
    CKPT_RETURN_IF_ERROR(
        ApplyZip64Extra(std::span(h + kCentralSize + name_len, extra_len), label, &v));
    if (v.disk_start != 0) return InvalidArgumentError(label + " starts on another disk");
    if (method == 0 && v.csize != v.usize) {
      return InvalidArgumentError(label + " declares " + std::to_string(v.csize) +
                                  " stored bytes but " + std::to_string(v.usize) +
                                  " uncompressed bytes");
    }
    CKPT_RETURN_IF_ERROR(CheckEntryName(name));
    // `size` is what the entry occupies in the file; only stored entries
    // (CheckStored) are ever read.
    raw.push_back(RawEntry{ZipEntry{std::move(name), 0, v.csize, crc, method, flags}, v.local});
    pos += rec;
  }
  return raw;
}

// Reads an entry's local header, which must agree with the central
// directory; the data starts after the header's own name and extra field.
Status LocateData(const ReadableFile& file, uint64_t cd_offset, RawEntry& r) {
  const std::string label = "entry '" + Printable(r.entry.name) + "'";
  if (r.local_offset > cd_offset || cd_offset - r.local_offset < kLocalSize) {
    return InvalidArgumentError(label + " has its local header at " +
                                std::to_string(r.local_offset) + ", outside the entries area");
  }
  std::byte h[kLocalSize];
  CKPT_RETURN_IF_ERROR(file.ReadAt(r.local_offset, h));
  if (U32(h) != kLocalSig)
    return InvalidArgumentError(label + " has no local header at " +
                                std::to_string(r.local_offset));
  if (U16(h + 8) != r.entry.method)
    return InvalidArgumentError(label + ": the local header has another method");
  if ((U16(h + 6) & 0x1) != (r.entry.flags & 0x1)) {
    return InvalidArgumentError(label + ": the local header disagrees about encryption");
  }
  const uint64_t name_len = U16(h + 26), extra_len = U16(h + 28);
  const uint64_t data = r.local_offset + kLocalSize + name_len + extra_len;
  if (data > cd_offset || r.entry.size > cd_offset - data) {
    return InvalidArgumentError(
        label + " data [" + std::to_string(data) + ", +" + std::to_string(r.entry.size) +
        ") runs into the central directory at " + std::to_string(cd_offset));
  }
  if (name_len != r.entry.name.size())
    return InvalidArgumentError(label + ": the local header names another entry");
  std::string local_name(name_len, '\0');
  CKPT_RETURN_IF_ERROR(
      file.ReadAt(r.local_offset + kLocalSize,
                  std::as_writable_bytes(std::span<char>(local_name.data(), name_len))));
  if (local_name != r.entry.name) {
    return InvalidArgumentError(label + ": the local header names '" + Printable(local_name) + "'");
  }
  r.entry.data_offset = data;
  return Status();
}

// No two entries share bytes.
Status CheckNoOverlap(const std::vector<RawEntry>& raw) {
  std::vector<const RawEntry*> by_offset;
  for (const RawEntry& r : raw) by_offset.push_back(&r);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const RawEntry* a, const RawEntry* b) { return a->local_offset < b->local_offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const RawEntry& prev = *by_offset[i - 1];
    if (prev.entry.data_offset + prev.entry.size > by_offset[i]->local_offset) {
      return InvalidArgumentError("entries '" + Printable(prev.entry.name) + "' and '" +
                                  Printable(by_offset[i]->entry.name) + "' overlap");
    }
  }
  return Status();
}

}  // namespace

uint32_t Crc32(uint32_t crc, std::span<const std::byte> data) {
  return static_cast<uint32_t>(crc32_z(crc, reinterpret_cast<const Bytef*>(data.data()),
                                       static_cast<z_size_t>(data.size())));
}

Result<std::unique_ptr<ZipArchive>> ZipArchive::Open(std::unique_ptr<ReadableFile> file,
                                                     const ZipLimits& limits) {
  std::unique_ptr<ZipArchive> z(new ZipArchive(std::move(file)));
  Status s = z->Parse(limits);
  if (!s.ok())
    return Status(s.code(), z->path() + ": not a readable torch zip archive: " + s.message());
  return z;
}

Status ZipArchive::Parse(const ZipLimits& limits) {
  CKPT_ASSIGN_OR_RETURN(const CentralDirectory cd, FindCentralDirectory(*file_, limits));
  CKPT_ASSIGN_OR_RETURN(std::vector<RawEntry> raw, ReadCentralDirectory(*file_, cd));
  for (RawEntry& r : raw) CKPT_RETURN_IF_ERROR(LocateData(*file_, cd.offset, r));
  CKPT_RETURN_IF_ERROR(CheckNoOverlap(raw));
  // One root folder; names are kept relative to it.
  for (RawEntry& r : raw) {
    const size_t slash = r.entry.name.find('/');
    if (slash == std::string::npos) {
      return InvalidArgumentError("entry '" + Printable(r.entry.name) +
                                  "' is not inside a root folder");
    }
    const std::string root = r.entry.name.substr(0, slash);
    if (root_.empty()) root_ = root;
    if (root != root_) {
      return InvalidArgumentError("entries are under two root folders, '" + Printable(root_) +
                                  "' and '" + Printable(root) + "'");
    }
    std::string rel = r.entry.name.substr(slash + 1);
    if (!entries_.emplace(rel, r.entry).second) {
      return InvalidArgumentError("entry '" + Printable(r.entry.name) + "' appears twice");
    }
  }
  if (entries_.empty()) return InvalidArgumentError("the archive is empty");
  return Status();
}

Status ZipArchive::CheckStored() const {
  for (const auto& [rel, e] : entries_) {
    const std::string label = path() + ": entry '" + Printable(e.name) + "'";
    if (e.flags & 0x41) return InvalidArgumentError(label + " is encrypted");
    if (e.method != 0) {
      return InvalidArgumentError(label + " is compressed (method " + std::to_string(e.method) +
                                  "); torch archives store entries uncompressed");
    }
  }
  return Status();
}

const ZipEntry* ZipArchive::Find(std::string_view relative_name) const {
  auto it = entries_.find(std::string(relative_name));
  return it == entries_.end() ? nullptr : &it->second;
}

Result<std::string> ZipArchive::ReadEntry(const ZipEntry& e, uint64_t max_size) const {
  if (e.size > max_size) {
    return InvalidArgumentError(path() + ": entry '" + Printable(e.name) + "' has " +
                                std::to_string(e.size) + " bytes, more than the limit of " +
                                std::to_string(max_size));
  }
  std::string out(e.size, '\0');
  auto bytes = std::as_writable_bytes(std::span<char>(out.data(), out.size()));
  CKPT_RETURN_IF_ERROR(file_->ReadAt(e.data_offset, bytes));
  const uint32_t crc = Crc32(0, bytes);
  if (crc != e.crc32) {
    return DataLossError(path() + ": entry '" + Printable(e.name) + "' fails its CRC-32 check");
  }
  return out;
}

Status ZipArchive::ReadEntryRange(const ZipEntry& e, uint64_t offset,
                                  std::span<std::byte> dst) const {
  if (offset > e.size || dst.size() > e.size - offset) {
    return InvalidArgumentError(path() + ": bytes [" + std::to_string(offset) + ", +" +
                                std::to_string(dst.size()) + ") are outside entry '" +
                                Printable(e.name) + "' of " + std::to_string(e.size) + " bytes");
  }
  return file_->ReadAt(e.data_offset + offset, dst);
}

Status ZipArchive::CheckCrc(const ZipEntry& e) const {
  std::vector<std::byte> buf(std::min<uint64_t>(e.size, 8ull << 20));
  uint32_t crc = 0;
  for (uint64_t off = 0; off < e.size; off += buf.size()) {
    std::span<std::byte> piece(buf.data(), std::min<uint64_t>(buf.size(), e.size - off));
    CKPT_RETURN_IF_ERROR(file_->ReadAt(e.data_offset + off, piece));
    crc = Crc32(crc, piece);
  }
  if (crc != e.crc32)
    return DataLossError(path() + ": entry '" + Printable(e.name) + "' fails its CRC-32 check");
  return Status();
}

}  // namespace ckpt
