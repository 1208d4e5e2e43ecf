// Checkpointer: model, optimizer and auxiliary state of a training run,
// on top of the sharded engine and consolidation.
#include "ckpt/checkpointer.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "async/staging_pipe.h"
#include "async/worker.h"
#include "checkpoint/checkpointer_impl.h"
#include "checkpoint/export_layout.h"
#include "ckpt/consolidate.h"
#include "ckpt/hf.h"
#include "ckpt/log.h"
#include "ckpt/s3.h"
#include "ckpt/safetensors.h"
#include "ckpt/staging.h"
#include "core/strided.h"
#include "engine/shard_dir.h"
#include "format/json_util.h"
#include "plan/codec.h"

namespace ckpt {
namespace {

using json = nlohmann::json;

constexpr std::string_view kConsolidatedDir = "consolidated";
constexpr std::string_view kConsolidateScript = "consolidate.sh";

// Files of a Hugging Face model directory that travel with its weights.
constexpr std::string_view kHfArtifactNames[] = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
};

}  // namespace

StateDict FilterTensors(const StateDict& sd, const std::function<bool(const std::string&)>& keep) {
  StateDict out;
  for (const DistTensor& t : sd.tensors) {
    if (keep(t.fqn)) out.tensors.push_back(t);
  }
  return out;
}

bool Model::IsAdapterTensor(std::string_view fqn) const {
  return fqn.find(".lora_A.") != std::string_view::npos ||
         fqn.find(".lora_B.") != std::string_view::npos ||
         fqn.find(".lora_magnitude_vector") != std::string_view::npos;
}

std::string OptimizerStateKey(std::string_view fqn, std::string_view name) {
  return "state." + std::string(fqn) + "." + std::string(name);
}

Checkpointer::Checkpointer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

const CheckpointingConfig& Checkpointer::config() const { return impl_->config; }
const std::string& Checkpointer::base_model_dir() const { return impl_->base_model_dir; }

Checkpointer::~Checkpointer() {
  if (impl_->worker) {
    MaybeWaitForStaging().IgnoreError();
    impl_->worker->Drain().IgnoreError();
    impl_->worker.reset();
  }
}

Result<std::unique_ptr<Checkpointer>> Checkpointer::Create(const CheckpointingConfig& given,
                                                           ParallelRanks ranks, Communicator& comm,
                                                           std::shared_ptr<Storage> storage) {
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
    return InvalidArgumentError("checkpointer: negative parallel rank (dp " +
                                std::to_string(ranks.dp) + ", tp " + std::to_string(ranks.tp) +
                                ", pp " + std::to_string(ranks.pp) + ")");
  }
  if (ranks.ep && (*ranks.ep < 0 || ranks.ep_size < 1 || *ranks.ep >= ranks.ep_size)) {
    return InvalidArgumentError("checkpointer: expert-parallel rank " + std::to_string(*ranks.ep) +
                                " is outside a group of " + std::to_string(ranks.ep_size));
  }
  if (storage == nullptr) return InvalidArgumentError("checkpointer: no storage");
  std::unique_ptr<Checkpointer> c(
      new Checkpointer(std::make_unique<Impl>(config, ranks, comm, std::move(storage))));
  if (config.enabled && config.save_consolidated == ConsolidationMode::kEvery && comm.rank() == 0) {
    Log(LogLevel::kWarning,
        "save_consolidated = every: each save also writes a full Hugging Face copy of the model, "
        "which stops "
        "training for as long as it takes; 'final' exports only the last checkpoint, and `sh "
        "consolidate.sh` in "
        "any checkpoint's model directory exports it later");
  }
  if (config.enabled && config.is_async) {
    Result<std::unique_ptr<Communicator>> bg = comm.Duplicate(config.timeout);
    if (!bg.ok()) return bg.status().WithContext("setting up asynchronous saves");
    c->impl_->bg_comm = std::move(*bg);
    c->impl_->worker = std::make_unique<async::Worker>();
    // Thread ranks share this machine's cores; other ranks have their own.
    unsigned threads = 0;
    if (comm.kind() == "threads") {
      threads =
          std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(comm.size()));
    }
    c->impl_->model_kind.memory = NewHostStagingMemory(threads);
    c->impl_->optim_kind.memory = NewHostStagingMemory(threads);
  }
  // The base model, when the config names one that exists.
  if (!config.model_repo_id.empty()) {
    Result<std::string> dir = ResolveHfModelDir(*c->impl_->storage, config.model_repo_id);
    if (!dir.ok() && !config.model_cache_dir.empty()) {
      dir = ResolveHfModelDir(*c->impl_->storage, config.model_cache_dir, config.model_repo_id);
    }
    if (dir.ok()) c->impl_->base_model_dir = *dir;
  }
  return c;
}

