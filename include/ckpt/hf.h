// Hugging Face model directories: `model.safetensors`, or shards
// `model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`
// (diffusers: `diffusion_pytorch_model.safetensors.index.json`).
#ifndef CKPT_HF_H_
#define CKPT_HF_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/safetensors.h"
#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt {

inline constexpr std::string_view kHfIndexName = "model.safetensors.index.json";
inline constexpr std::string_view kDiffusersIndexName =
    "diffusion_pytorch_model.safetensors.index.json";
inline constexpr std::string_view kHfSingleFileName = "model.safetensors";
// Largest index file read (real ones are a few MB).
inline constexpr uint64_t kHfIndexMaxSize = 100'000'000;

// Files in a sharded checkpoint's `.hf_metadata/` that describe the export:
// fqn → 1-based output file, and fqn → original (torch) dtype name.
inline constexpr std::string_view kHfMetadataDir = ".hf_metadata";
inline constexpr std::string_view kFileMappingName = "fqn_to_file_index_mapping.json";
inline constexpr std::string_view kDtypeMappingName = "fqn_to_dtype_mapping.json";

// The side files an export copies from `.hf_metadata/`: plain, visible,
// UTF-8 names of the kinds Hugging Face models ship (*.json, *.txt, *.model,
// *.jinja, *.py, *.tiktoken, *.md) that are not an index (*.index.json), not
// ckpt's own files (the two mappings, ckpt_*) and so never a name the export
// writes itself.
bool IsHfArtifactName(std::string_view name);

// Key order of exported files: digit runs compare as numbers, so
// "model.layers.10.x" sorts after "model.layers.9.x".
bool NaturalLess(const std::string& a, const std::string& b);

// 1-based file per key, keys in the given order. By size: greedy, a new
// file when the current one is not empty and the next tensor would pass
// `target`. Equally: `files` files, counts differing by at most one, the
// first files taking the extra keys.
std::vector<uint32_t> DivideBySize(const std::vector<uint64_t>& bytes, uint64_t target);
std::vector<uint32_t> DivideEqually(size_t keys, uint32_t files);

struct HfIndex {
  std::optional<uint64_t> total_size;
  // Other "metadata" entries, each as compact JSON text, kept so a rewritten
  // index loses nothing.
  std::map<std::string, std::string> extra_metadata;
  std::map<std::string, std::string> weight_map;  // tensor → shard file name
};

// Parses an index; rejects weight-map values that are not plain file names
// (absolute, containing '/' or '\\', "." or ".."). `source` names the file.
Result<HfIndex> ParseHfIndex(std::string_view text, std::string_view source);
// As transformers writes it: sorted keys, 2-space indent, ASCII escapes,
// trailing newline.
std::string SerializeHfIndex(const HfIndex& index);
// OK when `name` is a plain file name inside the model directory.
Status CheckShardFileName(std::string_view name);
// What safetensors loaders read through an index: a non-empty weight map
// whose files are visible `*.safetensors` files. DataLoss naming `source`,
// the tensor and the file otherwise.
Status CheckIndexedShards(const HfIndex& index, std::string_view source);

// The model directory `path` names: `path` itself when it holds model files
// (an index, model.safetensors, or pytorch_model*.bin); for a hub cache entry
// (`.../models--org--name`, or a cache root with `repo_id` "org/name"), the
// snapshot under `snapshots/` that has an index file, else the one `refs/main`
// names, else the first with model files. NotFound when none qualifies.
Result<std::string> ResolveHfModelDir(Storage& storage, const std::string& path,
                                      const std::string& repo_id = "");

// An opened model directory: every shard's header, and which file holds
// which tensor. Opening checks that every shard exists and that every
// weight-map tensor is in its shard.
class HfModelDir {
 public:
  struct Location {
    size_t file;  // index into files()
    const TensorInfo* info;
  };

  static Result<HfModelDir> Open(Storage& storage, const std::string& dir);

  const std::string& dir() const { return dir_; }
  // Index file name, empty for a single-file model.
  const std::string& index_name() const { return index_name_; }
  const std::optional<HfIndex>& index() const { return index_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // Every tensor the model exposes, by name.
  const std::map<std::string, Location>& tensors() const { return tensors_; }
  // Tensors present in a shard but absent from the weight map; loaders
  // ignore them.
  const std::vector<std::string>& unindexed() const { return unindexed_; }

 private:
  std::string dir_;
  std::string index_name_;
  std::optional<HfIndex> index_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Location> tensors_;
  std::vector<std::string> unindexed_;
};

}  // namespace ckpt

#endif  // CKPT_HF_H_
