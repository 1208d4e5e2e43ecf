// What `inspect` and `verify` look at: a safetensors file, a Hugging Face
// model directory, or any directory of safetensors files (e.g. a sharded
// checkpoint's model/ folder).
#ifndef CKPT_CLI_TARGET_H_
#define CKPT_CLI_TARGET_H_

#include <optional>
#include <string>
#include <vector>

#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "ckpt/sharded.h"
#include "ckpt/storage.h"

namespace ckpt::cli {

struct Target {
  struct Entry {
    std::string name;
    size_t file;  // index into files
    const TensorInfo* info;
  };
  std::string path;
  std::string kind;  // "file", "hf-single", "hf-sharded", "sharded", "dcp", "directory"
  std::optional<HfModelDir> hf;
  std::vector<std::unique_ptr<SafetensorsFile>> owned;
  std::vector<const SafetensorsFile*> files;
  std::vector<Entry> tensors;  // sorted by name, then file
  // For a sharded checkpoint (DCP sharding info or a ckpt manifest): the
  // global tensors, validated.
  std::optional<ShardedCheckpointInfo> sharded;
};

Result<Target> OpenTarget(Storage& storage, const std::string& path);

// "1.5 MiB".
std::string HumanBytes(uint64_t n);
// Text from a file (tensor names, metadata, file names) as a terminal may
// show it: valid UTF-8 is kept except control characters and bidirectional
// overrides, which become \xNN / \u{NNNN}; invalid UTF-8 is escaped byte by
// byte. A name can then never move the cursor, clear the screen or hide.
std::string Shown(std::string_view text);

}  // namespace ckpt::cli

#endif  // CKPT_CLI_TARGET_H_
