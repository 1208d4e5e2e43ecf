// The training-checkpoint lifecycle: what a training loop calls.
//
//   CheckpointingConfig config;
//   config.checkpoint_dir = "/ckpts/run1";
//   CKPT_ASSIGN_OR_RETURN(auto ckpt, Checkpointer::Create(config, {.dp = dp}, comm));
//   ...
//   CKPT_ASSIGN_OR_RETURN(std::string dir, ckpt->Reserve(epoch, step));
//   CKPT_RETURN_IF_ERROR(ckpt->SaveModel(model, dir));
//   CKPT_RETURN_IF_ERROR(ckpt->SaveOptimizer(optimizer, dir, &scheduler));
//   CKPT_RETURN_IF_ERROR(ckpt->SaveOnDpRanks(dataloader, "dataloader", dir));
//   CKPT_RETURN_IF_ERROR(ckpt->Publish(dir, {{"val_loss", loss}}));
//
// and to resume:
//
//   CKPT_ASSIGN_OR_RETURN(std::optional<std::string> dir, ckpt->FindLatest());
//   if (dir) { ckpt->LoadModel(model, *dir); ckpt->LoadOptimizer(optimizer, *dir, &scheduler); ...
//   }
//
// Every method is collective over the communicator unless it says otherwise:
// all ranks call it, and all ranks get the same status. The on-disk layout is
// documented in docs/format.md §5.
#ifndef CKPT_CHECKPOINTER_H_
#define CKPT_CHECKPOINTER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/comm.h"
#include "ckpt/consolidate.h"
#include "ckpt/sharded.h"
#include "ckpt/state_dict.h"
#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt {

// When a save also writes a consolidated Hugging Face directory
// (model/consolidated/).
enum class ConsolidationMode { kNever, kFinal, kEvery };

// "never", "final", "every"; the boolean spellings "true"/"false" (also
// "yes"/"no", "1"/"0") mean every / never.
Result<ConsolidationMode> ParseConsolidationMode(std::string_view text);
std::string_view ConsolidationModeName(ConsolidationMode mode);

struct CheckpointingConfig {
  bool enabled = true;
  // Root holding epoch_{E}_step_{S}/ directories, LATEST and LOWEST_VAL.
  std::string checkpoint_dir;
  // "safetensors" (the DCP Hugging Face layout). "torch_save" (DCP's own
  // .distcp format) is refused: ckpt writes only safetensors.
  std::string model_save_format = "safetensors";
  // Where base models are found: a Hugging Face hub cache
  // (models--org--name/snapshots/<rev>/) or a parent of model directories.
  std::string model_cache_dir;
  // "org/name" in the cache, or a path to a model directory.
  std::string model_repo_id;
  ConsolidationMode save_consolidated = ConsolidationMode::kNever;
  bool is_peft = false;
  // Saves return once the tensors are copied to staging memory; writing,
  // consolidation and publishing continue on a background thread.
  bool is_async = false;
  // Asynchronous saves return only after staging (the default). When false
  // they return at once and the loop calls MaybeWaitForStaging() before it
  // next changes its tensors.
  bool wait_for_staging = true;
  // Bytes of staging memory per kind of save (model, optimizer); 0: as much
  // as the state. A larger state is staged in pieces while earlier pieces
  // are written, so the save blocks longer but memory stays bounded.
  uint64_t staging_budget = 0;
  // Not used: staging is in host memory (see ckpt/staging.h).
  std::string staging_dir;
  // Consolidate on rank 0 alone instead of on every rank.
  bool single_rank_consolidation = false;
  Timeout consolidation_timeout = std::chrono::minutes(30);
  Timeout timeout = kDefaultCollectiveTimeout;
  // Keep only the newest K complete checkpoints (and any a pointer names).
  std::optional<int> max_recent_checkpoints;
  bool diffusers_compatible = false;
  // Metric compared (lower is better) to move LOWEST_VAL.
  std::string best_metric_key = "val_loss";
  // Base-model keys with these prefixes are not loaded (task heads).
  std::vector<std::string> skip_task_head_prefixes_for_base_model;
  // Consolidated files are split at this size unless the base model's
  // layout is known.
  uint64_t consolidated_max_shard_size = 5ull << 30;
  // LoadBaseModel dequantizes FP8 base weights that carry `_scale_inv`
  // block scales (DeepSeek-V3 releases) into the model's float dtype.
  bool dequantize_base_fp8 = false;
};

