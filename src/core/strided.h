// Walking a strided array in row-major order, one home for every copy
// between a strided tensor and contiguous bytes.
//
// The trailing dimensions whose strides make them contiguous are merged into
// one run, so a row-major or row-sliced view costs one call per run instead
// of one per element.
#ifndef CKPT_CORE_STRIDED_H_
#define CKPT_CORE_STRIDED_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace ckpt {

struct StridedLayout {
  std::vector<uint64_t> shape;
  std::vector<int64_t> strides;  // in elements; empty = contiguous row-major
  uint64_t elem_bytes = 1;
};

// Calls fn(byte_offset_of_run_start, run_bytes) for every contiguous run of
// the array in row-major order; offsets are relative to the first element
// and may be negative for negative strides. Returns the first non-OK value
// fn returns (fn returns a type with ok()).
template <typename Fn>
auto ForEachRun(const StridedLayout& l, Fn fn) -> decltype(fn(int64_t{}, uint64_t{})) {
  const size_t rank = l.shape.size();
  uint64_t total = 1;
  for (uint64_t d : l.shape) total *= d;
  if (total == 0) return decltype(fn(int64_t{}, uint64_t{}))();
  if (l.strides.empty()) return fn(0, total * l.elem_bytes);
  // Merge trailing dimensions while they are laid out contiguously.
  size_t inner = rank;
  uint64_t run = 1;
  while (inner > 0) {
    const size_t d = inner - 1;
    if (l.shape[d] != 1 && l.strides[d] != static_cast<int64_t>(run)) break;
    run *= l.shape[d];
    --inner;
  }
  const uint64_t run_bytes = run * l.elem_bytes;
  std::vector<uint64_t> idx(inner, 0);
  const uint64_t runs = total / run;
  for (uint64_t r = 0; r < runs; ++r) {
    int64_t off = 0;
    for (size_t d = 0; d < inner; ++d) off += static_cast<int64_t>(idx[d]) * l.strides[d];
    auto s = fn(off * static_cast<int64_t>(l.elem_bytes), run_bytes);
    if (!s.ok()) return s;
    for (size_t d = inner; d-- > 0;) {
      if (++idx[d] < l.shape[d]) break;
      idx[d] = 0;
    }
  }
  return decltype(fn(int64_t{}, uint64_t{}))();
}

// Calls fn(offset, piece) over the array's bytes in row-major order, where
// `offset` counts bytes of the row-major sequence: runs of at least
// `piece_bytes` are handed over in place, shorter ones gathered into pieces
// of about `piece_bytes`. Returns the first error fn returns.
template <typename Fn>
auto ForEachGatheredPiece(const StridedLayout& l, const std::byte* base, uint64_t piece_bytes, Fn fn)
    -> decltype(fn(uint64_t{}, std::span<const std::byte>{})) {
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