// ---------------------------------------------------------------- model

Status Checkpointer::SaveModel(Model& model, const std::string& weights_path,
                               const SaveModelOptions& options) {
  if (!impl_->config.enabled) return Status();
  if (impl_->closed)
    return FailedPreconditionError("saving into " + weights_path + ": the checkpointer is closed");
  const std::string model_dir = JoinPath(weights_path, "model");
  if (impl_->config.is_peft) {
    if (options.peft == nullptr) {
      return InvalidArgumentError("saving " + model_dir +
                                  ": is_peft is set but no PEFT config was given");
    }
    return SaveAdapter(model, model_dir, *options.peft);
  }
  const HfArtifacts extra = options.artifacts;
  const bool is_final = options.is_final_checkpoint;
  ConsolidateStats* stats = options.export_stats;
  const std::string base = impl_->base_model_dir;  // a copy for the background task
  if (impl_->worker) {
    return SaveAsync(impl_->model_kind, model.state_dict(), weights_path, model_dir,
                     [=, this](Communicator& c) {
                       return FinishModelSave(c, model_dir, base, extra, is_final, stats);
                     });
  }
  SaveOptions so;
  so.timeout = impl_->config.timeout;
  CKPT_RETURN_IF_ERROR(
      SaveSharded(impl_->comm, *impl_->storage, model_dir, model.state_dict(), so));
  return FinishModelSave(impl_->comm, model_dir, base, extra, is_final, stats);
}

Status Checkpointer::FinishModelSave(Communicator& comm, const std::string& model_dir,
                                     const std::string& base_model_dir, const HfArtifacts& extra,
                                     bool is_final, ConsolidateStats* stats) {
  Status meta;
  if (comm.rank() == 0) meta = SaveHfMetadata(model_dir, base_model_dir, extra, is_final);
  CKPT_RETURN_IF_ERROR(AgreeOn(comm, meta, "writing the Hugging Face metadata of " + model_dir));
  return MaybeConsolidate(comm, model_dir, is_final, stats);
}

