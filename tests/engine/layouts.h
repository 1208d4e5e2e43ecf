// Test layouts: how a global tensor is split over ranks, and the reference
// data every rank can regenerate. Shared by the thread and MPI tests.
#ifndef CKPT_TESTS_ENGINE_LAYOUTS_H_
#define CKPT_TESTS_ENGINE_LAYOUTS_H_

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ckpt/sharded.h"
#include "ckpt/state_dict.h"

namespace ckpt::testing {

// Runs fn(comm) on one thread per rank; returns each rank's status.
template <typename Fn>
std::vector<Status> OnRanks(int n, Fn fn) {
  auto comms = NewThreadCommunicators(n);
  std::vector<Status> out(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back(
        [&, r] { out[static_cast<size_t>(r)] = fn(*comms[static_cast<size_t>(r)]); });
  }
  for (auto& t : threads) t.join();
  return out;
}

// OnRanks, reduced to the first failure.
template <typename Fn>
Status OnRanksOk(int n, Fn fn) {
  for (const Status& s : OnRanks(n, fn)) {
    if (!s.ok()) return s;
  }
  return Status();
}

inline LoadOptions WithTimeout(Timeout t) {
  LoadOptions o;
  o.timeout = t;
  return o;
}

enum class Split { kReplicated, kDim0, kDim1, k2D };

struct Layout {
  int world;
  Split split;
  std::string Name() const {
    const char* s[] = {"rep", "dim0", "dim1", "2d"};
    return std::string(s[static_cast<int>(split)]) + "x" + std::to_string(world);
  }
};

struct TensorDef {
  std::string fqn;
  DType dtype;
  Shape shape;
};

// torch.chunk-style split of n into parts: ceil(n / parts) each, the tail
// shorter or empty.
inline void SplitRange(uint64_t n, int parts, int i, uint64_t* off, uint64_t* len) {
  uint64_t step = (n + static_cast<uint64_t>(parts) - 1) / static_cast<uint64_t>(parts);
  uint64_t b = std::min(n, step * static_cast<uint64_t>(i));
  *off = b;
  *len = std::min(n, b + step) - b;
}

// The box rank `r` holds under `layout`; sharding falls back to what a
// tensor allows (scalars replicate, 1-D tensors and sub-byte dtypes shard
// on dimension 0 only).
inline void BoxFor(const TensorDef& t, const Layout& l, int r, std::vector<uint64_t>* off,
                   std::vector<uint64_t>* len) {
  const size_t rank = t.shape.rank();
  off->assign(rank, 0);
  *len = t.shape.dims();
  Split s = l.split;
  if (rank == 0) s = Split::kReplicated;
  if ((s == Split::kDim1 || s == Split::k2D) && (rank < 2 || DTypeBits(t.dtype) % 8 != 0)) {
    s = Split::kDim0;
  }
  switch (s) {
    case Split::kReplicated:
      return;
    case Split::kDim0:
      SplitRange(t.shape[0], l.world, r, &(*off)[0], &(*len)[0]);
      return;
    case Split::kDim1:
      SplitRange(t.shape[1], l.world, r, &(*off)[1], &(*len)[1]);
      return;
    case Split::k2D: {
      int cols = l.world >= 4 ? 2 : 1, rows = l.world / cols;
      SplitRange(t.shape[0], rows, r / cols, &(*off)[0], &(*len)[0]);
      SplitRange(t.shape[1], cols, r % cols, &(*off)[1], &(*len)[1]);
      return;
    }
  }
}

// Deterministic bytes of a whole tensor.
inline std::vector<std::byte> GlobalBytes(const TensorDef& t) {
  uint64_t n = *t.shape.NumBytes(t.dtype);
  std::vector<std::byte> out(n);
  uint64_t x = std::hash<std::string>{}(t.fqn) | 1;
  for (auto& b : out) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<std::byte>(x & 0xFF);
  }
  return out;
}

