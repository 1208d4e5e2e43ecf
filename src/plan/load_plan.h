// Load planning: an index of the chunks a checkpoint holds, and the byte
// ranges that fill a local chunk from them. Pure functions, no I/O.
#ifndef CKPT_PLAN_LOAD_PLAN_H_
#define CKPT_PLAN_LOAD_PLAN_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ckpt/dtype.h"
#include "ckpt/shape.h"
#include "ckpt/status.h"
#include "plan/box.h"

namespace ckpt::plan {

struct SavedChunk {
  uint32_t file = 0;         // index into the checkpoint's file list
  Box box;                   // position in the global tensor
  uint64_t data_offset = 0;  // absolute file offset of the chunk's first byte
  bool has_checksum = false;
  uint64_t checksum = 0;  // XXH64 (seed 0) of the chunk's bytes, when recorded
};

struct SavedTensor {
  std::string fqn;
  DType dtype = DType::kF32;
  Shape global;
  std::vector<SavedChunk> chunks;  // sorted by offsets[0]
  uint64_t max_size0 = 0;          // largest chunk extent in dimension 0
};

// Every saved tensor by fqn. Chunks are added file by file; Finalize derives
// the global shapes, sorts each tensor's chunks and checks that they tile it.
class SavedIndex {
 public:
  // `source` names the file in errors.
  Status Add(const std::string& fqn, DType dtype, SavedChunk chunk, const std::string& source);
  Status Finalize();

  const std::map<std::string, SavedTensor>& tensors() const { return tensors_; }
  const SavedTensor* Find(const std::string& fqn) const;
  // Appends the chunks of `t` that overlap `box` (binary search on dim 0).
  static void Overlapping(const SavedTensor& t, const Box& box,
                          std::vector<const SavedChunk*>* out);

 private:
  std::map<std::string, SavedTensor> tensors_;
  std::map<std::string, std::string> first_source_;
};

// One read: `length` bytes at `file_offset`, scattered into the destination
// chunk by `pieces`. Each piece copies `count` elements of `elem_bytes` from
// the window at `window_offset` to the destination at `dest_offset` bytes
// from the chunk's first element, stepping `dest_step` bytes per element
// (== elem_bytes when the destination is contiguous there).
struct ReadOp {
  uint32_t file = 0;
  uint64_t file_offset = 0;
  uint64_t length = 0;
  struct Piece {
    uint64_t window_offset;
    uint64_t dest_offset;
    uint64_t count;
  };
  std::vector<Piece> pieces;
  uint64_t elem_bytes = 1;
  int64_t dest_step = 1;
  // True when the whole window lands contiguously at pieces[0].dest_offset,
  // so it can be read straight into the destination.
  bool Direct() const {
    return pieces.size() == 1 && dest_step == static_cast<int64_t>(elem_bytes) &&
           pieces[0].window_offset == 0 && pieces[0].count * elem_bytes == length;
  }
};

// Appends the reads that copy the overlap of saved chunk `s` and the local
// chunk (`local` box, element `strides`, empty = row-major) into `out`.
// Contiguous runs are coalesced; runs separated by small gaps are merged into
// one read while the extra bytes stay under 5% of the bytes needed.
Status PlanChunkReads(const SavedChunk& s, DType dtype, const Box& local,
                      const std::vector<int64_t>& strides, std::vector<ReadOp>* out);

}  // namespace ckpt::plan

#endif  // CKPT_PLAN_LOAD_PLAN_H_
