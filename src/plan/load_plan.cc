#include "plan/load_plan.h"

#include <algorithm>

namespace ckpt::plan {

Status SavedIndex::Add(const std::string& fqn, DType dtype, SavedChunk chunk,
                       const std::string& source) {
  auto [it, fresh] = tensors_.try_emplace(fqn);
  SavedTensor& t = it->second;
  if (fresh) {
    t.fqn = fqn;
    t.dtype = dtype;
    first_source_[fqn] = source;
  } else if (t.dtype != dtype) {
    return DataLossError("tensor '" + fqn + "' is " + std::string(DTypeName(t.dtype)) + " in " +
                         first_source_[fqn] + " but " + std::string(DTypeName(dtype)) + " in " +
                         source);
  } else if (!t.chunks.empty() && t.chunks[0].box.offsets.size() != chunk.box.offsets.size()) {
    return DataLossError("tensor '" + fqn + "' has rank " +
                         std::to_string(t.chunks[0].box.offsets.size()) + " in " +
                         first_source_[fqn] + " but rank " +
                         std::to_string(chunk.box.offsets.size()) + " in " + source);
  }
  t.chunks.push_back(std::move(chunk));
  return Status();
}

Status SavedIndex::Finalize() {
  for (auto& [fqn, t] : tensors_) {
    const size_t rank = t.chunks[0].box.offsets.size();
    std::vector<uint64_t> dims(rank, 0);
    std::vector<Box> boxes;
    boxes.reserve(t.chunks.size());
    for (const SavedChunk& c : t.chunks) {
      bool empty = c.box.Empty();
      for (size_t d = 0; d < rank; ++d) {
        uint64_t end;
        if (!CheckedAdd(c.box.offsets[d], c.box.sizes[d], &end)) {
          return DataLossError("tensor '" + fqn + "': chunk offsets overflow");
        }
        if (!empty) dims[d] = std::max(dims[d], end);
      }
      boxes.push_back(c.box);
      if (rank > 0) t.max_size0 = std::max(t.max_size0, c.box.sizes[0]);
    }
    // Empty chunks carry no data; a tensor whose chunks are all empty keeps
    // the largest extent per dimension as its shape.
    if (std::all_of(t.chunks.begin(), t.chunks.end(),
                    [](const SavedChunk& c) { return c.box.Empty(); })) {
      for (const SavedChunk& c : t.chunks) {
        for (size_t d = 0; d < rank; ++d)
          dims[d] = std::max(dims[d], c.box.offsets[d] + c.box.sizes[d]);
      }
    }
    t.global = Shape(std::move(dims));
    if (!t.global.NumBytes(t.dtype).ok()) {
      return DataLossError("tensor '" + fqn + "': global shape " + t.global.ToString() + " of " +
                           std::string(DTypeName(t.dtype)) + " is more than 2^64 bytes");
    }
    Status s = CheckTiling(fqn, t.global, boxes);
    if (!s.ok()) return DataLossError("saved " + s.message());
    if (rank > 0) {
      std::sort(t.chunks.begin(), t.chunks.end(), [](const SavedChunk& a, const SavedChunk& b) {
        return a.box.offsets[0] < b.box.offsets[0];
      });
    }
    // Sub-byte dtypes: each chunk must begin and end on byte boundaries of
    // the whole tensor, or no consolidation can place its bytes.
    if (DTypeBits(t.dtype) % 8 != 0) {
      const Box whole{std::vector<uint64_t>(rank, 0), t.global.dims()};
      std::vector<ReadOp> scratch;
      for (const SavedChunk& c : t.chunks) {
        scratch.clear();
        if (Status p = PlanChunkReads(c, t.dtype, whole, {}, &scratch); !p.ok()) {
          return DataLossError("saved tensor '" + fqn + "' (" + std::string(DTypeName(t.dtype)) +
                               ", shape " + t.global.ToString() + "): chunk " + c.box.ToString() +
                               ": " + p.message());
        }
      }
    }
  }
  return Status();
}

const SavedTensor* SavedIndex::Find(const std::string& fqn) const {
  auto it = tensors_.find(fqn);
  return it == tensors_.end() ? nullptr : &it->second;
}

void SavedIndex::Overlapping(const SavedTensor& t, const Box& box,
                             std::vector<const SavedChunk*>* out) {
  if (box.offsets.empty()) {
    for (const SavedChunk& c : t.chunks) out->push_back(&c);
    return;
  }
  // Chunks are sorted by offsets[0]; only those starting in
  // (box.begin - max_size0, box.end) can reach the box in dimension 0.
  const uint64_t lo = box.offsets[0] > t.max_size0 ? box.offsets[0] - t.max_size0 : 0;
  const uint64_t hi = box.offsets[0] + box.sizes[0];
  auto first =
      std::lower_bound(t.chunks.begin(), t.chunks.end(), lo,
                       [](const SavedChunk& c, uint64_t v) { return c.box.offsets[0] < v; });
  Box ignored;
  for (auto it = first; it != t.chunks.end() && it->box.offsets[0] < hi; ++it) {
    if (Intersect(it->box, box, &ignored)) out->push_back(&*it);
  }
}

// Kept whole past the function-size limit: the overlap, its runs and their coalescing share the run
// geometry.
//
// NOLINTNEXTLINE(readability-function-size)
Status PlanChunkReads(const SavedChunk& s, DType dtype, const Box& local,
                      const std::vector<int64_t>& strides, std::vector<ReadOp>* out) {
  Box r;
  if (!Intersect(s.box, local, &r)) return Status();
  const size_t rank = r.offsets.size();
  const uint64_t bits = DTypeBits(dtype);
  const bool sub_byte = bits % 8 != 0;

  // Element strides of the source (row-major) and the destination.
  std::vector<uint64_t> src_stride(rank, 1);
  std::vector<int64_t> dst_stride(rank, 1);
  for (size_t d = rank; d-- > 1;) src_stride[d - 1] = src_stride[d] * s.box.sizes[d];
  if (strides.empty()) {
    for (size_t d = rank; d-- > 1;)
      dst_stride[d - 1] = dst_stride[d] * static_cast<int64_t>(local.sizes[d]);
  } else {
    if (strides.size() != rank) return InvalidArgumentError("strides do not match the chunk rank");
    if (sub_byte)
      return InvalidArgumentError("strided chunks of sub-byte dtypes are not supported");
    dst_stride = strides;
  }

  // Dimensions [k, rank) form one contiguous run in source and destination.
  size_t k = rank == 0 ? 0 : rank - 1;
  const bool dst_unit = rank == 0 || dst_stride[rank - 1] == 1;
  while (k > 0 && dst_unit && r.sizes[k] == s.box.sizes[k] && r.sizes[k] == local.sizes[k] &&
         dst_stride[k - 1] == dst_stride[k] * static_cast<int64_t>(local.sizes[k])) {
    --k;
  }
  uint64_t run = 1;
  for (size_t d = k; d < rank; ++d) run *= r.sizes[d];
  // With a strided innermost destination dimension, runs are still
  // contiguous in the file; the pieces scatter element by element.
  const uint64_t run_bits = run * bits;
  if (sub_byte && run_bits % 8 != 0) {
    return InvalidArgumentError("chunk boundaries split bytes of a sub-byte dtype");
  }
  const uint64_t run_bytes = run_bits / 8;
  const uint64_t elem_bytes = sub_byte ? 1 : bits / 8;
  const uint64_t piece_count = sub_byte ? run_bytes : run;
  const int64_t dest_step = dst_unit ? static_cast<int64_t>(elem_bytes)
                                     : dst_stride[rank - 1] * static_cast<int64_t>(elem_bytes);

  // Odometer over the outer dimensions [0, k).
  std::vector<uint64_t> idx(k, 0);
  constexpr uint64_t kMaxWindow = 16ull << 20;
  ReadOp* op = nullptr;
  uint64_t needed_in_op = 0;
  for (;;) {
    uint64_t src_elem = 0;
    int64_t dst_elem = 0;
    for (size_t d = 0; d < rank; ++d) {
      uint64_t g = r.offsets[d] + (d < k ? idx[d] : 0);
      src_elem += (g - s.box.offsets[d]) * src_stride[d];
      dst_elem += static_cast<int64_t>(g - local.offsets[d]) * dst_stride[d];
    }
    const uint64_t src_bit = src_elem * bits;
    const int64_t dst_bit = dst_elem * static_cast<int64_t>(bits);
    if (sub_byte && (src_bit % 8 != 0 || dst_bit % 8 != 0)) {
      return InvalidArgumentError("chunk boundaries split bytes of a sub-byte dtype");
    }
    const uint64_t file_off = s.data_offset + src_bit / 8;
    const uint64_t dest_off = static_cast<uint64_t>(dst_bit / 8);
    bool merged = false;
    if (op != nullptr) {
      uint64_t end = op->file_offset + op->length;
      uint64_t gap = file_off >= end ? file_off - end : UINT64_MAX;
      uint64_t grown = op->length + (gap == UINT64_MAX ? 0 : gap) + run_bytes;
      if (gap != UINT64_MAX && grown <= kMaxWindow && gap * 20 <= needed_in_op + run_bytes) {
        ReadOp::Piece& last = op->pieces.back();
        if (gap == 0 && dest_step == static_cast<int64_t>(elem_bytes) &&
            last.dest_offset + last.count * elem_bytes == dest_off) {
          last.count += piece_count;  // contiguous in the file and in the destination
        } else {
          op->pieces.push_back({file_off - op->file_offset, dest_off, piece_count});
        }
        op->length = grown;
        needed_in_op += run_bytes;
        merged = true;
      }
    }
    if (!merged && run_bytes > 0) {
      out->push_back(
          ReadOp{s.file, file_off, run_bytes, {{0, dest_off, piece_count}}, elem_bytes, dest_step});
      op = &out->back();
      needed_in_op = run_bytes;
    }
    // Advance the odometer.
    size_t d = k;
    while (d > 0) {
      --d;
      if (++idx[d] < r.sizes[d]) break;
      idx[d] = 0;
      if (d == 0) return Status();
    }
    if (k == 0) return Status();
  }
}

}  // namespace ckpt::plan
