// libFuzzer target for DCP_SHARDING_INFO and ckpt_chunk_xxh64: the input is
// the metadata of two shard files ("<sharding info>\n<checksums>\n" twice),
// each holding a [4, 4] F32 chunk of "w" and a [3] BF16 chunk of "b". Every
// header is indexed as a load would; when the index is accepted, the chunks
// of each tensor must lie inside it and tile it exactly.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/safetensors.h"
#include "ckpt/sharded.h"
#include "engine/shard_dir.h"
#include "plan/load_plan.h"

namespace {

std::string_view NextLine(std::string_view* in) {
  const size_t nl = in->find('\n');
  std::string_view line = in->substr(0, nl);
  in->remove_prefix(nl == std::string_view::npos ? in->size() : nl + 1);
  return line;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  plan::SavedIndex index;
  for (uint32_t file = 0; file < 2; ++file) {
    SafetensorsMetadata md{{"format", "pt"}};
    md[std::string(kDcpShardingInfoKey)] = std::string(NextLine(&in));
    const std::string_view sums = NextLine(&in);
    if (!sums.empty()) md[std::string(kChunkChecksumKey)] = std::string(sums);
    Result<SafetensorsLayout> layout =
        PlanSafetensors({{"w", DType::kF32, Shape{4, 4}}, {"b", DType::kBF16, Shape{3}}}, md);
    if (!layout.ok()) return 0;  // metadata the writer refuses (invalid UTF-8, ...)
    std::string prefix(8, '\0');
    uint64_t n = layout->header.size();
    for (int i = 0; i < 8; ++i)
      prefix[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
    prefix += layout->header;
    Result<SafetensorsHeader> h = SafetensorsHeader::ParsePrefix(
        std::as_bytes(std::span<const char>(prefix.data(), prefix.size())), layout->file_size(),
        "fuzz");
    if (!h.ok()) std::abort();  // the writer's own layout must parse
    if (!engine::IndexShard(*h, file, "fuzz", &index).ok()) return 0;
  }
  if (!index.Finalize().ok()) return 0;
  for (const auto& [fqn, t] : index.tensors()) {
    uint64_t volume = 0, total = 1;
    for (uint64_t d : t.global.dims()) total *= d;
    for (const plan::SavedChunk& c : t.chunks) {
      uint64_t v = 1;
      for (size_t d = 0; d < c.box.sizes.size(); ++d) {
        if (c.box.offsets[d] + c.box.sizes[d] > t.global[d]) std::abort();
        v *= c.box.sizes[d];
      }
      volume += v;
    }
    if (volume != total) std::abort();
  }
  return 0;
}