// Rank 0: .hf_metadata/ (artifacts and the export mappings) and consolidate.sh.
Status Checkpointer::SaveHfMetadata(const std::string& model_dir, const std::string& base_model_dir,
                                    const HfArtifacts& extra, bool is_final) {
  Storage& st = *impl_->storage;
  const std::string meta_dir = JoinPath(model_dir, kHfMetadataDir);
  CKPT_RETURN_IF_ERROR(st.MakeDirs(meta_dir));
  HfArtifacts artifacts;
  if (!base_model_dir.empty()) {
    for (std::string_view name : kHfArtifactNames) {
      const std::string p = JoinPath(base_model_dir, name);
      CKPT_ASSIGN_OR_RETURN(bool exists, Exists(st, p));
      if (!exists) continue;
      CKPT_ASSIGN_OR_RETURN(artifacts[std::string(name)], ReadFileToString(st, p));
    }
  }
  for (const auto& [name, text] : extra) {
    if (!IsHfArtifactName(name)) {
      return InvalidArgumentError(
          "Hugging Face artifact '" + Printable(name) +
          "': not a plain file name of an artifact kind, or a name ckpt reserves");
    }
    artifacts[name] = text;
  }
  for (const auto& [name, text] : artifacts) {
    CKPT_RETURN_IF_ERROR(WriteFileAtomically(st, JoinPath(meta_dir, name), text));
  }

  // What was saved, as the files record it, laid out for the export.
  CKPT_ASSIGN_OR_RETURN(ShardedCheckpointInfo info, ReadShardedCheckpoint(st, model_dir));
  BaseModelLayout base;
  if (!base_model_dir.empty()) {
    Result<std::map<std::string, DType>> dtypes = DTypesFromBase(st, base_model_dir);
    if (dtypes.ok()) {
      base.dtypes = std::move(*dtypes);
      Result<std::map<std::string, uint32_t>> files = FileMappingFromBase(st, base_model_dir);
      if (files.ok()) base.files = std::move(*files);
    } else {
      Log(LogLevel::kWarning,
          "base model " + base_model_dir +
              " could not be read for its layout and dtypes: " + dtypes.status().ToString());
    }
  }
  CKPT_ASSIGN_OR_RETURN(
      const ExportLayout layout,
      ComputeExportLayout(info.tensors, base, impl_->config.consolidated_max_shard_size));
  json files(layout.files), dtypes(layout.dtypes);
  CKPT_RETURN_IF_ERROR(
      WriteFileAtomically(st, JoinPath(meta_dir, kFileMappingName), files.dump(2) + "\n"));
  CKPT_RETURN_IF_ERROR(
      WriteFileAtomically(st, JoinPath(meta_dir, kDtypeMappingName), dtypes.dump(2) + "\n"));
  CKPT_RETURN_IF_ERROR(engine::AddSideFilesToManifest(st, model_dir));
  CKPT_RETURN_IF_ERROR(
      WriteFileAtomically(st, JoinPath(model_dir, kConsolidateScript),
                          ConsolidateScript(impl_->config.diffusers_compatible, base_model_dir)));
  const uint64_t total = layout.total_bytes;

  const bool inline_export =
      impl_->config.save_consolidated == ConsolidationMode::kEvery ||
      (impl_->config.save_consolidated == ConsolidationMode::kFinal && is_final);
  if (inline_export && total > kLargeConsolidationBytes) {
    Log(LogLevel::kWarning,
        "inline consolidation of " + std::to_string(total >> 30) + " GiB in " + model_dir +
            ": the job holds its ranks while it runs; save_consolidated = never and "
            "`sh consolidate.sh` later frees them sooner");
  }
  if (!inline_export && is_final) {
    Log(LogLevel::kInfo, "final checkpoint saved without a Hugging Face export; run `sh " +
                             JoinPath(model_dir, kConsolidateScript) + "` to write one");
  }
  return Status();
}

Status Checkpointer::MaybeConsolidate(Communicator& comm, const std::string& model_dir,
                                      bool is_final, ConsolidateStats* stats) {
  const bool now = impl_->config.save_consolidated == ConsolidationMode::kEvery ||
                   (impl_->config.save_consolidated == ConsolidationMode::kFinal && is_final);
  if (!now) return Status();
  ConsolidateOptions o;
  o.timeout = impl_->config.consolidation_timeout;
  o.diffusers = impl_->config.diffusers_compatible;
  o.max_shard_size = impl_->config.consolidated_max_shard_size;
  const std::string out = JoinPath(model_dir, kConsolidatedDir);
  Status s;
  if (impl_->config.single_rank_consolidation) {
    if (comm.rank() == 0) {
      std::unique_ptr<Communicator> one = NewSingleRankCommunicator();
      s = Consolidate(*one, *impl_->storage, model_dir, out, o, stats);
    }
    return AgreeOn(comm, s, "consolidating " + model_dir);
  }
  s = Consolidate(comm, *impl_->storage, model_dir, out, o, stats);
  return AgreeOn(comm, s, "consolidating " + model_dir);
}

Result<std::string> Checkpointer::ModelDirOf(const std::string& path) {
  std::string dir = path;
  Status looked;
  if (impl_->comm.rank() == 0) {
    // A checkpoint directory holds the model in model/; a model directory
    // (model/ itself, consolidated/, a Hugging Face one) holds weights.
    const std::string inner = JoinPath(path, "model");
    Result<bool> nested = Exists(*impl_->storage, JoinPath(inner, kManifestName));
    if (nested.ok() && !*nested)
      nested = Exists(*impl_->storage, JoinPath(inner, "adapter_model.safetensors"));
    looked = nested.status();
    if (nested.ok() && *nested) dir = inner;
  }
  CKPT_RETURN_IF_ERROR(Agree(looked, "looking for the model in " + path));
  CKPT_RETURN_IF_ERROR(impl_->comm.Broadcast(0, &dir, impl_->config.timeout));
  return dir;
}

