// What a model save records for its later Hugging Face export, computed
// apart from the files that hold it (pure functions): the file each tensor
// goes to and the dtype it is exported in (.hf_metadata/'s two mappings),
// and the consolidate.sh script beside the checkpoint.
#ifndef CKPT_CHECKPOINT_EXPORT_LAYOUT_H_
#define CKPT_CHECKPOINT_EXPORT_LAYOUT_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/dtype.h"
#include "ckpt/sharded.h"
#include "ckpt/status.h"

namespace ckpt {

// The base model's layout, when one is known: fqn → 1-based file, and
// fqn → its dtype there (the tensor's original dtype).
struct BaseModelLayout {
  std::map<std::string, uint32_t> files;
  std::map<std::string, DType> dtypes;
};

struct ExportLayout {
  std::map<std::string, uint32_t> files;      // fqn → 1-based output file
  std::map<std::string, std::string> dtypes;  // fqn → "torch.bfloat16" (or the safetensors name)
  uint64_t total_bytes = 0;                   // of every tensor in its export dtype
};

// With a base layout: its files, and tensors the base lacks (new heads) in
// its last file; dtypes from the base where it has the tensor. Without one:
// tensors in natural key order divided by `max_shard_size` (DivideBySize).
Result<ExportLayout> ComputeExportLayout(const std::vector<ShardedTensorInfo>& tensors,
                                         const BaseModelLayout& base, uint64_t max_shard_size);

// consolidate.sh: runs `ckpt consolidate` on the directory it sits in
// (with --diffusers, and --base naming `base_model_dir` when not empty).
std::string ConsolidateScript(bool diffusers, std::string_view base_model_dir);

// `s` quoted for a POSIX shell.
std::string ShellQuote(std::string_view s);

}  // namespace ckpt

#endif  // CKPT_CHECKPOINT_EXPORT_LAYOUT_H_
