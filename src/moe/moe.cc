#include "ckpt/moe.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "ckpt/consolidate.h"
#include "ckpt/hf.h"
#include "ckpt/log.h"
#include "ckpt/safetensors.h"
#include "format/json_util.h"
#include "format/model_dir_writer.h"
#include "io/staged_dir.h"

namespace ckpt {
namespace {

using json = nlohmann::json;

const MoeAdapter kAdapters[] = {
    {"mixtral", "block_sparse_moe.experts", "w1", "w3", "w2", {"num_local_experts"}},
    {"qwen2_moe", "mlp.experts", "gate_proj", "up_proj", "down_proj", {"num_experts"}},
    {"qwen3_moe",
     "mlp.experts",
     "gate_proj",
     "up_proj",
     "down_proj",
     {"num_experts", "num_local_experts"}},
    {"deepseek_v2", "mlp.experts", "gate_proj", "up_proj", "down_proj", {"n_routed_experts"}},
    {"deepseek_v3", "mlp.experts", "gate_proj", "up_proj", "down_proj", {"n_routed_experts"}},
};

constexpr std::string_view kLayersPrefix = "model.layers.";

// Reads decimal digits at `pos`; advances it. No leading zeros except "0".
std::optional<uint32_t> Number(std::string_view s, size_t& pos) {
  const size_t start = pos;
  uint64_t v = 0;
  while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9' && pos - start < 9)
    v = v * 10 + static_cast<uint64_t>(s[pos++] - '0');
  if (pos == start || (s[start] == '0' && pos - start > 1)) return std::nullopt;
  return static_cast<uint32_t>(v);
}

bool Eat(std::string_view s, size_t& pos, std::string_view lit) {
  if (s.substr(pos, lit.size()) != lit) return false;
  pos += lit.size();
  return true;
}

struct ExpertKey {
  uint32_t layer;
  uint32_t expert;
  MoeProj proj;
};

// "model.layers.{L}.<infix>.{e}.<proj>.weight"
std::optional<ExpertKey> ParseExpertName(const MoeAdapter& a, std::string_view name) {
  size_t p = 0;
  if (!Eat(name, p, kLayersPrefix)) return std::nullopt;
  auto layer = Number(name, p);
  if (!layer || !Eat(name, p, ".") || !Eat(name, p, a.experts_infix) || !Eat(name, p, "."))
    return std::nullopt;
  auto expert = Number(name, p);
  if (!expert || !Eat(name, p, ".")) return std::nullopt;
  std::string_view rest = name.substr(p);
  for (auto [proj, pname] :
       {std::pair{MoeProj::kGate, &a.gate}, {MoeProj::kUp, &a.up}, {MoeProj::kDown, &a.down}}) {
    if (rest == *pname + ".weight") return ExpertKey{*layer, *expert, proj};
  }
  return std::nullopt;
}

// "model.layers.{L}.mlp.experts.gate_and_up_projs" / "down_projs".
std::optional<std::pair<uint32_t, bool>> ParseGroupedName(std::string_view name) {
  size_t p = 0;
  if (!Eat(name, p, kLayersPrefix)) return std::nullopt;
  auto layer = Number(name, p);
  if (!layer || !Eat(name, p, ".mlp.experts.")) return std::nullopt;
  std::string_view rest = name.substr(p);
  if (rest == "gate_and_up_projs") return std::pair{*layer, true};
  if (rest == "down_projs") return std::pair{*layer, false};
  return std::nullopt;
}

// dst[j][i] = src[i][j] for a rows × cols source; strides in elements.
void Transpose(const std::byte* src, uint64_t src_stride, uint64_t rows, uint64_t cols,
               std::byte* dst, uint64_t dst_stride, uint64_t esz) {
  constexpr uint64_t kTile = 32;
  for (uint64_t i0 = 0; i0 < rows; i0 += kTile) {
    for (uint64_t j0 = 0; j0 < cols; j0 += kTile) {
      const uint64_t i1 = std::min(rows, i0 + kTile), j1 = std::min(cols, j0 + kTile);
      for (uint64_t i = i0; i < i1; ++i) {
        for (uint64_t j = j0; j < j1; ++j) {
          std::memcpy(dst + (j * dst_stride + i) * esz, src + (i * src_stride + j) * esz, esz);
        }
      }
    }
  }
}

}  // namespace

Result<MoeAdapter> FindMoeAdapter(std::string_view name) {
  for (const MoeAdapter& a : kAdapters) {
    if (a.name == name) return a;
  }
  std::string known;
  for (const std::string& n : MoeAdapterNames()) known += (known.empty() ? "" : ", ") + n;
  return NotFoundError("no MoE adapter '" + std::string(name) + "' (known: " + known + ")");
}

std::vector<std::string> MoeAdapterNames() {
  std::vector<std::string> out;
  for (const MoeAdapter& a : kAdapters) out.push_back(a.name);
  return out;
}

Result<MoeConfig> ParseMoeConfig(const MoeAdapter& a, std::string_view text,
                                 std::string_view source) {
  CKPT_ASSIGN_OR_RETURN(json j, ParseStrictJson(text, source, 64));
  if (!j.is_object()) return InvalidArgumentError(std::string(source) + ": not a JSON object");
  auto count = [&](const std::string& key) -> Result<std::optional<uint32_t>> {
    if (!j.contains(key)) return std::optional<uint32_t>();
    const json& v = j[key];
    if (!v.is_number_unsigned() || v.get<uint64_t>() == 0 || v.get<uint64_t>() > 1'000'000) {
      return InvalidArgumentError(std::string(source) + ": " + key + " = " + v.dump() +
                                  " is not a positive count");
    }
    return std::optional<uint32_t>(v.get<uint32_t>());
  };
  MoeConfig c;
  CKPT_ASSIGN_OR_RETURN(std::optional<uint32_t> layers, count("num_hidden_layers"));
  if (!layers) return InvalidArgumentError(std::string(source) + ": no num_hidden_layers");
  c.num_layers = *layers;
  for (const std::string& key : a.expert_count_keys) {
    CKPT_ASSIGN_OR_RETURN(std::optional<uint32_t> e, count(key));
    if (e) {
      c.num_experts = *e;
      break;
    }
  }
  if (c.num_experts == 0) {
    return InvalidArgumentError(std::string(source) + ": no " + a.expert_count_keys.front() +
                                " (the " + a.name + " expert count)");
  }
  return c;
}

std::string GroupedGateUpName(uint32_t layer) {
  return std::string(kLayersPrefix) + std::to_string(layer) + ".mlp.experts.gate_and_up_projs";
}
std::string GroupedDownName(uint32_t layer) {
  return std::string(kLayersPrefix) + std::to_string(layer) + ".mlp.experts.down_projs";
}
std::string HfExpertName(const MoeAdapter& a, uint32_t layer, uint32_t expert, MoeProj proj) {
  const std::string& p = proj == MoeProj::kGate ? a.gate : proj == MoeProj::kUp ? a.up : a.down;
  return std::string(kLayersPrefix) + std::to_string(layer) + "." + a.experts_infix + "." +
         std::to_string(expert) + "." + p + ".weight";
}

Result<MoePlan> PlanHfToGrouped(const MoeAdapter& a, const MoeConfig& config,
                                const std::map<std::string, TensorMeta>& hf,
                                std::string_view source) {
  MoePlan plan;
  const std::string where(source);
  // Per layer: which (expert, projection) pairs are present.
  std::map<uint32_t, std::set<std::pair<uint32_t, int>>> seen;
  for (const auto& [name, meta] : hf) {
    std::optional<ExpertKey> k = ParseExpertName(a, name);
    if (!k) {
      if (ParseGroupedName(name)) {
        return InvalidArgumentError(where + ": '" + name + "' is already a grouped expert tensor");
      }
      plan.passthrough.push_back(name);
      plan.converted[name] = meta;
      continue;
    }
    if (k->layer >= config.num_layers) {
      return InvalidArgumentError(
          where + ": '" + name + "' is in layer " + std::to_string(k->layer) +
          " but config.json says num_hidden_layers = " + std::to_string(config.num_layers));
    }
    if (k->expert >= config.num_experts) {
      return InvalidArgumentError(where + ": '" + name + "' is expert " +
                                  std::to_string(k->expert) + " but config.json says " +
                                  a.expert_count_keys.front() + " = " +
                                  std::to_string(config.num_experts));
    }
    if (meta.shape.rank() != 2) {
      return InvalidArgumentError(where + ": expert tensor '" + name + "' has shape " +
                                  meta.shape.ToString() + ", not a matrix");
    }
    // gate/up are [inter, dim], down is [dim, inter].
    const uint64_t inter = k->proj == MoeProj::kDown ? meta.shape[1] : meta.shape[0];
    const uint64_t dim = k->proj == MoeProj::kDown ? meta.shape[0] : meta.shape[1];
    auto [it, fresh] = plan.layers.emplace(k->layer, MoeLayer{k->layer, dim, inter, meta.dtype});
    const MoeLayer& L = it->second;
    if (!fresh && (L.dim != dim || L.inter != inter || L.dtype != meta.dtype)) {
      return InvalidArgumentError(
          where + ": expert tensor '" + name + "' is " + std::string(DTypeName(meta.dtype)) + " " +
          meta.shape.ToString() + " but layer " + std::to_string(k->layer) + "'s experts are " +
          std::string(DTypeName(L.dtype)) + " with hidden " + std::to_string(L.dim) +
          " and expert size " + std::to_string(L.inter));
    }
    seen[k->layer].insert({k->expert, static_cast<int>(k->proj)});
  }
  for (const auto& [layer, L] : plan.layers) {
    const auto& got = seen[layer];
    if (got.size() != 3ull * config.num_experts) {
      for (uint32_t e = 0; e < config.num_experts; ++e) {
        for (MoeProj p : {MoeProj::kGate, MoeProj::kUp, MoeProj::kDown}) {
          if (!got.count({e, static_cast<int>(p)})) {
            return InvalidArgumentError(
                where + ": layer " + std::to_string(layer) + " lacks '" +
                HfExpertName(a, layer, e, p) + "' (config.json says " +
                a.expert_count_keys.front() + " = " + std::to_string(config.num_experts) +
                "; the checkpoint has " + std::to_string(got.size()) + " expert tensors there)");
          }
        }
      }
    }
    const uint64_t E = config.num_experts;
    plan.converted[GroupedGateUpName(layer)] = TensorMeta{L.dtype, Shape({E, L.dim, 2 * L.inter})};
    plan.converted[GroupedDownName(layer)] = TensorMeta{L.dtype, Shape({E, L.inter, L.dim})};
  }
  if (plan.layers.empty()) {
    return InvalidArgumentError(where + ": no " + a.name +
                                " expert tensors (expected names like '" +
                                HfExpertName(a, 0, 0, MoeProj::kGate) + "')");
  }
  return plan;
}

Result<MoePlan> PlanGroupedToHf(const MoeAdapter& a, const MoeConfig& config,
                                const std::map<std::string, TensorMeta>& grouped,
                                std::string_view source) {
  MoePlan plan;
  const std::string where(source);
  std::map<uint32_t, int> parts;
  for (const auto& [name, meta] : grouped) {
    auto g = ParseGroupedName(name);
    if (!g) {
      if (ParseExpertName(a, name)) {
        return InvalidArgumentError(where + ": '" + name +
                                    "' is a per-expert tensor, not a grouped one");
      }
      plan.passthrough.push_back(name);
      plan.converted[name] = meta;
      continue;
    }
    const auto [layer, gate_up] = *g;
    if (layer >= config.num_layers) {
      return InvalidArgumentError(
          where + ": '" + name + "' is in layer " + std::to_string(layer) +
          " but config.json says num_hidden_layers = " + std::to_string(config.num_layers));
    }
    if (meta.shape.rank() != 3 || meta.shape[0] != config.num_experts ||
        (gate_up && meta.shape[2] % 2 != 0)) {
      return InvalidArgumentError(
          where + ": grouped tensor '" + name + "' has shape " + meta.shape.ToString() +
          "; expected [" + std::to_string(config.num_experts) + " (" + a.expert_count_keys.front() +
          "), " + (gate_up ? "dim, 2 x inter]" : "inter, dim]"));
    }
    const uint64_t dim = gate_up ? meta.shape[1] : meta.shape[2];
    const uint64_t inter = gate_up ? meta.shape[2] / 2 : meta.shape[1];
    auto [it, fresh] = plan.layers.emplace(layer, MoeLayer{layer, dim, inter, meta.dtype});
    if (!fresh &&
        (it->second.dim != dim || it->second.inter != inter || it->second.dtype != meta.dtype)) {
      return InvalidArgumentError(
          where + ": '" + name + "' disagrees with its layer's other grouped tensor (" +
          std::string(DTypeName(meta.dtype)) + " " + meta.shape.ToString() + ")");
    }
    parts[layer] |= gate_up ? 1 : 2;
  }
  const uint64_t expert_tensors = 3ull * plan.layers.size() * config.num_experts;
  if (expert_tensors > kMaxMoeExpertTensors) {
    return InvalidArgumentError(where + ": " + std::to_string(plan.layers.size()) +
                                " grouped layers of " + std::to_string(config.num_experts) +
                                " experts (" + a.expert_count_keys.front() + ") expand to " +
                                std::to_string(expert_tensors) + " per-expert tensors, more than " +
                                std::to_string(kMaxMoeExpertTensors));
  }
  for (const auto& [layer, L] : plan.layers) {
    if (parts[layer] != 3) {
      return InvalidArgumentError(
          where + ": layer " + std::to_string(layer) + " lacks '" +
          (parts[layer] == 1 ? GroupedDownName(layer) : GroupedGateUpName(layer)) + "'");
    }
    for (uint32_t e = 0; e < config.num_experts; ++e) {
      plan.converted[HfExpertName(a, layer, e, MoeProj::kGate)] =
          TensorMeta{L.dtype, Shape({L.inter, L.dim})};
      plan.converted[HfExpertName(a, layer, e, MoeProj::kUp)] =
          TensorMeta{L.dtype, Shape({L.inter, L.dim})};
      plan.converted[HfExpertName(a, layer, e, MoeProj::kDown)] =
          TensorMeta{L.dtype, Shape({L.dim, L.inter})};
    }
  }
  if (plan.layers.empty()) return InvalidArgumentError(where + ": no grouped expert tensors");
  return plan;
}

Result<StateDict> HfViewsOfGrouped(const MoeAdapter& a, const MoeConfig& config,
                                   const StateDict& grouped) {
  StateDict out;
  out.json = grouped.json;
  out.bytes = grouped.bytes;
  for (const DistTensor& t : grouped.tensors) {
    auto g = ParseGroupedName(t.fqn);
    if (!g) {
      out.tensors.push_back(t);
      continue;
    }
    const auto [layer, gate_up] = *g;
    const Shape& G = t.global_shape;
    if (G.rank() != 3 || G[0] != config.num_experts || (gate_up && G[2] % 2 != 0)) {
      return InvalidArgumentError("grouped tensor '" + t.fqn + "' has shape " + G.ToString() +
                                  " but config says " + std::to_string(config.num_experts) +
                                  " experts");
    }
    if (DTypeBits(t.dtype) % 8 != 0)
      return InvalidArgumentError("grouped tensor '" + t.fqn + "': sub-byte dtype");
    const uint64_t esz = DTypeBits(t.dtype) / 8;
    const uint64_t inter = gate_up ? G[2] / 2 : G[1];
    const uint64_t dim = gate_up ? G[1] : G[2];
    const uint32_t E = config.num_experts;
    // HF tensors of this grouped tensor, all experts (some may get no chunk here).
    std::vector<DistTensor> gate(E), up(E), down(E);
    for (uint32_t e = 0; e < E; ++e) {
      if (gate_up) {
        gate[e] =
            DistTensor{HfExpertName(a, layer, e, MoeProj::kGate), t.dtype, Shape({inter, dim}), {}};
        up[e] =
            DistTensor{HfExpertName(a, layer, e, MoeProj::kUp), t.dtype, Shape({inter, dim}), {}};
      } else {
        down[e] =
            DistTensor{HfExpertName(a, layer, e, MoeProj::kDown), t.dtype, Shape({dim, inter}), {}};
      }
    }
    for (const LocalChunk& c : t.chunks) {
      if (c.offsets.size() != 3 || c.shape.rank() != 3 ||
          (!c.strides.empty() && c.strides.size() != 3)) {
        return InvalidArgumentError("grouped tensor '" + t.fqn + "': a chunk is not 3-dimensional");
      }
      for (size_t d = 0; d < 3; ++d) {
        if (c.offsets[d] + c.shape[d] > G[d]) {
          return InvalidArgumentError("grouped tensor '" + t.fqn + "': a chunk lies outside " +
                                      G.ToString());
        }
      }
      std::vector<int64_t> cs = c.strides;
      if (cs.empty()) {
        cs = {static_cast<int64_t>(c.shape[1] * c.shape[2]), static_cast<int64_t>(c.shape[2]), 1};
      }
      const uint64_t r0 = c.offsets[1], nr = c.shape[1], c0 = c.offsets[2], nc = c.shape[2];
      for (uint64_t k = 0; k < c.shape[0]; ++k) {
        const uint64_t e = c.offsets[0] + k;
        std::byte* base = c.data + static_cast<int64_t>(k) * cs[0] * static_cast<int64_t>(esz);
        if (nr == 0 || nc == 0) continue;
        if (!gate_up) {
          // down_projs[e] is [inter, dim]; HF down is [dim, inter].
          down[e].chunks.push_back(LocalChunk{{c0, r0}, Shape({nc, nr}), base, {cs[2], cs[1]}});
          continue;
        }
        // Columns [c0, c0 + nc) of [gate | up].
        const uint64_t g0 = std::min(c0, inter), g1 = std::min(c0 + nc, inter);
        if (g1 > g0) {
          gate[e].chunks.push_back(
              LocalChunk{{g0, r0},
                         Shape({g1 - g0, nr}),
                         base + static_cast<int64_t>(g0 - c0) * cs[2] * static_cast<int64_t>(esz),
                         {cs[2], cs[1]}});
        }
        const uint64_t u0 = std::max(c0, inter), u1 = c0 + nc;
        if (u1 > u0) {
          up[e].chunks.push_back(
              LocalChunk{{u0 - inter, r0},
                         Shape({u1 - u0, nr}),
                         base + static_cast<int64_t>(u0 - c0) * cs[2] * static_cast<int64_t>(esz),
                         {cs[2], cs[1]}});
        }
      }
    }
    for (uint32_t e = 0; e < E; ++e) {
      if (gate_up) {
        out.tensors.push_back(std::move(gate[e]));
        out.tensors.push_back(std::move(up[e]));
      } else {
        out.tensors.push_back(std::move(down[e]));
      }
    }
  }
  return out;
}

Result<std::unique_ptr<MoeHfModel>> MoeHfModel::Create(Model& grouped, MoeAdapter adapter,
                                                       MoeConfig config) {
  CKPT_RETURN_IF_ERROR(HfViewsOfGrouped(adapter, config, grouped.state_dict()).status());
  return std::unique_ptr<MoeHfModel>(new MoeHfModel(grouped, std::move(adapter), config));
}

StateDict& MoeHfModel::state_dict() {
  Result<StateDict> v = HfViewsOfGrouped(adapter_, config_, grouped_.state_dict());
  if (!v.ok()) {
    Log(LogLevel::kError, "MoE " + adapter_.name + " views: " + v.status().ToString() +
                              "; using the grouped state dict unconverted");
    return grouped_.state_dict();
  }
  views_ = std::move(*v);
  return views_;
}

// ---------------------------------------------------------------- file conversion

namespace {

// Bytes of a whole tensor: a zero-copy view where the file can be mapped,
// else read into `fallback`.
Result<std::span<const std::byte>> TensorBytes(const SafetensorsFile& f, const std::string& name,
                                               std::vector<std::byte>& fallback,
                                               uint64_t* transient) {
  Result<TensorView> v = f.View(name);
  if (v.ok()) return v->data;
  const TensorInfo* info = f.header().Find(name);
  if (info == nullptr) return NotFoundError(f.path() + ": no tensor '" + name + "'");
  fallback.resize(info->nbytes());
  *transient += info->nbytes();
  CKPT_RETURN_IF_ERROR(f.ReadTensor(name, fallback));
  return std::span<const std::byte>(fallback);
}

// The bytes of each output tensor of a conversion, written through the
// output file's writer: passthrough tensors copied in pieces, grouped
// tensors assembled expert by expert, HF expert tensors cut from their
// grouped tensor's expert block. Buffers are reused from one tensor to the
// next; `stats` records the memory they take.
class MoeFiller {
 public:
  MoeFiller(const HfModelDir& in, const MoeAdapter& a, const MoeConfig& config, const MoePlan& plan,
            MoeDirection direction, const MoeConvertOptions& o, MoeConvertStats* stats)
      : in_(in),
        a_(a),
        config_(config),
        plan_(plan),
        direction_(direction),
        o_(o),
        stats_(stats),
        passthrough_(plan.passthrough.begin(), plan.passthrough.end()) {}

