// Consolidate: every rank reads the checkpoint's structure collectively,
// computes the same output layout, writes its own output files (file i by
// rank (i - 1) mod world, spread over threads) into a staging directory,
// and rank 0 publishes the index, the HF artifacts and the directory.
#include "ckpt/consolidate.h"

#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_map>

#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "convert/float_cast.h"
#include "core/encoding.h"
#include "engine/dcp_dir.h"
#include "engine/shard_dir.h"
#include "format/json_util.h"
#include "io/staged_dir.h"

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
// Checked against the manifest when it covers side files.
Result<std::optional<json>> ReadHfMetadataJson(Storage& storage, const std::string& in_dir,
                                               const engine::ShardListing& listing,
                                               std::string_view name) {
  const std::string path = JoinPath(JoinPath(in_dir, kHfMetadataDir), name);
  CKPT_ASSIGN_OR_RETURN(bool exists, Exists(storage, path));
  if (!exists) return std::optional<json>();
  CKPT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(storage, path));
  CKPT_RETURN_IF_ERROR(engine::CheckSideFile(listing, in_dir, std::string(name), text));
  CKPT_ASSIGN_OR_RETURN(json j, ParseStrictJson(text, path, 4));
  if (!j.is_object()) return DataLossError(path + ": must be a JSON object");
  return std::optional<json>(std::move(j));
}

