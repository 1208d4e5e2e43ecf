// Pieces shared by the commands that write a new Hugging Face model
// directory from another one (`ckpt convert` of .bin files and of MoE
// experts).
#ifndef CKPT_FORMAT_MODEL_DIR_WRITER_H_
#define CKPT_FORMAT_MODEL_DIR_WRITER_H_

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt {

// "model-00002-of-00005.safetensors".
std::string ShardedModelFileName(uint32_t i, uint32_t n);

// Writes `tensors` into `staging` as model-0000i-of-0000N.safetensors
// (natural name order, a new file when the next tensor would pass
// `max_shard_size`, metadata {"format": "pt"}); `fill` writes each tensor's
// bytes through the file's writer. Fills `index` (weight map, total size)
// and `files`.
Status WriteModelFiles(
    Storage& storage, const std::string& staging, std::vector<TensorSpec> tensors,
    uint64_t max_shard_size,
    const std::function<Status(const TensorSpec& tensor, SafetensorsWriter& out)>& fill,
    HfIndex* index, uint32_t* files);

// Completes a directory built in `staging`: writes `index` as
// model.safetensors.index.json, copies every regular, non-hidden file of
// `in_dir` that is not named in `skip` and holds no safetensors weights
// (config, tokenizer, ...). Publishing `staging` is the caller's
// (BuildDirAtomically in io/staged_dir.h).
Status FinishConvertedDir(Storage& storage, const std::string& in_dir,
                          const std::set<std::string>& skip, const std::string& staging,
                          const HfIndex& index);

}  // namespace ckpt

#endif  // CKPT_FORMAT_MODEL_DIR_WRITER_H_
