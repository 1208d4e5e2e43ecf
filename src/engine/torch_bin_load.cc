// LoadSharded from a `.bin` model directory (no safetensors beside it).
// Every rank opens the archives itself (reading only their directories and
// pickles), then fills its chunks tensor by tensor: the tensor is
// materialized once (views gathered, byte order fixed) and the chunk's box
// copied out of it, converted when the dtypes differ and casting is allowed.
#include "engine/torch_bin_load.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "ckpt/torch_bin.h"
#include "convert/float_cast.h"
#include "plan/codec.h"

namespace ckpt::engine {
namespace {

// Copies chunk `c` (a box of a tensor whose full row-major bytes are `src`,
// dtype `from`) into the chunk's memory as dtype `to`.
Status CopyBox(std::span<const std::byte> src, DType from, const Shape& global, LocalChunk& c, DType to) {
  const size_t rank = global.rank();
  const uint64_t in_esz = DTypeBits(from) / 8, out_esz = DTypeBits(to) / 8;
  std::vector<uint64_t> gstride(rank, 1);
  for (size_t d = rank; d-- > 1;) gstride[d - 1] = gstride[d] * global[d];
  std::vector<int64_t> cstride = c.strides;
  if (cstride.empty()) {
    cstride.assign(rank, 1);
    for (size_t d = rank; d-- > 1;) cstride[d - 1] = cstride[d] * static_cast<int64_t>(c.shape[d]);
  }
  CKPT_ASSIGN_OR_RETURN(uint64_t numel, c.shape.NumElements());
  if (numel == 0) return Status();
  const uint64_t row = rank == 0 ? 1 : c.shape[rank - 1];
  std::vector<std::byte> converted(row * out_esz);
  std::vector<uint64_t> idx(rank == 0 ? 0 : rank - 1, 0);
  for (uint64_t done = 0; done < numel; done += row) {
    uint64_t s = 0;
    int64_t dst = 0;
    for (size_t d = 0; d + 1 < rank; ++d) {
      s += (c.offsets[d] + idx[d]) * gstride[d];
      dst += static_cast<int64_t>(idx[d]) * cstride[d];
    }
    if (rank > 0) s += c.offsets[rank - 1];
    std::span<const std::byte> in = src.subspan(s * in_esz, row * in_esz);
    std::span<const std::byte> out = in;
    if (from != to) {
      CKPT_RETURN_IF_ERROR(CastFloats(from, in, to, converted));
      out = converted;
    }
    const int64_t inner = rank == 0 ? 1 : cstride[rank - 1];
    if (inner == 1) {
      std::memcpy(c.data + dst * static_cast<int64_t>(out_esz), out.data(), out.size());
    } else {
      for (uint64_t k = 0; k < row; ++k) {
        std::memcpy(c.data + (dst + static_cast<int64_t>(k) * inner) * static_cast<int64_t>(out_esz),
                    out.data() + k * out_esz, out_esz);
      }
    }
    for (size_t d = idx.size(); d-- > 0;) {
      if (++idx[d] < c.shape[d]) break;
      idx[d] = 0;
    }
  }
  return Status();
}

}  // namespace

Result<bool> IsTorchBinOnlyDir(Storage& storage, const std::string& dir) {
  Result<DirEntry> st = storage.Stat(dir);
  if (!st.ok() || st->type != EntryType::kDirectory) return false;
  CKPT_ASSIGN_OR_RETURN(bool bin, HasTorchBinWeights(storage, dir));
  if (!bin) return false;
  CKPT_ASSIGN_OR_RETURN(bool safe, HasSafetensorsWeights(storage, dir));
  return !safe;
}

Status LoadTorchBin(Communicator& comm, Storage& storage, const std::string& dir, StateDict& sd, const LoadOptions& o,
                    LoadStats* stats_out) {
  const Timeout to = o.timeout;
  const std::string what = "loading " + dir;
  LoadStats stats;
  Result<TorchBinDir> bin = TorchBinDir::Open(storage, dir);
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(bin.status(), to).WithContext(what));

