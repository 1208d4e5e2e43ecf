// Staging memory for asynchronous saves: where a copy of the tensors lives
// while the background writer turns it into files, and how bytes get there.
//
// The host implementation keeps one growing buffer of ordinary pages and
// copies with several threads. A GPU trainer plugs in its own
// implementation here: Reserve would allocate pinned host memory
// (cudaHostAlloc, kept across saves), and Copy would issue cudaMemcpyAsync
// (cudaMemcpy2DAsync for strided rows) of the device chunk on a dedicated
// stream and synchronize that stream before returning, so training kernels
// keep running while the copy engine works. Nothing else in ckpt touches
// the tensors' memory during an asynchronous save.
#ifndef CKPT_STAGING_H_
#define CKPT_STAGING_H_

#include <cstdint>
#include <memory>
#include <span>

#include "ckpt/dtype.h"
#include "ckpt/state_dict.h"
#include "ckpt/status.h"

namespace ckpt {

class StagingMemory {
 public:
  virtual ~StagingMemory() = default;
  // At least `bytes` of staging memory, kept for later saves: the returned
  // span stays valid until the next Reserve. Grows, never shrinks.
  virtual Result<std::span<std::byte>> Reserve(uint64_t bytes) = 0;
  // One copy: bytes [offset, offset + dst.size()) of the chunk, in
  // row-major order (gathered through its strides when it has them).
  struct CopyJob {
    const LocalChunk* chunk;
    DType dtype;
    uint64_t offset;
    std::span<std::byte> dst;
  };
  // Runs every job; returns when all bytes are in place. Implementations
  // spread the work over their copy engines (threads, streams).
  virtual Status Copy(std::span<const CopyJob> jobs) = 0;
  // Bytes currently held.
  virtual uint64_t capacity() const = 0;
};

// Host memory; copies with `threads` threads (0: one per core, at most 8).
std::unique_ptr<StagingMemory> NewHostStagingMemory(unsigned threads = 0);

}  // namespace ckpt

#endif  // CKPT_STAGING_H_
