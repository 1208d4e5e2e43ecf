// Consolidation: a sharded checkpoint directory → a Hugging Face model
// directory (`model-0000i-of-0000N.safetensors` + index).
//
// Output file i is written by rank (i - 1) mod world, by one of the rank's
// threads. Each saved chunk is streamed straight to its final offset in the
// output file through a bounded buffer, so memory stays small whatever the
// tensor sizes. Files are written into a hidden staging directory beside
// `out_dir`, which is renamed into place once every file and the index are
// durable. Collective: every rank calls it; every rank returns the same
// error when any rank fails, naming the rank.
#ifndef CKPT_CONSOLIDATE_H_
#define CKPT_CONSOLIDATE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/comm.h"
#include "ckpt/dtype.h"
#include "ckpt/hf.h"
#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt {

inline constexpr uint64_t kDefaultMaxShardSize = 5ull << 30;  // 5 GiB, as NeMo

struct ConsolidateOptions {
  Timeout timeout = kDefaultCollectiveTimeout;
  // A Hugging Face model directory whose file layout and dtypes are reused: a
  // tensor goes to the file its index names (`model.safetensors` counts as
  // file 1), and the base's dtype is the tensor's original dtype (ExportDType).
  std::string base_model_dir;
  // Cast ordinary float tensors (never FP8) to this dtype, one of F16, BF16,
  // F32, F64; any other dtype is InvalidArgument.
  std::optional<DType> cast_dtype;
  // Size-based split: a new file when the next tensor would pass this.
  uint64_t max_shard_size = kDefaultMaxShardSize;
  // Instead, divide the tensors equally by count over this many files.
  uint32_t equal_files = 0;
  // Write `diffusion_pytorch_model.safetensors.index.json` and file names.
  bool diffusers = false;
  // Threads per rank writing files (0: one per hardware thread, at most 8).
  unsigned threads = 0;
  // fqn → original dtype. Empty: the base model's dtype of each tensor it
  // has, else <in>/.hf_metadata/fqn_to_dtype_mapping.json's when present.
  std::map<std::string, DType> original_dtypes;
  // fqn → 1-based output file. Empty: from the base model, else
  // <in>/.hf_metadata/fqn_to_file_index_mapping.json, else by size.
  std::map<std::string, uint32_t> fqn_to_file;
  // Called from writer threads with this rank's bytes written so far and its
  // total; must be thread-safe.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

struct ConsolidateStats {
  uint32_t files = 0;  // output files, all ranks
  uint64_t tensors = 0;
  uint64_t bytes = 0;       // tensor bytes in the output, all ranks
  uint64_t rank_bytes = 0;  // tensor bytes this rank wrote
  double seconds = 0;       // wall time of the call on this rank (rank 0: until published)
  std::vector<std::string> warnings;
};

Status Consolidate(Communicator& comm, Storage& storage, const std::string& in_dir,
                   const std::string& out_dir, const ConsolidateOptions& options = {},
                   ConsolidateStats* stats = nullptr);

// "5GiB", "5GB", "512MiB", "123" (bytes). GB/MB/KB are powers of 1000.
Result<uint64_t> ParseByteSize(std::string_view text);

// The dtype a tensor saved as `saved` gets on export (docs/format.md §4):
// originally F32 stays F32; an explicit cast applies to ordinary floats
// only; otherwise a float gets its original float dtype back; an originally
// quantized tensor that is now float stays float (with a warning); without
// an original dtype the saved one is kept.
DType ExportDType(DType saved, std::optional<DType> original, std::optional<DType> cast,
                  std::string* warning);

// The most output files a consolidation writes: file names carry the number
// in five digits ("model-00001-of-99999.safetensors").
inline constexpr uint32_t kMaxOutputFiles = 99999;

// fqn → 1-based file from a base model directory's index; NotFound when it
// has neither an index nor model.safetensors. InvalidArgument, naming the
// file and the tensor, when a file's number is 0, above its "-of-N", above
// kMaxOutputFiles or above the number of distinct files the index names, or
// when the files disagree on N.
Result<std::map<std::string, uint32_t>> FileMappingFromBase(Storage& storage,
                                                            const std::string& dir);

// fqn → dtype of every tensor of a base model directory, from its
// safetensors headers (or its .bin archives when it has no safetensors);
// NotFound when it has neither an index nor a single model file.
Result<std::map<std::string, DType>> DTypesFromBase(Storage& storage, const std::string& dir);

// Checks an fqn → file mapping: every number between 1 and the number of
// distinct files it names (so no output file is empty) and at most
// kMaxOutputFiles. InvalidArgument naming `source`, the tensor and the number.
Status CheckFileNumbers(const std::map<std::string, uint32_t>& mapping, const std::string& source);

}  // namespace ckpt

#endif  // CKPT_CONSOLIDATE_H_