// Checks every field; the error names the field and the offending value.
Status ValidateConfig(const CheckpointingConfig& config);

// A JSON object with the fields above (unknown fields are errors);
// `save_consolidated` takes a mode string or a boolean,
// `consolidation_timeout_s` and `timeout_s` are seconds.
Result<CheckpointingConfig> ParseCheckpointingConfig(std::string_view json_text);

// This rank's coordinates in the parallel layout.
struct ParallelRanks {
  int dp = 0;
  int tp = 0;
  int pp = 0;
  // Expert parallelism, when the model has one: this rank's index in its
  // expert-parallel group and the group's size.
  std::optional<int> ep = std::nullopt;
  int ep_size = 1;
};

// What a model exposes. Its state dict holds this rank's chunks of every
// persistent tensor, adapters included; loads write through the chunk
// pointers. The hooks default to doing nothing.
class Model {
 public:
  virtual ~Model() = default;
  virtual StateDict& state_dict() = 0;
  // Gives parameters their memory (the model was built without it).
  virtual Status MaterializeParameters() { return Status(); }
  // Fills parameters with their initial values.
  virtual Status InitializeWeights() { return Status(); }
  // Initializes PEFT adapters with the named method (e.g. "xavier").
  virtual Status InitPeftAdapters(std::string_view method) {
    (void)method;
    return Status();
  }
  // Recomputes buffers that checkpoints do not hold (e.g. RoPE inv_freq).
  virtual Status ReinitNonPersistentBuffers() { return Status(); }
  // Under PEFT, the tensors that make up the adapter (the only ones saved
  // and loaded from checkpoints); the default recognizes PEFT's LoRA names.
  virtual bool IsAdapterTensor(std::string_view fqn) const;
};

// Any object whose state is a byte string: a data loader position, an RNG.
class Stateful {
 public:
  virtual ~Stateful() = default;
  virtual Result<std::string> SaveState() = 0;
  virtual Status LoadState(std::string_view state) = 0;
};

// The optimizer's key for a per-parameter state tensor:
// "state.<fqn>.<name>", e.g. "state.model.norm.weight.exp_avg".
std::string OptimizerStateKey(std::string_view fqn, std::string_view name);
// JSON entries of an optimizer state dict.
inline constexpr std::string_view kParamGroupsKey = "param_groups";
inline constexpr std::string_view kSchedulerKey = "lr_scheduler";

struct PeftConfig {
  std::string task_type = "CAUSAL_LM";
  int r = 8;
  int lora_alpha = 32;
  bool use_dora = false;
  std::vector<std::string> target_modules;  // written sorted
  std::string base_model_name_or_path;
};

// Files copied into model/.hf_metadata/ (and so into consolidated/):
// config.json, generation_config.json, tokenizer files, by name.
using HfArtifacts = std::map<std::string, std::string>;

struct SaveModelOptions {
  const PeftConfig* peft = nullptr;  // required when config.is_peft
  HfArtifacts artifacts = {};        // added to (and win over) the base model's
  bool is_final_checkpoint = false;
  // When this save writes model/consolidated/ (save_consolidated), filled
  // with the export's statistics once it is done: for asynchronous saves
  // after AsyncWait() or Close(), so it must outlive the save.
  ConsolidateStats* export_stats = nullptr;
};

struct LoadModelOptions {
  // Loading from a base checkpoint: PEFT runs read the base weights, not an adapter.
  bool is_init_step = false;
  LoadOptions load = {};  // key mapping, allowing a key subset, ...
};

