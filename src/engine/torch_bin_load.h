// Loading a state dict from a `.bin` model directory (see torch_bin_load.cc).
#ifndef CKPT_ENGINE_TORCH_BIN_LOAD_H_
#define CKPT_ENGINE_TORCH_BIN_LOAD_H_

#include <string>
#include <vector>

#include "ckpt/comm.h"
#include "ckpt/sharded.h"
#include "ckpt/state_dict.h"
#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt::engine {

// Pieces of the key report every load makes (sharded_load.cc): up to `max`
// sorted examples; a dtype/shape mismatch line; the one error naming the
// missing, unexpected and mismatched keys (OK when none is refused), after
// `msg` when it is not empty.
std::string KeyList(std::vector<std::string> v, size_t max = 10);
std::string MismatchLine(const std::string& fqn, DType saved_dtype, const Shape& saved_shape,
                         const DistTensor& t);
Status KeysError(const std::string& dir, std::string msg, const LoadStats& stats,
                 const std::vector<std::string>& mismatch, const LoadOptions& o);

// True when `dir` is a directory with `.bin` weights and no safetensors.
Result<bool> IsTorchBinOnlyDir(Storage& storage, const std::string& dir);

// LoadSharded's semantics (key mapping, skipped prefixes, tied embeddings,
// missing/unexpected keys, float casts, one error on every rank) for a `.bin`
// directory. Each rank reads only the bytes of its chunks; transient memory
// is one row of a chunk (or the chunk, when it is a contiguous run that
// needs converting).
Status LoadTorchBin(Communicator& comm, Storage& storage, const std::string& dir, StateDict& sd,
                    const LoadOptions& o, LoadStats* stats);

}  // namespace ckpt::engine

#endif  // CKPT_ENGINE_TORCH_BIN_LOAD_H_
