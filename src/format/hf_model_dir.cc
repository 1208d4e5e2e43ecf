#include <cctype>
#include <set>

#include "ckpt/hf.h"
#include "format/json_util.h"

namespace ckpt {

namespace {

enum class Holds { kNothing, kModel, kIndex };

Result<Holds> WhatItHolds(Storage& storage, const std::string& dir) {
  Result<std::vector<DirEntry>> entries = storage.List(dir);
  if (!entries.ok()) {
    return entries.status().code() == StatusCode::kNotFound ? Result<Holds>(Holds::kNothing)
                                                            : entries.status();
  }
  Holds h = Holds::kNothing;
  for (const DirEntry& e : *entries) {
    if (e.name == kHfIndexName || e.name == kDiffusersIndexName ||
        e.name == "pytorch_model.bin.index.json") {
      return Holds::kIndex;
    }
    if (e.name == kHfSingleFileName || e.name == "pytorch_model.bin") h = Holds::kModel;
  }
  return h;
}

}  // namespace

Result<std::string> ResolveHfModelDir(Storage& storage, const std::string& path,
                                      const std::string& repo_id) {
  std::string repo = path;
  if (!repo_id.empty()) {
    std::string name = "models--" + repo_id;
    for (size_t i = 0; i < name.size(); ++i) {
      if (name[i] == '/') name.replace(i, 1, "--");
    }
    repo = JoinPath(path, name);
  }
  if (repo_id.empty()) {
    CKPT_ASSIGN_OR_RETURN(Holds here, WhatItHolds(storage, path));
    if (here != Holds::kNothing) return path;
  }
  const std::string snapshots = JoinPath(repo, "snapshots");
  Result<std::vector<DirEntry>> revs = storage.List(snapshots);
  if (!revs.ok()) {
    return NotFoundError(repo + ": no model files and no hub-cache snapshots (" +
                         revs.status().message() + ")");
  }
  std::string main_rev;
  if (Result<std::string> ref = ReadFileToString(storage, JoinPath(repo, "refs/main")); ref.ok()) {
    main_rev = *ref;
    while (!main_rev.empty() && std::isspace(static_cast<unsigned char>(main_rev.back())))
      main_rev.pop_back();
  }
  std::string with_index, main_model, any_model;
  for (const DirEntry& e : *revs) {
    if (e.type != EntryType::kDirectory) continue;
    const std::string dir = JoinPath(snapshots, e.name);
    CKPT_ASSIGN_OR_RETURN(Holds h, WhatItHolds(storage, dir));
    if (h == Holds::kIndex && with_index.empty()) with_index = dir;
    if (h != Holds::kNothing && e.name == main_rev) main_model = dir;
    if (h != Holds::kNothing && any_model.empty()) any_model = dir;
  }
  if (!with_index.empty()) return with_index;
  if (!main_model.empty()) return main_model;
  if (!any_model.empty()) return any_model;
  return NotFoundError(snapshots + ": no snapshot holds model files");
}

Result<HfModelDir> HfModelDir::Open(Storage& storage, const std::string& dir) {
  HfModelDir m;
  m.dir_ = dir;
  for (std::string_view name : {kHfIndexName, kDiffusersIndexName}) {
    std::string path = JoinPath(dir, name);
    Result<DirEntry> st = storage.Stat(path);
    if (!st.ok() && st.status().code() == StatusCode::kNotFound) continue;
    CKPT_RETURN_IF_ERROR(st);
    if (st->size > kHfIndexMaxSize) {
      return DataLossError(path + ": index is " + std::to_string(st->size) +
                           " bytes, more than the " + std::to_string(kHfIndexMaxSize) +
                           "-byte limit");
    }
    CKPT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(storage, path));
    CKPT_ASSIGN_OR_RETURN(HfIndex index, ParseHfIndex(text, path));
    CKPT_RETURN_IF_ERROR(CheckIndexedShards(index, path));
    m.index_name_ = std::string(name);
    m.index_ = std::move(index);
    break;
  }

  if (!m.index_) {
    std::string path = JoinPath(dir, kHfSingleFileName);
    CKPT_ASSIGN_OR_RETURN(bool exists, Exists(storage, path));
    if (!exists) {
      return NotFoundError(dir + ": not a Hugging Face model directory (no " +
                           std::string(kHfIndexName) + ", " + std::string(kDiffusersIndexName) +
                           " or " + std::string(kHfSingleFileName) + ")");
    }
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(storage, path));
    for (const TensorInfo& t : f->header().tensors()) m.tensors_.emplace(t.name, Location{0, &t});
    m.files_.push_back(std::move(f));
    return m;
  }

  std::map<std::string, size_t> file_ids;
  for (const auto& [tensor, file] : m.index_->weight_map) file_ids.emplace(file, 0);
  for (auto& [file, id] : file_ids) {
    std::string path = JoinPath(dir, file);
    Result<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(storage, path);
    if (!f.ok()) {
      if (f.status().code() == StatusCode::kNotFound) {
        return NotFoundError(JoinPath(dir, m.index_name_) + ": shard '" + file +
                             "' named in weight_map does not exist");
      }
      return f.status();
    }
    id = m.files_.size();
    m.files_.push_back(std::move(*f));
  }
  for (const auto& [tensor, file] : m.index_->weight_map) {
    size_t id = file_ids.at(file);
    const TensorInfo* info = m.files_[id]->header().Find(tensor);
    if (info == nullptr) {
      return DataLossError(JoinPath(dir, m.index_name_) + ": tensor '" + Printable(tensor) +
                           "' is mapped to '" + file + "' but that shard does not contain it");
    }
    m.tensors_.emplace(tensor, Location{id, info});
  }
  for (const auto& f : m.files_) {
    for (const TensorInfo& t : f->header().tensors()) {
      // Not in the weight map, or a stale copy in a shard the map does not name for it.
      auto it = m.tensors_.find(t.name);
      if (it == m.tensors_.end() || m.files_[it->second.file].get() != f.get())
        m.unindexed_.push_back(t.name);
    }
  }
  return m;
}

}  // namespace ckpt
