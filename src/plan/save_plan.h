// Save planning: each rank describes what it holds (a LocalPlan); the plans
// are all-gathered, and every rank computes the same GlobalPlan from them:
// which rank writes which chunk. Pure functions, no I/O, so they can be
// tested and timed with thousands of simulated ranks.
//
// Two encodings travel. The usual one is compact: a digest of the rank's
// tensor table (names, dtypes, global shapes) and its chunks' coordinates
// only. When every rank's digest is the same (ranks of one model hold the
// same tensors) each rank decodes everyone's chunks against its own table,
// and names never cross the wire. Otherwise the ranks exchange full plans,
// which carry their tables, and the planner reports how they differ.
//
// Plans are flat: a table is shared by the ranks that have it, and a
// LocalPlan keeps one array of chunk coordinates, so decoding and planning
// allocate per rank, not per chunk.
#ifndef CKPT_PLAN_SAVE_PLAN_H_
#define CKPT_PLAN_SAVE_PLAN_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/dtype.h"
#include "ckpt/shape.h"
#include "ckpt/state_dict.h"
#include "ckpt/status.h"
#include "plan/box.h"

namespace ckpt::plan {

// One rank's tensors without their chunks.
class TensorTable {
 public:
  static std::shared_ptr<const TensorTable> Of(const StateDict& sd);

  size_t size() const { return entries_.size(); }
  std::string_view fqn(size_t t) const {
    return std::string_view(names_).substr(entries_[t].name_at, entries_[t].name_len);
  }
  DType dtype(size_t t) const { return entries_[t].dtype; }
  uint32_t rank(size_t t) const { return entries_[t].rank; }  // number of dimensions
  const uint64_t* global(size_t t) const { return dims_.data() + entries_[t].dims_at; }
  Shape GlobalShape(size_t t) const {
    return Shape(std::vector<uint64_t>(global(t), global(t) + rank(t)));
  }

 private:
  friend class PlanDecoder;
  struct Entry {
    uint32_t name_at = 0;  // into names_
    uint32_t name_len = 0;
    DType dtype = DType::kF32;
    uint32_t rank = 0;
    uint64_t dims_at = 0;  // into dims_
  };
  std::string names_;
  std::vector<Entry> entries_;
  std::vector<uint64_t> dims_;
};

class LocalPlan {
 public:
  const TensorTable& table() const { return *table_; }
  bool SharesTableWith(const LocalPlan& o) const { return table_ == o.table_; }
  size_t size() const { return at_.size(); }  // tensors
  uint32_t num_chunks(size_t t) const { return at_[t].num_chunks; }
  BoxView chunk(size_t t, uint32_t j) const {
    const uint32_t r = table_->rank(t);
    const uint64_t* p = coords_.get() + at_[t].coords_at + 2ull * r * j;
    return BoxView(p, p + r, r);
  }

 private:
  friend class PlanDecoder;
  struct At {
    uint64_t coords_at = 0;  // offsets then sizes of each chunk, into coords_
    uint32_t num_chunks = 0;
  };
  std::shared_ptr<const TensorTable> table_;
  std::vector<At> at_;
  std::unique_ptr<uint64_t[]> coords_;  // not value-initialized: filled by the decoder
};

// The compact encoding: the table's digest and the chunks. A rank whose
// chunks do not match its tensors' ranks sends a marker instead, which makes
// every rank fall back to full plans (whose planner names the problem).
std::string EncodeChunkPlan(const StateDict& sd);
// Every rank's compact plan decoded against `own` (this rank's table), or
// nullopt when any rank's table differs or any rank sent the marker; every
// rank reaches the same answer from the same inputs.
Result<std::optional<std::vector<LocalPlan>>> DecodeChunkPlans(
    std::shared_ptr<const TensorTable> own, std::vector<std::string> wires);

// The full encoding: names, dtypes, global shapes and chunks.
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
