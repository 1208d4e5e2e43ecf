// Checkpointer: model, optimizer and auxiliary state of a training run,
// on top of the sharded engine and consolidation.
#include "ckpt/checkpointer.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "async/staging_pipe.h"
#include "async/worker.h"
#include "ckpt/consolidate.h"
#include "ckpt/hf.h"
#include "ckpt/log.h"
#include "ckpt/s3.h"
#include "ckpt/safetensors.h"
#include "ckpt/staging.h"
#include "engine/shard_dir.h"
#include "format/json_util.h"
#include "plan/codec.h"

namespace ckpt {
namespace {

using json = nlohmann::json;

constexpr std::string_view kAdapterFile = "adapter_model.safetensors";
constexpr std::string_view kAdapterConfig = "adapter_config.json";
constexpr std::string_view kAdapterPrefix = "base_model.model.";
constexpr std::string_view kConsolidatedDir = "consolidated";
constexpr std::string_view kConsolidateScript = "consolidate.sh";

// Files of a Hugging Face model directory that travel with its weights.
constexpr std::string_view kHfArtifactNames[] = {
    "config.json",          "generation_config.json", "tokenizer.json",     "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model",     "vocab.json",         "merges.txt",
    "added_tokens.json",    "chat_template.jinja",    "chat_template.json", "preprocessor_config.json",
};

// The state dict restricted to tensors `keep` accepts (views; no copies).
StateDict Filter(const StateDict& sd, const std::function<bool(const std::string&)>& keep) {
  StateDict out;
  for (const DistTensor& t : sd.tensors) {
    if (keep(t.fqn)) out.tensors.push_back(t);
  }
  return out;
}

std::string ShellQuote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

// Appends the elements of `c` in row-major order (making strided chunks
// contiguous). Whole bytes only.
void AppendChunkBytes(const LocalChunk& c, uint64_t esz, std::string* out) {
  const size_t rank = c.shape.rank();
  uint64_t n = 1;
  for (size_t d = 0; d < rank; ++d) n *= c.shape.dims()[d];
  if (c.strides.empty()) {
    out->append(reinterpret_cast<const char*>(c.data), n * esz);
    return;
  }
  std::vector<uint64_t> idx(rank, 0);
  for (uint64_t e = 0; e < n; ++e) {
    int64_t off = 0;
    for (size_t d = 0; d < rank; ++d) off += static_cast<int64_t>(idx[d]) * c.strides[d];
    out->append(reinterpret_cast<const char*>(c.data + off * static_cast<int64_t>(esz)), esz);
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < c.shape.dims()[d]) break;
      idx[d] = 0;
    }
  }
}

