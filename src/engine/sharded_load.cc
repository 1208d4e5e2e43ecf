// LoadSharded. Every rank:
//   1. rank 0 lists the directory and broadcasts the listing (and manifest);
//   2. headers are read once, file i by rank i mod world, and all-gathered;
//   3. every rank indexes all saved chunks per tensor and checks they tile;
//   4. the key sets of all ranks are compared with the checkpoint's: missing
//      and unexpected keys and shape/dtype mismatches make one error;
//   5. each local chunk is filled from the overlapping byte ranges only.
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <locale>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <unordered_map>

#include "ckpt/sharded.h"
#include "convert/float_cast.h"
#include "core/encoding.h"
#include "core/strided.h"
#include "engine/dcp_dir.h"
#include "engine/shard_dir.h"
#include "engine/torch_bin_load.h"
#include "format/json_util.h"
#include "plan/codec.h"

namespace ckpt {
namespace {

using json = nlohmann::json;

// With dequantize_fp8: `fqn` is the `_scale_inv` of an F8_E4M3 weight.
bool ScaleOfFp8Weight(const plan::SavedIndex& index, const LoadOptions& o, const std::string& fqn) {
  if (!o.dequantize_fp8 || !fqn.ends_with(kFp8ScaleSuffix)) return false;
  const plan::SavedTensor* w = index.Find(fqn.substr(0, fqn.size() - kFp8ScaleSuffix.size()));
  return w != nullptr && w->dtype == DType::kF8_E4M3;
}

// The scale tensor an FP8 weight dequantizes with, or null.
const plan::SavedTensor* Fp8Scale(const plan::SavedIndex& index, const LoadOptions& o,
                                  const plan::SavedTensor& w) {
  if (!o.dequantize_fp8 || w.dtype != DType::kF8_E4M3) return nullptr;
  return index.Find(w.fqn + std::string(kFp8ScaleSuffix));
}

// Checkpoint tensors under the names the state dict uses.
using ByName = std::map<std::string, const plan::SavedTensor*>;

Result<ByName> RenameCheckpointKeys(const plan::SavedIndex& index, const LoadOptions& o) {
  ByName out;
  std::map<std::string, std::string> source;
  CKPT_ASSIGN_OR_RETURN(const engine::KeyMapper mapper, engine::KeyMapper::Compile(o.key_mapping));
  for (const auto& [fqn, t] : index.tensors()) {
    if (ScaleOfFp8Weight(index, o, fqn)) continue;
    bool skip = false;
    for (const std::string& p : o.skip_prefixes) skip = skip || fqn.rfind(p, 0) == 0;
    if (skip) continue;
    CKPT_ASSIGN_OR_RETURN(std::string name, mapper.Apply(fqn));
    if (auto [it, fresh] = source.emplace(name, fqn); !fresh) {
      return InvalidArgumentError("checkpoint keys '" + it->second + "' and '" + fqn +
                                  "' both map to '" + name + "'");
    }
    out[name] = &t;
  }
  if (o.tie_word_embeddings && !out.count("lm_head.weight")) {
    if (auto it = out.find("model.embed_tokens.weight"); it != out.end())
      out["lm_head.weight"] = it->second;
  }
  return out;
}

Status CompareKeys(const ByName& by_name, const std::vector<std::string>& per_rank_keys,
                   const StateDict& sd, const LoadOptions& o, const std::string& dir,
                   LoadStats* stats) {
  std::set<std::string> wanted;
  for (const std::string& keys : per_rank_keys) {
    plan::Decoder d(keys);
    std::string k;
    while (d.Str(&k)) wanted.insert(k);
  }
  std::vector<std::string> mismatch;
  size_t matched = 0;
  for (const std::string& k : wanted) {
    if (by_name.count(k)) {
      ++matched;
    } else {
      stats->missing_keys.push_back(k);
    }
  }
  for (const DistTensor& t : sd.tensors) {
    auto it = by_name.find(t.fqn);
    if (it == by_name.end()) continue;
    const plan::SavedTensor* s = it->second;
    const bool castable =
        (o.cast_floats && IsOrdinaryFloat(s->dtype) && IsOrdinaryFloat(t.dtype)) ||
        (o.dequantize_fp8 && s->dtype == DType::kF8_E4M3 && IsOrdinaryFloat(t.dtype));
    if ((s->dtype != t.dtype && !castable) || !(s->global == t.global_shape)) {
      mismatch.push_back(engine::MismatchLine(t.fqn, s->dtype, s->global, t));
    }
  }
  for (const auto& [name, t] : by_name) {
    if (!wanted.count(name)) stats->unexpected_keys.push_back(name);
  }
  std::string msg;
  if (!wanted.empty() && matched == 0) {
    msg = "no state-dict key is in the checkpoint (" + std::to_string(wanted.size()) +
          " wanted, e.g. " +
          engine::KeyList(std::vector<std::string>(wanted.begin(), wanted.end()), 3) + ")";
  }
  return engine::KeysError(dir, msg, *stats, mismatch, o);
}

// Files of the checkpoint opened once per load, with a lazily created
// mapping used for reads that scatter many small pieces.
class OpenFiles {
 public:
  OpenFiles(Storage& storage, const std::string& dir, const std::vector<std::string>& names)
      : storage_(storage), dir_(dir), names_(names) {}

