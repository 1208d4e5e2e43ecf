#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "ckpt/s3.h"
#include "cli/commands.h"
#include "cli/target.h"

namespace ckpt::cli {

namespace {

// Structure is validated by OpenTarget; this reads the data so that I/O
// errors and files that shrank since the header was read are caught too.
Status VerifyTarget(Storage& storage, const Target& t, bool quick,
                    std::vector<std::string>* warnings, uint64_t* total) {
  *total = 0;
  for (const auto& e : t.tensors) *total += e.info->nbytes();
  if (t.sharded) {
    *total = 0;
    for (const auto& ti : t.sharded->tensors) *total += ti.global.NumBytes(ti.dtype).value();
  }
  if (t.hf && t.hf->index() && t.hf->index()->total_size && *t.hf->index()->total_size != *total) {
    warnings->push_back("index total_size " + std::to_string(*t.hf->index()->total_size) +
                        " differs from the " + std::to_string(*total) +
                        " bytes of the indexed tensors");
  }
  if (t.hf) {
    for (const std::string& name : t.hf->unindexed()) {
      warnings->push_back("tensor '" + name + "' is in a shard but not in the weight map");
    }
  }
  if (quick) return Status();
  if (t.sharded) return VerifyShardedCheckpoint(storage, t.path);
  for (const SafetensorsFile* f : t.files) CKPT_RETURN_IF_ERROR(f->ReadAllData());
  return Status();
}

}  // namespace

int RunVerify(const VerifyOptions& opts) {
  if (IsTorchBinTarget(*PosixStorage(), opts.path)) return VerifyTorchBin(opts);
  std::vector<std::string> warnings;
  uint64_t total = 0;
  Result<StoragePath> where = ResolveStoragePath(opts.path);
  Result<Target> t =
      where.ok() ? OpenTarget(*where->storage, where->path) : Result<Target>(where.status());
  Status s = t.ok() ? VerifyTarget(*where->storage, *t, opts.quick, &warnings, &total) : t.status();
  if (opts.json) {
    nlohmann::json j;
    j["path"] = opts.path;
    j["valid"] = s.ok();
    j["error"] = s.ok() ? nlohmann::json(nullptr) : nlohmann::json(s.ToString());
    j["warnings"] = warnings;
    if (t.ok()) {
      j["num_tensors"] = t->sharded ? t->sharded->tensors.size() : t->tensors.size();
      j["num_files"] = t->files.size();
      j["total_bytes"] = total;
    }
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return s.ok() ? 0 : 1;
  }
  for (const std::string& w : warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  if (!s.ok()) {
    std::fprintf(stderr, "ckpt verify: %s\n", s.ToString().c_str());
    return 1;
  }
  const size_t tensors = t->sharded ? t->sharded->tensors.size() : t->tensors.size();
  std::printf("OK %s: %zu tensors, %s in %zu file%s%s\n", opts.path.c_str(), tensors,
              HumanBytes(total).c_str(), t->files.size(), t->files.size() == 1 ? "" : "s",
              opts.quick ? " (structure only)" : "");
  return 0;
}

}  // namespace ckpt::cli