// Copies a contiguous chunk (offsets, shape) into the row-major global
// buffer of shape `g`, marking the elements it covers.
void PlaceChunk(const std::vector<uint64_t>& offsets, const std::vector<uint64_t>& shape, const char* src,
                const std::vector<uint64_t>& g, uint64_t esz, std::byte* dst, std::vector<bool>* covered) {
  const size_t rank = g.size();
  if (rank == 0) {
    std::memcpy(dst, src, esz);
    (*covered)[0] = true;
    return;
  }
  uint64_t rows = 1;
  for (size_t d = 0; d + 1 < rank; ++d) rows *= shape[d];
  const uint64_t row = shape[rank - 1];
  std::vector<uint64_t> idx(rank - 1, 0);
  for (uint64_t r = 0; r < rows; ++r) {
    uint64_t at = 0;
    for (size_t d = 0; d + 1 < rank; ++d) at = at * g[d] + offsets[d] + idx[d];
    at = at * g[rank - 1] + offsets[rank - 1];
    std::memcpy(dst + at * esz, src + r * row * esz, row * esz);
    for (uint64_t k = 0; k < row; ++k) (*covered)[at + k] = true;
    for (size_t d = rank - 1; d-- > 0;) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace

bool Model::IsAdapterTensor(std::string_view fqn) const {
  return fqn.find(".lora_A.") != std::string_view::npos || fqn.find(".lora_B.") != std::string_view::npos ||
         fqn.find(".lora_magnitude_vector") != std::string_view::npos;
}

std::string OptimizerStateKey(std::string_view fqn, std::string_view name) {
  return "state." + std::string(fqn) + "." + std::string(name);
}

Checkpointer::Checkpointer(CheckpointingConfig config, ParallelRanks ranks, Communicator& comm,
                           std::shared_ptr<Storage> storage)
    : config_(std::move(config)), ranks_(ranks), comm_(comm), storage_(std::move(storage)) {}

Checkpointer::~Checkpointer() {
  if (worker_) {
    MaybeWaitForStaging().IgnoreError();
    worker_->Drain().IgnoreError();
    worker_.reset();
  }
}

Result<std::unique_ptr<Checkpointer>> Checkpointer::Create(const CheckpointingConfig& given, ParallelRanks ranks,
                                                           Communicator& comm, std::shared_ptr<Storage> storage) {
  // checkpoint_dir "s3://bucket/prefix" or "msc://profile/key": the object
  // store's backend, and the prefix inside it.
  CheckpointingConfig config = given;
  if (IsObjectStoragePath(config.checkpoint_dir)) {
    Result<StoragePath> at = ResolveStoragePath(config.checkpoint_dir);
    if (!at.ok()) return at.status().WithContext("checkpointer: checkpoint_dir");
    storage = at->storage;
    config.checkpoint_dir = at->path;
  }
  CKPT_RETURN_IF_ERROR(ValidateConfig(config));
  if (ranks.dp < 0 || ranks.tp < 0 || ranks.pp < 0) {
    return InvalidArgumentError("checkpointer: negative parallel rank (dp " + std::to_string(ranks.dp) + ", tp " +
                                std::to_string(ranks.tp) + ", pp " + std::to_string(ranks.pp) + ")");
  }
  if (ranks.ep && (*ranks.ep < 0 || ranks.ep_size < 1 || *ranks.ep >= ranks.ep_size)) {
    return InvalidArgumentError("checkpointer: expert-parallel rank " + std::to_string(*ranks.ep) +
                                " is outside a group of " + std::to_string(ranks.ep_size));
  }
  if (storage == nullptr) return InvalidArgumentError("checkpointer: no storage");
  std::unique_ptr<Checkpointer> c(new Checkpointer(config, ranks, comm, std::move(storage)));
  if (config.enabled && config.save_consolidated == ConsolidationMode::kEvery && comm.rank() == 0) {
    Log(LogLevel::kWarning,
        "save_consolidated = every: each save also writes a full Hugging Face copy of the model, which stops "
        "training for as long as it takes; 'final' exports only the last checkpoint, and `sh consolidate.sh` in "
        "any checkpoint's model directory exports it later");
  }
  if (config.enabled && config.is_async) {
    Result<std::unique_ptr<Communicator>> bg = comm.Duplicate(config.timeout);
    if (!bg.ok()) return bg.status().WithContext("setting up asynchronous saves");
    c->bg_comm_ = std::move(*bg);
    c->worker_ = std::make_unique<async::Worker>();
    // Thread ranks share this machine's cores; other ranks have their own.
    unsigned threads = 0;
    if (comm.kind() == "threads") {
      threads = std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(comm.size()));
    }
    c->model_kind_.memory = NewHostStagingMemory(threads);
    c->optim_kind_.memory = NewHostStagingMemory(threads);
  }
  // The base model, when the config names one that exists.
  if (!config.model_repo_id.empty()) {
    Result<std::string> dir = ResolveHfModelDir(*c->storage_, config.model_repo_id);
    if (!dir.ok() && !config.model_cache_dir.empty()) {
      dir = ResolveHfModelDir(*c->storage_, config.model_cache_dir, config.model_repo_id);
    }
    if (dir.ok()) c->base_model_dir_ = *dir;
  }
  return c;
}

// ---------------------------------------------------------------- model

Status Checkpointer::SaveModel(Model& model, const std::string& weights_path, const SaveModelOptions& options) {
  if (!config_.enabled) return Status();
  if (closed_) return FailedPreconditionError("saving into " + weights_path + ": the checkpointer is closed");
  const std::string model_dir = JoinPath(weights_path, "model");
  if (config_.is_peft) {
    if (options.peft == nullptr) {
      return InvalidArgumentError("saving " + model_dir + ": is_peft is set but no PEFT config was given");
    }
    return SaveAdapter(model, model_dir, *options.peft);
  }
  const HfArtifacts extra = options.artifacts;
  const bool is_final = options.is_final_checkpoint;
  ConsolidateStats* stats = options.export_stats;
  if (worker_) {
    return SaveAsync(model_kind_, model.state_dict(), weights_path, model_dir, [=, this](Communicator& c) {
      return FinishModelSave(c, model_dir, extra, is_final, stats);
    });
  }
  SaveOptions so;
  so.timeout = config_.timeout;
  CKPT_RETURN_IF_ERROR(SaveSharded(comm_, *storage_, model_dir, model.state_dict(), so));
  return FinishModelSave(comm_, model_dir, extra, is_final, stats);
}

Status Checkpointer::FinishModelSave(Communicator& comm, const std::string& model_dir, const HfArtifacts& extra,
                                     bool is_final, ConsolidateStats* stats) {
  Status meta;
  if (comm.rank() == 0) meta = SaveHfMetadata(model_dir, extra, is_final);
  CKPT_RETURN_IF_ERROR(AgreeOn(comm, meta, "writing the Hugging Face metadata of " + model_dir));
  return MaybeConsolidate(comm, model_dir, is_final, stats);
}

// Rank 0: .hf_metadata/ (artifacts and the export mappings) and consolidate.sh.
Status Checkpointer::SaveHfMetadata(const std::string& model_dir, const HfArtifacts& extra, bool is_final) {
  Storage& st = *storage_;
  const std::string meta_dir = JoinPath(model_dir, kHfMetadataDir);
  CKPT_RETURN_IF_ERROR(st.MakeDirs(meta_dir));
  HfArtifacts artifacts;
  if (!base_model_dir_.empty()) {
    for (std::string_view name : kHfArtifactNames) {
      const std::string p = JoinPath(base_model_dir_, name);
      CKPT_ASSIGN_OR_RETURN(bool exists, Exists(st, p));
      if (!exists) continue;
      CKPT_ASSIGN_OR_RETURN(artifacts[std::string(name)], ReadFileToString(st, p));
    }
  }
  for (const auto& [name, text] : extra) {
    if (!IsHfArtifactName(name)) {
      return InvalidArgumentError("Hugging Face artifact '" + Printable(name) +
                                  "': not a plain file name of an artifact kind, or a name ckpt reserves");
    }
    artifacts[name] = text;
  }
  for (const auto& [name, text] : artifacts) {
    CKPT_RETURN_IF_ERROR(WriteFileAtomically(st, JoinPath(meta_dir, name), text));
  }

  // What was saved, as the files record it.
  CKPT_ASSIGN_OR_RETURN(ShardedCheckpointInfo info, ReadShardedCheckpoint(st, model_dir));
  std::map<std::string, uint32_t> base_files;
  std::map<std::string, DType> base_dtypes;
  if (!base_model_dir_.empty()) {
    Result<std::map<std::string, DType>> base = DTypesFromBase(st, base_model_dir_);
    if (base.ok()) {
      base_dtypes = std::move(*base);
      Result<std::map<std::string, uint32_t>> files = FileMappingFromBase(st, base_model_dir_);
      if (files.ok()) base_files = std::move(*files);
    } else {
      Log(LogLevel::kWarning, "base model " + base_model_dir_ + " could not be read for its layout and dtypes: " +
                                  base.status().ToString());
    }
  }
  json dtypes = json::object();
  std::vector<std::string> keys;
  std::vector<uint64_t> sizes;
  uint64_t total = 0;
  for (const ShardedTensorInfo& t : info.tensors) {
    auto b = base_dtypes.find(t.fqn);
    const DType d = b != base_dtypes.end() ? b->second : t.dtype;
    std::string_view torch = TorchDTypeName(d);
    dtypes[t.fqn] = torch.empty() ? std::string(DTypeName(d)) : "torch." + std::string(torch);
    keys.push_back(t.fqn);
    CKPT_ASSIGN_OR_RETURN(uint64_t bytes, t.global.NumBytes(d));
    sizes.push_back(bytes);
    total += bytes;
  }
  json files = json::object();
  if (!base_files.empty()) {
    // Tensors the base model lacks (new heads) go to its last file.
    uint32_t last = 1;
    for (const auto& [fqn, f] : base_files) last = std::max(last, f);
    for (const std::string& k : keys) {
      auto it = base_files.find(k);
      files[k] = it != base_files.end() ? it->second : last;
    }
  } else {
    std::vector<size_t> order(keys.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return NaturalLess(keys[a], keys[b]); });
    std::vector<uint64_t> ordered;
    for (size_t i : order) ordered.push_back(sizes[i]);
    std::vector<uint32_t> file_of = DivideBySize(ordered, config_.consolidated_max_shard_size);
    for (size_t i = 0; i < order.size(); ++i) files[keys[order[i]]] = file_of[i];
  }
  CKPT_RETURN_IF_ERROR(WriteFileAtomically(st, JoinPath(meta_dir, kFileMappingName), files.dump(2) + "\n"));
  CKPT_RETURN_IF_ERROR(WriteFileAtomically(st, JoinPath(meta_dir, kDtypeMappingName), dtypes.dump(2) + "\n"));
  CKPT_RETURN_IF_ERROR(engine::AddSideFilesToManifest(st, model_dir));

  std::string script =
      "#!/bin/sh\n"
      "# Writes a Hugging Face model directory from the sharded checkpoint beside\n"
      "# this script. Usage: sh consolidate.sh [OUT_DIR] [ckpt consolidate options]\n"
      "# (default OUT_DIR: consolidated/ here). Under mpirun, every rank shares the work.\n"
      "set -e\n"
      "here=$(cd \"$(dirname \"$0\")\" && pwd)\n"
      "out=${1:-\"$here/consolidated\"}\n"
      "[ $# -gt 0 ] && shift\n"
      "exec \"${CKPT:-ckpt}\" consolidate \"$here\" \"$out\"";
  if (config_.diffusers_compatible) script += " --diffusers";
  if (!base_model_dir_.empty()) script += " --base " + ShellQuote(base_model_dir_);
  script += " \"$@\"\n";
  CKPT_RETURN_IF_ERROR(WriteFileAtomically(st, JoinPath(model_dir, kConsolidateScript), script));

  const bool inline_export =
      config_.save_consolidated == ConsolidationMode::kEvery ||
      (config_.save_consolidated == ConsolidationMode::kFinal && is_final);
  if (inline_export && total > kLargeConsolidationBytes) {
    Log(LogLevel::kWarning, "inline consolidation of " + std::to_string(total >> 30) + " GiB in " + model_dir +
                                ": the job holds its ranks while it runs; save_consolidated = never and "
                                "`sh consolidate.sh` later frees them sooner");
  }
  if (!inline_export && is_final) {
    Log(LogLevel::kInfo, "final checkpoint saved without a Hugging Face export; run `sh " +
                             JoinPath(model_dir, kConsolidateScript) + "` to write one");
  }
  return Status();
}