  Result<ReadableFile*> Get(uint32_t i) {
    auto it = files_.find(i);
    if (it == files_.end()) {
      CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f,
                            storage_.OpenRead(JoinPath(dir_, names_[i])));
      it = files_.emplace(i, Entry{std::move(f), std::nullopt, false}).first;
    }
    return it->second.file.get();
  }
  // The whole file mapped, or null when the backend cannot map.
  const std::byte* Mapped(uint32_t i) {
    Entry& e = files_.at(i);
    if (!e.tried_map) {
      e.tried_map = true;
      Result<MappedRegion> m = e.file->Map(0, e.file->Size());
      if (m.ok()) e.map = std::move(*m);
    }
    return e.map ? e.map->bytes.data() : nullptr;
  }

 private:
  struct Entry {
    std::unique_ptr<ReadableFile> file;
    std::optional<MappedRegion> map;
    bool tried_map;
  };
  Storage& storage_;
  const std::string& dir_;
  const std::vector<std::string>& names_;
  std::unordered_map<uint32_t, Entry> files_;
};

// Executes the reads. Contiguous windows are read straight into the
// destination; windows that scatter into many pieces are copied from a
// mapping of the file (no system call per piece), or read into a bounce
// buffer when the backend cannot map.
Status RunReads(OpenFiles& files, std::byte* base, const std::vector<plan::ReadOp>& ops,
                LoadStats* stats) {
  std::vector<std::byte> bounce;
  for (const plan::ReadOp& op : ops) {
    CKPT_ASSIGN_OR_RETURN(ReadableFile * f, files.Get(op.file));
    stats->bytes_read += op.length;
    ++stats->reads;
    if (op.Direct() && op.length >= (256u << 10)) {
      CKPT_RETURN_IF_ERROR(ReadAtParallel(
          *f, op.file_offset, std::span<std::byte>(base + op.pieces[0].dest_offset, op.length)));
      continue;
    }
    const std::byte* window = nullptr;
    if (const std::byte* mapped = files.Mapped(op.file)) {
      if (op.file_offset > f->Size() || op.length > f->Size() - op.file_offset) {
        return DataLossError(f->path() + ": read [" + std::to_string(op.file_offset) + ", " +
                             std::to_string(op.file_offset + op.length) +
                             ") past the end of the file");
      }
      window = mapped + op.file_offset;
    } else {
      bounce.resize(op.length);
      CKPT_RETURN_IF_ERROR(f->ReadAt(op.file_offset, bounce));
      window = bounce.data();
    }
    for (const plan::ReadOp::Piece& p : op.pieces) {
      const std::byte* src = window + p.window_offset;
      std::byte* dst = base + p.dest_offset;
      if (op.dest_step == static_cast<int64_t>(op.elem_bytes)) {
        std::memcpy(dst, src, p.count * op.elem_bytes);
      } else {
        for (uint64_t i = 0; i < p.count; ++i) {
          std::memcpy(dst + static_cast<int64_t>(i) * op.dest_step, src + i * op.elem_bytes,
                      op.elem_bytes);
        }
      }
    }
  }
  return Status();
}

// A DCP directory's non-tensor values are its byte entries (no JSON).
Status LoadDcpExtra(Storage& storage, const std::string& dir,
                    const engine::SavedCheckpoint& checkpoint, StateDict& sd) {
  if (sd.json.empty() && sd.bytes.empty()) return Status();
  if (!sd.json.empty())
    return NotFoundError(dir + ": a DCP checkpoint has no JSON entry '" + sd.json.begin()->first +
                         "'");
  CKPT_ASSIGN_OR_RETURN(auto entries, engine::ReadDcpBytes(storage, dir, checkpoint));
  for (auto& [k, v] : sd.bytes) {
    auto it = entries.find(k);
    if (it == entries.end())
      return NotFoundError(dir + ": no bytes entry '" + k + "' in .metadata");
    v = std::move(it->second);
  }
  return Status();
}

Status LoadExtra(Storage& storage, const std::string& dir, bool present,
                 const std::optional<std::string>& manifest, StateDict& sd) {
  if (sd.json.empty() && sd.bytes.empty()) return Status();
  const std::string path = JoinPath(dir, kExtraStateName);
  if (!present)
    return NotFoundError(path + " does not exist but the state dict has non-tensor entries");
  CKPT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(storage, path));
  CKPT_RETURN_IF_ERROR(engine::CheckExtraState(manifest, dir, std::string_view(text)));
  CKPT_ASSIGN_OR_RETURN(json j, ParseStrictJson(text, path, 64));
  for (auto& [k, v] : sd.json) {
    if (!j.contains("json") || !j["json"].contains(k))
      return NotFoundError(path + ": no json entry '" + k + "'");
    v = j["json"][k].dump();
  }
  for (auto& [k, v] : sd.bytes) {
    if (!j.contains("bytes") || !j["bytes"].contains(k) || !j["bytes"][k].is_string()) {
      return NotFoundError(path + ": no bytes entry '" + k + "'");
    }
    std::optional<std::vector<std::byte>> decoded = Base64Decode(j["bytes"][k].get<std::string>());
    if (!decoded) return DataLossError(path + ": bytes entry '" + k + "' is not base64");
    v = std::move(*decoded);
  }
  return Status();
}

}  // namespace

