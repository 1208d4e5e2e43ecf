// Subcommands of the `ckpt` executable. Each returns the process exit code:
// 0 on success, 1 when the input is invalid or an operation failed.
#ifndef CKPT_CLI_COMMANDS_H_
#define CKPT_CLI_COMMANDS_H_

#include <cstdint>
#include <string>

#include "ckpt/storage.h"

namespace ckpt::cli {

struct InspectOptions {
  std::string path;
  bool json = false;
};
int RunInspect(const InspectOptions& opts);

struct VerifyOptions {
  std::string path;
  bool quick = false;  // headers and structure only, skip reading tensor data
  bool json = false;
};
int RunVerify(const VerifyOptions& opts);

struct SampleOptions {
  std::string out_dir;
  int layers = 2;
  int hidden = 256;
  int shards = 2;
  int ranks = 0;  // > 0: write a sharded checkpoint saved by this many thread ranks
  uint64_t seed = 1;
};
// Bounds of a sample model, which is generated in memory.
inline constexpr int kMaxSampleLayers = 1024;
inline constexpr int kMaxSampleHidden = 65536;
inline constexpr int kMaxSampleRanks = 1024;
inline constexpr uint64_t kMaxSampleBytes = 4ull << 30;
int RunSample(const SampleOptions& opts);

struct ConsolidateCliOptions {
  std::string in_dir;
  std::string out_dir;
  std::string base;
  std::string cast_dtype;
  std::string max_shard_size = "5GiB";
  uint32_t equal_files = 0;
  unsigned threads = 0;
  bool diffusers = false;
};
int RunConsolidate(const ConsolidateCliOptions& opts);

struct ConvertOptions {
  std::string in;
  std::string out;
  std::string max_shard_size = "5GiB";
  std::string adapter;  // MoE adapter: mixtral, qwen3_moe, deepseek_v3, ...
  std::string to;       // with adapter: grouped | hf
};
// With an adapter: MoE experts per-expert ⇄ grouped. Without: `.bin` model
// directory → safetensors model directory.
int RunConvert(const ConvertOptions& opts);
int RunConvertBin(const ConvertOptions& opts);

// `.bin` files and directories in inspect and verify.
bool IsTorchBinTarget(Storage& storage, const std::string& path);
int InspectTorchBin(const InspectOptions& opts);
int VerifyTorchBin(const VerifyOptions& opts);

struct DemoOptions {
  int layers = 6;
  int hidden = 768;
  int intermediate = 2048;
  int vocab = 32000;
  int heads = 12;
  int ranks = 4;         // the first job
  int resume_ranks = 2;  // the job that resumes
  int steps = 8;
  int save_every = 3;
  uint64_t seed = 1;
  std::string dir;  // keep everything here (default: a temporary directory)
  bool json = false;
  bool mpi = false;
  std::string phase;  // with --mpi: train | resume
};
int RunDemo(const DemoOptions& opts);

}  // namespace ckpt::cli

#endif  // CKPT_CLI_COMMANDS_H_