Status Checkpointer::MaybeConsolidate(Communicator& comm, const std::string& model_dir, bool is_final,
                                      ConsolidateStats* stats) {
  const bool now = config_.save_consolidated == ConsolidationMode::kEvery ||
                   (config_.save_consolidated == ConsolidationMode::kFinal && is_final);
  if (!now) return Status();
  ConsolidateOptions o;
  o.timeout = config_.consolidation_timeout;
  o.diffusers = config_.diffusers_compatible;
  o.max_shard_size = config_.consolidated_max_shard_size;
  const std::string out = JoinPath(model_dir, kConsolidatedDir);
  Status s;
  if (config_.single_rank_consolidation) {
    if (comm.rank() == 0) {
      std::unique_ptr<Communicator> one = NewSingleRankCommunicator();
      s = Consolidate(*one, *storage_, model_dir, out, o, stats);
    }
    return AgreeOn(comm, s, "consolidating " + model_dir);
  }
  s = Consolidate(comm, *storage_, model_dir, out, o, stats);
  return AgreeOn(comm, s, "consolidating " + model_dir);
}

// Every rank sends its chunks of the adapter tensors to rank 0, which writes
// the whole adapter as one safetensors file.
Status Checkpointer::SaveAdapter(Model& model, const std::string& model_dir, const PeftConfig& peft) {
  const std::string what = "saving the PEFT adapter in " + model_dir;
  StateDict adapter = Filter(model.state_dict(), [&](const std::string& f) { return model.IsAdapterTensor(f); });
  plan::Encoder enc;
  Status local;
  enc.U64(adapter.tensors.size());
  for (const DistTensor& t : adapter.tensors) {
    const uint32_t bits = DTypeBits(t.dtype);
    if (bits % 8 != 0) {
      local = InvalidArgumentError("adapter tensor '" + t.fqn + "' has dtype " + std::string(DTypeName(t.dtype)) +
                                   ", which is not whole bytes");
      break;
    }
    enc.Str(t.fqn);
    enc.U64(static_cast<uint64_t>(t.dtype));
    enc.U64(t.global_shape.rank());
    for (uint64_t d : t.global_shape.dims()) enc.U64(d);
    enc.U64(t.chunks.size());
    for (const LocalChunk& c : t.chunks) {
      for (uint64_t o : c.offsets) enc.U64(o);
      for (uint64_t d : c.shape.dims()) enc.U64(d);
      std::string bytes;
      AppendChunkBytes(c, bits / 8, &bytes);
      enc.Str(bytes);
    }
  }
  CKPT_RETURN_IF_ERROR(Agree(local, what));
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> all, comm_.AllGather(enc.Take(), config_.timeout));
  if (comm_.rank() != 0) return Agree(Status(), what);

  local = [&]() -> Status {
    struct Whole {
      DType dtype;
      std::vector<uint64_t> shape;
      std::vector<std::byte> data;
      std::vector<bool> covered;
    };
    std::map<std::string, Whole> tensors;
    for (size_t r = 0; r < all.size(); ++r) {
      plan::Decoder dec(all[r]);
      const Status bad = InternalError("adapter chunks from rank " + std::to_string(r) + " are malformed");
      uint64_t n;
      if (!dec.U64(&n)) return bad;
      for (uint64_t i = 0; i < n; ++i) {
        std::string fqn;
        uint64_t dtype, rank, chunks;
        if (!dec.Str(&fqn) || !dec.U64(&dtype) || !dec.U64(&rank) || rank > 64) return bad;
        std::vector<uint64_t> g(rank);
        for (uint64_t& d : g) {
          if (!dec.U64(&d)) return bad;
        }
        Shape gs(g);
        CKPT_ASSIGN_OR_RETURN(uint64_t nbytes, gs.NumBytes(static_cast<DType>(dtype)));
        CKPT_ASSIGN_OR_RETURN(uint64_t numel, gs.NumElements());
        auto [it, fresh] = tensors.try_emplace(fqn);
        Whole& w = it->second;
        if (fresh) {
          w.dtype = static_cast<DType>(dtype);
          w.shape = g;
          w.data.resize(nbytes);
          w.covered.assign(numel == 0 ? 1 : numel, numel == 0);
        } else if (w.dtype != static_cast<DType>(dtype) || w.shape != g) {
          return InvalidArgumentError("adapter tensor '" + fqn + "': rank " + std::to_string(r) +
                                      " disagrees on its dtype or global shape");
        }
        if (!dec.U64(&chunks)) return bad;
        for (uint64_t c = 0; c < chunks; ++c) {
          std::vector<uint64_t> off(rank), shape(rank);
          for (uint64_t& v : off) {
            if (!dec.U64(&v)) return bad;
          }
          for (uint64_t& v : shape) {
            if (!dec.U64(&v)) return bad;
          }
          std::string bytes;
          if (!dec.Str(&bytes)) return bad;
          uint64_t cn = 1;
          for (size_t d = 0; d < rank; ++d) {
            if (off[d] > g[d] || shape[d] > g[d] - off[d]) {
              return InvalidArgumentError("adapter tensor '" + fqn + "': a chunk of rank " + std::to_string(r) +
                                          " reaches outside its global shape");
            }
            cn *= shape[d];
          }
          if (cn == 0) continue;
          PlaceChunk(off, shape, bytes.data(), g, DTypeBits(w.dtype) / 8, w.data.data(), &w.covered);
        }
      }
    }
    std::vector<TensorData> out;
    for (const auto& [fqn, w] : tensors) {
      if (std::find(w.covered.begin(), w.covered.end(), false) != w.covered.end()) {
        return InvalidArgumentError("adapter tensor '" + fqn + "': the ranks' chunks do not cover it");
      }
      const std::string key = fqn.rfind(kAdapterPrefix, 0) == 0 ? fqn : std::string(kAdapterPrefix) + fqn;
      out.push_back(TensorData{key, w.dtype, Shape(w.shape), std::span<const std::byte>(w.data)});
    }
    Storage& st = *storage_;
    CKPT_ASSIGN_OR_RETURN(bool exists, Exists(st, model_dir));
    if (exists) return AlreadyExistsError(model_dir + " already exists; it is never overwritten");
    CKPT_RETURN_IF_ERROR(st.MakeDirs(model_dir));
    CKPT_RETURN_IF_ERROR(
        WriteSafetensors(st, JoinPath(model_dir, kAdapterFile), out, SafetensorsMetadata{{"format", "pt"}}));
    std::vector<std::string> targets = peft.target_modules;
    std::sort(targets.begin(), targets.end());
    targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
    json cfg = {{"task_type", peft.task_type},
                {"peft_type", "LORA"},
                {"r", peft.r},
                {"lora_alpha", peft.lora_alpha},
                {"use_dora", peft.use_dora},
                {"target_modules", targets},
                {"bias", "none"},
                {"base_model_name_or_path", peft.base_model_name_or_path}};
    CKPT_RETURN_IF_ERROR(WriteFileAtomically(st, JoinPath(model_dir, kAdapterConfig), cfg.dump(2) + "\n"));
    return st.SyncDir(model_dir);
  }();
  return Agree(local, what);
}

