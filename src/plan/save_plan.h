// Save planning: each rank describes what it holds (a LocalPlan); the plans
// are all-gathered, and every rank computes the same GlobalPlan from them:
// which rank writes which chunk. Pure functions, no I/O, so they can be
// tested and timed with thousands of simulated ranks.
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
  std::string fqn;
  DType dtype = DType::kF32;
  Shape global;
  std::vector<Box> chunks;
};

struct LocalPlan {
  std::vector<TensorPlan> tensors;
};

LocalPlan LocalPlanOf(const StateDict& sd);
std::string EncodeLocalPlan(const LocalPlan& plan);
Result<LocalPlan> DecodeLocalPlan(std::string_view bytes);

struct WriteItem {
  uint32_t tensor;  // index into the writing rank's LocalPlan::tensors
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
