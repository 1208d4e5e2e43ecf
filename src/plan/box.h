// Boxes: rectangular chunks of a tensor's index space, and the geometry the
// planners need. Pure functions, no I/O.
#ifndef CKPT_PLAN_BOX_H_
#define CKPT_PLAN_BOX_H_

#include <cstdint>
#include <string>
#include <string_view>
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

// A box whose coordinates live elsewhere (a plan's flat coordinate array, or
// a Box). Cheap to copy; valid while the coordinates are.
struct BoxView {
  const uint64_t* off = nullptr;
  const uint64_t* size = nullptr;
  uint32_t rank = 0;
  BoxView() = default;
  BoxView(const uint64_t* o, const uint64_t* s, uint32_t r) : off(o), size(s), rank(r) {}
  explicit BoxView(const Box& b)
      : off(b.offsets.data()),
        size(b.sizes.data()),
        rank(static_cast<uint32_t>(b.offsets.size())) {}
  Box ToBox() const { return Box{{off, off + rank}, {size, size + rank}}; }
  std::string ToString() const { return ToBox().ToString(); }
};

// The intersection of a and b; false when they do not overlap (or one is
// empty). Both must have the same rank.
bool Intersect(const Box& a, const Box& b, Box* out);

// Checks that `chunks` exactly tile a tensor of shape `global`: every chunk
// inside the bounds with the right rank, no two overlapping, volumes adding up
// to the tensor's. Errors name the tensor and the chunks. Sub-quadratic for the
// usual layouts: chunks are swept along dimension 0.
Status CheckTiling(std::string_view fqn, const Shape& global, const std::vector<BoxView>& chunks);
Status CheckTiling(std::string_view fqn, const uint64_t* global, uint32_t rank,
                   const std::vector<BoxView>& chunks);
Status CheckTiling(std::string_view fqn, const Shape& global, const std::vector<Box>& chunks);

}  // namespace ckpt::plan

#endif  // CKPT_PLAN_BOX_H_
