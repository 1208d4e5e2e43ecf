// CheckpointingConfig: parsing and validation.
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "ckpt/checkpointer.h"
#include "ckpt/consolidate.h"
#include "format/json_util.h"

namespace ckpt {
namespace {

using json = nlohmann::json;

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

Status FieldError(std::string_view field, const std::string& value, std::string_view expected) {
  return InvalidArgumentError("checkpoint config: " + std::string(field) + " = " + value + ": " +
                              std::string(expected));
}

}  // namespace

Result<ConsolidationMode> ParseConsolidationMode(std::string_view text) {
  const std::string s = Lower(text);
  if (s == "never" || s == "false" || s == "no" || s == "0") return ConsolidationMode::kNever;
  if (s == "final") return ConsolidationMode::kFinal;
  if (s == "every" || s == "true" || s == "yes" || s == "1") return ConsolidationMode::kEvery;
  return FieldError("save_consolidated", "'" + Printable(text) + "'",
                    "expected never, final or every (or a boolean)");
}

std::string_view ConsolidationModeName(ConsolidationMode mode) {
  switch (mode) {
    case ConsolidationMode::kNever:
      return "never";
    case ConsolidationMode::kFinal:
      return "final";
    case ConsolidationMode::kEvery:
      return "every";
  }
  return "?";
}

Status ValidateConfig(const CheckpointingConfig& c) {
  if (!c.enabled) return Status();
  if (c.checkpoint_dir.empty())
    return FieldError("checkpoint_dir", "''", "a directory is required");
  if (c.model_save_format == "torch_save") {
    return FieldError("model_save_format", "'torch_save'",
                      "ckpt writes the DCP Hugging Face layout only; use 'safetensors'");
  }
  if (c.model_save_format != "safetensors") {
    return FieldError("model_save_format", "'" + Printable(c.model_save_format) + "'",
                      "expected 'safetensors'");
  }
  if (c.max_recent_checkpoints && *c.max_recent_checkpoints <= 0) {
    return FieldError("max_recent_checkpoints", std::to_string(*c.max_recent_checkpoints),
                      "must be at least 1 (leave it unset to keep every checkpoint)");
  }
  if (c.consolidation_timeout.count() <= 0) {
    return FieldError("consolidation_timeout",
                      std::to_string(c.consolidation_timeout.count()) + " ms", "must be positive");
  }
  if (c.timeout.count() <= 0) {
    return FieldError("timeout", std::to_string(c.timeout.count()) + " ms", "must be positive");
  }
  if (c.consolidated_max_shard_size == 0) {
    return FieldError("consolidated_max_shard_size", "0", "must be positive");
  }
  if (c.staging_budget != 0 && c.staging_budget < (1ull << 20)) {
    return FieldError("staging_budget", std::to_string(c.staging_budget),
                      "must be 0 (the whole state) or at least 1 MiB");
  }
  if (c.is_peft && c.save_consolidated != ConsolidationMode::kNever) {
    return FieldError("save_consolidated",
                      "'" + std::string(ConsolidationModeName(c.save_consolidated)) + "'",
                      "PEFT runs save an adapter, which is never consolidated; use 'never'");
  }
  if (c.best_metric_key.empty()) return FieldError("best_metric_key", "''", "must name a metric");
  for (const std::string& p : c.skip_task_head_prefixes_for_base_model) {
    if (p.empty())
      return FieldError("skip_task_head_prefixes_for_base_model", "''", "empty prefix");
  }
  return Status();
}

namespace {

Status WantBool(const std::string& k, const json& v, bool* out) {
  if (!v.is_boolean()) return FieldError(k, v.dump(), "expected true or false");
  *out = v.get<bool>();
  return Status();
}

Status WantString(const std::string& k, const json& v, std::string* out) {
  if (!v.is_string()) return FieldError(k, v.dump(), "expected a string");
  *out = v.get<std::string>();
  return Status();
}

Status WantSeconds(const std::string& k, const json& v, Timeout* out) {
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0 ||
      v.get<double>() > 1e9) {
    return FieldError(k, v.dump(), "expected a positive number of seconds");
  }
  *out = Timeout(static_cast<int64_t>(v.get<double>() * 1000));
  return Status();
}

Status WantBytes(const std::string& k, const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return Status();
  }
  if (!v.is_string()) return FieldError(k, v.dump(), "expected a byte count such as \"4GiB\"");
  Result<uint64_t> n = ParseByteSize(v.get<std::string>());
  if (!n.ok()) return FieldError(k, v.dump(), n.status().message());
  *out = *n;
  return Status();
}