Result<StateDict> ReadExtraState(Storage& storage, const std::string& dir) {
  // A DCP directory's commit object is its .metadata, which IsDcpDir looks for.
  CKPT_ASSIGN_OR_RETURN(bool dcp, engine::IsDcpDir(storage, dir));
  if (dcp) {
    CKPT_ASSIGN_OR_RETURN(engine::SavedCheckpoint c, engine::ReadDcpCheckpoint(storage, dir));
    StateDict sd;
    CKPT_ASSIGN_OR_RETURN(auto entries, engine::ReadDcpBytes(storage, dir, c));
    for (auto& [k, v] : entries) sd.bytes[k] = std::move(v);
    return sd;
  }
  CKPT_RETURN_IF_ERROR(engine::CheckCommitted(storage, dir));
  const std::string path = JoinPath(dir, kExtraStateName);
  CKPT_ASSIGN_OR_RETURN(bool present, Exists(storage, path));
  const std::string manifest_path = JoinPath(dir, kManifestName);
  CKPT_ASSIGN_OR_RETURN(bool has_manifest, Exists(storage, manifest_path));
  std::optional<std::string> manifest;
  if (has_manifest) {
    CKPT_ASSIGN_OR_RETURN(std::string m, ReadFileToString(storage, manifest_path));
    manifest = std::move(m);
  }
  StateDict sd;
  if (!present) {
    CKPT_RETURN_IF_ERROR(engine::CheckExtraState(manifest, dir, std::nullopt));
    return sd;
  }
  CKPT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(storage, path));
  CKPT_RETURN_IF_ERROR(engine::CheckExtraState(manifest, dir, std::string_view(text)));
  CKPT_ASSIGN_OR_RETURN(json j, ParseStrictJson(text, path, 64));
  if (!j.is_object()) return DataLossError(path + ": not a JSON object");
  if (auto it = j.find("json"); it != j.end() && it->is_object()) {
    for (const auto& [k, v] : it->items()) sd.json[k] = v.dump();
  }
  if (auto it = j.find("bytes"); it != j.end() && it->is_object()) {
    for (const auto& [k, v] : it->items()) sd.bytes[k] = {};
  }
  CKPT_RETURN_IF_ERROR(LoadExtra(storage, dir, true, manifest, sd));
  return sd;
}