// Decides every output file and its tensors; the same on every rank.
// Kept whole past the function-size limit: the layout rules applied in order to one growing list of
// files.
//
// NOLINTNEXTLINE(readability-function-size)
Result<std::vector<OutFile>> LayOut(Storage& storage, const std::string& in_dir,
                                    const engine::SavedCheckpoint& ckpt,
                                    const ConsolidateOptions& o,
                                    std::vector<std::string>* warnings) {
  const plan::SavedIndex& index = ckpt.index;
  std::map<std::string, DType> originals = o.original_dtypes;
  if (originals.empty()) {
    CKPT_ASSIGN_OR_RETURN(std::optional<json> m,
                          ReadHfMetadataJson(storage, in_dir, ckpt.listing, kDtypeMappingName));
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
    // The base model's own dtypes win over the recorded ones; tensors it
    // lacks (new heads) keep what the mapping says.
    if (!o.base_model_dir.empty()) {
      CKPT_ASSIGN_OR_RETURN(auto base, DTypesFromBase(storage, o.base_model_dir));
      for (const auto& [k, d] : base) originals[k] = d;
    }
  }
  std::map<std::string, uint32_t> mapping = o.fqn_to_file;
  if (!mapping.empty())
    CKPT_RETURN_IF_ERROR(CheckFileNumbers(mapping, "ConsolidateOptions::fqn_to_file"));
  if (mapping.empty() && !o.base_model_dir.empty()) {
    CKPT_ASSIGN_OR_RETURN(mapping, FileMappingFromBase(storage, o.base_model_dir));
  }
  if (mapping.empty()) {
    const std::string source = JoinPath(JoinPath(in_dir, kHfMetadataDir), kFileMappingName);
    CKPT_ASSIGN_OR_RETURN(std::optional<json> m,
                          ReadHfMetadataJson(storage, in_dir, ckpt.listing, kFileMappingName));
    if (m) {
      for (const auto& [k, v] : m->items()) {
        // Read as unsigned only when it fits: 2^32 must not wrap to 0.
        if (!v.is_number_unsigned() || v.get<uint64_t>() == 0 ||
            v.get<uint64_t>() > kMaxOutputFiles) {
          std::string got = v.dump();
          if (got.size() > 40) got = got.substr(0, 40) + "...";
          return InvalidArgumentError(source + ": tensor '" + Printable(k) + "': file number " +
                                      got + " is not an integer between 1 and " +
                                      std::to_string(kMaxOutputFiles));
        }
        mapping[k] = static_cast<uint32_t>(v.get<uint64_t>());
      }
      CKPT_RETURN_IF_ERROR(CheckFileNumbers(mapping, source));
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
    files = std::min<uint32_t>(o.equal_files,
                               std::max<uint32_t>(1, static_cast<uint32_t>(keys.size())));
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

// The XXH64 of each saved chunk, computed from the bytes the consolidation
// reads anyway: windows arrive in file order, each continuing where the last
// one of its chunk ended. A chunk whose bytes were not all seen that way is
// read again on its own at the end.
class ChunkHashes {
 public:
  // `bytes` at absolute file offset `at` belong to chunk `c`.
  void Update(const plan::SavedChunk& c, uint64_t at, std::span<const std::byte> bytes) {
    if (!c.has_checksum || bytes.empty()) return;
    State& st = states_[&c];
    if (st.h == nullptr) {
      st.h.reset(XXH64_createState());
      XXH64_reset(st.h.get(), 0);
    }
    if (st.broken || at != c.data_offset + st.hashed) {
      st.broken = true;
      return;
    }
    XXH64_update(st.h.get(), bytes.data(), bytes.size());
    st.hashed += bytes.size();
  }

  // Compares every recorded checksum of `t`; DataLoss names the file, the
  // tensor, the chunk and both sums.
  Status Check(const plan::SavedTensor& t,
               const std::function<Result<ReadableFile*>(uint32_t)>& open,
               const std::vector<std::string>& paths, std::vector<std::byte>& buf) {
    for (const plan::SavedChunk& c : t.chunks) {
      if (!c.has_checksum) continue;
      CKPT_ASSIGN_OR_RETURN(uint64_t bytes, Shape(c.box.sizes).NumBytes(t.dtype));
      uint64_t got;
      auto it = states_.find(&c);
      if (it != states_.end() && !it->second.broken && it->second.hashed == bytes) {
        got = XXH64_digest(it->second.h.get());
      } else {
        CKPT_ASSIGN_OR_RETURN(ReadableFile * f, open(c.file));
        std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> h(XXH64_createState(),
                                                                     &XXH64_freeState);
        XXH64_reset(h.get(), 0);
        for (uint64_t k = 0; k < bytes; k += buf.size()) {
          const uint64_t n = std::min<uint64_t>(buf.size(), bytes - k);
          CKPT_RETURN_IF_ERROR(f->ReadAt(c.data_offset + k, std::span(buf).first(n)));
          XXH64_update(h.get(), buf.data(), n);
        }
        got = XXH64_digest(h.get());
      }
      if (got != c.checksum) {
        return DataLossError(paths[c.file] + ": tensor '" + Printable(t.fqn) + "' chunk at " +
                             c.box.ToString() + ", bytes [" + std::to_string(c.data_offset) + ", " +
                             std::to_string(c.data_offset + bytes) + "): checksum " + Hex64(got) +
                             " does not match the recorded " + Hex64(c.checksum) +
                             " (the file is corrupt)");
      }
    }
    states_.clear();
    return Status();
  }

 private:
  struct State {
    std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> h{nullptr, &XXH64_freeState};
    uint64_t hashed = 0;
    bool broken = false;
  };
  std::unordered_map<const plan::SavedChunk*, State> states_;
};

// True when some chunk of `t` is narrower than the tensor past dimension 0
// (a tensor-parallel split along dimension 1 or later): its rows are then
// scattered, and the tensor is assembled in row blocks before writing.
bool SplitPastDim0(const plan::SavedTensor& t) {
  for (const plan::SavedChunk& c : t.chunks) {
    if (c.box.Empty()) continue;
    for (size_t d = 1; d < c.box.sizes.size(); ++d) {
      if (c.box.sizes[d] != t.global[d]) return true;
    }
  }
  return false;
}

// Writes one output file, cast on the way when the output dtype differs.
// Tensors split along dimension 0 only: each saved chunk is streamed through
// `window` straight to its place. Tensors split past dimension 0: blocks of
// whole rows (at most kBuffer bytes) are assembled from every chunk that
// overlaps them and written once, so the writes and the pieces are linear in
// the bytes, not in rows × chunks. Every recorded chunk checksum is compared.
// Kept whole past the function-size limit: one output file: header, then the pieces in file order,
// then the checksums, sharing the open writer.
//
// NOLINTNEXTLINE(readability-function-size)
Status WriteFile(Storage& storage, const std::string& in_dir,
                 const std::vector<std::string>& shard_files, const std::string& path,
                 const OutFile& f, std::atomic<uint64_t>* done, const ConsolidateOptions& o,
                 uint64_t total) {
  std::vector<TensorSpec> specs;
  for (const OutTensor& t : f.tensors) specs.push_back({t.saved->fqn, t.dtype, t.saved->global});
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> w,
                        SafetensorsWriter::Create(storage, path, std::move(specs),
                                                  SafetensorsMetadata{{"format", "pt"}}));
  std::unordered_map<uint32_t, std::unique_ptr<ReadableFile>> open;
  std::vector<std::string> paths;
  for (const std::string& n : shard_files) paths.push_back(JoinPath(in_dir, n));
  std::function<Result<ReadableFile*>(uint32_t)> get = [&](uint32_t file) -> Result<ReadableFile*> {
    auto it = open.find(file);
    if (it == open.end()) {
      CKPT_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> rf, storage.OpenRead(paths[file]));
      it = open.emplace(file, std::move(rf)).first;
    }
    return it->second.get();
  };
  std::vector<std::byte> window(kBuffer), cast, rows;
  std::vector<plan::ReadOp> ops;
  std::vector<const plan::SavedChunk*> overlapping;
  ChunkHashes hashes;
  for (const OutTensor& t : f.tensors) {
    const plan::SavedTensor& s = *t.saved;
    const uint64_t bits = DTypeBits(s.dtype);
    const uint64_t in_size = std::max<uint64_t>(bits / 8, 1);
    const uint64_t out_size = std::max<uint64_t>(DTypeBits(t.dtype) / 8, 1);
    const bool convert = t.dtype != s.dtype;
    // Copies `bytes` (saved dtype) bound for tensor byte `dest` (saved dtype units).
    auto emit = [&](const std::byte* src, uint64_t bytes, uint64_t dest) -> Status {
      if (!convert) return w->Write(s.fqn, dest, std::span<const std::byte>(src, bytes));
      cast.resize(bytes / in_size * out_size);
      CKPT_RETURN_IF_ERROR(
          CastFloats(s.dtype, std::span<const std::byte>(src, bytes), t.dtype, cast));
      return w->Write(s.fqn, dest / in_size * out_size, cast);
    };
    // Runs the reads of `ops` (all of chunk `c`), handing each piece to `piece`.
    auto run = [&](const plan::SavedChunk& c, auto&& piece) -> Status {
      CKPT_ASSIGN_OR_RETURN(ReadableFile * in, get(c.file));
      for (const plan::ReadOp& op : ops) {
        if (op.length <= kBuffer) {
          std::span<std::byte> win = std::span(window).first(op.length);
          CKPT_RETURN_IF_ERROR(in->ReadAt(op.file_offset, win));
          hashes.Update(c, op.file_offset, win);
          for (const plan::ReadOp::Piece& p : op.pieces) {
            CKPT_RETURN_IF_ERROR(
                piece(window.data() + p.window_offset, p.count * op.elem_bytes, p.dest_offset));
          }
        } else {
          // Long runs: read each piece in buffer-sized parts.
          for (const plan::ReadOp::Piece& p : op.pieces) {
            const uint64_t bytes = p.count * op.elem_bytes;
            for (uint64_t k = 0; k < bytes; k += kBuffer) {
              const uint64_t n = std::min(kBuffer, bytes - k);
              std::span<std::byte> win = std::span(window).first(n);
              CKPT_RETURN_IF_ERROR(in->ReadAt(op.file_offset + p.window_offset + k, win));
              hashes.Update(c, op.file_offset + p.window_offset + k, win);
              CKPT_RETURN_IF_ERROR(piece(window.data(), n, p.dest_offset + k));
            }
          }
        }
        uint64_t now = done->fetch_add(op.length) + op.length;
        if (o.progress) o.progress(now, total);
      }
      return Status();
    };
    const size_t rank = s.global.rank();
    uint64_t row_elems = 1;
    for (size_t d = 1; d < rank; ++d)
      row_elems *= s.global[d];  // the tensor's size is checked: no overflow
    const uint64_t row_bits = row_elems * bits;
    const bool by_rows = rank >= 2 && row_bits % 8 == 0 && row_bits / 8 <= kBuffer &&
                         row_bits > 0 && SplitPastDim0(s);
    if (by_rows) {
      const uint64_t row_bytes = row_bits / 8;
      const uint64_t per_block = kBuffer / row_bytes;
      for (uint64_t r0 = 0; r0 < s.global[0]; r0 += per_block) {
        const uint64_t n = std::min(per_block, s.global[0] - r0);
        plan::Box block{std::vector<uint64_t>(rank, 0), s.global.dims()};
        block.offsets[0] = r0;
        block.sizes[0] = n;
        rows.resize(n * row_bytes);
        overlapping.clear();
        plan::SavedIndex::Overlapping(s, block, &overlapping);
        for (const plan::SavedChunk* c : overlapping) {
          ops.clear();
          CKPT_RETURN_IF_ERROR(plan::PlanChunkReads(*c, s.dtype, block, {}, &ops)
                                   .WithContext("tensor '" + Printable(s.fqn) + "'"));
          CKPT_RETURN_IF_ERROR(
              run(*c, [&](const std::byte* src, uint64_t bytes, uint64_t dest) -> Status {
                std::memcpy(rows.data() + dest, src, bytes);
                return Status();
              }));
        }
        // The chunks tile the tensor (checked when indexing), so the block is whole.
        CKPT_RETURN_IF_ERROR(emit(rows.data(), rows.size(), r0 * row_bytes));
      }
    } else {
      plan::Box whole{std::vector<uint64_t>(rank, 0), s.global.dims()};
      for (const plan::SavedChunk& c : s.chunks) {
        ops.clear();
        CKPT_RETURN_IF_ERROR(plan::PlanChunkReads(c, s.dtype, whole, {}, &ops)
                                 .WithContext("tensor '" + Printable(s.fqn) + "'"));
        CKPT_RETURN_IF_ERROR(run(c, emit));
      }
    }
    CKPT_RETURN_IF_ERROR(hashes.Check(s, get, paths, window));
  }
  return w->Commit();
}

// Copies the HF artifacts (config, tokenizer, custom code, ...) kept in
// <in>/.hf_metadata: regular files of the kinds IsHfArtifactName accepts.
// Links are never followed (a link could name any file of the machine), and
// nothing the export writes itself is replaced; what is skipped is reported.
Status CopyHfArtifacts(Storage& storage, const std::string& in_dir,
                       const engine::ShardListing& listing, const std::string& out_dir,
                       std::vector<std::string>* warnings) {
  const std::string src = JoinPath(in_dir, kHfMetadataDir);
  CKPT_ASSIGN_OR_RETURN(bool exists, Exists(storage, src));
  if (!exists) return Status();
  if (Result<std::string> link = storage.ReadLink(src); link.ok()) {
    warnings->push_back(src + " is a symbolic link (to '" + Printable(*link) +
                        "'): no side file copied");
    return Status();
  }
  CKPT_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, storage.List(src));
  for (const DirEntry& e : entries) {
    if (e.name == kFileMappingName || e.name == kDtypeMappingName) continue;
    const std::string path = JoinPath(src, e.name);
    if (Result<std::string> link = storage.ReadLink(path); link.ok()) {
      warnings->push_back(path + " is a symbolic link (to '" + Printable(*link) + "'): not copied");
      continue;
    }
    if (e.type != EntryType::kFile) {
      if (e.type != EntryType::kDirectory)
        warnings->push_back(Printable(path, 4096) + " is not a regular file: not copied");
      continue;
    }
    if (!IsHfArtifactName(e.name)) {
      warnings->push_back(
          Printable(path, 4096) +
          ": not a Hugging Face artifact kind, or a name the export writes: not copied");
      continue;
    }
    CKPT_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(storage, path));
    CKPT_RETURN_IF_ERROR(engine::CheckSideFile(listing, in_dir, e.name, bytes));
    CKPT_RETURN_IF_ERROR(WriteFileAtomically(storage, JoinPath(out_dir, e.name), bytes));
  }
  return Status();
}

}  // namespace