Status Checkpointer::LoadAdapter(Model& model, const std::string& model_dir) {
  StateDict adapter = Filter(model.state_dict(), [&](const std::string& f) { return model.IsAdapterTensor(f); });
  LoadOptions o;
  o.timeout = config_.timeout;
  o.key_mapping = {{"^base_model\\.model\\.(.*)$", "$1"}};
  return LoadSharded(comm_, *storage_, model_dir, adapter, o).WithContext("loading the PEFT adapter");
}

Status Checkpointer::LoadModel(Model& model, const std::string& model_path, const LoadModelOptions& options,
                               LoadStats* stats) {
  Status loaded;
  if (config_.is_peft && !options.is_init_step) {
    loaded = LoadAdapter(model, model_path);
  } else {
    LoadOptions o = options.load;
    o.timeout = config_.timeout;
    // Skipped prefixes hold on both sides: those tensors keep their values.
    // PEFT runs load base weights only: a base checkpoint has no adapter.
    auto keep = [&](const std::string& f) {
      for (const std::string& p : o.skip_prefixes) {
        if (f.rfind(p, 0) == 0) return false;
      }
      return !(config_.is_peft && model.IsAdapterTensor(f));
    };
    StateDict view = Filter(model.state_dict(), keep);
    loaded = LoadSharded(comm_, *storage_, model_path, view, o, stats);
  }
  CKPT_RETURN_IF_ERROR(loaded);
  if (stats != nullptr && comm_.rank() == 0 && (!stats->missing_keys.empty() || !stats->unexpected_keys.empty())) {
    auto list = [](const std::vector<std::string>& v) {
      std::string s;
      for (size_t i = 0; i < v.size() && i < 10; ++i) s += (i ? ", " : "") + v[i];
      if (v.size() > 10) s += ", ... (" + std::to_string(v.size() - 10) + " more)";
      return s;
    };
    Log(LogLevel::kInfo, "loaded " + model_path + ": " + std::to_string(stats->missing_keys.size()) +
                             " missing key(s) kept their values [" + list(stats->missing_keys) + "], " +
                             std::to_string(stats->unexpected_keys.size()) + " unexpected key(s) ignored [" +
                             list(stats->unexpected_keys) + "]");
  }
  return Agree(model.ReinitNonPersistentBuffers(), "recomputing buffers after loading " + model_path);
}

