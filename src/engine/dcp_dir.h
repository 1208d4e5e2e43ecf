// Reading a torch.distributed.checkpoint directory (FileSystemWriter's
// `.metadata` + `__{rank}_{k}.distcp`) as a source of saved chunks, so the
// sharded load reshards it like safetensors shards.
#ifndef CKPT_ENGINE_DCP_DIR_H_
#define CKPT_ENGINE_DCP_DIR_H_

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ckpt/comm.h"
#include "ckpt/status.h"
#include "ckpt/storage.h"
#include "engine/shard_dir.h"
#include "format/dcp_metadata.h"

namespace ckpt::engine {

// True when `dir/.metadata` exists.
Result<bool> IsDcpDir(Storage& storage, const std::string& dir);

// Non-collective: parses `.metadata`, checks every entry lies inside its data
// file, and locates each chunk's bytes inside the torch.save archive DCP
// wrote for it (its dtype and shape must be the metadata's, its view
// contiguous). The listing holds the data files; the index every chunk.
Result<SavedCheckpoint> ReadDcpCheckpoint(Storage& storage, const std::string& dir);

// Collective: rank 0 runs ReadDcpCheckpoint and shares the result.
Result<SavedCheckpoint> ReadDcpCheckpointCollective(Communicator& comm, Storage& storage,
                                                    const std::string& dir, Timeout timeout);

// The saved chunks of `dir`, collectively: from its `.metadata` when it is
// a DCP directory, else from its safetensors shards (ReadCheckpointCollective).
Result<SavedCheckpoint> ReadAnyCheckpointCollective(Communicator& comm, Storage& storage,
                                                    const std::string& dir, Timeout timeout);

// The raw bytes of `checkpoint`'s byte entries (torch.save of each object).
Result<std::map<std::string, std::vector<std::byte>>> ReadDcpBytes(
    Storage& storage, const std::string& dir, const SavedCheckpoint& checkpoint);

// ReadDcpCheckpoint's checks, then every entry (each a torch.save archive)
// read whole with each zip record's CRC-32 compared.
Status VerifyDcpDir(Storage& storage, const std::string& dir);

// Writes `blobs` back to back into the new file `staging/file` and makes it
// durable; returns each blob's (offset, length).
Result<std::vector<std::pair<uint64_t, uint64_t>>> WriteDcpDataFile(
    Storage& storage, const std::string& staging, const std::string& file,
    const std::vector<std::string_view>& blobs);

// Coordinator, once every rank's data file is durable: writes `.metadata`
// (WriteDcpMetadata) into `staging`, renames `staging` to `dir` and syncs
// the parent. On failure the staging directory is removed and nothing
// appears at `dir`.
Status PublishDcpDir(Storage& storage, const std::string& staging, const std::string& dir,
                     const DcpMetadata& meta);

}  // namespace ckpt::engine

#endif  // CKPT_ENGINE_DCP_DIR_H_
