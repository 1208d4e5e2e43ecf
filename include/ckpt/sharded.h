// Sharded checkpoints in the PyTorch DCP Hugging Face layout.
//
// SaveSharded: every rank passes its StateDict; ranks agree on a global
// plan, replicated chunks are written once (balanced by bytes), and each
// writing rank writes `shard-{rank+1:05}-model-00001-of-00001.safetensors`
// whose header shapes are its chunk shapes and whose __metadata__ holds
// DCP_SHARDING_INFO, DCP_VERSION, format, and ckpt's per-chunk checksums.
// Files are written into a hidden staging directory beside `dir`; after
// every rank has synced its file, rank 0 writes the manifest and renames
// the staging directory to `dir`. A directory at `dir` is therefore always a
// complete checkpoint.
//
// LoadSharded: fills every local chunk of a StateDict from any checkpoint
// in that layout (written by ckpt with any number of ranks and any
// sharding, by PyTorch/NeMo, or a plain Hugging Face directory), reading only
// the byte ranges each rank needs.
//
// Both are collective: every rank of the communicator must call them, and
// every rank returns the same error when any rank fails.
#ifndef CKPT_SHARDED_H_
#define CKPT_SHARDED_H_

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/comm.h"
#include "ckpt/state_dict.h"
#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt {

inline constexpr std::string_view kDcpShardingInfoKey = "DCP_SHARDING_INFO";
inline constexpr std::string_view kDcpVersionKey = "DCP_VERSION";
inline constexpr std::string_view kDcpVersion = "1.0";
inline constexpr std::string_view kChunkChecksumKey = "ckpt_chunk_xxh64";
inline constexpr std::string_view kManifestName = "ckpt_manifest.json";
inline constexpr std::string_view kExtraStateName = "ckpt_extra_state.json";

// "shard-00003-model-00001-of-00001.safetensors" for rank 2.
std::string ShardFileName(int rank);

// Hands chunk bytes to a save instead of the chunks' data pointers, so they
// can be produced while the file is written (asynchronous saves stage them
// this way). The save asks for the chunks it writes in state-dict order
// (tensor, then chunk): Next/Release for every piece of each, then Finish.
// Chunks it skips (replicas another rank writes) are never asked for. Only
// the chunks' shapes and offsets are read from the state dict.
class ChunkSource {
 public:
  virtual ~ChunkSource() = default;
  struct ChunkRef {
    uint32_t tensor;  // index into the state dict's tensors
    uint32_t chunk;   // index into that tensor's chunks
  };
  // The next piece of `chunk`'s bytes (row-major); blocks until it is
  // available. Pieces of a chunk come in order and add up to its size.
  virtual Result<std::span<const std::byte>> Next(ChunkRef chunk) = 0;
  // The piece Next returned has been written; its memory may be reused.
  virtual void Release() = 0;
  // The save ended; a failure unblocks whoever produces the bytes.
  virtual void Finish(const Status& result) = 0;
};

struct SaveOptions {
  Timeout timeout = kDefaultCollectiveTimeout;
  ChunkSource* source = nullptr;
};

Status SaveSharded(Communicator& comm, Storage& storage, const std::string& dir,
                   const StateDict& state, const SaveOptions& options = {});

struct LoadOptions {
  Timeout timeout = kDefaultCollectiveTimeout;
  // State-dict tensors absent from the checkpoint are left untouched.
  bool allow_missing = false;
  // Checkpoint tensors no rank asked for are ignored (load a subset).
  bool allow_unexpected = false;
  // Checkpoint keys are renamed before matching: ordered (regex, replacement)
  // pairs; the first pattern that changes a key wins; \1 or $1 for groups.
  std::vector<std::pair<std::string, std::string>> key_mapping;
  // Checkpoint keys starting with one of these are ignored (e.g. task heads).
  std::vector<std::string> skip_prefixes;
  // The model ties lm_head to the embeddings: when the checkpoint has no
  // `lm_head.weight`, fill it from `model.embed_tokens.weight`.
  bool tie_word_embeddings = false;
  // Chunks read whole (every chunk of a same-layout load) are checked
  // against the XXH64 their file records; a mismatch is DataLoss naming the
  // file, tensor and byte range. Partial reads of a resharded load are not
  // checked here (`ckpt verify` checks every chunk).
  bool verify_checksums = true;
  // Ordinary float tensors (F16, BF16, F32, F64) whose checkpoint dtype
  // differs from the state dict's are converted, rounding to nearest even,
  // instead of refused. FP8 and integer tensors are never converted.
  bool cast_floats = false;
  // DeepSeek-V3-style FP8 weights: an F8_E4M3 tensor `X` stored with an F32
  // `X_scale_inv` of shape [ceil(rows/128), ceil(cols/128)] (one scale per
  // 128×128 block, edge blocks partial) loads into a BF16, F16 or F32
  // state-dict tensor as float32(x) × scale, rounded once to the target
  // (nearest even). The `_scale_inv` tensors of such weights are consumed:
  // never matched against the state dict, never reported as unexpected.
  bool dequantize_fp8 = false;
};

// The FP8 block size of `dequantize_fp8`.
inline constexpr uint64_t kFp8BlockSize = 128;
inline constexpr std::string_view kFp8ScaleSuffix = "_scale_inv";

// Applies LoadOptions::key_mapping to one key. InvalidArgument names a bad pattern.
Result<std::string> MapKey(const std::vector<std::pair<std::string, std::string>>& mapping,
                           const std::string& key);

struct LoadStats {
  uint64_t bytes_needed = 0;  // bytes of the local chunks filled
  uint64_t bytes_read = 0;    // bytes read from files
  uint64_t reads = 0;         // read calls issued
  // Keys summary, the same on every rank: state-dict keys the checkpoint
  // lacks (left untouched when allowed) and checkpoint keys no rank asked for.
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
};

Status LoadSharded(Communicator& comm, Storage& storage, const std::string& dir, StateDict& state,
                   const LoadOptions& options = {}, LoadStats* stats = nullptr);

// Every non-tensor entry a sharded checkpoint holds (its json and bytes
// maps; no tensors). Empty when the checkpoint has none.
Result<StateDict> ReadExtraState(Storage& storage, const std::string& dir);

// What a sharded checkpoint directory holds, read by one process.
struct ShardedChunkInfo {
  std::string file;
  std::vector<uint64_t> offsets;
  std::vector<uint64_t> shape;
  std::string checksum;  // hex xxh64, empty when the file has none
};
struct ShardedTensorInfo {
  std::string fqn;
  DType dtype = DType::kF32;
  Shape global;
  std::vector<ShardedChunkInfo> chunks;
};
struct ShardedCheckpointInfo {
  std::vector<std::string> files;
  bool has_manifest = false;
  bool has_sharding_info = false;          // some file carries DCP_SHARDING_INFO
  std::vector<ShardedTensorInfo> tensors;  // sorted by fqn
};

// Reads and validates every header, the sharding info and the manifest;
// checks that each tensor's chunks tile it and agree on dtype.
Result<ShardedCheckpointInfo> ReadShardedCheckpoint(Storage& storage, const std::string& dir);
// ReadShardedCheckpoint plus a full read of every chunk, comparing checksums
// where the files have them.
Status VerifyShardedCheckpoint(Storage& storage, const std::string& dir);

}  // namespace ckpt

#endif  // CKPT_SHARDED_H_
