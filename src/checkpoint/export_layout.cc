#include "checkpoint/export_layout.h"

#include <algorithm>

#include "ckpt/hf.h"

namespace ckpt {

Result<ExportLayout> ComputeExportLayout(const std::vector<ShardedTensorInfo>& tensors,
                                         const BaseModelLayout& base, uint64_t max_shard_size) {
  ExportLayout out;
  std::vector<std::string> keys;
  std::vector<uint64_t> sizes;
  for (const ShardedTensorInfo& t : tensors) {
    auto b = base.dtypes.find(t.fqn);
    const DType d = b != base.dtypes.end() ? b->second : t.dtype;
    const std::string_view torch = TorchDTypeName(d);
    out.dtypes[t.fqn] = torch.empty() ? std::string(DTypeName(d)) : "torch." + std::string(torch);
    CKPT_ASSIGN_OR_RETURN(uint64_t bytes, t.global.NumBytes(d));
    keys.push_back(t.fqn);
    sizes.push_back(bytes);
    out.total_bytes += bytes;
  }
  if (!base.files.empty()) {
    uint32_t last = 1;
    for (const auto& [fqn, f] : base.files) last = std::max(last, f);
    for (const std::string& k : keys) {
      auto it = base.files.find(k);
      out.files[k] = it != base.files.end() ? it->second : last;
    }
    return out;
  }
  std::vector<size_t> order(keys.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return NaturalLess(keys[a], keys[b]); });
  std::vector<uint64_t> ordered;
  for (size_t i : order) ordered.push_back(sizes[i]);
  const std::vector<uint32_t> file_of = DivideBySize(ordered, max_shard_size);
  for (size_t i = 0; i < order.size(); ++i) out.files[keys[order[i]]] = file_of[i];
  return out;
}

std::string ConsolidateScript(bool diffusers, std::string_view base_model_dir) {
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
  if (diffusers) script += " --diffusers";
  if (!base_model_dir.empty()) script += " --base " + ShellQuote(base_model_dir);
  script += " \"$@\"\n";
  return script;
}

std::string ShellQuote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace ckpt