  Status Fill(const TensorSpec& s, SafetensorsWriter& w) {
    const uint64_t nbytes = s.shape.NumBytes(s.dtype).value();
    uint64_t transient = 0;
    if (passthrough_.count(s.name)) {
      CKPT_RETURN_IF_ERROR(CopyPassthrough(s, nbytes, w));
    } else if (direction_ == MoeDirection::kToGrouped) {
      CKPT_RETURN_IF_ERROR(FillGrouped(s, w, &transient));
    } else {
      CKPT_RETURN_IF_ERROR(FillHfExpert(s, w, &transient));
    }
    stats_->peak_transient = std::max(stats_->peak_transient, transient);
    ++stats_->tensors_out;
    stats_->bytes += nbytes;
    return Status();
  }

 private:
  const SafetensorsFile& Source(const std::string& name) const {
    return *in_.files()[in_.tensors().at(name).file];
  }

  Status CopyPassthrough(const TensorSpec& s, uint64_t nbytes, SafetensorsWriter& w) {
    const uint64_t unit = std::max<uint64_t>(DTypeBits(s.dtype) / 8, 1);
    const uint64_t piece = std::max(unit, o_.buffer_size / unit * unit);
    for (uint64_t off = 0; off < nbytes; off += piece) {
      const uint64_t n = std::min(piece, nbytes - off);
      if (buf_.size() < n) buf_.resize(n);
      CKPT_RETURN_IF_ERROR(
          Source(s.name).ReadRange(s.name, off, std::span<std::byte>(buf_.data(), n)));
      CKPT_RETURN_IF_ERROR(w.Write(s.name, off, std::span<const std::byte>(buf_.data(), n)));
    }
    stats_->copy_buffer = std::max<uint64_t>(stats_->copy_buffer, buf_.size());
    return Status();
  }

