// Boxes: rectangular chunks of a tensor's index space, and the geometry the
// planners need. Pure functions, no I/O.
#ifndef CKPT_PLAN_BOX_H_
#define CKPT_PLAN_BOX_H_

#include <cstdint>
#include <string>
#include <vector>

#include "ckpt/shape.h"
#include "ckpt/status.h"

namespace ckpt::plan {

struct Box {
  std::vector<uint64_t> offsets;
  std::vector<uint64_t> sizes;
  uint64_t Volume() const;  // callers check bounds first, so no overflow
  bool Empty() const;
  std::string ToString() const;  // "[0:4, 2:6]"
  friend bool operator==(const Box&, const Box&) = default;
  friend auto operator<=>(const Box&, const Box&) = default;
};

// The intersection of a and b; false when they do not overlap (or one is
// empty). Both must have the same rank.
bool Intersect(const Box& a, const Box& b, Box* out);

// Checks that `chunks` exactly tile a tensor of shape `global`: every chunk
// inside the bounds with the right rank, no two overlapping, volumes adding up
// to the tensor's. Errors name the tensor and the chunks. Sub-quadratic for the
// usual layouts: chunks are swept along dimension 0.
Status CheckTiling(const std::string& fqn, const Shape& global, const std::vector<const Box*>& chunks);
Status CheckTiling(const std::string& fqn, const Shape& global, const std::vector<Box>& chunks);

}  // namespace ckpt::plan

#endif  // CKPT_PLAN_BOX_H_