struct BaseModelOptions {
  // A model directory, or a repo id looked up under `root_dir` (a Hugging
  // Face hub cache or a parent of model directories). Empty: the config's
  // model_repo_id and model_cache_dir.
  std::string model_name = {};
  std::string root_dir = {};
  // False: materialize and initialize only (training from scratch).
  bool load = true;
  // Passed to Model::InitPeftAdapters under PEFT (e.g. "xavier").
  std::string peft_init_method = {};
};

// Pointer and directory names of the checkpoint root.
inline constexpr std::string_view kLatestName = "LATEST";
inline constexpr std::string_view kLatestTextName = "LATEST.txt";
inline constexpr std::string_view kLowestValName = "LOWEST_VAL";
inline constexpr std::string_view kIncompleteMarker = ".incomplete";
inline constexpr uint64_t kLargeConsolidationBytes = 50ull << 30;

// "epoch_3_step_1200"; ParseCheckpointName is its inverse.
std::string CheckpointName(int64_t epoch, int64_t step);
bool ParseCheckpointName(std::string_view name, int64_t* epoch, int64_t* step);

// Not collective: the checkpoint LATEST names when it is complete, else the
// newest complete epoch_*_step_* (by step, then epoch); nullopt when none.
Result<std::optional<std::string>> FindLatestCheckpoint(Storage& storage, const std::string& root);

// RoPE inverse frequencies from a Hugging Face config.json: rope_theta
// (default 10000), head_dim (or hidden_size / num_attention_heads),
// partial_rotary_factor, rope_scaling of type "default" or "llama3".
Result<std::vector<float>> RopeInvFreq(std::string_view config_json);

class Checkpointer {
 public:
  static Result<std::unique_ptr<Checkpointer>> Create(
      const CheckpointingConfig& config, ParallelRanks ranks, Communicator& comm,
      std::shared_ptr<Storage> storage = PosixStorage());
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  const CheckpointingConfig& config() const;

  // --- lifecycle ---
  // Creates <root>/epoch_E_step_S holding the .incomplete marker and
  // returns its path. A published checkpoint there is never overwritten; an
  // incomplete one (a save that died) is replaced. Other incomplete
  // checkpoints and stale staging directories are removed.
  Result<std::string> Reserve(int64_t epoch, int64_t step);
  // Writes losses.json from `metrics`, clears the marker, moves LATEST (and
  // LOWEST_VAL when metrics[best_metric_key] is finite and lower), then
  // applies retention.
  Status Publish(const std::string& weights_path,
                 const std::map<std::string, double>& metrics = {});
  Result<std::optional<std::string>> FindLatest();
  // Rank 0 writes <weights_path>/config.yaml.
  Status SaveConfig(std::string_view yaml, const std::string& weights_path);

  // --- model ---
  // Sharded save to <weights_path>/model with .hf_metadata and
  // consolidate.sh, consolidated per config; PEFT runs write the adapter.
  Status SaveModel(Model& model, const std::string& weights_path,
                   const SaveModelOptions& options = {});
  // Loads from the checkpoint directory SaveModel wrote to (the model in
  // <weights_path>/model), or from a model directory: a checkpoint's
  // model/, its consolidated/ export, any Hugging Face directory. Then
  // recomputes non-persistent buffers.
  Status LoadModel(Model& model, const std::string& path, const LoadModelOptions& options = {},
                   LoadStats* stats = nullptr);
  // Materializes and initializes the model, then (when options.load) loads
  // the base model, initializes PEFT adapters, and recomputes non-persistent
  // buffers. Returns what the load found (empty when nothing was loaded).
  Result<LoadStats> LoadBaseModel(Model& model, const BaseModelOptions& options = {});
  // The base model directory found by LoadBaseModel or from the config;
  // empty when none.
  const std::string& base_model_dir() const;

