#include "plan/save_plan.h"

#include <xxhash.h>

#include <algorithm>
#include <unordered_map>

#include "core/parallel.h"
#include "plan/codec.h"

namespace ckpt::plan {

namespace {

constexpr uint64_t kCompact = 1;  // first value of a compact plan; 0 = "send full plans"

// A tensor's entry in a table: name, dtype, global shape.
void EncodeTensorHeader(const DistTensor& t, Encoder& e) {
  e.Str(t.fqn);
  e.U64(static_cast<uint64_t>(t.dtype));
  e.U64(t.global_shape.rank());
  for (uint64_t d : t.global_shape.dims()) e.U64(d);
}

// Upper bound on the varints in `wire`: each ends with a byte below 0x80.
size_t VarintsIn(std::string_view wire) {
  size_t n = 0;
  for (char c : wire) n += static_cast<unsigned char>(c) < 0x80;
  return n;
}

Status Malformed(const std::string& why) {
  return DataLossError("malformed save plan from a peer: " + why);
}

}  // namespace

// Fills tables and plans from wire bytes; the one place that knows the layouts.
class PlanDecoder {
 public:
  static Result<LocalPlan> Full(std::string wire) {
    auto table = std::make_shared<TensorTable>();
    LocalPlan p;
    table->names_ = std::move(wire);
    const std::string& w = table->names_;
    Decoder d(w);
    uint64_t n;
    if (!d.U64(&n) || n > w.size()) return Malformed("tensor count");
    table->entries_.resize(n);
    p.at_.resize(n);
    std::vector<uint64_t> coords;
    for (size_t ti = 0; ti < n; ++ti) {
      TensorTable::Entry& t = table->entries_[ti];
      uint64_t len, dtype, rank, chunks;
      if (!d.StrRef(&t.name_at, &len) || !d.U64(&dtype) || dtype >= AllDTypes().size() ||
          !d.U64(&rank) || rank > 1024) {
        return Malformed("tensor header");
      }
      t.name_len = static_cast<uint32_t>(len);
      t.dtype = static_cast<DType>(dtype);
      t.rank = static_cast<uint32_t>(rank);
      t.dims_at = table->dims_.size();
      for (uint64_t i = 0; i < rank; ++i) {
        uint64_t x;
        if (!d.U64(&x)) return Malformed("global shape");
        table->dims_.push_back(x);
      }
      if (!d.U64(&chunks) || chunks > w.size()) return Malformed("chunk count");
      p.at_[ti] = {coords.size(), static_cast<uint32_t>(chunks)};
      const std::string_view fqn = std::string_view(w).substr(t.name_at, t.name_len);
      for (uint64_t c = 0; c < chunks; ++c) {
        uint64_t r1 = 0, r2 = 0, x = 0;
        if (!d.U64(&r1)) return Malformed("chunk");
        if (r1 != rank) {
          return InvalidArgumentError("tensor '" + std::string(fqn) + "': a chunk has " +
                                      std::to_string(r1) + " offsets for a rank-" +
                                      std::to_string(rank) + " tensor");
        }
        for (uint64_t i = 0; i < r1; ++i) {
          if (!d.U64(&x)) return Malformed("chunk offsets");
          coords.push_back(x);
        }
        if (!d.U64(&r2)) return Malformed("chunk shape");
        if (r2 != rank) {
          return InvalidArgumentError("tensor '" + std::string(fqn) + "': a chunk shape has rank " +
                                      std::to_string(r2) + " for a rank-" + std::to_string(rank) +
                                      " tensor");
        }
        for (uint64_t i = 0; i < r2; ++i) {
          if (!d.U64(&x)) return Malformed("chunk shape");
          coords.push_back(x);
        }
      }
    }
    if (!d.done()) return Malformed("trailing bytes");
    p.coords_.reset(new uint64_t[coords.size()]);
    std::copy(coords.begin(), coords.end(), p.coords_.get());
    p.table_ = std::move(table);
    return p;
  }