Status Checkpointer::LoadBaseModel(Model& model, const std::string& root_dir, const std::string& model_name,
                                   bool load, std::string_view peft_init_method, LoadStats* stats) {
  CKPT_RETURN_IF_ERROR(Agree(model.MaterializeParameters(), "materializing parameters"));
  CKPT_RETURN_IF_ERROR(Agree(model.InitializeWeights(), "initializing weights"));
  if (load) {
    const std::string root = root_dir.empty() ? config_.model_cache_dir : root_dir;
    const std::string name = model_name.empty() ? config_.model_repo_id : model_name;
    std::string dir;
    Status found;
    if (comm_.rank() == 0) {
      Result<std::string> r = ResolveHfModelDir(*storage_, name);
      if (!r.ok() && !root.empty()) r = ResolveHfModelDir(*storage_, root, name);
      found = r.status();
      if (r.ok()) dir = *r;
    }
    CKPT_RETURN_IF_ERROR(Agree(found, "finding base model '" + name + "'" + (root.empty() ? "" : " in " + root)));
    CKPT_RETURN_IF_ERROR(comm_.Broadcast(0, &dir, config_.timeout));
    base_model_dir_ = dir;
    LoadModelOptions o;
    o.is_init_step = true;
    o.load.skip_prefixes = config_.skip_task_head_prefixes_for_base_model;
    // Base models ship in their release dtype; training may hold another.
    o.load.cast_floats = true;
    o.load.dequantize_fp8 = config_.dequantize_base_fp8;
    // Tied embeddings: the base model has no lm_head.weight.
    std::string cfg_text;
    Result<std::string> cfg = ReadFileToString(*storage_, JoinPath(dir, "config.json"));
    if (cfg.ok()) {
      Result<json> j = ParseStrictJson(*cfg, JoinPath(dir, "config.json"), 64);
      if (j.ok() && j->is_object() && j->value("tie_word_embeddings", false) == true) o.load.tie_word_embeddings = true;
    }
    CKPT_RETURN_IF_ERROR(LoadModel(model, dir, o, stats));
  }
  if (config_.is_peft) {
    CKPT_RETURN_IF_ERROR(Agree(model.InitPeftAdapters(peft_init_method), "initializing PEFT adapters"));
  }
  if (!load) return Agree(model.ReinitNonPersistentBuffers(), "recomputing buffers");
  return Status();
}

