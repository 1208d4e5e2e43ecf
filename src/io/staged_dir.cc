#include "io/staged_dir.h"

#include <algorithm>

#include "core/encoding.h"

namespace ckpt {
namespace {

std::string StagingPrefix(const std::string& dir) {
  return "." + std::string(Basename(dir)) + ".tmp-";
}

}  // namespace

Result<std::string> CreateStagingDir(Storage& storage, const std::string& dir,
                                     std::string_view given) {
  CKPT_ASSIGN_OR_RETURN(bool exists, Exists(storage, dir));
  if (exists) return AlreadyExistsError(dir + " already exists; it is never overwritten");
  std::string token(given);
  if (token.empty()) {
    token = RandomToken();
  } else if (!IsToken(token)) {
    return InvalidArgumentError("staging token '" + token + "' is not 16 lowercase hex digits");
  }
  const std::string parent(Dirname(dir));
  CKPT_RETURN_IF_ERROR(storage.MakeDirs(parent));
  // Staging directories of earlier runs for this same output that were
  // killed before publishing.
  const std::string prefix = StagingPrefix(dir);
  CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> siblings, storage.List(parent));
  for (const DirEntry& e : siblings) {
    const std::string_view rest =
        std::string_view(e.name).substr(std::min(prefix.size(), e.name.size()));
    if (e.type == EntryType::kDirectory && e.name.starts_with(prefix) && IsToken(rest)) {
      CKPT_RETURN_IF_ERROR(RemoveAll(storage, JoinPath(parent, e.name)));
    }
  }
  const std::string staging = JoinPath(parent, prefix + token);
  CKPT_RETURN_IF_ERROR(storage.MakeDirs(staging));
  return staging;
}

Status CommitStagingDir(Storage& storage, const std::string& staging, const std::string& dir) {
  CKPT_RETURN_IF_ERROR(storage.SyncDir(staging));
  CKPT_RETURN_IF_ERROR(storage.Rename(staging, dir));
  return storage.SyncDir(std::string(Dirname(dir)));
}

Status BuildDirAtomically(Storage& storage, const std::string& dir,
                          const std::function<Status(const std::string& staging)>& build) {
  CKPT_ASSIGN_OR_RETURN(std::string staging, CreateStagingDir(storage, dir));
  Status s = build(staging);
  if (s.ok()) s = CommitStagingDir(storage, staging, dir);
  if (!s.ok()) RemoveAll(storage, staging).IgnoreError();
  return s;
}

}  // namespace ckpt
