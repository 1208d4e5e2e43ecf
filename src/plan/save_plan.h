// Save planning: each rank describes what it holds (a LocalPlan); the plans
// are all-gathered, and every rank computes the same GlobalPlan from them:
// which rank writes which chunk. Pure functions, no I/O, so they can be
// tested and timed with thousands of simulated ranks.
//
// Plans are flat: a LocalPlan keeps its wire bytes (for names) and one array
// of coordinates, so decoding and planning allocate per rank, not per chunk.
#ifndef CKPT_PLAN_SAVE_PLAN_H_
#define CKPT_PLAN_SAVE_PLAN_H_

#include <string>
#include <string_view>
#include <vector>

#include "ckpt/dtype.h"
#include "ckpt/shape.h"
#include "ckpt/state_dict.h"
#include "ckpt/status.h"
#include "plan/box.h"

namespace ckpt::plan {

struct TensorPlan {
  uint32_t name_at = 0;    // fqn bytes in LocalPlan::wire
  uint32_t name_len = 0;
  DType dtype = DType::kF32;
  uint32_t rank = 0;       // number of dimensions
  uint32_t num_chunks = 0;
  uint64_t coords_at = 0;  // global shape (rank values), then per chunk offsets and sizes
};

class LocalPlan {
 public:
  std::vector<TensorPlan> tensors;

  std::string_view fqn(const TensorPlan& t) const { return std::string_view(wire).substr(t.name_at, t.name_len); }
  const uint64_t* global(const TensorPlan& t) const { return coords.data() + t.coords_at; }
  BoxView chunk(const TensorPlan& t, uint32_t j) const {
    const uint64_t* p = coords.data() + t.coords_at + t.rank + 2ull * t.rank * j;
    return BoxView(p, p + t.rank, t.rank);
  }
  Shape GlobalShape(const TensorPlan& t) const {
    return Shape(std::vector<uint64_t>(global(t), global(t) + t.rank));
  }

 private:
  friend Result<LocalPlan> DecodeLocalPlan(std::string wire);
  std::string wire;
  std::vector<uint64_t> coords;
};

// What a rank sends: its tensors' names, dtypes, global shapes and chunks.
std::string EncodeLocalPlan(const StateDict& sd);
Result<LocalPlan> DecodeLocalPlan(std::string wire);

struct WriteItem {
  uint32_t tensor;  // index into the writing rank's tensors (its StateDict and LocalPlan)
  uint32_t chunk;   // index into that tensor's chunks
};

struct GlobalPlan {
  std::vector<std::vector<WriteItem>> writes;  // per rank, in the rank's tensor order
  std::vector<uint64_t> bytes;                 // bytes each rank writes
  size_t num_tensors = 0;
};

// Validates the union of all ranks' plans (same dtype and global shape for a
// fqn everywhere, chunks in bounds, no overlaps, full coverage, at most one
// distinct chunk of a tensor per rank) and assigns every distinct chunk to
// exactly one of the ranks holding it: largest chunks first, each to the
// holder with the fewest bytes so far. Errors name the tensor and chunks.
Result<GlobalPlan> BuildGlobalPlan(const std::vector<LocalPlan>& ranks);

}  // namespace ckpt::plan

#endif  // CKPT_PLAN_SAVE_PLAN_H_
