// safetensors files: strict parsing, zero-copy and ranged reads, streaming
// writes. The on-disk rules are in docs/format.md; every violated rule is
// reported with the file, the tensor and the numbers involved.
#ifndef CKPT_SAFETENSORS_H_
#define CKPT_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ckpt/dtype.h"
#include "ckpt/shape.h"
#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt {

// Largest header the reader accepts (the reference implementation's cap).
inline constexpr uint64_t kSafetensorsMaxHeaderSize = 100'000'000;

using SafetensorsMetadata = std::map<std::string, std::string>;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  Shape shape;
  uint64_t begin = 0;  // data_offsets, relative to the start of the data buffer
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
};

// A parsed and fully validated header.
class SafetensorsHeader {
 public:
  // Parses the header JSON. `data_size` is the size of the data buffer that
  // follows it (file size - 8 - header length); the tensors must tile it
  // exactly. `source` names the file in error messages.
  static Result<SafetensorsHeader> Parse(std::string_view json, uint64_t data_size,
                                         std::string_view source);

  // Parses a header from the first bytes of a file. `prefix` must hold at
  // least the 8-byte length and the header; `file_size` is the whole file's.
  static Result<SafetensorsHeader> ParsePrefix(std::span<const std::byte> prefix,
                                               uint64_t file_size, std::string_view source);

  // Tensors in data order (by data_offsets).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // Null when absent.
  const TensorInfo* Find(std::string_view name) const;
  // `__metadata__`; absent and `null` both give an empty map.
  const SafetensorsMetadata& metadata() const { return metadata_; }
  bool has_metadata() const { return has_metadata_; }

  uint64_t header_size() const { return header_size_; }      // N
  uint64_t data_offset() const { return 8 + header_size_; }  // start of the data buffer
  uint64_t data_size() const { return data_size_; }

 private:
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
  SafetensorsMetadata metadata_;
  bool has_metadata_ = false;
  uint64_t header_size_ = 0;
  uint64_t data_size_ = 0;
};

// Bytes of one tensor that stay valid while `owner` is alive.
struct TensorView {
  const TensorInfo* info = nullptr;
  std::span<const std::byte> data;
  std::shared_ptr<const void> owner;
};

// An open safetensors file. Opening reads only the 8-byte length and the
// header; tensor data is read on demand. Thread-safe.
class SafetensorsFile {
 public:
  static Result<std::unique_ptr<SafetensorsFile>> Open(Storage& storage, const std::string& path);

  const std::string& path() const { return file_->path(); }
  uint64_t file_size() const { return file_->Size(); }
  const SafetensorsHeader& header() const { return header_; }

  // Zero-copy view of a tensor. Maps the file on first use (backends that
  // cannot map return FailedPrecondition; use ReadTensor there).
  Result<TensorView> View(std::string_view name) const;
  // Copies `dst.size()` bytes of tensor `name` starting `offset` bytes into
  // the tensor, reading only that byte range of the file.
  Status ReadRange(std::string_view name, uint64_t offset, std::span<std::byte> dst) const;
  // Copies the whole tensor; `dst.size()` must equal its byte size.
  Status ReadTensor(std::string_view name, std::span<std::byte> dst) const;
  // Reads every byte of the data buffer once (for verification).
  Status ReadAllData() const;

  const ReadableFile& file() const { return *file_; }

 private:
  SafetensorsFile(std::unique_ptr<ReadableFile> file, SafetensorsHeader header);
  Result<const TensorInfo*> Lookup(std::string_view name) const;

  std::unique_ptr<ReadableFile> file_;
  SafetensorsHeader header_;
  mutable std::mutex map_mu_;
  mutable std::optional<MappedRegion> mapping_;
};

// ---- Writing ----

struct TensorSpec {
  std::string name;
  DType dtype = DType::kU8;
  Shape shape;
};

// The header and data layout of a file to be written.
struct SafetensorsLayout {
  std::string header;               // JSON, space-padded to a multiple of 8
  std::vector<TensorInfo> tensors;  // in file order
  uint64_t data_size = 0;
  uint64_t file_size() const { return 8 + header.size() + data_size; }
  // The file's first 8 + header.size() bytes: the little-endian header
  // length, then the header.
  std::string prefix() const;
};

// Lays out tensors as the reference writer does: `__metadata__` first, then
// tensors by dtype width (widest first) and name; header padded with spaces
// so the data buffer starts at a multiple of 8. Rejects duplicate or
// reserved names and shapes whose byte size is not whole.
Result<SafetensorsLayout> PlanSafetensors(std::vector<TensorSpec> specs,
                                          const std::optional<SafetensorsMetadata>& metadata);

// Writes a file from caller-provided pieces in any order, straight to their
// final offsets; nothing is visible at `path` until Commit(), which checks
// that every byte of every tensor was written exactly once.
class SafetensorsWriter {
 public:
  static Result<std::unique_ptr<SafetensorsWriter>> Create(
      Storage& storage, const std::string& path, std::vector<TensorSpec> specs,
      const std::optional<SafetensorsMetadata>& metadata);

  const SafetensorsLayout& layout() const { return layout_; }
  // Writes `data` at byte `offset` within tensor `name`.
  Status Write(std::string_view name, uint64_t offset, std::span<const std::byte> data);
  // Replaces __metadata__ before Commit, e.g. with checksums computed while
  // writing. The new header must have exactly the old header's length.
  Status ReplaceMetadata(const SafetensorsMetadata& metadata);
  Status Commit();

 private:
  SafetensorsWriter(SafetensorsLayout layout, std::unique_ptr<AtomicFileWriter> out);
  std::vector<TensorSpec> specs_;
  SafetensorsLayout layout_;
  std::unique_ptr<AtomicFileWriter> out_;
  std::unordered_map<std::string, size_t> by_name_;
  // Per tensor, written byte ranges [begin, end) keyed by begin, merged.
  std::vector<std::map<uint64_t, uint64_t>> written_;
};

struct TensorData {
  std::string name;
  DType dtype = DType::kU8;
  Shape shape;
  std::span<const std::byte> data;  // row-major, little-endian
};

// Writes a whole file, streaming each tensor from caller memory (no
// whole-file buffer), and publishes it atomically.
Status WriteSafetensors(Storage& storage, const std::string& path,
                        std::span<const TensorData> tensors,
                        const std::optional<SafetensorsMetadata>& metadata = std::nullopt);

}  // namespace ckpt

#endif  // CKPT_SAFETENSORS_H_
