#include "format/model_dir_writer.h"

#include <cstdio>
#include <vector>

#include "engine/shard_dir.h"

namespace ckpt {

Status BuildInStaging(Storage& storage, const std::string& out_dir,
                      const std::function<Status(const std::string& staging)>& build) {
  CKPT_ASSIGN_OR_RETURN(std::string staging, engine::CreateStagingDir(storage, out_dir));
  Status s = build(staging);
  if (!s.ok()) RemoveAll(storage, staging).IgnoreError();
  return s;
}

std::string ShardedModelFileName(uint32_t i, uint32_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05u-of-%05u.safetensors", i, n);
  return buf;
}

Status FinishConvertedDir(Storage& storage, const std::string& in_dir, const std::set<std::string>& skip,
                          const std::string& staging, const std::string& out_dir, const HfIndex& index) {
  CKPT_RETURN_IF_ERROR(WriteFileAtomically(storage, JoinPath(staging, kHfIndexName), SerializeHfIndex(index)));
  CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, storage.List(in_dir));
  for (const DirEntry& e : entries) {
    if (e.type != EntryType::kFile || skip.count(e.name) || e.name.starts_with(".")) continue;
    if (e.name.ends_with(".safetensors") || e.name == kHfIndexName || e.name == kDiffusersIndexName) continue;
    CKPT_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(storage, JoinPath(in_dir, e.name)));
    CKPT_RETURN_IF_ERROR(WriteFileAtomically(storage, JoinPath(staging, e.name), bytes));
  }
  CKPT_RETURN_IF_ERROR(storage.SyncDir(staging));
  CKPT_RETURN_IF_ERROR(storage.Rename(staging, out_dir));
  return storage.SyncDir(std::string(Dirname(out_dir)));
}

}  // namespace ckpt