// ---------------------------------------------------------------- optimizer

Status Checkpointer::SaveOptimizer(StateDict& optimizer, const std::string& weights_path, Stateful* scheduler) {
  if (!config_.enabled) return Status();
  if (closed_) return FailedPreconditionError("saving into " + weights_path + ": the checkpointer is closed");
  StateDict sd;
  sd.tensors = optimizer.tensors;
  sd.json = optimizer.json;
  sd.bytes = optimizer.bytes;
  if (scheduler != nullptr) {
    Result<std::string> s = scheduler->SaveState();
    CKPT_RETURN_IF_ERROR(Agree(s.status(), "saving the LR scheduler state"));
    const std::byte* p = reinterpret_cast<const std::byte*>(s->data());
    sd.bytes[std::string(kSchedulerKey)] = std::vector<std::byte>(p, p + s->size());
  }
  if (worker_) return SaveAsync(optim_kind_, sd, weights_path, JoinPath(weights_path, "optim"), nullptr);
  SaveOptions so;
  so.timeout = config_.timeout;
  return SaveSharded(comm_, *storage_, JoinPath(weights_path, "optim"), sd, so);
}

Status Checkpointer::LoadOptimizer(StateDict& optimizer, const std::string& weights_path, Stateful* scheduler) {
  const std::string dir = JoinPath(weights_path, "optim");
  std::vector<std::byte> sched;
  const std::string key(kSchedulerKey);
  const bool had = optimizer.bytes.count(key) != 0;
  if (scheduler != nullptr) optimizer.bytes[key];
  LoadOptions o;
  o.timeout = config_.timeout;
  Status s = LoadSharded(comm_, *storage_, dir, optimizer, o);
  if (scheduler != nullptr) {
    sched = std::move(optimizer.bytes[key]);
    if (!had) optimizer.bytes.erase(key);
  }
  CKPT_RETURN_IF_ERROR(s);
  if (scheduler == nullptr) return Status();
  const std::string_view text(reinterpret_cast<const char*>(sched.data()), sched.size());
  return Agree(scheduler->LoadState(text), "restoring the LR scheduler from " + dir);
}

