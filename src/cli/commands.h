// Subcommands of the `ckpt` executable. Each returns the process exit code:
// 0 on success, 1 when the input is invalid or an operation failed.
#ifndef CKPT_CLI_COMMANDS_H_
#define CKPT_CLI_COMMANDS_H_

#include <cstdint>
#include <string>

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

}  // namespace ckpt::cli

#endif  // CKPT_CLI_COMMANDS_H_