namespace {

void Place(std::span<const std::byte> out, DType to, LocalChunk& c);

// Fills chunk `c` (dtype `to`) from saved chunks of dtype `from`: reads the
// box row-major in `from` into a buffer, converts, and places the elements
// (through the chunk's strides when it has them). Transient memory: the box
// in both dtypes.
Status ReadAndCast(OpenFiles& files, const std::vector<const plan::SavedChunk*>& overlapping,
                   DType from, DType to, const plan::Box& box, LocalChunk& c, LoadStats* stats) {
  CKPT_ASSIGN_OR_RETURN(uint64_t in_bytes, c.shape.NumBytes(from));
  CKPT_ASSIGN_OR_RETURN(uint64_t out_bytes, c.shape.NumBytes(to));
  std::vector<std::byte> in(in_bytes);
  std::vector<plan::ReadOp> ops;
  for (const plan::SavedChunk* sc : overlapping) {
    CKPT_RETURN_IF_ERROR(plan::PlanChunkReads(*sc, from, box, {}, &ops));
  }
  CKPT_RETURN_IF_ERROR(RunReads(files, in.data(), ops, stats));
  if (c.strides.empty()) return CastFloats(from, in, to, std::span<std::byte>(c.data, out_bytes));
  std::vector<std::byte> out(out_bytes);
  CKPT_RETURN_IF_ERROR(CastFloats(from, in, to, out));
  Place(out, to, c);
  return Status();
}

// Reads an FP8 weight's box and the scales of the 128×128 blocks it
// touches, multiplies in float32 and converts to the chunk's dtype.
Status ReadAndDequant(OpenFiles& files, const plan::SavedTensor& weight,
                      const plan::SavedTensor& scale, const plan::Box& box, LocalChunk& c, DType to,
                      LoadStats* stats) {
  const std::string where = "FP8 weight '" + weight.fqn + "'";
  if (weight.global.rank() != 2)
    return InvalidArgumentError(where + " has shape " + weight.global.ToString() +
                                ", not a matrix");
  const uint64_t rows = weight.global[0], cols = weight.global[1], B = kFp8BlockSize;
  const Shape expect({(rows + B - 1) / B, (cols + B - 1) / B});
  if (scale.dtype != DType::kF32 || !(scale.global == expect)) {
    return InvalidArgumentError("'" + scale.fqn + "' is " + std::string(DTypeName(scale.dtype)) +
                                " " + scale.global.ToString() + "; dequantizing " + where + " " +
                                weight.global.ToString() + " needs F32 " + expect.ToString() +
                                " (one scale per " + std::to_string(B) + "x" + std::to_string(B) +
                                " block)");
  }
  const uint64_t nr = box.sizes[0], nc = box.sizes[1];
  if (nr == 0 || nc == 0) return Status();
  std::vector<std::byte> in(nr * nc);
  std::vector<plan::ReadOp> ops;
  std::vector<const plan::SavedChunk*> overlapping;
  plan::SavedIndex::Overlapping(weight, box, &overlapping);
  for (const plan::SavedChunk* sc : overlapping)
    CKPT_RETURN_IF_ERROR(plan::PlanChunkReads(*sc, DType::kF8_E4M3, box, {}, &ops));
  CKPT_RETURN_IF_ERROR(RunReads(files, in.data(), ops, stats));
  const uint64_t br0 = box.offsets[0] / B, bc0 = box.offsets[1] / B;
  const plan::Box sbox{
      {br0, bc0},
      {(box.offsets[0] + nr - 1) / B - br0 + 1, (box.offsets[1] + nc - 1) / B - bc0 + 1}};
  std::vector<float> scales(sbox.sizes[0] * sbox.sizes[1]);
  ops.clear();
  overlapping.clear();
  plan::SavedIndex::Overlapping(scale, sbox, &overlapping);
  for (const plan::SavedChunk* sc : overlapping)
    CKPT_RETURN_IF_ERROR(plan::PlanChunkReads(*sc, DType::kF32, sbox, {}, &ops));
  CKPT_RETURN_IF_ERROR(RunReads(files, reinterpret_cast<std::byte*>(scales.data()), ops, stats));
  static const std::array<float, 256> kTable = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i)
      t[static_cast<size_t>(i)] = Fp8E4M3ToFloat(static_cast<uint8_t>(i));
    return t;
  }();
  std::vector<float> values(nr * nc);
  for (uint64_t i = 0; i < nr; ++i) {
    const float* srow = scales.data() + ((box.offsets[0] + i) / B - br0) * sbox.sizes[1];
    for (uint64_t j = 0; j < nc; ++j) {
      values[i * nc + j] =
          kTable[static_cast<uint8_t>(in[i * nc + j])] * srow[(box.offsets[1] + j) / B - bc0];
    }
  }
  std::span<const std::byte> f32 = std::as_bytes(std::span<const float>(values));
  if (to == DType::kF32 && c.strides.empty()) {
    std::memcpy(c.data, f32.data(), f32.size());
    return Status();
  }
  std::vector<std::byte> out(nr * nc * (DTypeBits(to) / 8));
  if (to == DType::kF32) {
    std::memcpy(out.data(), f32.data(), f32.size());
  } else {
    CKPT_RETURN_IF_ERROR(CastFloats(DType::kF32, f32, to, out));
  }
  if (c.strides.empty()) {
    std::memcpy(c.data, out.data(), out.size());
  } else {
    Place(out, to, c);
  }
  return Status();
}

