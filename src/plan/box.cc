#include "plan/box.h"

#include <algorithm>
#include <numeric>

namespace ckpt::plan {

uint64_t Box::Volume() const {
  uint64_t v = 1;
  for (uint64_t s : sizes) v *= s;
  return v;
}

bool Box::Empty() const {
  return std::any_of(sizes.begin(), sizes.end(), [](uint64_t s) { return s == 0; });
}

std::string Box::ToString() const {
  std::string s = "[";
  for (size_t d = 0; d < offsets.size(); ++d) {
    if (d) s += ", ";
    s += std::to_string(offsets[d]) + ":" + std::to_string(offsets[d] + sizes[d]);
  }
  return s + "]";
}

bool Intersect(const Box& a, const Box& b, Box* out) {
  const size_t n = a.offsets.size();
  out->offsets.resize(n);
  out->sizes.resize(n);
  for (size_t d = 0; d < n; ++d) {
    uint64_t lo = std::max(a.offsets[d], b.offsets[d]);
    uint64_t hi = std::min(a.offsets[d] + a.sizes[d], b.offsets[d] + b.sizes[d]);
    if (hi <= lo) return false;
    out->offsets[d] = lo;
    out->sizes[d] = hi - lo;
  }
  return true;
}

namespace {

// The usual layouts (slices along dimension 0, in order) need no sweep.
bool SortedAndDisjointInDim0(const std::vector<BoxView>& chunks) {
  for (size_t i = 1; i < chunks.size(); ++i) {
    if (chunks[i - 1].off[0] + chunks[i - 1].size[0] > chunks[i].off[0]) return false;
  }
  return true;
}

bool EmptyBox(const BoxView& b) {
  for (uint32_t d = 0; d < b.rank; ++d) {
    if (b.size[d] == 0) return true;
  }
  return false;
}

}  // namespace

Status CheckTiling(std::string_view fqn, const Shape& global, const std::vector<Box>& chunks) {
  std::vector<BoxView> views;
  views.reserve(chunks.size());
  for (const Box& b : chunks) views.emplace_back(b);
  for (const Box& b : chunks) {
    if (b.sizes.size() != b.offsets.size()) {
      return InvalidArgumentError("tensor '" + std::string(fqn) + "': chunk with " +
                                  std::to_string(b.offsets.size()) + " offsets and " +
                                  std::to_string(b.sizes.size()) + " sizes");
    }
  }
  return CheckTiling(fqn, global, views);
}

Status CheckTiling(std::string_view fqn, const Shape& global, const std::vector<BoxView>& chunks) {
  return CheckTiling(fqn, global.dims().data(), static_cast<uint32_t>(global.rank()), chunks);
}

Status CheckTiling(std::string_view fqn, const uint64_t* global, uint32_t rank,
                   const std::vector<BoxView>& chunks) {
  // Built only when there is something to report.
  auto T = [&] {
    return "tensor '" + std::string(fqn) + "' of shape " + Shape(std::vector<uint64_t>(global, global + rank)).ToString();
  };
  uint64_t elements = 1;
  for (uint32_t d = 0; d < rank; ++d) {
    if (!CheckedMul(elements, global[d], &elements)) {
      return InvalidArgumentError(T() + ": element count overflows 64 bits");
    }
  }
  const uint64_t* total = &elements;
  uint64_t sum = 0;
  for (const BoxView& b : chunks) {
    if (b.rank != rank) {
      return InvalidArgumentError(T() + ": chunk " + b.ToString() + " has rank " + std::to_string(b.rank));
    }
    uint64_t volume = 1;
    for (uint32_t d = 0; d < rank; ++d) {
      uint64_t end;
      if (!CheckedAdd(b.off[d], b.size[d], &end) || end > global[d]) {
        return InvalidArgumentError(T() + ": chunk " + b.ToString() + " is out of bounds in dimension " +
                                    std::to_string(d));
      }
      volume *= b.size[d];  // in bounds: no overflow
    }
    sum += volume;
  }
  if (rank > 0 && !SortedAndDisjointInDim0(chunks)) {
    // Sweep along dimension 0: only chunks whose dim-0 ranges meet are compared.
    std::vector<size_t> order(chunks.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return chunks[a].off[0] < chunks[b].off[0]; });
    std::vector<size_t> active;
    for (size_t i : order) {
      const BoxView& c = chunks[i];
      if (EmptyBox(c)) continue;
      std::erase_if(active, [&](size_t j) { return chunks[j].off[0] + chunks[j].size[0] <= c.off[0]; });
      for (size_t j : active) {
        Box overlap;
        if (Intersect(c.ToBox(), chunks[j].ToBox(), &overlap)) {
          return InvalidArgumentError(T() + ": chunks " + chunks[j].ToString() + " and " + c.ToString() +
                                      " overlap in " + overlap.ToString());
        }
      }
      active.push_back(i);
    }
  } else if (rank == 0 && chunks.size() > 1) {
    return InvalidArgumentError(T() + ": " + std::to_string(chunks.size()) + " chunks of a scalar overlap");
  }
  if (sum != *total) {
    return InvalidArgumentError(T() + ": chunks cover " + std::to_string(sum) + " of " +
                                std::to_string(*total) + " elements (a hole)");
  }
  return Status();
}

}  // namespace ckpt::plan
