// LoadSharded from a `.bin` model directory (no safetensors beside it).
// Every rank opens the archives itself (reading only their directories and
// pickles), then fills its chunks reading only their boxes' bytes (views
// gathered and byte order fixed by the archive reader), converted when the
// dtypes differ and casting is allowed.
#include "engine/torch_bin_load.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "ckpt/torch_bin.h"
#include "convert/float_cast.h"
#include "engine/shard_dir.h"
#include "plan/codec.h"

namespace ckpt::engine {
namespace {

// Fills chunk `c` of tensor `name` (dtype `from`, global shape `global`) as
// dtype `to`, reading only the box's bytes: one read when the box is a
// contiguous range of the row-major tensor and lands contiguously, else one
// read per row of the box's last dimension.
Status FillChunk(const TorchArchive& archive, const std::string& name, DType from,
                 const Shape& global, LocalChunk& c, DType to, LoadStats* stats) {
  const size_t rank = global.rank();
  const uint64_t in_esz = DTypeBits(from) / 8, out_esz = DTypeBits(to) / 8;
  CKPT_ASSIGN_OR_RETURN(uint64_t numel, c.shape.NumElements());
  if (numel == 0) return Status();
  std::vector<uint64_t> gstride(rank, 1);
  for (size_t d = rank; d-- > 1;) gstride[d - 1] = gstride[d] * global[d];
  std::vector<int64_t> cstride = c.strides;
  if (cstride.empty()) {
    cstride.assign(rank, 1);
    for (size_t d = rank; d-- > 1;) cstride[d - 1] = cstride[d] * static_cast<int64_t>(c.shape[d]);
  }
  // Rows of the last dimension; a box spanning every dimension but the
  // first is one contiguous run.
  bool whole_rows = true;
  for (size_t d = 1; d < rank; ++d)
    whole_rows = whole_rows && c.offsets[d] == 0 && c.shape[d] == global[d];
  const uint64_t row = rank == 0 ? 1 : (whole_rows ? numel : c.shape[rank - 1]);
  const bool direct = from == to && c.strides.empty();
  std::vector<std::byte> in(direct ? 0 : row * in_esz), out(from == to ? 0 : row * out_esz);
  std::vector<uint64_t> idx(rank == 0 || whole_rows ? 0 : rank - 1, 0);
  for (uint64_t done = 0; done < numel; done += row) {
    uint64_t src = 0;
    int64_t dst = 0;
    for (size_t d = 0; d < idx.size(); ++d) {
      src += (c.offsets[d] + idx[d]) * gstride[d];
      dst += static_cast<int64_t>(idx[d]) * cstride[d];
    }
    if (rank > 0) src += c.offsets[idx.size()] * gstride[idx.size()];
    std::byte* place = c.data + dst * static_cast<int64_t>(out_esz);
    std::span<std::byte> read =
        direct ? std::span<std::byte>(place, row * in_esz) : std::span<std::byte>(in);
    CKPT_RETURN_IF_ERROR(archive.ReadRange(name, src * in_esz, read));
    stats->bytes_read += read.size();
    ++stats->reads;
    if (!direct) {
      std::span<const std::byte> values = in;
      if (from != to) {
        CKPT_RETURN_IF_ERROR(CastFloats(from, in, to, out));
        values = out;
      }
      if (c.strides.empty()) {
        std::memcpy(place, values.data(), values.size());
      } else if (!whole_rows) {
        const int64_t inner = cstride[rank - 1];
        for (uint64_t k = 0; k < row; ++k) {
          std::memcpy(place + static_cast<int64_t>(k) * inner * static_cast<int64_t>(out_esz),
                      values.data() + k * out_esz, out_esz);
        }
      } else {
        // The whole chunk in one run, placed through its strides.
        std::vector<uint64_t> e(rank, 0);
        for (uint64_t k = 0; k < row; ++k) {
          int64_t off = 0;
          for (size_t d = 0; d < rank; ++d) off += static_cast<int64_t>(e[d]) * cstride[d];
          std::memcpy(c.data + off * static_cast<int64_t>(out_esz), values.data() + k * out_esz,
                      out_esz);
          for (size_t d = rank; d-- > 0;) {
            if (++e[d] < c.shape[d]) break;
            e[d] = 0;
          }
        }
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

namespace {

// The archive's tensors under the names the state dict uses (skipped
// prefixes, key mapping, tied embeddings): state-dict name → archive name.
Status NameArchiveKeys(const TorchBinDir& bin, const LoadOptions& o,
                       std::map<std::string, std::string>* by_name) {
  CKPT_ASSIGN_OR_RETURN(const KeyMapper mapper, KeyMapper::Compile(o.key_mapping));
  for (const auto& [fqn, loc] : bin.tensors()) {
    bool skip = false;
    for (const std::string& p : o.skip_prefixes) skip = skip || fqn.rfind(p, 0) == 0;
    if (skip) continue;
    CKPT_ASSIGN_OR_RETURN(std::string name, mapper.Apply(fqn));
    if (auto [it, fresh] = by_name->emplace(name, fqn); !fresh) {
      return InvalidArgumentError("checkpoint keys '" + it->second + "' and '" + fqn +
                                  "' both map to '" + name + "'");
    }
  }
  if (o.tie_word_embeddings && !by_name->count("lm_head.weight") &&
      by_name->count("model.embed_tokens.weight")) {
    (*by_name)["lm_head.weight"] = (*by_name)["model.embed_tokens.weight"];
  }
  return Status();
}

}  // namespace

Status LoadTorchBin(Communicator& comm, Storage& storage, const std::string& dir, StateDict& sd,
                    const LoadOptions& o, LoadStats* stats_out) {
  const Timeout to = o.timeout;
  const std::string what = "loading " + dir;
  LoadStats stats;
  Result<TorchBinDir> bin = TorchBinDir::Open(storage, dir);
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(bin.status(), to).WithContext(what));

  // Checkpoint keys under the names the state dict uses.
  std::map<std::string, std::string> by_name;  // state-dict name → archive name
  Status named = NameArchiveKeys(*bin, o, &by_name);
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
  for (DistTensor& t : sd.tensors) {
    auto it = by_name.find(t.fqn);
    if (it == by_name.end()) continue;
    const TorchBinDir::Location& loc = bin->tensors().at(it->second);
    const TorchTensorInfo& s = *loc.info;
    for (LocalChunk& c : t.chunks) {
      bool inside = c.offsets.size() == t.global_shape.rank() &&
                    c.shape.rank() == t.global_shape.rank() &&
                    (c.strides.empty() || c.strides.size() == c.shape.rank());
      for (size_t d = 0; inside && d < t.global_shape.rank(); ++d)
        inside = c.offsets[d] + c.shape[d] <= t.global_shape[d];
      if (!inside) {
        filled = InvalidArgumentError("a local chunk is outside the global shape " +
                                      t.global_shape.ToString());
        break;
      }
      Result<uint64_t> nbytes = c.shape.NumBytes(t.dtype);
      filled = nbytes.status();
      if (!filled.ok()) break;
      stats.bytes_needed += *nbytes;
      filled =
          FillChunk(*bin->files()[loc.file], s.name, s.dtype, t.global_shape, c, t.dtype, &stats);
      if (!filled.ok()) break;
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