// Copies row-major `out` into the chunk through its strides.
void Place(std::span<const std::byte> out, DType to, LocalChunk& c) {
  ScatterAll(StridedLayout{c.shape.dims(), c.strides, DTypeBits(to) / 8}, out.data(), c.data);
}

// std::regex reads characters through the global locale's ctype facet,
// whose narrow() fills a per-character cache on first use; ranks compiling
// patterns on several threads at once would race on it. Filling the whole
// cache once, before any pattern is compiled, removes the race.
void PrimeRegexLocale() {
  static const bool primed = [] {
    const auto& ctype = std::use_facet<std::ctype<char>>(std::locale());
    for (int c = 0; c < 256; ++c) (void)ctype.narrow(static_cast<char>(c), '\0');
    return true;
  }();
  (void)primed;
}

}  // namespace

namespace {

// Checks a local chunk against its tensor's global shape; *nbytes gets its size.
Status CheckChunk(const DistTensor& t, const LocalChunk& c, uint64_t* nbytes) {
  const plan::Box box{c.offsets, c.shape.dims()};
  if (box.offsets.size() != t.global_shape.rank() || box.sizes.size() != t.global_shape.rank()) {
    return InvalidArgumentError("tensor '" + t.fqn +
                                "': chunk rank differs from the global shape " +
                                t.global_shape.ToString());
  }
  for (size_t d = 0; d < box.offsets.size(); ++d) {
    if (box.offsets[d] + box.sizes[d] > t.global_shape[d]) {
      return InvalidArgumentError("tensor '" + t.fqn + "': local chunk " + box.ToString() +
                                  " is outside the global shape " + t.global_shape.ToString());
    }
  }
  CKPT_ASSIGN_OR_RETURN(*nbytes, c.shape.NumBytes(t.dtype));
  if (*nbytes > 0 && c.data == nullptr)
    return InvalidArgumentError("tensor '" + t.fqn + "': chunk has no data pointer");
  return Status();
}

// Step 5 of a load: fills every local chunk of the state dict from the
// saved chunks it overlaps, reading, casting or dequantizing as needed.
class ChunkFiller {
 public:
  ChunkFiller(Storage& storage, const std::string& dir, const engine::SavedCheckpoint& checkpoint,
              const LoadOptions& o, LoadStats* stats)
      : files_(storage, dir, checkpoint.listing.files),
        checkpoint_(checkpoint),
        o_(o),
        dir_(dir),
        stats_(stats) {}

  // Stops at the first chunk that fails, naming its tensor.
  Status FillAll(StateDict& sd, const ByName& by_name) {
    for (DistTensor& t : sd.tensors) {
      auto found = by_name.find(t.fqn);
      if (found == by_name.end()) continue;  // allowed missing
      for (LocalChunk& c : t.chunks) {
        uint64_t nbytes = 0;
        CKPT_RETURN_IF_ERROR(CheckChunk(t, c, &nbytes));
        stats_->bytes_needed += nbytes;
        CKPT_RETURN_IF_ERROR(
            Fill(t, *found->second, c, nbytes).WithContext("tensor '" + t.fqn + "'"));
      }
    }
    return Status();
  }

