// PyTorch `.bin` checkpoints (torch.save zip archives), read without ever
// executing them: the archive's pickle runs on a restricted machine that
// knows only the opcodes and globals a state dict needs, and nothing it names
// is imported or called. See docs/format.md §6 for what is accepted.
#ifndef CKPT_TORCH_BIN_H_
#define CKPT_TORCH_BIN_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/dtype.h"
#include "ckpt/hf.h"
#include "ckpt/shape.h"
#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt {

inline constexpr std::string_view kTorchBinIndexName = "pytorch_model.bin.index.json";
inline constexpr std::string_view kTorchBinSingleName = "pytorch_model.bin";

// Bounds applied before anything is allocated for an archive's pickle.
struct TorchArchiveLimits {
  uint64_t max_pickle_bytes = 256ull << 20;
  uint64_t max_objects = 1u << 24;  // pickle objects, containers included
  // A view that repeats elements (a stride of 0) materializes larger than its
  // storage; more than this many times the record's size (at least 1 MiB)
  // is refused, so a tiny archive cannot make a converter write terabytes.
  uint64_t max_expansion = 1024;
};

struct TorchTensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  std::vector<uint64_t> stride;  // in elements
  uint64_t storage_offset = 0;   // in elements
  std::string storage_key;       // the record is data/<key>
  bool contiguous = true;        // row-major with no gaps
  uint64_t nbytes = 0;           // bytes of the materialized tensor
};

// One torch.save archive. Opening reads the zip directory, `byteorder` and
// `data.pkl`, and validates every tensor against its storage record; tensor
// bytes are read on demand. Thread-safe.
class TorchArchive {
 public:
  // Refuses, with the reason: files that are not torch zip archives (the
  // legacy pre-1.6 stream and the older tar format are recognized and named),
  // TorchScript archives, hostile or damaged zips and pickles.
  static Result<std::unique_ptr<TorchArchive>> Open(Storage& storage, const std::string& path,
                                                    const TorchArchiveLimits& limits = {});
  ~TorchArchive();

  const std::string& path() const;
  bool big_endian() const { return big_endian_; }
  // Tensors by name.
  const std::vector<TorchTensorInfo>& tensors() const { return tensors_; }
  // Keys of the state dict whose values are not tensors (ignored).
  const std::vector<std::string>& skipped() const { return skipped_; }
  const TorchTensorInfo* Find(std::string_view name) const;

  // Bytes [offset, offset + dst.size()) of the tensor materialized row-major
  // and little-endian (views gathered through their strides, big-endian
  // archives swapped). `offset` and the size must be whole elements.
  Status ReadRange(std::string_view name, uint64_t offset, std::span<std::byte> dst) const;
  Status ReadTensor(std::string_view name, std::span<std::byte> dst) const;
  // Reads every storage record once, checking its CRC-32.
  Status CheckData() const;

 private:
  struct Impl;
  TorchArchive(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  bool big_endian_ = false;
  std::vector<TorchTensorInfo> tensors_;
  std::vector<std::string> skipped_;
};

// True when `dir` holds `.bin` weights (pytorch_model.bin or its index).
Result<bool> HasTorchBinWeights(Storage& storage, const std::string& dir);
// True when `dir` holds safetensors weights (model.safetensors, an index,
// or any *.safetensors file).
Result<bool> HasSafetensorsWeights(Storage& storage, const std::string& dir);

// A model directory of `.bin` weights: `pytorch_model.bin`, or shards listed
// by `pytorch_model.bin.index.json` (same JSON layout as the safetensors
// index). Opening opens every archive and checks the weight map.
class TorchBinDir {
 public:
  struct Location {
    size_t file;  // index into files()
    const TorchTensorInfo* info;
  };
  static Result<TorchBinDir> Open(Storage& storage, const std::string& dir,
                                  const TorchArchiveLimits& limits = {});

  const std::string& dir() const { return dir_; }
  const std::optional<HfIndex>& index() const { return index_; }
  const std::vector<std::unique_ptr<TorchArchive>>& files() const { return files_; }
  const std::map<std::string, Location>& tensors() const { return tensors_; }

 private:
  std::string dir_;
  std::optional<HfIndex> index_;
  std::vector<std::unique_ptr<TorchArchive>> files_;
  std::map<std::string, Location> tensors_;
};

struct TorchConvertOptions {
  uint64_t max_shard_size = 5ull << 30;  // bytes of tensor data per output file
  uint64_t buffer_size = 64ull << 20;    // bytes copied at a time
};
struct TorchConvertStats {
  uint64_t tensors = 0;
  uint64_t bytes = 0;
  uint32_t files = 0;
  uint64_t peak_buffer = 0;  // largest transient buffer, bytes
};

// `.bin` model directory → Hugging Face safetensors directory:
// `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json`,
// with every other regular file (config.json, tokenizer, ...) copied.
// Tensors stream through one buffer of at most `buffer_size` bytes. The
// output is staged beside `out_dir` and renamed into place when complete;
// an existing `out_dir` is never touched.
Status ConvertTorchBinDir(Storage& storage, const std::string& in_dir, const std::string& out_dir,
                          const TorchConvertOptions& options = {},
                          TorchConvertStats* stats = nullptr);

}  // namespace ckpt

#endif  // CKPT_TORCH_BIN_H_
