#include "plan/save_plan.h"

#include <algorithm>
#include <unordered_map>

#include "plan/codec.h"

namespace ckpt::plan {

LocalPlan LocalPlanOf(const StateDict& sd) {
  LocalPlan p;
  p.tensors.reserve(sd.tensors.size());
  for (const DistTensor& t : sd.tensors) {
    TensorPlan tp{t.fqn, t.dtype, t.global_shape, {}};
    for (const LocalChunk& c : t.chunks) tp.chunks.push_back(Box{c.offsets, c.shape.dims()});
    p.tensors.push_back(std::move(tp));
  }
  return p;
}

std::string EncodeLocalPlan(const LocalPlan& plan) {
  Encoder e;
  e.U64(plan.tensors.size());
  for (const TensorPlan& t : plan.tensors) {
    e.Str(t.fqn);
    e.U64(static_cast<uint64_t>(t.dtype));
    e.U64(t.global.rank());
    for (uint64_t d : t.global.dims()) e.U64(d);
    e.U64(t.chunks.size());
    for (const Box& b : t.chunks) {
      for (uint64_t o : b.offsets) e.U64(o);
      for (uint64_t s : b.sizes) e.U64(s);
    }
  }
  return e.Take();
}

Result<LocalPlan> DecodeLocalPlan(std::string_view bytes) {
  Decoder d(bytes);
  LocalPlan p;
  uint64_t n;
  auto bad = [] { return DataLossError("malformed save plan received from a peer"); };
  if (!d.U64(&n) || n > bytes.size()) return bad();
  p.tensors.resize(n);
  for (TensorPlan& t : p.tensors) {
    uint64_t dtype, rank, chunks;
    if (!d.Str(&t.fqn) || !d.U64(&dtype) || dtype >= AllDTypes().size() || !d.U64(&rank) ||
        rank > 64) {
      return bad();
    }
    t.dtype = static_cast<DType>(dtype);
    std::vector<uint64_t> dims(rank);
    for (uint64_t& x : dims) {
      if (!d.U64(&x)) return bad();
    }
    t.global = Shape(std::move(dims));
    if (!d.U64(&chunks) || chunks > bytes.size()) return bad();
    t.chunks.resize(chunks);
    for (Box& b : t.chunks) {
      b.offsets.resize(rank);
      b.sizes.resize(rank);
      for (uint64_t& x : b.offsets) {
        if (!d.U64(&x)) return bad();
      }
      for (uint64_t& x : b.sizes) {
        if (!d.U64(&x)) return bad();
      }
    }
  }
  if (!d.done()) return bad();
  return p;
}

namespace {

// Bytes of a chunk; false when the bit count is not whole bytes or overflows.
bool ChunkBytes(const std::vector<uint64_t>& sizes, DType dtype, uint64_t* out) {
  uint64_t n = DTypeBits(dtype);
  for (uint64_t d : sizes) {
    if (!CheckedMul(n, d, &n)) return false;
  }
  if (n % 8 != 0) return false;
  *out = n / 8;
  return true;
}

}  // namespace

// Flat and allocation-light: one entry per (rank, chunk), grouped by tensor
// with a counting sort, then by box within each tensor. Equal boxes on
// several ranks are one candidate chunk (a replicated chunk).
Result<GlobalPlan> BuildGlobalPlan(const std::vector<LocalPlan>& ranks) {
  // 12 bytes: with hundreds of thousands of chunks, memory touched is the cost.
  struct Entry {
    uint32_t rank;
    WriteItem item;
  };
  auto box_of = [&ranks](const Entry& e) -> const Box& {
    return ranks[e.rank].tensors[e.item.tensor].chunks[e.item.chunk];
  };
  struct Tensor {
    const TensorPlan* first;
    uint32_t first_rank;
    size_t count = 0;   // entries
    size_t begin = 0;   // into `entries` after grouping
  };

  std::unordered_map<std::string_view, uint32_t> ids;
  std::vector<Tensor> tensors;
  std::vector<std::vector<uint32_t>> id_of(ranks.size());  // rank → tensor index → id
  for (size_t r = 0; r < ranks.size(); ++r) {
    if (ranks[r].tensors.size() > UINT32_MAX) return InvalidArgumentError("too many tensors in one plan");
  }

  size_t total = 0;
  for (size_t r = 0; r < ranks.size(); ++r) {
    const auto& ts = ranks[r].tensors;
    id_of[r].resize(ts.size());
    for (size_t ti = 0; ti < ts.size(); ++ti) {
      const TensorPlan& t = ts[ti];
      uint32_t id;
      // Ranks usually list tensors in the same order: try rank 0's id first.
      if (r > 0 && ti < ranks[0].tensors.size() && ranks[0].tensors[ti].fqn == t.fqn) {
        id = id_of[0][ti];
      } else {
        auto [it, inserted] = ids.try_emplace(t.fqn, static_cast<uint32_t>(tensors.size()));
        if (inserted) tensors.push_back({&t, static_cast<uint32_t>(r)});
        id = it->second;
      }
      id_of[r][ti] = id;
      Tensor& info = tensors[id];
      if (t.dtype != info.first->dtype || !(t.global == info.first->global)) {
        return InvalidArgumentError(
            "tensor '" + t.fqn + "': rank " + std::to_string(info.first_rank) + " has " +
            std::string(DTypeName(info.first->dtype)) + " " + info.first->global.ToString() +
            " but rank " + std::to_string(r) + " has " + std::string(DTypeName(t.dtype)) + " " +
            t.global.ToString());
      }
      info.count += t.chunks.size();
      total += t.chunks.size();
    }
  }
  // Counting sort of all chunks by tensor.
  size_t pos = 0;
  for (Tensor& t : tensors) {
    t.begin = pos;
    pos += t.count;
    t.count = 0;
  }
  std::vector<Entry> entries(total);

  for (size_t r = 0; r < ranks.size(); ++r) {
    const auto& ts = ranks[r].tensors;
    for (size_t ti = 0; ti < ts.size(); ++ti) {
      Tensor& info = tensors[id_of[r][ti]];
      for (size_t ci = 0; ci < ts[ti].chunks.size(); ++ci) {
        const size_t slot = info.begin + info.count++;
        entries[slot] = {static_cast<uint32_t>(r), {static_cast<uint32_t>(ti), static_cast<uint32_t>(ci)}};
        const Box& b = ts[ti].chunks[ci];
        const size_t rank = info.first->global.rank();
        if (b.offsets.size() != rank || b.sizes.size() != rank) {
          return InvalidArgumentError("tensor '" + info.first->fqn + "' of shape " +
                                      info.first->global.ToString() + ": chunk " + b.ToString() +
                                      " on rank " + std::to_string(r) + " has rank " +
                                      std::to_string(b.offsets.size()));
        }

      }
    }
  }

  struct Candidate {
    uint64_t bytes;
    uint32_t first;  // entries [first, first + holders) hold this chunk
    uint32_t holders;
  };
  std::vector<Candidate> cands;
  cands.reserve(total);
  std::vector<uint32_t> stamp(ranks.size(), UINT32_MAX);  // tensor last seen per rank
  std::vector<const Box*> boxes;
  for (uint32_t id = 0; id < tensors.size(); ++id) {
    const Tensor& info = tensors[id];
    Entry* b = entries.data() + info.begin;
    Entry* e = b + info.count;
    auto same = [&](const Entry& x, const Entry& y) { return box_of(x) == box_of(y); };
    auto by_box = [&](const Entry& x, const Entry& y) {
      const Box& bx = box_of(x);
      const Box& by = box_of(y);
      if (bx != by) return bx < by;
      return x.rank < y.rank;
    };
    // Ranks usually hold consecutive slices in rank order: already sorted.
    if (!std::is_sorted(b, e, by_box)) std::sort(b, e, by_box);
    boxes.clear();
    for (Entry* it = b; it != e;) {
      Entry* group_end = it + 1;
      const Box& box = box_of(*it);
      while (group_end != e && same(*group_end, *it)) ++group_end;
      uint64_t bytes;
      if (!ChunkBytes(box.sizes, info.first->dtype, &bytes)) {
        return InvalidArgumentError("tensor '" + info.first->fqn + "': chunk " + box.ToString() +
                                    " of " + std::string(DTypeName(info.first->dtype)) +
                                    " is not a whole number of bytes");
      }
      for (Entry* h = it; h != group_end; ++h) {
        // The DCP layout stores one chunk of a tensor per file (the key is the fqn).
        if (stamp[h->rank] == id && (h == it || h[-1].rank != h->rank)) {
          return InvalidArgumentError("tensor '" + info.first->fqn + "': rank " + std::to_string(h->rank) +
                                      " holds 2 different chunks; one file can store one chunk per tensor");
        }
        stamp[h->rank] = id;
      }
      cands.push_back({bytes, static_cast<uint32_t>(it - entries.data()),
                       static_cast<uint32_t>(group_end - it)});
      boxes.push_back(&box);
      it = group_end;
    }
    CKPT_RETURN_IF_ERROR(CheckTiling(info.first->fqn, info.first->global, boxes));
  }

  GlobalPlan plan;
  plan.num_tensors = tensors.size();
  plan.writes.resize(ranks.size());
  plan.bytes.assign(ranks.size(), 0);
  // Largest first; ties keep (tensor, box) order, which is candidate order.
  // Largest chunks first, ties in (tensor, box) order, which is candidate
  // order. Chunk sizes repeat a lot, so bucket by size instead of sorting.
  std::unordered_map<uint64_t, std::vector<uint32_t>> by_size;
  for (uint32_t i = 0; i < cands.size(); ++i) by_size[cands[i].bytes].push_back(i);
  std::vector<uint64_t> sizes;
  sizes.reserve(by_size.size());
  for (const auto& [bytes, members] : by_size) sizes.push_back(bytes);
  std::sort(sizes.rbegin(), sizes.rend());
  std::vector<uint32_t> chosen(cands.size());  // candidate → entry that writes it
  for (uint64_t bytes : sizes) {
    for (uint32_t i : by_size[bytes]) {
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