  // A grouped tensor, one expert's block at a time: [dim, 2 inter] from the
  // gate and up projections, or [inter, dim] from the down projection.
  Status FillGrouped(const TensorSpec& s, SafetensorsWriter& w, uint64_t* transient) {
    const uint64_t esz = DTypeBits(s.dtype) / 8;
    auto g = ParseGroupedName(s.name);
    const MoeLayer& L = plan_.layers.at(g->first);
    const uint64_t expert_bytes = L.dim * L.inter * esz;
    const uint64_t block = g->second ? 2 * expert_bytes : expert_bytes;
    out_.resize(block);
    *transient = block;
    for (uint32_t e = 0; e < config_.num_experts; ++e) {
      uint64_t fallback = 0;
      if (g->second) {
        for (int half = 0; half < 2; ++half) {
          const std::string hn =
              HfExpertName(a_, L.layer, e, half == 0 ? MoeProj::kGate : MoeProj::kUp);
          CKPT_ASSIGN_OR_RETURN(std::span<const std::byte> src,
                                TensorBytes(Source(hn), hn, fb1_, &fallback));
          // src [inter, dim] → block[:, half·inter : (half+1)·inter].
          Transpose(src.data(), L.dim, L.inter, L.dim, out_.data() + half * L.inter * esz,
                    2 * L.inter, esz);
        }
      } else {
        const std::string hn = HfExpertName(a_, L.layer, e, MoeProj::kDown);
        CKPT_ASSIGN_OR_RETURN(std::span<const std::byte> src,
                              TensorBytes(Source(hn), hn, fb1_, &fallback));
        Transpose(src.data(), L.inter, L.dim, L.inter, out_.data(), L.dim,
                  esz);  // [dim, inter] → [inter, dim]
      }
      *transient = std::max(*transient, block + std::min(fallback, expert_bytes));
      CKPT_RETURN_IF_ERROR(w.Write(s.name, e * block, out_));
    }
    return Status();
  }