  // --- optimizer ---
  // Sharded save to <weights_path>/optim of the optimizer's tensors
  // (OptimizerStateKey names) and JSON entries, plus the scheduler's state.
  Status SaveOptimizer(StateDict& optimizer, const std::string& weights_path,
                       Stateful* scheduler = nullptr);
  Status LoadOptimizer(StateDict& optimizer, const std::string& weights_path,
                       Stateful* scheduler = nullptr);

  // --- auxiliary state ---
  // <path>/<name>/<name>_dp_rank_{dp}.state, written by tp = pp = 0 ranks.
  Status SaveOnDpRanks(Stateful& state, std::string_view name, const std::string& path);
  Status LoadOnDpRanks(Stateful& state, std::string_view name, const std::string& path);
  // <path>/<name>/<name>_global_rank_{rank}.state, one per rank.
  Status SaveOnGlobalRanks(Stateful& state, std::string_view name, const std::string& path);
  Status LoadOnGlobalRanks(Stateful& state, std::string_view name, const std::string& path);
  // A sharded save of any state dict to <path>/<name>; reshardable on load.
  Status SaveDistributedState(const StateDict& state, std::string_view name,
                              const std::string& path);
  Status LoadDistributedState(StateDict& state, std::string_view name, const std::string& path);

  // --- background work (is_async) ---
  // With wait_for_staging = false: waits until the saves' tensors are
  // staged, after which the loop may change them. Otherwise returns at once.
  Status MaybeWaitForStaging();
  // Waits for every background save and publish. Returns the first
  // background failure not returned before; each is returned exactly once
  // (by this, by the next save of its kind, or by Close).
  Status AsyncWait();
  // AsyncWait, then stops the background thread; later saves fail.
  Status Close();

 private:
  // The state, with what guards each member: checkpoint/checkpointer_impl.h.
  struct Impl;
  // A kind of asynchronous save (model, optimizer).
  struct AsyncKind;

  explicit Checkpointer(std::unique_ptr<Impl> impl);

  Status Agree(const Status& local, std::string_view what);
  Status AgreeOn(Communicator& comm, const Status& local, std::string_view what);
  // `path` as LoadModel takes it: <path>/model when `path` is a checkpoint
  // directory, else `path` (rank 0 looks; every rank gets its answer).
  Result<std::string> ModelDirOf(const std::string& path);
  // LoadBaseModel's steps: where the base model is (collective), and how
  // it is loaded (cast, FP8 dequantized, tied embeddings, task heads kept).
  Result<std::string> FindBaseModel(const BaseModelOptions& options);
  LoadModelOptions BaseLoadOptions(const std::string& dir);
  Status SaveHfMetadata(const std::string& model_dir, const std::string& base_model_dir,
                        const HfArtifacts& extra, bool is_final);
  Status SaveAdapter(Model& model, const std::string& model_dir, const PeftConfig& peft);
  Status LoadAdapter(Model& model, const std::string& model_dir);
  Status MaybeConsolidate(Communicator& comm, const std::string& model_dir, bool is_final,
                          ConsolidateStats* stats);
  Status FinishModelSave(Communicator& comm, const std::string& model_dir,
                         const std::string& base_model_dir, const HfArtifacts& extra, bool is_final,
                         ConsolidateStats* stats);
  Status PublishOn(Communicator& comm, const std::string& weights_path,
                   const std::map<std::string, double>& metrics);
  Status ApplyRetention();
  Status SaveStatefulFile(Stateful& state, const std::string& path);
  Status LoadStatefulFile(Stateful& state, const std::string& path);
  // Starts an asynchronous sharded save of `sd` to `dir` (inside checkpoint
  // `weights_path`); `then` runs after it on the background communicator.
  Status SaveAsync(AsyncKind& kind, const StateDict& sd, const std::string& weights_path,
                   const std::string& dir, std::function<Status(Communicator&)> then);
  Status WaitForKind(AsyncKind& kind);
  bool IsPending(const std::string& dir);

  std::unique_ptr<Impl> impl_;
};

}  // namespace ckpt

#endif  // CKPT_CHECKPOINTER_H_
