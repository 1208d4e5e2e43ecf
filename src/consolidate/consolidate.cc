// Consolidate: every rank reads the checkpoint's structure collectively,
// computes the same output layout, writes its own output files (file i by
// rank (i - 1) mod world, spread over threads) into a staging directory,
// and rank 0 publishes the index, the HF artifacts and the directory.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "ckpt/consolidate.h"
#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "convert/float_cast.h"
#include "engine/shard_dir.h"
#include "format/json_util.h"

namespace ckpt {
namespace {

using json = nlohmann::json;

constexpr uint64_t kBuffer = 8ull << 20;  // per thread: one read window + one cast buffer

struct OutTensor {
  const plan::SavedTensor* saved;
  DType dtype;  // output dtype
  uint64_t bytes;
};

struct OutFile {
  std::string name;
  std::vector<OutTensor> tensors;
};

// Reads an optional JSON object of <in>/.hf_metadata/<name>.
Result<std::optional<json>> ReadHfMetadataJson(Storage& storage, const std::string& in_dir, std::string_view name) {
  const std::string path = JoinPath(JoinPath(in_dir, kHfMetadataDir), name);
  CKPT_ASSIGN_OR_RETURN(bool exists, Exists(storage, path));
  if (!exists) return std::optional<json>();
  CKPT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(storage, path));
  CKPT_ASSIGN_OR_RETURN(json j, ParseStrictJson(text, path, 4));
  if (!j.is_object()) return DataLossError(path + ": must be a JSON object");
  return std::optional<json>(std::move(j));
}

// Decides every output file and its tensors; the same on every rank.
Result<std::vector<OutFile>> LayOut(Storage& storage, const std::string& in_dir, const plan::SavedIndex& index,
                                    const ConsolidateOptions& o, std::vector<std::string>* warnings) {
  std::map<std::string, DType> originals = o.original_dtypes;
  if (originals.empty()) {
    CKPT_ASSIGN_OR_RETURN(std::optional<json> m, ReadHfMetadataJson(storage, in_dir, kDtypeMappingName));
    if (m) {
      for (const auto& [k, v] : m->items()) {
        if (!v.is_string()) continue;
        const std::string s = v.get<std::string>();
        if (Result<DType> t = ParseTorchDType(s); t.ok()) {
          originals[k] = *t;
        } else if (Result<DType> d = ParseDType(s); d.ok()) {
          originals[k] = *d;
        }
      }
    }
  }
  std::map<std::string, uint32_t> mapping = o.fqn_to_file;
  if (mapping.empty() && !o.base_model_dir.empty()) {
    CKPT_ASSIGN_OR_RETURN(mapping, FileMappingFromBase(storage, o.base_model_dir));
  }
  if (mapping.empty()) {
    CKPT_ASSIGN_OR_RETURN(std::optional<json> m, ReadHfMetadataJson(storage, in_dir, kFileMappingName));
    if (m) {
      for (const auto& [k, v] : m->items()) {
        if (v.is_number_unsigned() && v.get<uint64_t>() > 0) mapping[k] = static_cast<uint32_t>(v.get<uint64_t>());
      }
    }
  }

  std::vector<std::string> keys;
  for (const auto& [fqn, t] : index.tensors()) keys.push_back(fqn);
  std::sort(keys.begin(), keys.end(), NaturalLess);
  std::vector<OutTensor> outs;
  for (const std::string& k : keys) {
    const plan::SavedTensor& t = index.tensors().at(k);
    std::optional<DType> original;
    if (auto it = originals.find(k); it != originals.end()) original = it->second;
    std::string warning;
    DType d = ExportDType(t.dtype, original, o.cast_dtype, &warning);
    if (!warning.empty()) warnings->push_back("tensor '" + k + "': " + warning);
    CKPT_ASSIGN_OR_RETURN(uint64_t bytes, t.global.NumBytes(d));
    outs.push_back({&t, d, bytes});
  }

  std::vector<uint32_t> file_of;
  uint32_t files = 1;
  if (!mapping.empty()) {
    for (const auto& [k, f] : mapping) files = std::max(files, f);
    for (const std::string& k : keys) {
      auto it = mapping.find(k);
      file_of.push_back(it == mapping.end() ? files : it->second);  // unmapped keys: last file
    }
  } else if (o.equal_files > 0) {
    files = std::min<uint32_t>(o.equal_files, std::max<uint32_t>(1, static_cast<uint32_t>(keys.size())));
    file_of = DivideEqually(keys.size(), files);
  } else {
    std::vector<uint64_t> sizes;
    for (const OutTensor& t : outs) sizes.push_back(t.bytes);
    file_of = DivideBySize(sizes, o.max_shard_size);
    files = file_of.empty() ? 1 : file_of.back();
  }
  std::vector<OutFile> out(files);
  const std::string stem = o.diffusers ? "diffusion_pytorch_model" : "model";
  for (uint32_t i = 0; i < files; ++i) {
    char name[128];
    std::snprintf(name, sizeof name, "%s-%05u-of-%05u.safetensors", stem.c_str(), i + 1, files);
    out[i].name = name;
  }
  for (size_t k = 0; k < outs.size(); ++k) out[file_of[k] - 1].tensors.push_back(outs[k]);
  return out;
}

// Writes one output file: each saved chunk streamed through `buf` to its
// place, cast on the way when the output dtype differs.
Status WriteFile(Storage& storage, const std::string& in_dir, const std::vector<std::string>& shard_files,
                 const std::string& path, const OutFile& f, std::atomic<uint64_t>* done,
                 const ConsolidateOptions& o, uint64_t total) {
  std::vector<TensorSpec> specs;
  for (const OutTensor& t : f.tensors) specs.push_back({t.saved->fqn, t.dtype, t.saved->global});
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> w,
                        SafetensorsWriter::Create(storage, path, std::move(specs), SafetensorsMetadata{{"format", "pt"}}));
  std::unordered_map<uint32_t, std::unique_ptr<ReadableFile>> open;
  std::vector<std::byte> window(kBuffer), cast;
  std::vector<plan::ReadOp> ops;
  for (const OutTensor& t : f.tensors) {
    const plan::SavedTensor& s = *t.saved;
    const uint64_t in_size = std::max<uint64_t>(DTypeBits(s.dtype) / 8, 1);
    const uint64_t out_size = std::max<uint64_t>(DTypeBits(t.dtype) / 8, 1);
    const bool convert = t.dtype != s.dtype;
    plan::Box whole{std::vector<uint64_t>(s.global.rank(), 0), s.global.dims()};
    for (const plan::SavedChunk& c : s.chunks) {
      ops.clear();
      CKPT_RETURN_IF_ERROR(plan::PlanChunkReads(c, s.dtype, whole, {}, &ops).WithContext("tensor '" + s.fqn + "'"));
      auto it = open.find(c.file);
      if (it == open.end()) {
        CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> rf,
                              storage.OpenRead(JoinPath(in_dir, shard_files[c.file])));
        it = open.emplace(c.file, std::move(rf)).first;
      }
      ReadableFile& in = *it->second;
      // Copies `bytes` (saved dtype) bound for tensor byte `dest` (saved dtype units).
      auto emit = [&](const std::byte* src, uint64_t bytes, uint64_t dest) -> Status {
        if (!convert) return w->Write(s.fqn, dest, std::span<const std::byte>(src, bytes));
        cast.resize(bytes / in_size * out_size);
        CKPT_RETURN_IF_ERROR(CastFloats(s.dtype, std::span<const std::byte>(src, bytes), t.dtype, cast));
        return w->Write(s.fqn, dest / in_size * out_size, cast);
      };
      for (const plan::ReadOp& op : ops) {
        if (op.length <= kBuffer) {
          CKPT_RETURN_IF_ERROR(in.ReadAt(op.file_offset, std::span(window).first(op.length)));
          for (const plan::ReadOp::Piece& p : op.pieces) {
            CKPT_RETURN_IF_ERROR(emit(window.data() + p.window_offset, p.count * op.elem_bytes, p.dest_offset));
          }
        } else {
          // Long runs: read each piece in buffer-sized parts.
          for (const plan::ReadOp::Piece& p : op.pieces) {
            const uint64_t bytes = p.count * op.elem_bytes;
            for (uint64_t k = 0; k < bytes; k += kBuffer) {
              const uint64_t n = std::min(kBuffer, bytes - k);
              CKPT_RETURN_IF_ERROR(in.ReadAt(op.file_offset + p.window_offset + k, std::span(window).first(n)));
              CKPT_RETURN_IF_ERROR(emit(window.data(), n, p.dest_offset + k));
            }
          }
        }
        uint64_t now = done->fetch_add(op.length) + op.length;
        if (o.progress) o.progress(now, total);
      }
    }
  }
  return w->Commit();
}