// ---------------------------------------------------------------- auxiliary state

Status Checkpointer::SaveStatefulFile(Stateful& state, const std::string& path) {
  CKPT_ASSIGN_OR_RETURN(std::string bytes, state.SaveState());
  CKPT_RETURN_IF_ERROR(storage_->MakeDirs(std::string(Dirname(path))));
  return WriteFileAtomically(*storage_, path, bytes);
}

Status Checkpointer::LoadStatefulFile(Stateful& state, const std::string& path) {
  Result<std::string> bytes = ReadFileToString(*storage_, path);
  if (!bytes.ok()) return bytes.status();
  return state.LoadState(*bytes).WithContext("restoring state from " + path);
}

Status Checkpointer::SaveOnDpRanks(Stateful& state, std::string_view name, const std::string& path) {
  if (!config_.enabled) return Status();
  const std::string file = JoinPath(JoinPath(path, name), std::string(name) + "_dp_rank_" +
                                                              std::to_string(ranks_.dp) + ".state");
  Status local;
  if (ranks_.tp == 0 && ranks_.pp == 0) local = SaveStatefulFile(state, file);
  return Agree(local, "saving " + std::string(name) + " state");
}

Status Checkpointer::LoadOnDpRanks(Stateful& state, std::string_view name, const std::string& path) {
  const std::string file = JoinPath(JoinPath(path, name), std::string(name) + "_dp_rank_" +
                                                              std::to_string(ranks_.dp) + ".state");
  return Agree(LoadStatefulFile(state, file), "loading " + std::string(name) + " state");
}

Status Checkpointer::SaveOnGlobalRanks(Stateful& state, std::string_view name, const std::string& path) {
  if (!config_.enabled) return Status();
  const std::string file = JoinPath(JoinPath(path, name), std::string(name) + "_global_rank_" +
                                                              std::to_string(comm_.rank()) + ".state");
  return Agree(SaveStatefulFile(state, file), "saving " + std::string(name) + " state");
}

