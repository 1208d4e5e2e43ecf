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
bool SortedAndDisjointInDim0(const std::vector<const Box*>& chunks) {
  for (size_t i = 1; i < chunks.size(); ++i) {
    if (chunks[i - 1]->offsets[0] + chunks[i - 1]->sizes[0] > chunks[i]->offsets[0]) return false;
  }
  return true;
}

}  // namespace

Status CheckTiling(const std::string& fqn, const Shape& global, const std::vector<Box>& chunks) {
  std::vector<const Box*> ptrs;
  ptrs.reserve(chunks.size());
  for (const Box& b : chunks) ptrs.push_back(&b);
  return CheckTiling(fqn, global, ptrs);
}

Status CheckTiling(const std::string& fqn, const Shape& global, const std::vector<const Box*>& chunks) {
  // Built only when there is something to report.
  auto T = [&] { return "tensor '" + fqn + "' of shape " + global.ToString(); };
  Result<uint64_t> total = global.NumElements();
  if (!total.ok()) return InvalidArgumentError(T() + ": " + total.status().message());
  uint64_t sum = 0;
  for (const Box* bp : chunks) {
    const Box& b = *bp;
    if (b.offsets.size() != global.rank() || b.sizes.size() != global.rank()) {
      return InvalidArgumentError(T() + ": chunk " + b.ToString() + " has rank " +
                                  std::to_string(b.offsets.size()));
    }
    for (size_t d = 0; d < global.rank(); ++d) {
      uint64_t end;
      if (!CheckedAdd(b.offsets[d], b.sizes[d], &end) || end > global[d]) {
        return InvalidArgumentError(T() + ": chunk " + b.ToString() + " is out of bounds in dimension " +
                                    std::to_string(d));
      }
    }
    sum += b.Volume();  // each volume ≤ total: in bounds
  }
  if (global.rank() > 0 && !SortedAndDisjointInDim0(chunks)) {
    // Sweep along dimension 0: only chunks whose dim-0 ranges meet are compared.
    std::vector<size_t> order(chunks.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return chunks[a]->offsets[0] < chunks[b]->offsets[0];
    });
    std::vector<size_t> active;
    for (size_t i : order) {
      const Box& c = *chunks[i];
      if (c.Empty()) continue;
      std::erase_if(active, [&](size_t j) {
        return chunks[j]->offsets[0] + chunks[j]->sizes[0] <= c.offsets[0];
      });
      for (size_t j : active) {
        Box overlap;
        if (Intersect(c, *chunks[j], &overlap)) {
          return InvalidArgumentError(T() + ": chunks " + chunks[j]->ToString() + " and " +
                                      c.ToString() + " overlap in " + overlap.ToString());
        }
      }
      active.push_back(i);
    }
  } else if (global.rank() == 0) {
    size_t nonempty = chunks.size();
    if (nonempty > 1) {
      return InvalidArgumentError(T() + ": " + std::to_string(nonempty) +
                                  " chunks of a scalar overlap");
    }
  }
  if (sum != *total) {
    return InvalidArgumentError(T() + ": chunks cover " + std::to_string(sum) + " of " +
                                std::to_string(*total) + " elements (a hole)");
  }
  return Status();
}

}  // namespace ckpt::plan