// Copies the HF artifacts (config, tokenizer, custom code, ...) kept in
// <in>/.hf_metadata, except ckpt's own mapping files.
Status CopyHfArtifacts(Storage& storage, const std::string& in_dir, const std::string& out_dir) {
  const std::string src = JoinPath(in_dir, kHfMetadataDir);
  CKPT_ASSIGN_OR_RETURN(bool exists, Exists(storage, src));
  if (!exists) return Status();
  CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, storage.List(src));
  for (const DirEntry& e : entries) {
    if (e.type != EntryType::kFile || e.name == kFileMappingName || e.name == kDtypeMappingName) continue;
    CKPT_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(storage, JoinPath(src, e.name)));
    CKPT_RETURN_IF_ERROR(WriteFileAtomically(storage, JoinPath(out_dir, e.name), bytes));
  }
  return Status();
}

}  // namespace

Status Consolidate(Communicator& comm, Storage& storage, const std::string& in_dir, const std::string& out_dir,
                   const ConsolidateOptions& o, ConsolidateStats* stats_out) {
  const Timeout to = o.timeout;
  const std::string what = "consolidating " + in_dir + " into " + out_dir;
  if (o.cast_dtype && !IsOrdinaryFloat(*o.cast_dtype)) {
    return InvalidArgumentError(what + ": cast dtype " + std::string(DTypeName(*o.cast_dtype)) +
                                " is not a float cast (F16, BF16, F32 or F64)");
  }
  CKPT_ASSIGN_OR_RETURN(engine::SavedCheckpoint ckpt, engine::ReadCheckpointCollective(comm, storage, in_dir, to));
  ConsolidateStats stats;
  Result<std::vector<OutFile>> layout = LayOut(storage, in_dir, ckpt.index, o, &stats.warnings);
  CKPT_RETURN_IF_ERROR(comm.AgreeOnStatus(layout.status(), to).WithContext(what));

  Result<std::string> staging_dir = engine::CreateStagingDir(comm, storage, out_dir, to);
  if (!staging_dir.ok()) return staging_dir.status().WithContext(what);
  const std::string& staging = *staging_dir;

  // This rank's files, spread over threads.
  std::vector<const OutFile*> mine;
  uint64_t total = 0;
  for (size_t i = 0; i < layout->size(); ++i) {
    for (const OutTensor& t : (*layout)[i].tensors) stats.bytes += t.bytes;
    stats.tensors += (*layout)[i].tensors.size();
    if (static_cast<int>(i % static_cast<size_t>(comm.size())) != comm.rank()) continue;
    mine.push_back(&(*layout)[i]);
    for (const OutTensor& t : (*layout)[i].tensors) {
      total += t.bytes;
      stats.rank_bytes += t.bytes;
    }
  }
  unsigned threads = o.threads ? o.threads : std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  threads = std::max(1u, std::min<unsigned>(threads, static_cast<unsigned>(mine.size())));
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> done{0};
  std::mutex mu;
  Status wrote;
  auto worker = [&] {
    for (size_t i = next++; i < mine.size(); i = next++) {
      Status s = WriteFile(storage, in_dir, ckpt.listing.files, JoinPath(staging, mine[i]->name), *mine[i], &done, o,
                           total);
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (wrote.ok()) wrote = s;
        next = mine.size();
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(worker);
  if (!mine.empty()) worker();
  for (auto& t : pool) t.join();

  Status agreed = comm.AgreeOnStatus(wrote, to);
  Status published = agreed;
  if (comm.rank() == 0) {
    if (published.ok()) {
      HfIndex index;
      index.total_size = stats.bytes;
      for (const OutFile& f : *layout) {
        for (const OutTensor& t : f.tensors) index.weight_map[t.saved->fqn] = f.name;
      }
      const std::string index_name(o.diffusers ? kDiffusersIndexName : kHfIndexName);
      published = WriteFileAtomically(storage, JoinPath(staging, index_name), SerializeHfIndex(index));
      if (published.ok()) published = CopyHfArtifacts(storage, in_dir, staging);
      if (published.ok()) published = storage.SyncDir(staging);
      if (published.ok()) published = storage.Rename(staging, out_dir);
      if (published.ok()) published = storage.SyncDir(std::string(Dirname(out_dir)));
    }
    if (!published.ok()) RemoveAll(storage, staging).IgnoreError();
  }
  if (!agreed.ok()) return agreed.WithContext(what);
  stats.files = static_cast<uint32_t>(layout->size());
  if (stats_out) *stats_out = stats;
  return comm.AgreeOnStatus(published, to).WithContext(what);
}

}  // namespace ckpt