Status Checkpointer::LoadOnGlobalRanks(Stateful& state, std::string_view name, const std::string& path) {
  const std::string file = JoinPath(JoinPath(path, name), std::string(name) + "_global_rank_" +
                                                              std::to_string(comm_.rank()) + ".state");
  return Agree(LoadStatefulFile(state, file), "loading " + std::string(name) + " state");
}

Status Checkpointer::SaveDistributedState(const StateDict& state, std::string_view name, const std::string& path) {
  if (!config_.enabled) return Status();
  SaveOptions so;
  so.timeout = config_.timeout;
  return SaveSharded(comm_, *storage_, JoinPath(path, name), state, so);
}

Status Checkpointer::LoadDistributedState(StateDict& state, std::string_view name, const std::string& path) {
  LoadOptions o;
  o.timeout = config_.timeout;
  return LoadSharded(comm_, *storage_, JoinPath(path, name), state, o);
}

// ---------------------------------------------------------------- background work

Status Checkpointer::SaveAsync(AsyncKind& kind, const StateDict& sd, const std::string& weights_path,
                               const std::string& dir, std::function<Status(Communicator&)> then) {
  if (closed_) return FailedPreconditionError("saving " + dir + ": the checkpointer is closed");
  // One save of a kind in flight: the previous one completes first (its
  // staging memory is reused), and its failure is returned here.
  CKPT_RETURN_IF_ERROR(WaitForKind(kind));
  // The writer reads only shapes and offsets from this copy; the bytes come
  // through the pipe while the caller's tensors are unchanged.
  auto copy = std::make_shared<StateDict>(sd);
  auto pipe = std::make_shared<async::StagingPipe>(*kind.memory, *copy, config_.staging_budget);
  Communicator* bg = bg_comm_.get();
  Storage* st = storage_.get();
  const Timeout to = config_.timeout;
  {
    // Registered before the task can run, so Reserve never mistakes the
    // directory for a dead save's.
    std::lock_guard<std::mutex> lock(pending_mu_);
    kind.ticket = worker_->Submit([bg, st, to, dir, copy, pipe, then]() -> Status {
      SaveOptions o;
      o.timeout = to;
      o.source = pipe.get();
      Status s = SaveSharded(*bg, *st, dir, *copy, o);
      if (s.ok() && then) s = then(*bg);
      return s;
    });
    pending_[weights_path].push_back(kind.ticket);
  }
  if (!config_.wait_for_staging) {
    kind.staging = std::make_shared<std::future<Status>>(
        std::async(std::launch::async, [pipe, copy] { return pipe->Produce(); }));
    return Status();
  }
  Status staged = pipe->Produce();
  if (staged.ok()) return Status();
  // The writer failed (or staging did): report the background error now.
  Status background = worker_->Wait(kind.ticket);
  kind.ticket = 0;
  return background.ok() ? staged : background;
}

Status Checkpointer::WaitForKind(AsyncKind& kind) {
  Status staged;
  if (kind.staging) {
    staged = kind.staging->get();
    kind.staging.reset();
  }
  Status background;
  if (kind.ticket != 0) {
    background = worker_->Wait(kind.ticket);
    kind.ticket = 0;
  }
  return background.ok() ? staged : background;
}

bool Checkpointer::IsPending(const std::string& dir) {
  std::lock_guard<std::mutex> lock(pending_mu_);
  auto it = pending_.find(dir);
  if (it == pending_.end()) return false;
  for (uint64_t t : it->second) {
    if (!worker_->Done(t)) return true;
  }
  pending_.erase(it);
  return false;
}

Status Checkpointer::MaybeWaitForStaging() {
  Status first;
  for (AsyncKind* kind : {&model_kind_, &optim_kind_}) {
    if (!kind->staging) continue;
    Status staged = kind->staging->get();
    kind->staging.reset();
    if (!staged.ok()) {
      // The background task holds the cause; it is reported once, here.
      Status background = worker_->Wait(kind->ticket);
      if (first.ok()) first = background.ok() ? staged : background;
    }
  }
  return first;
}

Status Checkpointer::AsyncWait() {
  if (!worker_) return Status();
  Status staged = MaybeWaitForStaging();
  Status background = worker_->Drain();
  model_kind_.ticket = optim_kind_.ticket = 0;
  return staged.ok() ? background : staged;
}

Status Checkpointer::Close() {
  Status s = AsyncWait();
  closed_ = true;
  worker_.reset();
  bg_comm_.reset();
  return s;
}

}  // namespace ckpt
