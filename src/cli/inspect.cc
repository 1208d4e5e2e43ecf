#include <algorithm>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "ckpt/s3.h"
#include "cli/commands.h"
#include "cli/target.h"

namespace ckpt::cli {

namespace {

using json = nlohmann::json;

json ShardedJson(const Target& t) {
  json out = {{"path", t.path},
              {"kind", t.kind},
              {"files", t.sharded->files},
              {"manifest", t.sharded->has_manifest}};
  json tensors = json::array();
  uint64_t total = 0;
  for (const ShardedTensorInfo& ti : t.sharded->tensors) {
    std::vector<std::string> files;
    for (const ShardedChunkInfo& c : ti.chunks) {
      if (std::find(files.begin(), files.end(), c.file) == files.end()) files.push_back(c.file);
    }
    uint64_t bytes = ti.global.NumBytes(ti.dtype).value();
    total += bytes;
    tensors.push_back({{"name", ti.fqn},
                       {"dtype", std::string(DTypeName(ti.dtype))},
                       {"shape", ti.global.dims()},
                       {"bytes", bytes},
                       {"chunks", ti.chunks.size()},
                       {"files", files}});
  }
  out["tensors"] = std::move(tensors);
  out["num_tensors"] = t.sharded->tensors.size();
  out["num_files"] = t.sharded->files.size();
  out["total_bytes"] = total;
  return out;
}

json TargetJson(const Target& t) {
  if (t.sharded) return ShardedJson(t);
  json out;
  out["path"] = t.path;
  out["kind"] = t.kind;
  uint64_t total = 0;
  json files = json::array();
  for (const SafetensorsFile* f : t.files) {
    json jf;
    jf["path"] = f->path();
    jf["file_size"] = f->file_size();
    jf["header_size"] = f->header().header_size();
    jf["num_tensors"] = f->header().tensors().size();
    jf["metadata"] = f->header().has_metadata() ? json(f->header().metadata()) : json(nullptr);
    files.push_back(std::move(jf));
  }
  json tensors = json::array();
  for (const Target::Entry& e : t.tensors) {
    json jt;
    jt["name"] = e.name;
    jt["dtype"] = std::string(DTypeName(e.info->dtype));
    jt["shape"] = e.info->shape.dims();
    jt["bytes"] = e.info->nbytes();
    jt["data_offsets"] = {e.info->begin, e.info->end};
    jt["file"] = std::string(Basename(t.files[e.file]->path()));
    total += e.info->nbytes();
    tensors.push_back(std::move(jt));
  }
  out["files"] = std::move(files);
  out["tensors"] = std::move(tensors);
  out["num_tensors"] = t.tensors.size();
  out["num_files"] = t.files.size();
  out["total_bytes"] = total;
  if (t.hf && t.hf->index()) {
    const HfIndex& idx = *t.hf->index();
    json ji;
    ji["name"] = t.hf->index_name();
    ji["total_size"] = idx.total_size ? json(*idx.total_size) : json(nullptr);
    ji["unindexed_tensors"] = t.hf->unindexed();
    out["index"] = std::move(ji);
  }
  return out;
}

void PrintSharded(const Target& t) {
  const ShardedCheckpointInfo& info = *t.sharded;
  size_t name_w = 4;
  for (const auto& ti : info.tensors) name_w = std::max(name_w, ti.fqn.size());
  name_w = std::min<size_t>(name_w, 60);
  std::printf("%s (sharded checkpoint, %zu file%s%s)\n", t.path.c_str(), info.files.size(),
              info.files.size() == 1 ? "" : "s", info.has_manifest ? ", manifest" : "");
  std::printf("  %-*s  %-11s  %-20s  %12s  %6s  %s\n", static_cast<int>(name_w), "NAME", "DTYPE",
              "GLOBAL SHAPE", "BYTES", "CHUNKS", "FILES");
  uint64_t total = 0;
  for (const ShardedTensorInfo& ti : info.tensors) {
    std::string files;
    for (const ShardedChunkInfo& c : ti.chunks) {
      std::string shard = c.file.substr(0, c.file.find("-model-"));
      if (files.find(shard) == std::string::npos) files += (files.empty() ? "" : ",") + shard;
    }
    uint64_t bytes = ti.global.NumBytes(ti.dtype).value();
    total += bytes;
    std::printf("  %-*s  %-11s  %-20s  %12llu  %6zu  %s\n", static_cast<int>(name_w),
                Shown(ti.fqn).c_str(), std::string(DTypeName(ti.dtype)).c_str(),
                ti.global.ToString().c_str(), static_cast<unsigned long long>(bytes),
                ti.chunks.size(), Shown(files).c_str());
  }
  std::printf("total: %zu tensors, %s (%llu bytes) in %zu file%s\n", info.tensors.size(),
              HumanBytes(total).c_str(), static_cast<unsigned long long>(total), info.files.size(),
              info.files.size() == 1 ? "" : "s");
}

void PrintText(const Target& t) {
  if (t.sharded) return PrintSharded(t);
  size_t name_w = 4;
  for (const auto& e : t.tensors) name_w = std::max(name_w, e.name.size());
  name_w = std::min<size_t>(name_w, 60);
  std::printf("%s (%s, %zu file%s)\n", t.path.c_str(), t.kind.c_str(), t.files.size(),
              t.files.size() == 1 ? "" : "s");
  std::printf("  %-*s  %-11s  %-20s  %12s  %s\n", static_cast<int>(name_w), "NAME", "DTYPE",
              "SHAPE", "BYTES", "FILE");
  uint64_t total = 0;
  for (const auto& e : t.tensors) {
    std::printf("  %-*s  %-11s  %-20s  %12llu  %s\n", static_cast<int>(name_w),
                Shown(e.name).c_str(), std::string(DTypeName(e.info->dtype)).c_str(),
                e.info->shape.ToString().c_str(), static_cast<unsigned long long>(e.info->nbytes()),
                Shown(Basename(t.files[e.file]->path())).c_str());
    total += e.info->nbytes();
  }
  for (const SafetensorsFile* f : t.files) {
    if (!f->header().has_metadata()) continue;
    std::printf("metadata of %s:\n", Shown(Basename(f->path())).c_str());
    for (const auto& [k, v] : f->header().metadata()) {
      std::string shown = v.size() > 200 ? v.substr(0, 200) + "..." : v;
      std::printf("  %s = %s\n", Shown(k).c_str(), Shown(shown).c_str());
    }
  }
  if (t.hf && t.hf->index() && t.hf->index()->total_size) {
    std::printf("index %s: total_size %llu\n", t.hf->index_name().c_str(),
                static_cast<unsigned long long>(*t.hf->index()->total_size));
  }
  std::printf("total: %zu tensors, %s (%llu bytes) in %zu file%s\n", t.tensors.size(),
              HumanBytes(total).c_str(), static_cast<unsigned long long>(total), t.files.size(),
              t.files.size() == 1 ? "" : "s");
}

}  // namespace

int RunInspect(const InspectOptions& opts) {
  if (IsTorchBinTarget(*PosixStorage(), opts.path)) return InspectTorchBin(opts);
  Result<StoragePath> where = ResolveStoragePath(opts.path);
  Result<Target> t =
      where.ok() ? OpenTarget(*where->storage, where->path) : Result<Target>(where.status());
  if (!t.ok()) {
    std::fprintf(stderr, "ckpt inspect: %s\n", t.status().ToString().c_str());
    return 1;
  }
  if (opts.json) {
    std::cout << TargetJson(*t).dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
  } else {
    PrintText(*t);
  }
  return 0;
}

}  // namespace ckpt::cli