  // An HF expert tensor from its grouped tensor's expert block.
  Status FillHfExpert(const TensorSpec& s, SafetensorsWriter& w, uint64_t* transient) {
    const uint64_t esz = DTypeBits(s.dtype) / 8;
    const std::optional<ExpertKey> k = ParseExpertName(a_, s.name);
    const uint32_t layer = k->layer, expert = k->expert;
    const MoeProj proj = k->proj;
    const MoeLayer& L = plan_.layers.at(layer);
    const std::string gn =
        proj == MoeProj::kDown ? GroupedDownName(layer) : GroupedGateUpName(layer);
    const uint64_t expert_bytes = L.dim * L.inter * esz;
    const uint64_t block = proj == MoeProj::kDown ? expert_bytes : 2 * expert_bytes;
    out_.resize(expert_bytes);
    *transient = expert_bytes;
    const SafetensorsFile& sf = Source(gn);
    Result<TensorView> v = sf.View(gn);
    std::span<const std::byte> blk;
    if (v.ok()) {
      blk = v->data.subspan(expert * block, block);
    } else {
      fb2_.resize(block);
      *transient += block;
      CKPT_RETURN_IF_ERROR(sf.ReadRange(gn, expert * block, fb2_));
      blk = fb2_;
    }
    if (proj == MoeProj::kDown) {
      Transpose(blk.data(), L.dim, L.inter, L.dim, out_.data(), L.inter,
                esz);  // [inter, dim] → [dim, inter]
    } else {
      const uint64_t col = proj == MoeProj::kGate ? 0 : L.inter;
      Transpose(blk.data() + col * esz, 2 * L.inter, L.dim, L.inter, out_.data(), L.dim, esz);
    }
    return w.Write(s.name, 0, out_);
  }

