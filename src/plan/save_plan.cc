#include "plan/save_plan.h"

#include <algorithm>
#include <map>
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

Result<GlobalPlan> BuildGlobalPlan(const std::vector<LocalPlan>& ranks) {
  struct Candidate {
    size_t tensor_id;
    const Box* box;
    uint64_t bytes;
    std::vector<std::pair<int, WriteItem>> holders;  // (rank, item)
  };
  struct TensorInfo {
    const TensorPlan* first;
    int first_rank;
    std::map<Box, size_t> candidates;  // distinct chunk → index in `cands`
  };
  std::unordered_map<std::string_view, size_t> ids;
  std::vector<TensorInfo> tensors;
  std::vector<Candidate> cands;

  for (size_t r = 0; r < ranks.size(); ++r) {
    for (size_t ti = 0; ti < ranks[r].tensors.size(); ++ti) {
      const TensorPlan& t = ranks[r].tensors[ti];
      auto [it, inserted] = ids.try_emplace(t.fqn, tensors.size());
      if (inserted) tensors.push_back({&t, static_cast<int>(r), {}});
      TensorInfo& info = tensors[it->second];
      if (t.dtype != info.first->dtype || !(t.global == info.first->global)) {
        return InvalidArgumentError(
            "tensor '" + t.fqn + "': rank " + std::to_string(info.first_rank) + " has " +
            std::string(DTypeName(info.first->dtype)) + " " + info.first->global.ToString() +
            " but rank " + std::to_string(r) + " has " + std::string(DTypeName(t.dtype)) + " " +
            t.global.ToString());
      }
      std::vector<size_t> mine;
      for (size_t ci = 0; ci < t.chunks.size(); ++ci) {
        const Box& b = t.chunks[ci];
        auto [cit, fresh] = info.candidates.try_emplace(b, cands.size());
        if (fresh) {
          Result<uint64_t> nbytes = Shape(b.sizes).NumBytes(t.dtype);
          if (!nbytes.ok()) {
            return InvalidArgumentError("tensor '" + t.fqn + "': chunk " + b.ToString() + ": " +
                                        nbytes.status().message());
          }
          cands.push_back({it->second, &cit->first, *nbytes, {}});
        }
        cands[cit->second].holders.push_back({static_cast<int>(r), WriteItem{ti, ci}});
        if (std::find(mine.begin(), mine.end(), cit->second) == mine.end()) mine.push_back(cit->second);
      }
      // The DCP layout stores one chunk of a tensor per file (the key is the fqn).
      if (mine.size() > 1) {
        return InvalidArgumentError("tensor '" + t.fqn + "': rank " + std::to_string(r) + " holds " +
                                    std::to_string(mine.size()) +
                                    " different chunks; one file can store one chunk per tensor");
      }
    }
  }
  for (const TensorInfo& info : tensors) {
    std::vector<Box> boxes;
    boxes.reserve(info.candidates.size());
    for (const auto& [box, idx] : info.candidates) boxes.push_back(box);
    CKPT_RETURN_IF_ERROR(CheckTiling(info.first->fqn, info.first->global, boxes));
  }

  GlobalPlan plan;
  plan.num_tensors = tensors.size();
  plan.writes.resize(ranks.size());
  plan.bytes.assign(ranks.size(), 0);
  std::vector<size_t> order(cands.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (cands[a].bytes != cands[b].bytes) return cands[a].bytes > cands[b].bytes;
    if (cands[a].tensor_id != cands[b].tensor_id) return cands[a].tensor_id < cands[b].tensor_id;
    return *cands[a].box < *cands[b].box;
  });
  for (size_t i : order) {
    const Candidate& c = cands[i];
    const std::pair<int, WriteItem>* best = &c.holders[0];
    for (const auto& h : c.holders) {
      size_t hr = static_cast<size_t>(h.first), br = static_cast<size_t>(best->first);
      if (plan.bytes[hr] < plan.bytes[br] || (plan.bytes[hr] == plan.bytes[br] && h.first < best->first)) {
        best = &h;
      }
    }
    plan.bytes[static_cast<size_t>(best->first)] += c.bytes;
    plan.writes[static_cast<size_t>(best->first)].push_back(best->second);
  }
  for (auto& w : plan.writes) {
    std::sort(w.begin(), w.end(), [](const WriteItem& a, const WriteItem& b) {
      return a.tensor != b.tensor ? a.tensor < b.tensor : a.chunk < b.chunk;
    });
  }
  return plan;
}

}  // namespace ckpt::plan
