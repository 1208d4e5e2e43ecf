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

// Finds two overlapping boxes among non-empty ones, by guillotine cuts: along
// some dimension the boxes fall into bands whose ranges do not meet (boxes in
// different bands cannot overlap), each band is cut again, and a dimension in
// which all boxes of a band have the same range is dropped. The layouts
// sharding produces (slices along any dimensions, grids of them, uneven ones)
// are cut down to single boxes in O(n log n) per dimension. What cannot be
// cut is compared pairwise in a sweep. All work is counted against a budget
// (linear in the number of boxes), so a hostile layout ends with an error
// instead of running for hours.
class OverlapFinder {
 public:
  OverlapFinder(const std::vector<BoxView>& boxes, uint32_t rank)
      : boxes_(boxes),
        budget_(64 * boxes.size() * (rank + 1) + (uint64_t{1} << 24)),
        left_(budget_) {}

  // False when an overlap was found (first(), second()) or the budget ran out.
  // Bands wait on an explicit stack: no recursion, whatever the layout.
  bool Walk(std::vector<size_t> all, std::vector<uint32_t> all_dims) {
    std::vector<std::pair<std::vector<size_t>, std::vector<uint32_t>>> todo;
    todo.emplace_back(std::move(all), std::move(all_dims));
    while (!todo.empty()) {
      std::vector<size_t> idx = std::move(todo.back().first);
      std::vector<uint32_t> dims = std::move(todo.back().second);
      todo.pop_back();
      for (bool more = true; more && idx.size() > 1;) {
        if (dims.empty()) {  // identical boxes
          found_ = {idx[0], idx[1]};
          return false;
        }
        more = false;
        bool banded = false;
        for (size_t k = 0; k < dims.size() && !more && !banded; ++k) {
          const uint32_t d = dims[k];
          if (!Spend(idx.size())) return false;
          std::stable_sort(idx.begin(), idx.end(),
                           [&](size_t a, size_t b) { return Off(a, d) < Off(b, d); });
          const bool same = std::all_of(idx.begin(), idx.end(), [&](size_t i) {
            return Off(i, d) == Off(idx[0], d) && End(i, d) == End(idx[0], d);
          });
          if (same) {
            dims.erase(dims.begin() + static_cast<ptrdiff_t>(k));
            more = true;
            break;
          }
          // Bands: runs of boxes whose ranges in d are connected.
          size_t from = 0;
          uint64_t reach = End(idx[0], d);
          for (size_t i = 1; i <= idx.size(); ++i) {
            if (i < idx.size() && Off(idx[i], d) < reach) {
              reach = std::max(reach, End(idx[i], d));
              continue;
            }
            if (from == 0 && i == idx.size()) break;  // one band: try another dimension
            todo.emplace_back(std::vector<size_t>(idx.begin() + static_cast<ptrdiff_t>(from),
                                                  idx.begin() + static_cast<ptrdiff_t>(i)),
                              dims);
            banded = true;
            from = i;
            if (i < idx.size()) reach = End(idx[i], d);
          }
        }
        if (!more && !banded && !Sweep(std::move(idx), dims[0])) return false;
      }
    }
    return true;
  }

  size_t first() const { return found_.first; }
  size_t second() const { return found_.second; }
  bool exhausted() const { return left_ == 0; }
  uint64_t budget() const { return budget_; }

 private:
  uint64_t Off(size_t i, uint32_t d) const { return boxes_[i].off[d]; }
  uint64_t End(size_t i, uint32_t d) const { return boxes_[i].off[d] + boxes_[i].size[d]; }
  bool Spend(uint64_t n) {
    if (n >= left_) {
      left_ = 0;
      return false;
    }
    left_ -= n;
    return true;
  }
  // Pairwise along d among boxes whose ranges in d meet.
  bool Sweep(std::vector<size_t> idx, uint32_t d) {
    std::stable_sort(idx.begin(), idx.end(),
                     [&](size_t a, size_t b) { return Off(a, d) < Off(b, d); });
    std::vector<size_t> active;
    for (size_t i : idx) {
      if (!Spend(active.size() + 1)) return false;
      std::erase_if(active, [&](size_t j) { return End(j, d) <= Off(i, d); });
      for (size_t j : active) {
        if (!Spend(1)) return false;
        bool meet = true;
        for (uint32_t e = 0; e < boxes_[i].rank && meet; ++e)
          meet = Off(i, e) < End(j, e) && Off(j, e) < End(i, e);
        if (meet) {
          found_ = {j, i};
          return false;
        }
      }
      active.push_back(i);
    }
    return true;
  }

  const std::vector<BoxView>& boxes_;
  const uint64_t budget_;
  uint64_t left_;
  std::pair<size_t, size_t> found_{0, 0};
};

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
    return "tensor '" + std::string(fqn) + "' of shape " +
           Shape(std::vector<uint64_t>(global, global + rank)).ToString();
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
      return InvalidArgumentError(T() + ": chunk " + b.ToString() + " has rank " +
                                  std::to_string(b.rank));
    }
    uint64_t volume = 1;
    for (uint32_t d = 0; d < rank; ++d) {
      uint64_t end;
      if (!CheckedAdd(b.off[d], b.size[d], &end) || end > global[d]) {
        return InvalidArgumentError(T() + ": chunk " + b.ToString() +
                                    " is out of bounds in dimension " + std::to_string(d));
      }
      volume *= b.size[d];  // in bounds: no overflow
    }
    sum += volume;
  }
  if (rank > 0 && !SortedAndDisjointInDim0(chunks)) {
    OverlapFinder finder(chunks, rank);
    std::vector<size_t> nonempty;
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (!EmptyBox(chunks[i])) nonempty.push_back(i);
    }
    std::vector<uint32_t> dims(rank);
    std::iota(dims.begin(), dims.end(), 0u);
    if (!finder.Walk(std::move(nonempty), std::move(dims))) {
      if (finder.exhausted()) {
        return InvalidArgumentError(
            T() + ": " + std::to_string(chunks.size()) +
            " chunks are laid out too irregularly to check for overlaps within " +
            std::to_string(finder.budget()) + " steps");
      }
      const BoxView& a = chunks[finder.first()];
      const BoxView& b = chunks[finder.second()];
      Box overlap;
      Intersect(a.ToBox(), b.ToBox(), &overlap);
      return InvalidArgumentError(T() + ": chunks " + a.ToString() + " and " + b.ToString() +
                                  " overlap in " + overlap.ToString());
    }
  } else if (rank == 0 && chunks.size() > 1) {
    return InvalidArgumentError(T() + ": " + std::to_string(chunks.size()) +
                                " chunks of a scalar overlap");
  }
  if (sum != *total) {
    return InvalidArgumentError(T() + ": chunks cover " + std::to_string(sum) + " of " +
                                std::to_string(*total) + " elements (a hole)");
  }
  return Status();
}

}  // namespace ckpt::plan