 private:
  Status Fill(const DistTensor& t, const plan::SavedTensor& saved, LocalChunk& c, uint64_t nbytes) {
    const plan::Box box{c.offsets, c.shape.dims()};
    overlapping_.clear();
    plan::SavedIndex::Overlapping(saved, box, &overlapping_);
    if (saved.dtype == t.dtype) return ReadSameDType(t, box, c, nbytes);
    if (const plan::SavedTensor* scale = Fp8Scale(checkpoint_.index, o_, saved)) {
      return ReadAndDequant(files_, saved, *scale, box, c, t.dtype, stats_);
    }
    if (saved.dtype == DType::kF8_E4M3 && o_.dequantize_fp8) {
      return InvalidArgumentError("FP8 weight '" + saved.fqn + "' has no '" + saved.fqn +
                                  std::string(kFp8ScaleSuffix) + "' to dequantize with");
    }
    return ReadAndCast(files_, overlapping_, saved.dtype, t.dtype, box, c, stats_);
  }

  Status ReadSameDType(const DistTensor& t, const plan::Box& box, LocalChunk& c, uint64_t nbytes) {
    ops_.clear();
    for (const plan::SavedChunk* sc : overlapping_) {
      CKPT_RETURN_IF_ERROR(plan::PlanChunkReads(*sc, t.dtype, box, c.strides, &ops_));
    }
    CKPT_RETURN_IF_ERROR(RunReads(files_, c.data, ops_, stats_));
    if (!o_.verify_checksums || overlapping_.size() != 1 || !c.strides.empty()) return Status();
    return VerifyWholeChunk(t, box, *overlapping_[0], c.data, nbytes);
  }

  // A chunk read whole: its recorded checksum must match.
  Status VerifyWholeChunk(const DistTensor& t, const plan::Box& box, const plan::SavedChunk& sc,
                          const std::byte* data, uint64_t nbytes) const {
    if (!sc.has_checksum || sc.box.offsets != box.offsets || sc.box.sizes != box.sizes)
      return Status();
    const uint64_t got = XXH64(data, nbytes, 0);
    if (got == sc.checksum) return Status();
    return DataLossError(
        JoinPath(dir_, checkpoint_.listing.files[sc.file]) + ": tensor '" + t.fqn + "' chunk at " +
        box.ToString() + ", bytes [" + std::to_string(sc.data_offset) + ", " +
        std::to_string(sc.data_offset + nbytes) + "): checksum " + Hex64(got) +
        " does not match the recorded " + Hex64(sc.checksum) + " (the file is corrupt)");
  }

  OpenFiles files_;
  const engine::SavedCheckpoint& checkpoint_;
  const LoadOptions& o_;
  const std::string& dir_;
  LoadStats* stats_;
  std::vector<const plan::SavedChunk*> overlapping_;  // scratch, reused per chunk
  std::vector<plan::ReadOp> ops_;
};

}  // namespace

namespace engine {

std::string KeyList(std::vector<std::string> v, size_t max) {
  std::sort(v.begin(), v.end());
  std::string s;
  for (size_t i = 0; i < v.size() && i < max; ++i) s += (i ? ", " : "") + v[i];
  if (v.size() > max) s += ", ... (" + std::to_string(v.size() - max) + " more)";
  return s;
}

std::string MismatchLine(const std::string& fqn, DType saved_dtype, const Shape& saved_shape,
                         const DistTensor& t) {
  return "'" + fqn + "' is " + std::string(DTypeName(saved_dtype)) + " " + saved_shape.ToString() +
         " in the checkpoint but " + std::string(DTypeName(t.dtype)) + " " +
         t.global_shape.ToString() + " in the state dict";
}

Status KeysError(const std::string& dir, std::string msg, const LoadStats& stats,
                 const std::vector<std::string>& mismatch, const LoadOptions& o) {
  const auto& missing = stats.missing_keys;
  const auto& unexpected = stats.unexpected_keys;
  if (!missing.empty() && !o.allow_missing) {
    msg += std::string(msg.empty() ? "" : "; ") + "missing keys (" +
           std::to_string(missing.size()) + "): " + KeyList(missing);
  }
  if (!unexpected.empty() && !o.allow_unexpected) {
    msg += std::string(msg.empty() ? "" : "; ") + "unexpected keys (" +
           std::to_string(unexpected.size()) + "): " + KeyList(unexpected);
  }
  if (!mismatch.empty()) {
    msg += std::string(msg.empty() ? "" : "; ") + "mismatches (" + std::to_string(mismatch.size()) +
           "): " + KeyList(mismatch, 5);
  }
  if (msg.empty()) return Status();
  return InvalidArgumentError("checkpoint " + dir + " does not match the state dict: " + msg);
}

}  // namespace engine