  // Checkpoint keys under the names the state dict uses.
  std::map<std::string, std::string> by_name;  // state-dict name → archive name
  Status named;
  for (const auto& [fqn, loc] : bin->tensors()) {
    bool skip = false;
    for (const std::string& p : o.skip_prefixes) skip = skip || fqn.rfind(p, 0) == 0;
    if (skip) continue;
    Result<std::string> name = MapKey(o.key_mapping, fqn);
    if (!name.ok()) {
      named = name.status();
      break;
    }
    if (!by_name.emplace(*name, fqn).second) {
      named = InvalidArgumentError("checkpoint keys '" + by_name[*name] + "' and '" + fqn + "' both map to '" + *name + "'");
      break;
    }
  }
  if (named.ok() && o.tie_word_embeddings && !by_name.count("lm_head.weight") && by_name.count("model.embed_tokens.weight")) {
    by_name["lm_head.weight"] = by_name["model.embed_tokens.weight"];
  }
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(named, to).WithContext(what));

  // Keys of every rank against the archive's.
  plan::Encoder enc;
  for (const DistTensor& t : sd.tensors) enc.Str(t.fqn);
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> all_keys, comm.AllGather(enc.Take(), to));
  std::set<std::string> wanted;
  for (const std::string& keys : all_keys) {
    plan::Decoder d(keys);
    std::string k;
    while (d.Str(&k)) wanted.insert(k);
  }
  std::vector<std::string> mismatch;
  for (const std::string& k : wanted) {
    if (!by_name.count(k)) stats.missing_keys.push_back(k);
  }
  for (const auto& [name, src] : by_name) {
    if (!wanted.count(name)) stats.unexpected_keys.push_back(name);
  }
  for (const DistTensor& t : sd.tensors) {
    auto it = by_name.find(t.fqn);
    if (it == by_name.end()) continue;
    const TorchTensorInfo& s = *bin->tensors().at(it->second).info;
    const bool castable = o.cast_floats && IsOrdinaryFloat(s.dtype) && IsOrdinaryFloat(t.dtype);
    if ((s.dtype != t.dtype && !castable) || !(s.shape == t.global_shape)) {
      mismatch.push_back(MismatchLine(t.fqn, s.dtype, s.shape, t));
    }
  }
  Status matched = KeysError(dir, "", stats, mismatch, o);
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(matched, to).WithContext(what));

  Status filled;
  std::vector<std::byte> buf;
  for (DistTensor& t : sd.tensors) {
    auto it = by_name.find(t.fqn);
    if (it == by_name.end() || t.chunks.empty()) continue;
    const TorchBinDir::Location& loc = bin->tensors().at(it->second);
    const TorchTensorInfo& s = *loc.info;
    buf.resize(s.nbytes);
    filled = bin->files()[loc.file]->ReadTensor(s.name, buf);
    stats.bytes_read += s.nbytes;
    ++stats.reads;
    for (LocalChunk& c : t.chunks) {
      if (!filled.ok()) break;
      for (size_t d = 0; filled.ok() && d < t.global_shape.rank(); ++d) {
        if (c.offsets.size() != t.global_shape.rank() || c.shape.rank() != t.global_shape.rank() ||
            c.offsets[d] + c.shape[d] > t.global_shape[d]) {
          filled = InvalidArgumentError("local chunk is outside the global shape " + t.global_shape.ToString());
        }
      }
      Result<uint64_t> nbytes = c.shape.NumBytes(t.dtype);
      if (filled.ok() && !nbytes.ok()) filled = nbytes.status();
      if (filled.ok()) {
        stats.bytes_needed += *nbytes;
        filled = CopyBox(buf, s.dtype, t.global_shape, c, t.dtype);
      }
    }
    if (!filled.ok()) {
      filled = filled.WithContext("tensor '" + t.fqn + "' from " + bin->files()[loc.file]->path());
      break;
    }
  }
  if (stats_out) *stats_out = stats;
  return comm.AgreeOnStatus(filled, to).WithContext(what);
}

}  // namespace ckpt::engine