  // nullopt: the wire is the marker or carries another table's digest.
  static Result<std::optional<LocalPlan>> Compact(const std::shared_ptr<const TensorTable>& own,
                                                  std::string_view digest, std::string_view w) {
    Decoder d(w);
    uint64_t kind;
    if (!d.U64(&kind) || kind > kCompact) return Malformed("plan kind");
    if (kind != kCompact) return std::optional<LocalPlan>();
    uint32_t at;
    uint64_t len;
    if (!d.StrRef(&at, &len) || len != digest.size()) return Malformed("table digest");
    if (w.substr(at, len) != digest) return std::optional<LocalPlan>();
    const TensorTable& table = *own;
    LocalPlan p;
    p.at_.resize(table.size());
    // Room for every varint the bytes can hold, written through a pointer.
    p.coords_.reset(new uint64_t[VarintsIn(w)]);
    uint64_t* out = p.coords_.get();
    const auto* q = reinterpret_cast<const unsigned char*>(w.data()) + d.position();
    const auto* end = reinterpret_cast<const unsigned char*>(w.data()) + w.size();
    for (size_t ti = 0; ti < table.size(); ++ti) {
      uint64_t chunks;
      q = ReadVarint(q, end, &chunks);
      if (q == nullptr || chunks > w.size()) return Malformed("chunk count");
      p.at_[ti] = {static_cast<uint64_t>(out - p.coords_.get()), static_cast<uint32_t>(chunks)};
      const uint64_t values = 2ull * table.rank(ti) * chunks;
      for (uint64_t i = 0; i < values; ++i) {
        q = ReadVarint(q, end, out++);
        if (q == nullptr) return Malformed("chunk coordinates");
      }
    }
    if (q != end) return Malformed("trailing bytes");
    p.table_ = own;
    return std::optional<LocalPlan>(std::move(p));
  }

