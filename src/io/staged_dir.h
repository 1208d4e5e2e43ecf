// Building a new directory that appears at its destination whole or not at
// all: the directory counterpart of AtomicFileWriter.
//
// Protocol: refuse an existing `dir` (never overwritten) → remove the staging
// directories earlier runs for `dir` left behind → create
// "<parent>/.<name>.tmp-<token>" → the caller fills it (files through
// AtomicFileWriter) → CommitStagingDir: fsync the staging directory → rename
// it to `dir` → fsync the parent. A crash at any point leaves either no `dir`
// or the complete one; a leftover staging directory is hidden and removed by
// the next run for the same `dir` (one writer per output directory).
//
// Everything goes through Storage, so a backend decides what "rename" and
// "fsync" mean for it.
#ifndef CKPT_IO_STAGED_DIR_H_
#define CKPT_IO_STAGED_DIR_H_

#include <functional>
#include <string>
#include <string_view>

#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt {

// Creates the staging directory for a new `dir` and returns its path.
// AlreadyExists when `dir` exists. `token` (16 lowercase hex digits, else
// InvalidArgument) names it instead of a random one, for callers whose ranks
// must derive the same name without talking.
Result<std::string> CreateStagingDir(Storage& storage, const std::string& dir,
                                     std::string_view token = {});

// Publishes a filled staging directory at `dir`: fsync, rename, fsync of the
// parent. On error the staging directory is left for the caller to remove.
Status CommitStagingDir(Storage& storage, const std::string& staging, const std::string& dir);

// CreateStagingDir, `build` on the staging path, CommitStagingDir; the
// staging directory is removed when a step fails.
Status BuildDirAtomically(Storage& storage, const std::string& dir,
                          const std::function<Status(const std::string& staging)>& build);

}  // namespace ckpt

#endif  // CKPT_IO_STAGED_DIR_H_