namespace engine {

Result<KeyMapper> KeyMapper::Compile(
    const std::vector<std::pair<std::string, std::string>>& mapping) {
  KeyMapper m;
  if (!mapping.empty()) PrimeRegexLocale();
  for (const auto& [pattern, replacement] : mapping) {
    // "\1" and "$1" both name group 1.
    std::string fmt;
    for (size_t i = 0; i < replacement.size(); ++i) {
      const bool group = replacement[i] == '\\' && i + 1 < replacement.size() &&
                         std::isdigit(static_cast<unsigned char>(replacement[i + 1]));
      fmt += group ? '$' : replacement[i];
    }
    try {
      m.rules_.push_back({pattern, std::regex(pattern), std::move(fmt)});
    } catch (const std::regex_error& e) {
      return InvalidArgumentError("key mapping pattern '" + pattern +
                                  "' is not a valid regex: " + e.what());
    }
  }
  return m;
}

Result<std::string> KeyMapper::Apply(const std::string& key) const {
  for (const Rule& r : rules_) {
    try {
      if (!std::regex_search(key, r.pattern)) continue;
      std::string out = std::regex_replace(key, r.pattern, r.format);
      if (out != key) return out;
    } catch (const std::regex_error& e) {  // too complex for std::regex
      return InvalidArgumentError("key mapping pattern '" + r.source + "' on key '" + key +
                                  "': " + e.what());
    }
  }
  return key;
}

}  // namespace engine

Result<std::string> MapKey(const std::vector<std::pair<std::string, std::string>>& mapping,
                           const std::string& key) {
  CKPT_ASSIGN_OR_RETURN(const engine::KeyMapper m, engine::KeyMapper::Compile(mapping));
  return m.Apply(key);
}

Status LoadSharded(Communicator& comm, Storage& storage, const std::string& dir, StateDict& sd,
                   const LoadOptions& o, LoadStats* stats_out) {
  const Timeout to = o.timeout;
  const std::string what = "loading " + dir;
  LoadStats stats;

  // Safetensors shards or a DCP directory (.metadata): the same saved chunks.
  Result<engine::SavedCheckpoint> read =
      engine::ReadAnyCheckpointCollective(comm, storage, dir, to);
  if (!read.ok()) {
    // Not safetensors: a Hugging Face directory that ships only .bin
    // weights? (Checked only here, off the path of ordinary loads.)
    Result<bool> bin_only = engine::IsTorchBinOnlyDir(storage, dir);
    const bool bin = bin_only.ok() && *bin_only;
    Status agreed = comm.AgreeOnStatus(bin ? Status() : read.status(), to);
    if (agreed.ok()) return engine::LoadTorchBin(comm, storage, dir, sd, o, stats_out);
    return read.status();
  }
  const engine::SavedCheckpoint& checkpoint = *read;
  const engine::ShardListing& listing = checkpoint.listing;
  const plan::SavedIndex& index = checkpoint.index;

  // 4. Keys of all ranks against the checkpoint.
  plan::Encoder keys;
  for (const DistTensor& t : sd.tensors) keys.Str(t.fqn);
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> all_keys, comm.AllGather(keys.Take(), to));
  Result<ByName> by_name = RenameCheckpointKeys(index, o);
  Status matched =
      by_name.ok() ? CompareKeys(*by_name, all_keys, sd, o, dir, &stats) : by_name.status();
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(matched, to).WithContext(what));

  // 5. Fill the local chunks.
  ChunkFiller filler(storage, dir, checkpoint, o, &stats);
  Status filled = filler.FillAll(sd, *by_name);
  if (filled.ok()) {
    filled = checkpoint.dcp
                 ? LoadDcpExtra(storage, dir, checkpoint, sd)
                 : LoadExtra(storage, dir, listing.has_extra_state, listing.manifest, sd);
  }
  if (stats_out) *stats_out = stats;
  return comm.AgreeOnStatus(filled, to).WithContext(what);
}

}  // namespace ckpt
