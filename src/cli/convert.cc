// `ckpt convert`: .bin → safetensors, or MoE experts between layouts.
#include <cstdio>

#include "ckpt/consolidate.h"
#include "ckpt/moe.h"
#include "cli/commands.h"
#include "cli/target.h"

namespace ckpt::cli {

int RunConvert(const ConvertOptions& opts) {
  if (opts.adapter.empty()) {
    if (!opts.to.empty()) {
      std::fprintf(stderr, "ckpt convert: --to needs --adapter\n");
      return 1;
    }
    return RunConvertBin(opts);
  }
  Result<MoeAdapter> adapter = FindMoeAdapter(opts.adapter);
  if (!adapter.ok()) {
    std::fprintf(stderr, "ckpt convert: --adapter: %s\n", adapter.status().ToString().c_str());
    return 1;
  }
  if (opts.to != "grouped" && opts.to != "hf") {
    std::fprintf(stderr, "ckpt convert: --to '%s': expected grouped or hf\n", opts.to.c_str());
    return 1;
  }
  MoeConvertOptions o;
  Result<uint64_t> size = ParseByteSize(opts.max_shard_size);
  if (!size.ok()) {
    std::fprintf(stderr, "ckpt convert: --max-shard-size: %s\n", size.status().ToString().c_str());
    return 1;
  }
  o.max_shard_size = *size;
  MoeConvertStats stats;
  Status s = ConvertMoeDir(*PosixStorage(), opts.in, opts.out, *adapter,
                           opts.to == "grouped" ? MoeDirection::kToGrouped : MoeDirection::kToHf, o,
                           &stats);
  if (!s.ok()) {
    std::fprintf(stderr, "ckpt convert: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf(
      "converted %llu tensors into %llu (%s, %u file%s) in %s; one expert projection %s, largest "
      "buffer per expert %s\n",
      static_cast<unsigned long long>(stats.tensors_in),
      static_cast<unsigned long long>(stats.tensors_out), HumanBytes(stats.bytes).c_str(),
      stats.files, stats.files == 1 ? "" : "s", opts.out.c_str(),
      HumanBytes(stats.largest_expert).c_str(), HumanBytes(stats.peak_transient).c_str());
  return 0;
}

}  // namespace ckpt::cli
