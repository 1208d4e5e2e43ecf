#include "cli/target.h"

#include <algorithm>
#include <cstdio>

namespace ckpt::cli {
namespace {

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

std::string HumanBytes(uint64_t n) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, kUnits[u]);
  return buf;
}

Result<Target> OpenTarget(Storage& storage, const std::string& path) {
  Target t;
  t.path = path;
  CKPT_ASSIGN_OR_RETURN(DirEntry st, storage.Stat(path));
  if (st.type == EntryType::kFile) {
    t.kind = "file";
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(storage, path));
    t.owned.push_back(std::move(f));
  } else if (st.type == EntryType::kDirectory) {
    CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, storage.List(path));
    bool is_hf = std::any_of(entries.begin(), entries.end(), [](const DirEntry& e) {
      return e.name == kHfIndexName || e.name == kDiffusersIndexName ||
             e.name == kHfSingleFileName;
    });
    if (is_hf) {
      CKPT_ASSIGN_OR_RETURN(HfModelDir m, HfModelDir::Open(storage, path));
      t.kind = m.index() ? "hf-sharded" : "hf-single";
      t.hf = std::move(m);
      for (const auto& f : t.hf->files()) t.files.push_back(f.get());
      for (const auto& [name, loc] : t.hf->tensors()) t.tensors.push_back({name, loc.file, loc.info});
      return t;
    }
    t.kind = "directory";
    for (const DirEntry& e : entries) {
      if (e.type != EntryType::kFile || !EndsWith(e.name, ".safetensors") || e.name[0] == '.') {
        continue;
      }
      CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f,
                            SafetensorsFile::Open(storage, JoinPath(path, e.name)));
      t.owned.push_back(std::move(f));
    }
    if (t.owned.empty()) return NotFoundError(path + ": no .safetensors files in this directory");
    bool sharded = std::any_of(entries.begin(), entries.end(),
                               [](const DirEntry& e) { return e.name == kManifestName; });
    for (const auto& f : t.owned) {
      if (f->header().metadata().count(std::string(kDcpShardingInfoKey))) sharded = true;
    }
    if (sharded) {
      CKPT_ASSIGN_OR_RETURN(ShardedCheckpointInfo info, ReadShardedCheckpoint(storage, path));
      t.kind = "sharded";
      t.sharded = std::move(info);
    }
  } else {
    return FailedPreconditionError(path + ": neither a file nor a directory");
  }
  for (size_t i = 0; i < t.owned.size(); ++i) {
    t.files.push_back(t.owned[i].get());
    for (const TensorInfo& info : t.owned[i]->header().tensors()) {
      t.tensors.push_back({info.name, i, &info});
    }
  }
  std::sort(t.tensors.begin(), t.tensors.end(), [](const Target::Entry& a, const Target::Entry& b) {
    return a.name != b.name ? a.name < b.name : a.file < b.file;
  });
  return t;
}

}  // namespace ckpt::cli