Status Checkpointer::LoadModel(Model& model, const std::string& path,
                               const LoadModelOptions& options, LoadStats* stats) {
  CKPT_ASSIGN_OR_RETURN(const std::string model_path, ModelDirOf(path));
  Status loaded;
  if (impl_->config.is_peft && !options.is_init_step) {
    loaded = LoadAdapter(model, model_path);
  } else {
    LoadOptions o = options.load;
    o.timeout = impl_->config.timeout;
    // Skipped prefixes hold on both sides: those tensors keep their values.
    // PEFT runs load base weights only: a base checkpoint has no adapter.
    auto keep = [&](const std::string& f) {
      for (const std::string& p : o.skip_prefixes) {
        if (f.rfind(p, 0) == 0) return false;
      }
      return !(impl_->config.is_peft && model.IsAdapterTensor(f));
    };
    StateDict view = FilterTensors(model.state_dict(), keep);
    loaded = LoadSharded(impl_->comm, *impl_->storage, model_path, view, o, stats);
  }
  CKPT_RETURN_IF_ERROR(loaded);
  if (stats != nullptr && impl_->comm.rank() == 0 &&
      (!stats->missing_keys.empty() || !stats->unexpected_keys.empty())) {
    auto list = [](const std::vector<std::string>& v) {
      std::string s;
      for (size_t i = 0; i < v.size() && i < 10; ++i) s += (i ? ", " : "") + v[i];
      if (v.size() > 10) s += ", ... (" + std::to_string(v.size() - 10) + " more)";
      return s;
    };
    Log(LogLevel::kInfo, "loaded " + model_path + ": " +
                             std::to_string(stats->missing_keys.size()) +
                             " missing key(s) kept their values [" + list(stats->missing_keys) +
                             "], " + std::to_string(stats->unexpected_keys.size()) +
                             " unexpected key(s) ignored [" + list(stats->unexpected_keys) + "]");
  }
  return Agree(model.ReinitNonPersistentBuffers(),
               "recomputing buffers after loading " + model_path);
}

Result<LoadStats> Checkpointer::LoadBaseModel(Model& model, const BaseModelOptions& options) {
  CKPT_RETURN_IF_ERROR(Agree(model.MaterializeParameters(), "materializing parameters"));
  CKPT_RETURN_IF_ERROR(Agree(model.InitializeWeights(), "initializing weights"));
  LoadStats stats;
  if (options.load) {
    CKPT_ASSIGN_OR_RETURN(impl_->base_model_dir, FindBaseModel(options));
    CKPT_RETURN_IF_ERROR(
        LoadModel(model, impl_->base_model_dir, BaseLoadOptions(impl_->base_model_dir), &stats));
  }
  if (impl_->config.is_peft) {
    CKPT_RETURN_IF_ERROR(
        Agree(model.InitPeftAdapters(options.peft_init_method), "initializing PEFT adapters"));
  }
  if (!options.load)
    CKPT_RETURN_IF_ERROR(Agree(model.ReinitNonPersistentBuffers(), "recomputing buffers"));
  return stats;
}

Result<std::string> Checkpointer::FindBaseModel(const BaseModelOptions& options) {
  const CheckpointingConfig& config = impl_->config;
  const std::string root = options.root_dir.empty() ? config.model_cache_dir : options.root_dir;
  const std::string name = options.model_name.empty() ? config.model_repo_id : options.model_name;
  std::string dir;
  Status found;
  if (impl_->comm.rank() == 0) {
    Result<std::string> r = ResolveHfModelDir(*impl_->storage, name);
    if (!r.ok() && !root.empty()) r = ResolveHfModelDir(*impl_->storage, root, name);
    found = r.status();
    if (r.ok()) dir = *r;
  }
  CKPT_RETURN_IF_ERROR(
      Agree(found, "finding base model '" + name + "'" + (root.empty() ? "" : " in " + root)));
  CKPT_RETURN_IF_ERROR(impl_->comm.Broadcast(0, &dir, config.timeout));
  return dir;
}