Status Consolidate(Communicator& comm, Storage& storage, const std::string& in_dir,
                   const std::string& out_dir, const ConsolidateOptions& o,
                   ConsolidateStats* stats_out) {
  const auto start = std::chrono::steady_clock::now();
  const Timeout to = o.timeout;
  const std::string what = "consolidating " + in_dir + " into " + out_dir;
  if (o.cast_dtype && !IsOrdinaryFloat(*o.cast_dtype)) {
    return InvalidArgumentError(what + ": cast dtype " + std::string(DTypeName(*o.cast_dtype)) +
                                " is not a float cast (F16, BF16, F32 or F64)");
  }
  CKPT_ASSIGN_OR_RETURN(engine::SavedCheckpoint ckpt,
                        engine::ReadAnyCheckpointCollective(comm, storage, in_dir, to));
  ConsolidateStats stats;
  Result<std::vector<OutFile>> layout = LayOut(storage, in_dir, ckpt, o, &stats.warnings);
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
  unsigned threads =
      o.threads ? o.threads : std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  threads = std::max(1u, std::min<unsigned>(threads, static_cast<unsigned>(mine.size())));
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> done{0};
  std::mutex mu;
  Status wrote;
  auto worker = [&] {
    for (size_t i = next++; i < mine.size(); i = next++) {
      Status s = WriteFile(storage, in_dir, ckpt.listing.files, JoinPath(staging, mine[i]->name),
                           *mine[i], &done, o, total);
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
      // The index goes last: without rename (object stores) it is the
      // commit object of the output directory.
      published = CopyHfArtifacts(storage, in_dir, ckpt.listing, staging, &stats.warnings);
      if (published.ok()) {
        published =
            WriteFileAtomically(storage, JoinPath(staging, index_name), SerializeHfIndex(index));
      }
      if (published.ok()) {
        published = staging != out_dir ? CommitStagingDir(storage, staging, out_dir)
                                       : storage.SyncDir(staging);
      }
    }
    if (!published.ok()) RemoveAll(storage, staging).IgnoreError();
  }
  if (!agreed.ok()) return agreed.WithContext(what);
  stats.files = static_cast<uint32_t>(layout->size());
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (stats_out) *stats_out = stats;
  return comm.AgreeOnStatus(published, to).WithContext(what);
}

}  // namespace ckpt