// The fields with a type of their own; *known is false for any other key.
Status ParseOtherField(const std::string& k, const json& v, CheckpointingConfig& c, bool* known) {
  *known = true;
  if (k == "save_consolidated") {
    if (v.is_boolean()) {
      c.save_consolidated = v.get<bool>() ? ConsolidationMode::kEvery : ConsolidationMode::kNever;
      return Status();
    }
    if (!v.is_string())
      return FieldError(k, v.dump(), "expected never, final or every (or a boolean)");
    CKPT_ASSIGN_OR_RETURN(c.save_consolidated, ParseConsolidationMode(v.get<std::string>()));
    return Status();
  }
  if (k == "max_recent_checkpoints") {
    if (v.is_null()) {
      c.max_recent_checkpoints.reset();
    } else if (v.is_number_integer() && v.get<int64_t>() > 0 && v.get<int64_t>() <= 1000000) {
      c.max_recent_checkpoints = static_cast<int>(v.get<int64_t>());
    } else {
      return FieldError(k, v.dump(),
                        "must be an integer of at least 1 (or null to keep every checkpoint)");
    }
    return Status();
  }
  if (k == "skip_task_head_prefixes_for_base_model") {
    if (!v.is_array()) return FieldError(k, v.dump(), "expected a list of strings");
    for (const json& e : v) {
      if (!e.is_string()) return FieldError(k, v.dump(), "expected a list of strings");
      c.skip_task_head_prefixes_for_base_model.push_back(e.get<std::string>());
    }
    return Status();
  }
  *known = false;
  return Status();
}

}  // namespace

Result<CheckpointingConfig> ParseCheckpointingConfig(std::string_view json_text) {
  CKPT_ASSIGN_OR_RETURN(json j, ParseStrictJson(json_text, "checkpoint config", 8));
  if (!j.is_object()) return InvalidArgumentError("checkpoint config: expected a JSON object");
  CheckpointingConfig c;
  // Fields by type; strings marked nullable also accept null.
  const std::map<std::string_view, bool*> bools = {
      {"enabled", &c.enabled},
      {"is_peft", &c.is_peft},
      {"is_async", &c.is_async},
      {"wait_for_staging", &c.wait_for_staging},
      {"single_rank_consolidation", &c.single_rank_consolidation},
      {"diffusers_compatible", &c.diffusers_compatible},
      {"dequantize_base_fp8", &c.dequantize_base_fp8}};
  const std::map<std::string_view, std::pair<std::string*, bool>> strings = {
      {"checkpoint_dir", {&c.checkpoint_dir, false}},
      {"model_save_format", {&c.model_save_format, false}},
      {"model_cache_dir", {&c.model_cache_dir, false}},
      {"model_repo_id", {&c.model_repo_id, true}},
      {"staging_dir", {&c.staging_dir, true}},
      {"best_metric_key", {&c.best_metric_key, false}}};
  const std::map<std::string_view, Timeout*> seconds = {
      {"consolidation_timeout_s", &c.consolidation_timeout}, {"timeout_s", &c.timeout}};
  const std::map<std::string_view, uint64_t*> sizes = {
      {"staging_budget", &c.staging_budget},
      {"consolidated_max_shard_size", &c.consolidated_max_shard_size}};
  for (const auto& [k, v] : j.items()) {
    Status s;
    bool known = true;
    if (auto b = bools.find(k); b != bools.end()) {
      s = WantBool(k, v, b->second);
    } else if (auto t = strings.find(k); t != strings.end()) {
      s = v.is_null() && t->second.second ? Status() : WantString(k, v, t->second.first);
    } else if (auto d = seconds.find(k); d != seconds.end()) {
      s = WantSeconds(k, v, d->second);
    } else if (auto z = sizes.find(k); z != sizes.end()) {
      s = WantBytes(k, v, z->second);
    } else {
      s = ParseOtherField(k, v, c, &known);
    }
    if (!known)
      return InvalidArgumentError("checkpoint config: unknown field '" + Printable(k) + "'");
    CKPT_RETURN_IF_ERROR(s);
  }
  CKPT_RETURN_IF_ERROR(ValidateConfig(c));
  return c;
}

}  // namespace ckpt
