// torch.distributed.checkpoint's own format (FileSystemWriter): the
// `.metadata` pickle of a `Metadata` object and the `__{rank}_{k}.distcp`
// data files whose byte ranges it names. See docs/format.md §7.
//
// Reading runs the pickle on the restricted machine of torch_pickle.h in
// its DCP dialect: only DCP's metadata dataclasses, torch.Size, torch dtypes
// and the few helpers their pickles name (torch.serialization._get_layout,
// the memory-format enum, pathlib.PosixPath for StorageMeta.checkpoint_id)
// may appear, and none of them is imported or called. Writing produces a
// protocol-2 pickle that `pickle.load` and `dcp.load` accept.
#ifndef CKPT_FORMAT_DCP_METADATA_H_
#define CKPT_FORMAT_DCP_METADATA_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/dtype.h"
#include "ckpt/status.h"
#include "format/torch_pickle.h"

namespace ckpt {

inline constexpr std::string_view kDcpMetadataName = ".metadata";

// Where an entry's bytes lie: `length` bytes at `offset` of `relative_path`
// (a file name in the checkpoint directory). For a tensor chunk the bytes
// are a torch.save archive of the chunk; for a byte entry, torch.save of
// the object.
struct DcpStorageInfo {
  std::string relative_path;
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct DcpChunk {
  std::vector<uint64_t> offsets;
  std::vector<uint64_t> sizes;
  DcpStorageInfo storage;
};

struct DcpTensor {
  DType dtype = DType::kF32;
  std::vector<uint64_t> size;
  std::vector<DcpChunk> chunks;  // in pickle order
};

struct DcpMetadata {
  std::map<std::string, DcpTensor> tensors;
  std::map<std::string, DcpStorageInfo> bytes;  // BytesStorageMetadata entries
  std::string version;                          // Metadata.version, "" when None
};

// Parses and validates `.metadata`: every tensor chunk lies inside its
// tensor and has exactly one storage entry (matched by fqn and offsets),
// every byte entry has one, storage entries name plain file names, no
// storage entry is left over, and transformed (compressed) entries are
// refused. `source` names the file in errors.
Result<DcpMetadata> ParseDcpMetadata(std::string_view data, std::string_view source,
                                     const PickleLimits& limits = {});

// The pickle of `m` (protocol 2; chunk storage indices are the chunk's
// position in its tensor). InvalidArgument for a dtype torch cannot name.
Result<std::string> WriteDcpMetadata(const DcpMetadata& m);

// "__{rank}_0.distcp", the one data file ckpt writes per rank.
std::string DcpDataFileName(int rank);

}  // namespace ckpt

#endif  // CKPT_FORMAT_DCP_METADATA_H_
