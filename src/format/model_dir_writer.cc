#include "format/model_dir_writer.h"

#include <algorithm>
#include <cstdio>
#include <vector>

#include "ckpt/hf.h"

namespace ckpt {

std::string ShardedModelFileName(uint32_t i, uint32_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05u-of-%05u.safetensors", i, n);
  return buf;
}

Status WriteModelFiles(
    Storage& storage, const std::string& staging, std::vector<TensorSpec> tensors,
    uint64_t max_shard_size,
    const std::function<Status(const TensorSpec& tensor, SafetensorsWriter& out)>& fill,
    HfIndex* index, uint32_t* files) {
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorSpec& a, const TensorSpec& b) { return NaturalLess(a.name, b.name); });
  std::vector<uint64_t> sizes;
  for (const TensorSpec& t : tensors) {
    CKPT_ASSIGN_OR_RETURN(uint64_t n, t.shape.NumBytes(t.dtype));
    sizes.push_back(n);
  }
  const std::vector<uint32_t> file_of = DivideBySize(sizes, max_shard_size);
  const uint32_t nfiles = file_of.empty() ? 0 : *std::max_element(file_of.begin(), file_of.end());
  uint64_t total = 0;
  for (uint32_t f = 1; f <= nfiles; ++f) {
    const std::string name = ShardedModelFileName(f, nfiles);
    std::vector<TensorSpec> specs;
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (file_of[i] != f) continue;
      specs.push_back(tensors[i]);
      index->weight_map[tensors[i].name] = name;
      total += sizes[i];
    }
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> w,
                          SafetensorsWriter::Create(storage, JoinPath(staging, name), specs,
                                                    SafetensorsMetadata{{"format", "pt"}}));
    for (const TensorSpec& t : specs) CKPT_RETURN_IF_ERROR(fill(t, *w));
    CKPT_RETURN_IF_ERROR(w->Commit());
  }
  index->total_size = total;
  *files = nfiles;
  return Status();
}

Status FinishConvertedDir(Storage& storage, const std::string& in_dir,
                          const std::set<std::string>& skip, const std::string& staging,
                          const HfIndex& index) {
  CKPT_RETURN_IF_ERROR(
      WriteFileAtomically(storage, JoinPath(staging, kHfIndexName), SerializeHfIndex(index)));
  CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, storage.List(in_dir));
  for (const DirEntry& e : entries) {
    if (e.type != EntryType::kFile || skip.count(e.name) || e.name.starts_with(".")) continue;
    if (e.name.ends_with(".safetensors") || e.name == kHfIndexName || e.name == kDiffusersIndexName)
      continue;
    // Streamed: side files can be large (tf_model.h5, flax_model.msgpack).
    CKPT_RETURN_IF_ERROR(CopyFile(storage, JoinPath(in_dir, e.name), JoinPath(staging, e.name)));
  }
  return Status();
}

}  // namespace ckpt