  const HfModelDir& in_;
  const MoeAdapter& a_;
  const MoeConfig& config_;
  const MoePlan& plan_;
  const MoeDirection direction_;
  const MoeConvertOptions& o_;
  MoeConvertStats* stats_;
  const std::set<std::string> passthrough_;
  std::vector<std::byte> buf_, out_, fb1_, fb2_;
};

}  // namespace

Status ConvertMoeDir(Storage& storage, const std::string& in_dir, const std::string& out_dir,
                     const MoeAdapter& a, MoeDirection direction, const MoeConvertOptions& o,
                     MoeConvertStats* stats_out) {
  const std::string what = "converting " + in_dir + " into " + out_dir + " (" + a.name +
                           " experts, to " +
                           (direction == MoeDirection::kToGrouped ? "grouped" : "hf") + ")";
  const std::string cfg_path = JoinPath(in_dir, "config.json");
  Result<std::string> cfg_text = ReadFileToString(storage, cfg_path);
  if (!cfg_text.ok())
    return cfg_text.status().WithContext(what +
                                         ": the expert and layer counts come from config.json");
  CKPT_ASSIGN_OR_RETURN(MoeConfig config, ParseMoeConfig(a, *cfg_text, cfg_path));
  CKPT_ASSIGN_OR_RETURN(HfModelDir in, HfModelDir::Open(storage, in_dir));
  std::map<std::string, TensorMeta> metas;
  for (const auto& [name, loc] : in.tensors())
    metas[name] = TensorMeta{loc.info->dtype, loc.info->shape};
  Result<MoePlan> planned = direction == MoeDirection::kToGrouped
                                ? PlanHfToGrouped(a, config, metas, in_dir)
                                : PlanGroupedToHf(a, config, metas, in_dir);
  CKPT_RETURN_IF_ERROR(planned.status().WithContext(what));
  const MoePlan& plan = *planned;

  MoeConvertStats stats;
  stats.tensors_in = in.tensors().size();
  for (const auto& [l, L] : plan.layers) {
    stats.largest_expert =
        std::max(stats.largest_expert, L.dim * L.inter * (DTypeBits(L.dtype) / 8));
  }
  std::vector<TensorSpec> specs;
  for (const auto& [name, meta] : plan.converted)
    specs.push_back(TensorSpec{name, meta.dtype, meta.shape});
  MoeFiller filler(in, a, config, plan, direction, o, &stats);
  auto fill = [&](const TensorSpec& s, SafetensorsWriter& w) { return filler.Fill(s, w); };
  auto build = [&](const std::string& staging) -> Status {
    HfIndex index;
    CKPT_RETURN_IF_ERROR(
        WriteModelFiles(storage, staging, specs, o.max_shard_size, fill, &index, &stats.files));
    std::set<std::string> weights{std::string(kHfSingleFileName)};
    for (const auto& f : in.files()) weights.insert(std::string(Basename(f->path())));
    return FinishConvertedDir(storage, in_dir, weights, staging, index);
  };
  CKPT_RETURN_IF_ERROR(BuildDirAtomically(storage, out_dir, build).WithContext(what));
  if (stats_out) *stats_out = stats;
  return Status();
}

}  // namespace ckpt
