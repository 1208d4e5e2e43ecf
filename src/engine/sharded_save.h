// The steps of SaveSharded, for callers that coordinate ranks themselves
// (the torch.distributed.checkpoint plugin lets DCP plan and gather, and
// uses these to write files and publish).
#ifndef CKPT_ENGINE_SHARDED_SAVE_H_
#define CKPT_ENGINE_SHARDED_SAVE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "ckpt/sharded.h"
#include "plan/save_plan.h"

namespace ckpt::engine {

struct WrittenShard {
  std::string file;         // name inside the staging directory
  uint64_t size = 0;        // bytes
  std::string header_hash;  // HeaderHash of its length prefix and header
};

// Checks a state dict's chunks against their tensors (ranks, strides, data).
Status CheckLocalState(const StateDict& sd);

// Collective: every rank's plan gathered (compact when the ranks hold the
// same tensors, full otherwise) and the same global plan built on every rank.
Result<plan::GlobalPlan> AgreeOnSavePlan(Communicator& comm, const StateDict& sd, Timeout timeout);

// Writes `file` in `staging`: the chunks `writes` lists (every chunk of `sd`
// when null), with DCP_SHARDING_INFO and per-chunk XXH64 checksums, durably.
Result<WrittenShard> WriteShardFile(Storage& storage, const std::string& staging,
                                    const std::string& file, const StateDict& sd,
                                    const std::vector<plan::WriteItem>* writes,
                                    ChunkSource* source);

// The JSON of ckpt_extra_state.json for a state dict's non-tensor entries.
std::string EncodeExtraState(const StateDict& sd);

// The last step, run by one process once every shard is durable: writes the
// manifest (and the extra state when `extra` has entries), renames `staging`
// to `dir` and fsyncs the parent. On failure the staging directory is removed.
Status PublishStagingDir(Storage& storage, const std::string& staging, const std::string& dir,
                         const std::vector<WrittenShard>& shards, int world_size,
                         const StateDict* extra);

}  // namespace ckpt::engine

#endif  // CKPT_ENGINE_SHARDED_SAVE_H_
