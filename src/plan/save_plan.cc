#include "plan/save_plan.h"

#include <algorithm>
#include <unordered_map>

#include "plan/codec.h"

namespace ckpt::plan {

std::string EncodeLocalPlan(const StateDict& sd) {
  Encoder e;
  e.U64(sd.tensors.size());
  for (const DistTensor& t : sd.tensors) {
    e.Str(t.fqn);
    e.U64(static_cast<uint64_t>(t.dtype));
    e.U64(t.global_shape.rank());
    for (uint64_t d : t.global_shape.dims()) e.U64(d);
    e.U64(t.chunks.size());
    for (const LocalChunk& c : t.chunks) {
      // A chunk whose rank differs from the tensor's is sent as is and
      // refused by the planner with a message naming it.
      e.U64(c.offsets.size());
      for (uint64_t o : c.offsets) e.U64(o);
      e.U64(c.shape.rank());
      for (uint64_t s : c.shape.dims()) e.U64(s);
    }
  }
  return e.Take();
}

Result<LocalPlan> DecodeLocalPlan(std::string wire) {
  LocalPlan p;
  p.wire = std::move(wire);
  Decoder d(p.wire);
  auto bad = [](const std::string& why) { return DataLossError("malformed save plan from a peer: " + why); };
  uint64_t n;
  if (!d.U64(&n) || n > p.wire.size()) return bad("tensor count");
  p.tensors.resize(n);
  for (TensorPlan& t : p.tensors) {
    uint64_t len, dtype, rank, chunks;
    if (!d.StrRef(&t.name_at, &len) || !d.U64(&dtype) || dtype >= AllDTypes().size() || !d.U64(&rank) ||
        rank > 1024) {
      return bad("tensor header");
    }
    t.name_len = static_cast<uint32_t>(len);
    t.dtype = static_cast<DType>(dtype);
    t.rank = static_cast<uint32_t>(rank);
    t.coords_at = p.coords.size();
    for (uint64_t i = 0; i < rank; ++i) {
      uint64_t x;
      if (!d.U64(&x)) return bad("global shape");
      p.coords.push_back(x);
    }
    if (!d.U64(&chunks) || chunks > p.wire.size()) return bad("chunk count");
    t.num_chunks = static_cast<uint32_t>(chunks);
    for (uint64_t c = 0; c < chunks; ++c) {
      uint64_t r1 = 0, r2 = 0, x = 0;
      if (!d.U64(&r1)) return bad("chunk");
      if (r1 != rank) {
        return InvalidArgumentError("tensor '" + std::string(p.fqn(t)) + "': a chunk has " + std::to_string(r1) +
                                    " offsets for a rank-" + std::to_string(rank) + " tensor");
      }
      for (uint64_t i = 0; i < r1; ++i) {
        if (!d.U64(&x)) return bad("chunk offsets");
        p.coords.push_back(x);
      }
      if (!d.U64(&r2)) return bad("chunk shape");
      if (r2 != rank) {
        return InvalidArgumentError("tensor '" + std::string(p.fqn(t)) + "': a chunk shape has rank " +
                                    std::to_string(r2) + " for a rank-" + std::to_string(rank) + " tensor");
      }
      for (uint64_t i = 0; i < r2; ++i) {
        if (!d.U64(&x)) return bad("chunk shape");
        p.coords.push_back(x);
      }
    }
  }
  if (!d.done()) return bad("trailing bytes");
  return p;
}

namespace {

// Bytes of a chunk; false when the bit count is not whole bytes or overflows.
bool ChunkBytes(const BoxView& b, DType dtype, uint64_t* out) {
  uint64_t n = DTypeBits(dtype);
  for (uint32_t d = 0; d < b.rank; ++d) {
    if (!CheckedMul(n, b.size[d], &n)) return false;
  }
  if (n % 8 != 0) return false;
  *out = n / 8;
  return true;
}

// Boxes stored as 2 * dims contiguous values: offsets, then sizes.
inline bool SameBox(const uint64_t* a, const uint64_t* b, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

inline bool LessBox(const uint64_t* a, const uint64_t* b, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return a[i] < b[i];
  }
  return false;
}

}  // namespace

// One entry per (rank, chunk), grouped by tensor with a counting sort, then
// by box within each tensor. Equal boxes on several ranks are one candidate
// chunk (a replicated chunk).
Result<GlobalPlan> BuildGlobalPlan(const std::vector<LocalPlan>& ranks) {
  struct Entry {
    const uint64_t* box;  // offsets then sizes, in the rank's plan
    uint32_t rank;
    WriteItem item;
  };
  struct Tensor {
    const LocalPlan* plan;  // where it was first seen
    const TensorPlan* first;
    uint32_t first_rank;
    size_t count = 0;  // entries
    size_t begin = 0;  // into `entries` after grouping
  };
  std::unordered_map<std::string_view, uint32_t> ids;
  std::vector<Tensor> tensors;
  std::vector<std::vector<uint32_t>> id_of(ranks.size());  // rank → tensor index → id

  size_t total = 0;
  for (size_t r = 0; r < ranks.size(); ++r) {
    const LocalPlan& lp = ranks[r];
    id_of[r].resize(lp.tensors.size());
    for (size_t ti = 0; ti < lp.tensors.size(); ++ti) {
      const TensorPlan& t = lp.tensors[ti];
      const std::string_view fqn = lp.fqn(t);
      uint32_t id;
      // Ranks usually list tensors in the same order: try rank 0's id first.
      if (r > 0 && ti < ranks[0].tensors.size() && ranks[0].fqn(ranks[0].tensors[ti]) == fqn) {
        id = id_of[0][ti];
      } else {
        auto [it, inserted] = ids.try_emplace(fqn, static_cast<uint32_t>(tensors.size()));
        if (inserted) tensors.push_back({&lp, &t, static_cast<uint32_t>(r)});
        id = it->second;
      }
      id_of[r][ti] = id;
      Tensor& info = tensors[id];
      const TensorPlan& f = *info.first;
      bool same_shape = t.rank == f.rank;
      for (uint32_t d = 0; same_shape && d < t.rank; ++d) same_shape = lp.global(t)[d] == info.plan->global(f)[d];
      if (t.dtype != f.dtype || !same_shape) {
        return InvalidArgumentError(
            "tensor '" + std::string(fqn) + "': rank " + std::to_string(info.first_rank) + " has " +
            std::string(DTypeName(f.dtype)) + " " + info.plan->GlobalShape(f).ToString() + " but rank " +
            std::to_string(r) + " has " + std::string(DTypeName(t.dtype)) + " " + lp.GlobalShape(t).ToString());
      }
      info.count += t.num_chunks;
      total += t.num_chunks;
    }
  }
  size_t pos = 0;
  for (Tensor& t : tensors) {
    t.begin = pos;
    pos += t.count;
    t.count = 0;
  }
  std::vector<Entry> entries(total);
  for (size_t r = 0; r < ranks.size(); ++r) {
    const LocalPlan& lp = ranks[r];
    for (size_t ti = 0; ti < lp.tensors.size(); ++ti) {
      Tensor& info = tensors[id_of[r][ti]];
      for (uint32_t ci = 0; ci < lp.tensors[ti].num_chunks; ++ci) {
        entries[info.begin + info.count++] = {lp.chunk(lp.tensors[ti], ci).off, static_cast<uint32_t>(r),
                                              {static_cast<uint32_t>(ti), ci}};
      }
    }
  }

  struct Candidate {
    uint64_t bytes;
    uint32_t first;  // entries [first, first + holders) hold this chunk, by rank
    uint32_t holders;
  };
  std::vector<Candidate> cands;
  cands.reserve(total);
  std::vector<uint32_t> stamp(ranks.size(), UINT32_MAX);  // tensor last seen per rank
  std::vector<BoxView> boxes;
  for (uint32_t id = 0; id < tensors.size(); ++id) {
    const Tensor& info = tensors[id];
    const std::string_view fqn = info.plan->fqn(*info.first);
    Entry* b = entries.data() + info.begin;
    Entry* e = b + info.count;
    const uint32_t dims = info.first->rank, n2 = 2 * dims;
    auto view = [dims](const Entry& x) { return BoxView(x.box, x.box + dims, dims); };
    auto by_box = [n2](const Entry& x, const Entry& y) {
      if (LessBox(x.box, y.box, n2)) return true;
      if (LessBox(y.box, x.box, n2)) return false;
      return x.rank < y.rank;
    };
    // Ranks usually hold consecutive slices in rank order: already sorted.
    bool sorted = true;
    for (Entry* it = b + (b != e); it < e && sorted; ++it) {
      sorted = LessBox(it[-1].box, it->box, n2) || (SameBox(it[-1].box, it->box, n2) && it[-1].rank < it->rank);
    }
    if (!sorted) std::sort(b, e, by_box);
    boxes.clear();
    boxes.reserve(info.count);
    for (Entry* it = b; it != e;) {
      Entry* group_end = it + 1;
      while (group_end != e && SameBox(group_end->box, it->box, n2)) ++group_end;
      uint64_t bytes;
      if (!ChunkBytes(view(*it), info.first->dtype, &bytes)) {
        return InvalidArgumentError("tensor '" + std::string(fqn) + "': chunk " + view(*it).ToString() + " of " +
                                    std::string(DTypeName(info.first->dtype)) + " is not a whole number of bytes");
      }
      for (Entry* h = it; h != group_end; ++h) {
        // The DCP layout stores one chunk of a tensor per file (the key is the fqn).
        if (stamp[h->rank] == id && (h == it || h[-1].rank != h->rank)) {
          return InvalidArgumentError("tensor '" + std::string(fqn) + "': rank " + std::to_string(h->rank) +
                                      " holds 2 different chunks; one file can store one chunk per tensor");
        }
        stamp[h->rank] = id;
      }
      cands.push_back({bytes, static_cast<uint32_t>(it - entries.data()), static_cast<uint32_t>(group_end - it)});
      boxes.push_back(view(*it));
      it = group_end;
    }
    CKPT_RETURN_IF_ERROR(CheckTiling(fqn, info.plan->global(*info.first), info.first->rank, boxes));
  }

  GlobalPlan plan;
  plan.num_tensors = tensors.size();
  plan.writes.resize(ranks.size());
  plan.bytes.assign(ranks.size(), 0);
  // Largest chunks first, ties in (tensor, box) order, which is candidate
  // order. Chunk sizes repeat a lot, so bucket by size instead of sorting.
  std::vector<uint32_t> order;
  order.reserve(cands.size());
  const bool one_size = std::all_of(cands.begin(), cands.end(),
                                    [&](const Candidate& c) { return c.bytes == cands[0].bytes; });
  if (one_size) {
    for (uint32_t i = 0; i < cands.size(); ++i) order.push_back(i);
  } else {
    std::unordered_map<uint64_t, std::vector<uint32_t>> by_size;
    for (uint32_t i = 0; i < cands.size(); ++i) by_size[cands[i].bytes].push_back(i);
    std::vector<uint64_t> sizes;
    sizes.reserve(by_size.size());
    for (const auto& [bytes, members] : by_size) sizes.push_back(bytes);
    std::sort(sizes.rbegin(), sizes.rend());
    for (uint64_t bytes : sizes) order.insert(order.end(), by_size[bytes].begin(), by_size[bytes].end());
  }
  std::vector<uint32_t> chosen(cands.size());  // candidate → entry that writes it
  {
    for (uint32_t i : order) {
      const Candidate& c = cands[i];
      uint32_t best = c.first;
      for (uint32_t k = 1; k < c.holders; ++k) {
        // Ties go to the lowest rank: holders are sorted by rank.
        if (plan.bytes[entries[c.first + k].rank] < plan.bytes[entries[best].rank]) best = c.first + k;
      }
      plan.bytes[entries[best].rank] += c.bytes;
      chosen[i] = best;
    }
  }
  // Each rank's writes in its own tensor order.
  for (uint32_t i = 0; i < cands.size(); ++i) {
    const Entry& e = entries[chosen[i]];
    plan.writes[e.rank].push_back(e.item);
  }
  auto by_item = [](const WriteItem& a, const WriteItem& b) {
    return a.tensor != b.tensor ? a.tensor < b.tensor : a.chunk < b.chunk;
  };
  for (auto& w : plan.writes) {
    if (!std::is_sorted(w.begin(), w.end(), by_item)) std::sort(w.begin(), w.end(), by_item);
  }
  return plan;
}

}  // namespace ckpt::plan
