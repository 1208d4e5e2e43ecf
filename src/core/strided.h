// Walking a strided array in row-major order, one home for every copy
// between a strided tensor and contiguous bytes.
//
// The trailing dimensions whose strides make them contiguous are merged into
// one run, so a row-major or row-sliced view costs one memcpy (or one call)
// per run instead of one per element.
#ifndef CKPT_CORE_STRIDED_H_
#define CKPT_CORE_STRIDED_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace ckpt {

struct StridedLayout {
  std::vector<uint64_t> shape;
  std::vector<int64_t> strides;  // in elements; empty = contiguous row-major
  uint64_t elem_bytes = 1;
};

namespace strided_internal {

// The trailing dimensions laid out contiguously (stride 1, then the product
// of the sizes after it; size-1 dimensions fit anywhere) are merged into one
// run. Returns how many leading dimensions remain to be iterated; *run gets
// the run's length in elements.
inline size_t OuterDims(const StridedLayout& l, uint64_t* run) {
  size_t outer = l.shape.size();
  *run = 1;
  while (outer > 0) {
    const size_t d = outer - 1;
    if (l.shape[d] != 1 && l.strides[d] != static_cast<int64_t>(*run)) break;
    *run *= l.shape[d];
    --outer;
  }
  return outer;
}

inline uint64_t NumElements(const StridedLayout& l) {
  uint64_t total = 1;
  for (uint64_t d : l.shape) total *= d;
  return total;
}

}  // namespace strided_internal

// Calls fn(byte_offset, bytes) for the elements [first, first + count) of the
// array in row-major order, one call per contiguous run (the first and last
// runs may be partial). Offsets are relative to the first element and may be
// negative for negative strides. The range must lie inside the array.
template <typename Fn>
void ForEachRunInRange(const StridedLayout& l, uint64_t first, uint64_t count, Fn fn) {
  if (count == 0) return;
  const auto esz = static_cast<int64_t>(l.elem_bytes);
  if (l.strides.empty()) {
    fn(static_cast<int64_t>(first) * esz, count * l.elem_bytes);
    return;
  }
  uint64_t run = 1;
  const size_t outer = strided_internal::OuterDims(l, &run);
  uint64_t within = first % run;
  std::vector<uint64_t> idx(outer, 0);
  for (uint64_t rest = first / run, d = outer; d-- > 0;) {
    idx[d] = rest % l.shape[d];
    rest /= l.shape[d];
  }
  while (count > 0) {
    int64_t off = static_cast<int64_t>(within);
    for (size_t d = 0; d < outer; ++d) off += static_cast<int64_t>(idx[d]) * l.strides[d];
    const uint64_t n = std::min(run - within, count);
    fn(off * esz, n * l.elem_bytes);
    count -= n;
    within = 0;
    for (size_t d = outer; d-- > 0;) {
      if (++idx[d] < l.shape[d]) break;
      idx[d] = 0;
    }
  }
}

// Calls fn(byte_offset_of_run_start, run_bytes) for every contiguous run of
// the array in row-major order; offsets are relative to the first element
// and may be negative for negative strides. Returns the first non-OK value
// fn returns (fn returns a type with ok()).
template <typename Fn>
auto ForEachRun(const StridedLayout& l, Fn fn) -> decltype(fn(int64_t{}, uint64_t{})) {
  using R = decltype(fn(int64_t{}, uint64_t{}));
  const uint64_t total = strided_internal::NumElements(l);
  if (total == 0) return R();
  if (l.strides.empty()) return fn(0, total * l.elem_bytes);
  uint64_t run = 1;
  const size_t outer = strided_internal::OuterDims(l, &run);
  const uint64_t run_bytes = run * l.elem_bytes;
  std::vector<uint64_t> idx(outer, 0);
  const uint64_t runs = total / run;
  for (uint64_t r = 0; r < runs; ++r) {
    int64_t off = 0;
    for (size_t d = 0; d < outer; ++d) off += static_cast<int64_t>(idx[d]) * l.strides[d];
    R s = fn(off * static_cast<int64_t>(l.elem_bytes), run_bytes);
    if (!s.ok()) return s;
    for (size_t d = outer; d-- > 0;) {
      if (++idx[d] < l.shape[d]) break;
      idx[d] = 0;
    }
  }
  return R();
}

// Copies elements [first, first + count) of the strided array at `base`, in
// row-major order, to the contiguous `dst`.
inline void GatherElements(const StridedLayout& l, const std::byte* base, uint64_t first,
                           uint64_t count, std::byte* dst) {
  ForEachRunInRange(l, first, count, [&](int64_t off, uint64_t bytes) {
    std::memcpy(dst, base + off, bytes);
    dst += bytes;
  });
}

// Copies the whole strided array at `base` to the contiguous `dst`.
inline void GatherAll(const StridedLayout& l, const std::byte* base, std::byte* dst) {
  GatherElements(l, base, 0, strided_internal::NumElements(l), dst);
}

// Copies the contiguous row-major `src` into the strided array at `base`.
inline void ScatterAll(const StridedLayout& l, const std::byte* src, std::byte* base) {
  ForEachRunInRange(l, 0, strided_internal::NumElements(l), [&](int64_t off, uint64_t bytes) {
    std::memcpy(base + off, src, bytes);
    src += bytes;
  });
}

// Row-major strides (in elements) of an array of `shape`.
inline std::vector<int64_t> RowMajorStrides(const std::vector<uint64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t s = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    strides[d] = s;
    s *= static_cast<int64_t>(shape[d]);
  }
  return strides;
}

// Calls fn(offset, piece) over the array's bytes in row-major order, where
// `offset` counts bytes of the row-major sequence: runs of at least
// `piece_bytes` are handed over in place, shorter ones gathered into pieces
// of about `piece_bytes`. Returns the first error fn returns.
template <typename Fn>
auto ForEachGatheredPiece(const StridedLayout& l, const std::byte* base, uint64_t piece_bytes,
                          Fn fn) -> decltype(fn(uint64_t{}, std::span<const std::byte>{})) {
  using R = decltype(fn(uint64_t{}, std::span<const std::byte>{}));
  std::vector<std::byte> buf;
  uint64_t done = 0;
  R r = ForEachRun(l, [&](int64_t off, uint64_t len) -> R {
    const std::byte* src = base + off;
    if (len >= piece_bytes && buf.empty()) {
      R s = fn(done, std::span<const std::byte>(src, len));
      done += len;
      return s;
    }
    if (buf.capacity() == 0) buf.reserve(piece_bytes + len);
    buf.insert(buf.end(), src, src + len);
    if (buf.size() >= piece_bytes) {
      R s = fn(done, std::span<const std::byte>(buf));
      done += buf.size();
      buf.clear();
      return s;
    }
    return R();
  });
  if (!r.ok()) return r;
  if (!buf.empty()) return fn(done, std::span<const std::byte>(buf));
  return R();
}

}  // namespace ckpt

#endif  // CKPT_CORE_STRIDED_H_