LoadModelOptions Checkpointer::BaseLoadOptions(const std::string& dir) {
  LoadModelOptions o;
  o.is_init_step = true;
  o.load.skip_prefixes = impl_->config.skip_task_head_prefixes_for_base_model;
  // Base models ship in their release dtype; training may hold another.
  o.load.cast_floats = true;
  o.load.dequantize_fp8 = impl_->config.dequantize_base_fp8;
  // Tied embeddings: the base model has no lm_head.weight.
  const std::string config_path = JoinPath(dir, "config.json");
  Result<std::string> cfg = ReadFileToString(*impl_->storage, config_path);
  if (cfg.ok()) {
    Result<json> j = ParseStrictJson(*cfg, config_path, 64);
    if (j.ok() && j->is_object() && j->value("tie_word_embeddings", false) == true)
      o.load.tie_word_embeddings = true;
  }
  return o;
}

// ---------------------------------------------------------------- optimizer

Status Checkpointer::SaveOptimizer(StateDict& optimizer, const std::string& weights_path,
                                   Stateful* scheduler) {
  if (!impl_->config.enabled) return Status();
  if (impl_->closed)
    return FailedPreconditionError("saving into " + weights_path + ": the checkpointer is closed");
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
  if (impl_->worker)
    return SaveAsync(impl_->optim_kind, sd, weights_path, JoinPath(weights_path, "optim"), nullptr);
  SaveOptions so;
  so.timeout = impl_->config.timeout;
  return SaveSharded(impl_->comm, *impl_->storage, JoinPath(weights_path, "optim"), sd, so);
}

Status Checkpointer::LoadOptimizer(StateDict& optimizer, const std::string& weights_path,
                                   Stateful* scheduler) {
  const std::string dir = JoinPath(weights_path, "optim");
  std::vector<std::byte> sched;
  const std::string key(kSchedulerKey);
  const bool had = optimizer.bytes.count(key) != 0;
  if (scheduler != nullptr) optimizer.bytes[key];
  LoadOptions o;
  o.timeout = impl_->config.timeout;
  Status s = LoadSharded(impl_->comm, *impl_->storage, dir, optimizer, o);
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
  CKPT_RETURN_IF_ERROR(impl_->storage->MakeDirs(std::string(Dirname(path))));
  return WriteFileAtomically(*impl_->storage, path, bytes);
}

Status Checkpointer::LoadStatefulFile(Stateful& state, const std::string& path) {
  Result<std::string> bytes = ReadFileToString(*impl_->storage, path);
  if (!bytes.ok()) return bytes.status();
  return state.LoadState(*bytes).WithContext("restoring state from " + path);
}

Status Checkpointer::SaveOnDpRanks(Stateful& state, std::string_view name,
                                   const std::string& path) {
  if (!impl_->config.enabled) return Status();
  const std::string file =
      JoinPath(JoinPath(path, name),
               std::string(name) + "_dp_rank_" + std::to_string(impl_->ranks.dp) + ".state");
  Status local;
  if (impl_->ranks.tp == 0 && impl_->ranks.pp == 0) local = SaveStatefulFile(state, file);
  return Agree(local, "saving " + std::string(name) + " state");
}

Status Checkpointer::LoadOnDpRanks(Stateful& state, std::string_view name,
                                   const std::string& path) {
  const std::string file =
      JoinPath(JoinPath(path, name),
               std::string(name) + "_dp_rank_" + std::to_string(impl_->ranks.dp) + ".state");
  return Agree(LoadStatefulFile(state, file), "loading " + std::string(name) + " state");
}

Status Checkpointer::SaveOnGlobalRanks(Stateful& state, std::string_view name,
                                       const std::string& path) {
  if (!impl_->config.enabled) return Status();
  const std::string file =
      JoinPath(JoinPath(path, name),
               std::string(name) + "_global_rank_" + std::to_string(impl_->comm.rank()) + ".state");
  return Agree(SaveStatefulFile(state, file), "saving " + std::string(name) + " state");
}

Status Checkpointer::LoadOnGlobalRanks(Stateful& state, std::string_view name,
                                       const std::string& path) {
  const std::string file =
      JoinPath(JoinPath(path, name),
               std::string(name) + "_global_rank_" + std::to_string(impl_->comm.rank()) + ".state");
  return Agree(LoadStatefulFile(state, file), "loading " + std::string(name) + " state");
}

