// Reading a torch.distributed.checkpoint directory (FileSystemWriter's
// `.metadata` + `__{rank}_{k}.distcp`) as a source of saved chunks, so the
// sharded load reshards it like safetensors shards.
#ifndef CKPT_ENGINE_DCP_DIR_H_
#define CKPT_ENGINE_DCP_DIR_H_

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "ckpt/comm.h"
#include "ckpt/status.h"
#include "ckpt/storage.h"
#include "engine/shard_dir.h"

namespace ckpt::engine {

// True when `dir/.metadata` exists.
Result<bool> IsDcpDir(Storage& storage, const std::string& dir);

// Non-collective: parses `.metadata`, checks every entry lies inside its data
// file, and locates each chunk's bytes inside the torch.save archive DCP
// wrote for it (its dtype and shape must be the metadata's, its view
// contiguous). The listing holds the data files; the index every chunk.
Result<SavedCheckpoint> ReadDcpCheckpoint(Storage& storage, const std::string& dir);

// Collective: rank 0 runs ReadDcpCheckpoint and shares the result.
Result<SavedCheckpoint> ReadDcpCheckpointCollective(Communicator& comm, Storage& storage, const std::string& dir,
                                                    Timeout timeout);

// The raw bytes of `checkpoint`'s byte entries (torch.save of each object).
Result<std::map<std::string, std::vector<std::byte>>> ReadDcpBytes(Storage& storage, const std::string& dir,
                                                                   const SavedCheckpoint& checkpoint);

}  // namespace ckpt::engine

#endif  // CKPT_ENGINE_DCP_DIR_H_
