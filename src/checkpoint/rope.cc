// RoPE inverse frequencies from a Hugging Face config.json: the buffer
// models recompute after a load because checkpoints do not hold it.
#include <cmath>
#include <nlohmann/json.hpp>
#include <numbers>
#include <string>
#include <vector>

#include "ckpt/checkpointer.h"
#include "format/json_util.h"

namespace ckpt {
namespace {

using json = nlohmann::json;

Result<double> Number(const json& obj, const char* key, double fallback, bool required) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (required) return InvalidArgumentError(std::string("config.json: rope needs '") + key + "'");
    return fallback;
  }
  if (!it->is_number() || !std::isfinite(it->get<double>())) {
    return InvalidArgumentError(std::string("config.json: '") + key + "' = " + it->dump() +
                                " is not a number");
  }
  return it->get<double>();
}

}  // namespace

Result<std::vector<float>> RopeInvFreq(std::string_view config_json) {
  CKPT_ASSIGN_OR_RETURN(json c, ParseStrictJson(config_json, "config.json", 64));
  if (!c.is_object()) return InvalidArgumentError("config.json: expected a JSON object");
  CKPT_ASSIGN_OR_RETURN(double theta, Number(c, "rope_theta", 10000.0, false));
  if (theta <= 1.0)
    return InvalidArgumentError("config.json: rope_theta = " + std::to_string(theta) +
                                " must exceed 1");
  double head_dim = 0;
  if (c.contains("head_dim") && !c["head_dim"].is_null()) {
    CKPT_ASSIGN_OR_RETURN(head_dim, Number(c, "head_dim", 0, true));
  } else {
    CKPT_ASSIGN_OR_RETURN(double hidden, Number(c, "hidden_size", 0, true));
    CKPT_ASSIGN_OR_RETURN(double heads, Number(c, "num_attention_heads", 0, true));
    if (heads <= 0)
      return InvalidArgumentError("config.json: num_attention_heads must be positive");
    head_dim = std::floor(hidden / heads);
  }
  CKPT_ASSIGN_OR_RETURN(double partial, Number(c, "partial_rotary_factor", 1.0, false));
  const double dim_f = std::floor(head_dim * partial);
  if (dim_f < 2 || dim_f > 1e6) {
    return InvalidArgumentError("config.json: rotary dimension " + std::to_string(dim_f) +
                                " is out of range");
  }
  const int64_t dim = static_cast<int64_t>(dim_f);

  std::vector<double> inv;
  for (int64_t i = 0; i < dim; i += 2) {
    inv.push_back(1.0 / std::pow(theta, static_cast<double>(i) / static_cast<double>(dim)));
  }

  std::string type = "default";
  auto rs = c.find("rope_scaling");
  if (rs != c.end() && !rs->is_null()) {
    if (!rs->is_object())
      return InvalidArgumentError("config.json: rope_scaling must be an object or null");
    const json* t = nullptr;
    if (auto a = rs->find("rope_type"); a != rs->end())
      t = &*a;
    else if (auto b = rs->find("type"); b != rs->end())
      t = &*b;
    if (t != nullptr) {
      if (!t->is_string())
        return InvalidArgumentError("config.json: rope_scaling type must be a string");
      type = t->get<std::string>();
    }
  }
  if (type == "llama3") {
    CKPT_ASSIGN_OR_RETURN(double factor, Number(*rs, "factor", 0, true));
    CKPT_ASSIGN_OR_RETURN(double low, Number(*rs, "low_freq_factor", 0, true));
    CKPT_ASSIGN_OR_RETURN(double high, Number(*rs, "high_freq_factor", 0, true));
    CKPT_ASSIGN_OR_RETURN(double old_len, Number(*rs, "original_max_position_embeddings", 0, true));
    if (factor <= 0 || low <= 0 || high <= low || old_len <= 0) {
      return InvalidArgumentError(
          "config.json: llama3 rope_scaling needs factor > 0, 0 < low_freq_factor < "
          "high_freq_factor and "
          "original_max_position_embeddings > 0; got " +
          rs->dump());
    }
    const double low_wavelen = old_len / low;
    const double high_wavelen = old_len / high;
    for (double& f : inv) {
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen < high_wavelen) continue;
      if (wavelen > low_wavelen) {
        f /= factor;
      } else {
        const double smooth = (old_len / wavelen - low) / (high - low);
        f = (1 - smooth) * f / factor + smooth * f;
      }
    }
  } else if (type != "default") {
    return InvalidArgumentError("config.json: rope_scaling type '" + Printable(type) +
                                "' is not supported (default and llama3 are)");
  }
  return std::vector<float>(inv.begin(), inv.end());
}

}  // namespace ckpt