// Copies the box of the global tensor into (or compares it with) a
// contiguous row-major chunk buffer. Works for sub-byte dtypes when the
// box rows are whole bytes.
inline void CopyBox(const TensorDef& t, const std::vector<std::byte>& global,
                    const std::vector<uint64_t>& off, const std::vector<uint64_t>& len,
                    std::byte* chunk, bool to_chunk) {
  const size_t rank = t.shape.rank();
  const uint64_t bits = DTypeBits(t.dtype);
  if (rank == 0) {
    if (to_chunk) std::memcpy(chunk, global.data(), bits / 8);
    return;
  }
  uint64_t vol = 1;
  for (uint64_t l : len) vol *= l;
  if (vol == 0) return;
  const uint64_t row_bits = len[rank - 1] * bits;
  std::vector<uint64_t> idx(rank - 1, 0);
  uint64_t chunk_bit = 0;
  for (;;) {
    uint64_t g = 0;
    for (size_t d = 0; d < rank; ++d) {
      uint64_t i = off[d] + (d + 1 < rank ? idx[d] : 0);
      g = g * t.shape[d] + i;
    }
    const std::byte* gsrc = global.data() + g * bits / 8;
    std::byte* c = chunk + chunk_bit / 8;
    if (to_chunk)
      std::memcpy(c, gsrc, row_bits / 8);
    else
      std::memcpy(const_cast<std::byte*>(gsrc), c, row_bits / 8);
    chunk_bit += row_bits;
    size_t d = rank - 1;
    while (d > 0) {
      --d;
      if (++idx[d] < len[d]) break;
      idx[d] = 0;
      if (d == 0) return;
    }
    if (rank == 1) return;
  }
}

// A rank's state dict for `defs` under `layout`, with its own buffers.
struct RankState {
  StateDict sd;
  std::vector<std::unique_ptr<std::vector<std::byte>>> buffers;
};

inline RankState MakeRankState(const std::vector<TensorDef>& defs, const Layout& l, int r,
                               bool fill) {
  RankState st;
  for (const TensorDef& t : defs) {
    std::vector<uint64_t> off, len;
    BoxFor(t, l, r, &off, &len);
    Shape cs(len);
    auto buf = std::make_unique<std::vector<std::byte>>(*cs.NumBytes(t.dtype), std::byte{0});
    if (fill) CopyBox(t, GlobalBytes(t), off, len, buf->data(), true);
    st.sd.tensors.push_back(
        DistTensor{t.fqn, t.dtype, t.shape, {LocalChunk{off, cs, buf->data(), {}}}});
    st.buffers.push_back(std::move(buf));
  }
  return st;
}

// True when every chunk of `st` holds exactly the reference bytes.
inline bool MatchesReference(const std::vector<TensorDef>& defs, const RankState& st,
                             std::string* why) {
  for (size_t i = 0; i < defs.size(); ++i) {
    const LocalChunk& c = st.sd.tensors[i].chunks[0];
    std::vector<std::byte> want(st.buffers[i]->size());
    CopyBox(defs[i], GlobalBytes(defs[i]), c.offsets, c.shape.dims(), want.data(), true);
    if (want != *st.buffers[i]) {
      *why = "tensor " + defs[i].fqn + " differs";
      return false;
    }
  }
  return true;
}

// Tensors of every dtype and the awkward shapes: uneven splits, a scalar,
// an empty tensor, 1-D and 3-D tensors.
inline std::vector<TensorDef> MixedModel() {
  std::vector<TensorDef> defs = {
      {"model.w_uneven", DType::kF32, Shape({13, 7})}, {"model.scalar", DType::kI64, Shape({})},
      {"model.empty", DType::kF16, Shape({0, 5})},     {"model.vec", DType::kU8, Shape({5})},
      {"model.cube", DType::kBF16, Shape({6, 4, 3})},
  };
  for (const DTypeInfo& info : AllDTypes()) {
    defs.push_back({"dtype." + std::string(info.name), info.dtype, Shape({8, 4})});
  }
  return defs;
}

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_ENGINE_LAYOUTS_H_