Status Checkpointer::SaveDistributedState(const StateDict& state, std::string_view name,
                                          const std::string& path) {
  if (!impl_->config.enabled) return Status();
  SaveOptions so;
  so.timeout = impl_->config.timeout;
  return SaveSharded(impl_->comm, *impl_->storage, JoinPath(path, name), state, so);
}

Status Checkpointer::LoadDistributedState(StateDict& state, std::string_view name,
                                          const std::string& path) {
  LoadOptions o;
  o.timeout = impl_->config.timeout;
  return LoadSharded(impl_->comm, *impl_->storage, JoinPath(path, name), state, o);
}

// ---------------------------------------------------------------- background work

Status Checkpointer::SaveAsync(AsyncKind& kind, const StateDict& sd,
                               const std::string& weights_path, const std::string& dir,
                               std::function<Status(Communicator&)> then) {
  if (impl_->closed)
    return FailedPreconditionError("saving " + dir + ": the checkpointer is closed");
  // One save of a kind in flight: the previous one completes first (its
  // staging memory is reused), and its failure is returned here.
  CKPT_RETURN_IF_ERROR(WaitForKind(kind));
  // The writer reads only shapes and offsets from this copy; the bytes come
  // through the pipe while the caller's tensors are unchanged.
  auto copy = std::make_shared<StateDict>(sd);
  auto pipe =
      std::make_shared<async::StagingPipe>(*kind.memory, *copy, impl_->config.staging_budget);
  Communicator* bg = impl_->bg_comm.get();
  Storage* st = impl_->storage.get();
  const Timeout to = impl_->config.timeout;
  {
    // Registered before the task can run, so Reserve never mistakes the
    // directory for a dead save's.
    std::lock_guard<std::mutex> lock(impl_->pending_mu);
    kind.ticket = impl_->worker->Submit([bg, st, to, dir, copy, pipe, then]() -> Status {
      SaveOptions o;
      o.timeout = to;
      o.source = pipe.get();
      Status s = SaveSharded(*bg, *st, dir, *copy, o);
      if (s.ok() && then) s = then(*bg);
      return s;
    });
    impl_->pending[weights_path].push_back(kind.ticket);
  }
  if (!impl_->config.wait_for_staging) {
    kind.staging = std::make_shared<std::future<Status>>(
        std::async(std::launch::async, [pipe, copy] { return pipe->Produce(); }));
    return Status();
  }
  Status staged = pipe->Produce();
  if (staged.ok()) return Status();
  // The writer failed (or staging did): report the background error now.
  Status background = impl_->worker->Wait(kind.ticket);
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
    background = impl_->worker->Wait(kind.ticket);
    kind.ticket = 0;
  }
  return background.ok() ? staged : background;
}

bool Checkpointer::IsPending(const std::string& dir) {
  std::lock_guard<std::mutex> lock(impl_->pending_mu);
  auto it = impl_->pending.find(dir);
  if (it == impl_->pending.end()) return false;
  for (uint64_t t : it->second) {
    if (!impl_->worker->Done(t)) return true;
  }
  impl_->pending.erase(it);
  return false;
}

Status Checkpointer::MaybeWaitForStaging() {
  Status first;
  for (AsyncKind* kind : {&impl_->model_kind, &impl_->optim_kind}) {
    if (!kind->staging) continue;
    Status staged = kind->staging->get();
    kind->staging.reset();
    if (!staged.ok()) {
      // The background task holds the cause; it is reported once, here.
      Status background = impl_->worker->Wait(kind->ticket);
      if (first.ok()) first = background.ok() ? staged : background;
    }
  }
  return first;
}

Status Checkpointer::AsyncWait() {
  if (!impl_->worker) return Status();
  Status staged = MaybeWaitForStaging();
  Status background = impl_->worker->Drain();
  impl_->model_kind.ticket = impl_->optim_kind.ticket = 0;
  return staged.ok() ? background : staged;
}

Status Checkpointer::Close() {
  Status s = AsyncWait();
  impl_->closed = true;
  impl_->worker.reset();
  impl_->bg_comm.reset();
  return s;
}

}  // namespace ckpt
