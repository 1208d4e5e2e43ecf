// libFuzzer target for model.safetensors.index.json parsing: accepted
// indexes hold only plain file names and re-serialize to an equal index.
#include <cstdlib>
#include <string_view>

#include "ckpt/hf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  Result<HfIndex> idx = ParseHfIndex(text, "fuzz");
  if (!idx.ok()) return 0;
  for (const auto& [tensor, file] : idx->weight_map) {
    if (!CheckShardFileName(file).ok()) std::abort();
  }
  Result<HfIndex> again = ParseHfIndex(SerializeHfIndex(*idx), "again");
  if (!again.ok() || again->weight_map != idx->weight_map || again->total_size != idx->total_size) {
    std::abort();
  }
  return 0;
}
