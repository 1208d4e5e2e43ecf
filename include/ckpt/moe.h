// Mixture-of-experts state-dict adapters.
//
// Hugging Face MoE checkpoints hold one matrix per expert and projection;
// training code holds each layer's experts as two grouped tensors (layout in
// docs/format.md §7):
//
//   model.layers.{L}.mlp.experts.gate_and_up_projs  [E, dim, 2·inter]
//       [e, :, :inter] = gate_e.weightᵀ, [e, :, inter:] = up_e.weightᵀ
//   model.layers.{L}.mlp.experts.down_projs         [E, inter, dim]
//       [e] = down_e.weightᵀ
//
// Every other tensor (attention, norms, routers, shared experts) keeps its
// name and bytes. An adapter is a table row: where the experts live in HF
// names, what the three projections are called, which config.json keys give
// the layer and expert counts.
//
// In training, `HfViewsOfGrouped` exposes a grouped state dict (any expert-
// parallel or further sharding) as HF tensors whose chunks are strided views
// of the grouped memory: SaveSharded writes HF-named checkpoints from it
// expert by expert, LoadSharded fills the grouped memory from HF checkpoints,
// each rank reading only the experts (and byte ranges) it holds.
#ifndef CKPT_MOE_H_
#define CKPT_MOE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/checkpointer.h"
#include "ckpt/dtype.h"
#include "ckpt/shape.h"
#include "ckpt/state_dict.h"
#include "ckpt/status.h"
#include "ckpt/storage.h"

namespace ckpt {

struct MoeAdapter {
  std::string name;                            // "mixtral", "qwen3_moe", "deepseek_v3"
  std::string experts_infix;                   // HF: "model.layers.{L}.<infix>.{e}.<proj>.weight"
  std::string gate, up, down;                  // HF projection names
  std::vector<std::string> expert_count_keys;  // config.json, first present wins
};

// The adapters ckpt ships: mixtral, qwen2_moe, qwen3_moe, deepseek_v2,
// deepseek_v3. NotFound lists the known names.
Result<MoeAdapter> FindMoeAdapter(std::string_view name);
std::vector<std::string> MoeAdapterNames();

struct MoeConfig {
  uint32_t num_layers = 0;
  uint32_t num_experts = 0;
};
// Reads num_hidden_layers and the adapter's expert-count key.
Result<MoeConfig> ParseMoeConfig(const MoeAdapter& adapter, std::string_view config_json,
                                 std::string_view source);

// Names.
std::string GroupedGateUpName(uint32_t layer);
std::string GroupedDownName(uint32_t layer);
enum class MoeProj : uint8_t { kGate, kUp, kDown };
std::string HfExpertName(const MoeAdapter& a, uint32_t layer, uint32_t expert, MoeProj proj);

struct TensorMeta {
  DType dtype = DType::kF32;
  Shape shape;
};

// One MoE layer's sizes.
struct MoeLayer {
  uint32_t layer = 0;
  uint64_t dim = 0;    // hidden size
  uint64_t inter = 0;  // expert MLP size
  DType dtype = DType::kBF16;
};

// How a set of tensors splits into expert layers and passthrough tensors.
struct MoePlan {
  std::map<uint32_t, MoeLayer> layers;
  std::vector<std::string> passthrough;  // names kept as they are
  // The tensors on the other side of the conversion, by name.
  std::map<std::string, TensorMeta> converted;
};

// HF side: every expert tensor of every MoE layer must be present, for all
// `config.num_experts` experts, with consistent shapes and dtype; layers must
// be below num_layers. Each disagreement is an error naming the tensor.
Result<MoePlan> PlanHfToGrouped(const MoeAdapter& a, const MoeConfig& config,
                                const std::map<std::string, TensorMeta>& hf,
                                std::string_view source);
// Per-expert tensors a grouped directory may expand to (3 per expert per
// layer); more is refused before anything is planned. DeepSeek-V3 needs 47,000.
inline constexpr uint64_t kMaxMoeExpertTensors = 1u << 20;
Result<MoePlan> PlanGroupedToHf(const MoeAdapter& a, const MoeConfig& config,
                                const std::map<std::string, TensorMeta>& grouped,
                                std::string_view source);

// The HF-named state dict whose chunks view `grouped`'s memory (no copies).
// Grouped tensors may be chunked on any dimension (expert parallelism splits
// dimension 0); each chunk yields, per expert it holds, one chunk of each HF
// expert tensor. Other tensors are passed through. `config.num_experts` must
// equal the grouped tensors' first dimension.
Result<StateDict> HfViewsOfGrouped(const MoeAdapter& a, const MoeConfig& config,
                                   const StateDict& grouped);

// A model whose experts are grouped, seen by the Checkpointer in Hugging
// Face form: state_dict() is HfViewsOfGrouped of the wrapped model's state
// dict (rebuilt on every call, no copies); hooks are forwarded. SaveModel
// then writes per-expert HF tensors (consolidated exports are Hugging Face
// directories) and LoadModel / LoadBaseModel fill the grouped memory, each
// expert-parallel rank reading only its experts.
class MoeHfModel : public Model {
 public:
  // Checks that the wrapped model's grouped tensors convert.
  static Result<std::unique_ptr<MoeHfModel>> Create(Model& grouped, MoeAdapter adapter,
                                                    MoeConfig config);
  // Should the grouped tensors stop converting later (their shapes changed),
  // the error is logged and the grouped state dict itself is returned, so a
  // save loses nothing and a load fails on the names.
  StateDict& state_dict() override;
  Status MaterializeParameters() override { return grouped_.MaterializeParameters(); }
  Status InitializeWeights() override { return grouped_.InitializeWeights(); }
  Status InitPeftAdapters(std::string_view method) override {
    return grouped_.InitPeftAdapters(method);
  }
  Status ReinitNonPersistentBuffers() override { return grouped_.ReinitNonPersistentBuffers(); }
  bool IsAdapterTensor(std::string_view fqn) const override {
    return grouped_.IsAdapterTensor(fqn);
  }

 private:
  Model& grouped_;
  MoeAdapter adapter_;
  MoeConfig config_;
  MoeHfModel(Model& grouped, MoeAdapter adapter, MoeConfig config)
      : grouped_(grouped), adapter_(std::move(adapter)), config_(config) {}
  StateDict views_;
};

// File conversion (`ckpt convert --adapter`): a Hugging Face directory in,
// a Hugging Face-style safetensors directory (index included) out, the
// config.json and other files copied. Experts stream one at a time.
enum class MoeDirection : uint8_t { kToGrouped, kToHf };
struct MoeConvertOptions {
  uint64_t max_shard_size = 5ull << 30;
  uint64_t buffer_size = 64ull << 20;  // passthrough copies
};
struct MoeConvertStats {
  uint64_t tensors_in = 0;
  uint64_t tensors_out = 0;
  uint64_t bytes = 0;
  uint32_t files = 0;
  uint64_t peak_transient = 0;  // largest buffer held to convert one expert, bytes
  uint64_t largest_expert = 0;  // bytes of one expert projection
  uint64_t copy_buffer = 0;     // buffer of passthrough copies (≤ buffer_size)
};
Status ConvertMoeDir(Storage& storage, const std::string& in_dir, const std::string& out_dir,
                     const MoeAdapter& a, MoeDirection direction,
                     const MoeConvertOptions& options = {}, MoeConvertStats* stats = nullptr);

}  // namespace ckpt

#endif  // CKPT_MOE_H_