  static std::shared_ptr<const TensorTable> TableOf(const StateDict& sd) {
    auto table = std::make_shared<TensorTable>();
    table->entries_.reserve(sd.tensors.size());
    for (const DistTensor& t : sd.tensors) {
      TensorTable::Entry e;
      e.name_at = static_cast<uint32_t>(table->names_.size());
      e.name_len = static_cast<uint32_t>(t.fqn.size());
      e.dtype = t.dtype;
      e.rank = static_cast<uint32_t>(t.global_shape.rank());
      e.dims_at = table->dims_.size();
      table->names_ += t.fqn;
      table->dims_.insert(table->dims_.end(), t.global_shape.dims().begin(),
                          t.global_shape.dims().end());
      table->entries_.push_back(e);
    }
    return table;
  }
};

std::shared_ptr<const TensorTable> TensorTable::Of(const StateDict& sd) {
  return PlanDecoder::TableOf(sd);
}

namespace {

std::string TableDigest(const StateDict& sd) {
  Encoder e;
  e.U64(sd.tensors.size());
  for (const DistTensor& t : sd.tensors) EncodeTensorHeader(t, e);
  const std::string bytes = e.Take();
  const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  return std::string(reinterpret_cast<const char*>(c.digest), sizeof c.digest);
}

}  // namespace

std::string EncodeChunkPlan(const StateDict& sd) {
  Encoder e;
  for (const DistTensor& t : sd.tensors) {
    for (const LocalChunk& c : t.chunks) {
      if (c.offsets.size() != t.global_shape.rank() || c.shape.rank() != t.global_shape.rank()) {
        e.U64(0);  // the full plan names the problem
        return e.Take();
      }
    }
  }
  e.U64(kCompact);
  e.Str(TableDigest(sd));
  for (const DistTensor& t : sd.tensors) {
    e.U64(t.chunks.size());
    for (const LocalChunk& c : t.chunks) {
      for (uint64_t o : c.offsets) e.U64(o);
      for (uint64_t s : c.shape.dims()) e.U64(s);
    }
  }
  return e.Take();
}

Result<std::optional<std::vector<LocalPlan>>> DecodeChunkPlans(
    std::shared_ptr<const TensorTable> own, std::vector<std::string> wires) {
  using Out = std::optional<std::vector<LocalPlan>>;
  // This rank's digest is in its own wire; every wire must carry the same.
  std::string digest;
  for (const std::string& w : wires) {
    Decoder d(w);
    uint64_t kind;
    if (!d.U64(&kind) || kind > kCompact) return Malformed("plan kind");
    if (kind != kCompact) return Out();
    std::string dg;
    if (!d.Str(&dg)) return Malformed("table digest");
    if (digest.empty())
      digest = std::move(dg);
    else if (dg != digest)
      return Out();
  }
  // Each rank's bytes decode on their own: in parallel for large jobs, the
  // lowest rank's error reported.
  std::vector<LocalPlan> plans(wires.size());
  const unsigned ranges = RangesFor(wires.size() * own->size(), 100000);
  std::vector<Status> errors(ranges);
  std::vector<uint8_t> foreign(ranges, 0);
  ForEachRange(wires.size(), ranges, [&](size_t begin, size_t end, unsigned range) {
    for (size_t r = begin; r < end; ++r) {
      Result<std::optional<LocalPlan>> p = PlanDecoder::Compact(own, digest, wires[r]);
      if (!p.ok()) {
        errors[range] = p.status();
        return;
      }
      if (!p->has_value()) {
        foreign[range] = 1;
        return;
      }
      plans[r] = std::move(**p);
      std::string().swap(wires[r]);  // decoded: free the bytes now
    }
  });
  for (unsigned k = 0; k < ranges; ++k) {
    if (!errors[k].ok()) return errors[k];
    if (foreign[k]) return Out();
  }
  return Out(std::move(plans));
}

std::string EncodeLocalPlan(const StateDict& sd) {
  Encoder e;
  e.U64(sd.tensors.size());
  for (const DistTensor& t : sd.tensors) {
    EncodeTensorHeader(t, e);
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

Result<LocalPlan> DecodeLocalPlan(std::string wire) { return PlanDecoder::Full(std::move(wire)); }

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

// Tensors get ids in order of first appearance; ranks that share rank 0's
// table map index to id directly, others through the names (checking dtype
// and global shape against the first holder).
namespace {

struct TensorIds {
  struct Tensor {
    const TensorTable* table;  // where it was first seen
    uint32_t index;            // in that table
    uint32_t first_rank;
    size_t count = 0;  // entries
    size_t begin = 0;  // into the entries after grouping
  };
  std::vector<Tensor> tensors;
  std::vector<std::vector<uint32_t>> id_of;  // rank → tensor index → id; empty for rank 0's table
  std::vector<uint8_t> shares;               // rank → uses rank 0's table (ids = indices)

  uint32_t id(size_t rank, size_t ti) const {
    return shares[rank] ? static_cast<uint32_t>(ti) : id_of[rank][ti];
  }
};

Result<TensorIds> AssignIds(const std::vector<LocalPlan>& ranks) {
  TensorIds ids;
  ids.id_of.resize(ranks.size());
  ids.shares.assign(ranks.size(), 0);
  if (ranks.empty()) return ids;
  const TensorTable& t0 = ranks[0].table();
  std::unordered_map<std::string_view, uint32_t> by_name;
  by_name.reserve(t0.size());
  for (uint32_t i = 0; i < t0.size(); ++i) {
    auto [it, inserted] = by_name.try_emplace(t0.fqn(i), static_cast<uint32_t>(ids.tensors.size()));
    if (!inserted)
      return InvalidArgumentError("tensor '" + std::string(t0.fqn(i)) +
                                  "' appears twice on rank 0");
    ids.tensors.push_back({&t0, i, 0});
  }
  for (size_t r = 0; r < ranks.size(); ++r) {
    const LocalPlan& lp = ranks[r];
    if (lp.SharesTableWith(ranks[0])) {
      ids.shares[r] = 1;
      continue;
    }
    const TensorTable& t = lp.table();
    ids.id_of[r].resize(t.size());
    for (size_t ti = 0; ti < t.size(); ++ti) {
      const std::string_view fqn = t.fqn(ti);
      auto [it, inserted] = by_name.try_emplace(fqn, static_cast<uint32_t>(ids.tensors.size()));
      if (inserted)
        ids.tensors.push_back({&t, static_cast<uint32_t>(ti), static_cast<uint32_t>(r)});
      ids.id_of[r][ti] = it->second;
      const TensorIds::Tensor& info = ids.tensors[it->second];
      const TensorTable& ft = *info.table;
      const uint32_t fi = info.index;
      bool same_shape = t.rank(ti) == ft.rank(fi);
      for (uint32_t d = 0; same_shape && d < t.rank(ti); ++d)
        same_shape = t.global(ti)[d] == ft.global(fi)[d];
      if (t.dtype(ti) != ft.dtype(fi) || !same_shape) {
        return InvalidArgumentError(
            "tensor '" + std::string(fqn) + "': rank " + std::to_string(info.first_rank) + " has " +
            std::string(DTypeName(ft.dtype(fi))) + " " + ft.GlobalShape(fi).ToString() +
            " but rank " + std::to_string(r) + " has " + std::string(DTypeName(t.dtype(ti))) + " " +
            t.GlobalShape(ti).ToString());
      }
    }
  }
  return ids;
}

}  // namespace

namespace {

// One per (rank, chunk).
struct Entry {
  const uint64_t* box;  // offsets then sizes, in the rank's plan
  uint32_t rank;
  WriteItem item;
};

// A distinct chunk: entries [first, first + holders) hold it, by rank.
struct Candidate {
  uint64_t bytes;
  uint32_t first;
  uint32_t holders;
};

// Phase 2: the entries grouped by tensor id (a counting sort), each group in
// rank order; sets each tensor's `begin` and `count`.
Result<std::vector<Entry>> GroupEntries(const std::vector<LocalPlan>& ranks, TensorIds& ids) {
  size_t total = 0;
  for (size_t r = 0; r < ranks.size(); ++r) {
    const LocalPlan& lp = ranks[r];
    for (size_t ti = 0; ti < lp.size(); ++ti) {
      ids.tensors[ids.id(r, ti)].count += lp.num_chunks(ti);
      total += lp.num_chunks(ti);
    }
  }
  if (total > UINT32_MAX)
    return InvalidArgumentError(std::to_string(total) + " chunks are too many to plan");
  size_t pos = 0;
  for (TensorIds::Tensor& t : ids.tensors) {
    t.begin = pos;
    pos += t.count;
    t.count = 0;
  }
  std::vector<Entry> entries(total);
  for (size_t r = 0; r < ranks.size(); ++r) {
    const LocalPlan& lp = ranks[r];
    for (size_t ti = 0; ti < lp.size(); ++ti) {
      TensorIds::Tensor& info = ids.tensors[ids.id(r, ti)];
      for (uint32_t ci = 0; ci < lp.num_chunks(ti); ++ci) {
        entries[info.begin + info.count++] = {
            lp.chunk(ti, ci).off, static_cast<uint32_t>(r), {static_cast<uint32_t>(ti), ci}};
      }
    }
  }
  return entries;
}

// Phase 3, one tensor: its entries sorted by box (equal boxes on several
// ranks are one candidate: a replicated chunk), each candidate's bytes, and
// the tiling checked. `stamp` (tensor last seen per rank) and `boxes` are
// scratch space reused across tensors.
Status TensorCandidates(uint32_t id, const TensorIds::Tensor& info, std::vector<Entry>& entries,
                        std::vector<uint32_t>& stamp, std::vector<BoxView>& boxes,
                        std::vector<Candidate>& out) {
  const TensorTable& table = *info.table;
  const std::string_view fqn = table.fqn(info.index);
  const DType dtype = table.dtype(info.index);
  Entry* b = entries.data() + info.begin;
  Entry* e = b + info.count;
  const uint32_t dims = table.rank(info.index), n2 = 2 * dims;
  auto view = [dims](const Entry& x) { return BoxView(x.box, x.box + dims, dims); };
  auto by_box = [n2](const Entry& x, const Entry& y) {
    if (LessBox(x.box, y.box, n2)) return true;
    if (LessBox(y.box, x.box, n2)) return false;
    return x.rank < y.rank;
  };
  // Ranks usually hold consecutive slices in rank order: already sorted.
  bool sorted = true;
  for (Entry* it = b + (b != e); it < e && sorted; ++it) {
    sorted = LessBox(it[-1].box, it->box, n2) ||
             (SameBox(it[-1].box, it->box, n2) && it[-1].rank < it->rank);
  }
  if (!sorted) std::sort(b, e, by_box);
  boxes.clear();
  boxes.reserve(info.count);
  for (Entry* it = b; it != e;) {
    Entry* group_end = it + 1;
    while (group_end != e && SameBox(group_end->box, it->box, n2)) ++group_end;
    uint64_t bytes;
    if (!ChunkBytes(view(*it), dtype, &bytes)) {
      return InvalidArgumentError("tensor '" + std::string(fqn) + "': chunk " +
                                  view(*it).ToString() + " of " + std::string(DTypeName(dtype)) +
                                  " is not a whole number of bytes");
    }
    for (Entry* h = it; h != group_end; ++h) {
      // The DCP layout stores one chunk of a tensor per file (the key is the fqn).
      if (stamp[h->rank] == id && (h == it || h[-1].rank != h->rank)) {
        return InvalidArgumentError(
            "tensor '" + std::string(fqn) + "': rank " + std::to_string(h->rank) +
            " holds 2 different chunks; one file can store one chunk per tensor");
      }
      stamp[h->rank] = id;
    }
    out.push_back(
        {bytes, static_cast<uint32_t>(it - entries.data()), static_cast<uint32_t>(group_end - it)});
    boxes.push_back(view(*it));
    it = group_end;
  }
  return CheckTiling(fqn, table.global(info.index), dims, boxes);
}

// Phase 3: every tensor's candidates, in tensor order. Tensors are
// independent, so large plans check them in parallel ranges; the error
// reported is the lowest tensor's, as in a sequential pass.
Result<std::vector<Candidate>> FindCandidates(const TensorIds& ids, size_t num_ranks,
                                              std::vector<Entry>& entries) {
  const unsigned ranges = RangesFor(entries.size(), 200000);
  struct Part {
    std::vector<Candidate> cands;
    Status error;
  };
  std::vector<Part> parts(ranges);
  ForEachRange(ids.tensors.size(), ranges, [&](size_t begin, size_t end, unsigned k) {
    Part& part = parts[k];
    part.cands.reserve(entries.size() / ranges);
    std::vector<uint32_t> stamp(num_ranks, UINT32_MAX);
    std::vector<BoxView> boxes;
    for (size_t id = begin; id < end && part.error.ok(); ++id) {
      part.error = TensorCandidates(static_cast<uint32_t>(id), ids.tensors[id], entries, stamp,
                                    boxes, part.cands);
    }
  });
  if (ranges == 1) {
    if (!parts[0].error.ok()) return parts[0].error;
    return std::move(parts[0].cands);
  }
  std::vector<Candidate> cands;
  size_t n = 0;
  for (const Part& part : parts) {
    if (!part.error.ok()) return part.error;
    n += part.cands.size();
  }
  cands.reserve(n);
  for (const Part& part : parts) cands.insert(cands.end(), part.cands.begin(), part.cands.end());
  return cands;
}

// Phase 4: the entry that writes each candidate. A chunk only one rank holds
// is that rank's; those are counted first, so replicated chunks then balance
// against every rank's whole load: largest first (ties in candidate order),
// each to the holder with the fewest bytes so far, ties to the lowest rank.
std::vector<uint32_t> ChooseWriters(const std::vector<Candidate>& cands,
                                    const std::vector<Entry>& entries,
                                    std::vector<uint64_t>& bytes) {
  std::vector<uint32_t> chosen(cands.size());
  std::vector<uint32_t> shared;
  for (uint32_t i = 0; i < cands.size(); ++i) {
    const Candidate& c = cands[i];
    if (c.holders == 1) {
      bytes[entries[c.first].rank] += c.bytes;
      chosen[i] = c.first;
    } else {
      shared.push_back(i);
    }
  }
  std::stable_sort(shared.begin(), shared.end(),
                   [&](uint32_t x, uint32_t y) { return cands[x].bytes > cands[y].bytes; });
  for (uint32_t i : shared) {
    const Candidate& c = cands[i];
    uint32_t best = c.first;
    for (uint32_t k = 1; k < c.holders; ++k) {
      // Holders are sorted by rank: a tie keeps the lower one.
      if (bytes[entries[c.first + k].rank] < bytes[entries[best].rank]) best = c.first + k;
    }
    bytes[entries[best].rank] += c.bytes;
    chosen[i] = best;
  }
  return chosen;
}

}  // namespace

Result<GlobalPlan> BuildGlobalPlan(const std::vector<LocalPlan>& ranks) {
  CKPT_ASSIGN_OR_RETURN(TensorIds ids, AssignIds(ranks));
  CKPT_ASSIGN_OR_RETURN(std::vector<Entry> entries, GroupEntries(ranks, ids));
  CKPT_ASSIGN_OR_RETURN(std::vector<Candidate> cands, FindCandidates(ids, ranks.size(), entries));

  GlobalPlan plan;
  plan.num_tensors = ids.tensors.size();
  plan.writes.resize(ranks.size());
  plan.bytes.assign(ranks.size(), 0);
  const std::vector<uint32_t> chosen = ChooseWriters(cands, entries, plan.bytes);

  // Each rank's writes in its own tensor order (already so when ranks share
  // rank 0's table: candidates are in tensor order).
  std::vector<uint32_t> per_rank(ranks.size(), 0);
  for (uint32_t e : chosen) ++per_rank[entries[e].rank];
  for (size_t r = 0; r < ranks.size(); ++r) plan.writes[r].reserve(per_rank[r]);
  for (uint32_t e : chosen) plan.writes[entries[e].rank].push_back(entries[e].item);
  auto by_item = [](const WriteItem& a, const WriteItem& b) {
    return a.tensor != b.tensor ? a.tensor < b.tensor : a.chunk < b.chunk;
  };
  for (auto& w : plan.writes) {
    if (!std::is_sorted(w.begin(), w.end(), by_item)) std::sort(w.begin(), w.end(), by_item);
  }
  return plan;
}

}  // namespace ckpt::plan
