// libFuzzer target for the DCP `.metadata` reader: any input either is
// refused or yields entries whose chunks lie inside their tensors and whose
// storage entries name plain file names; what it yields writes back and
// reads again to the same entries.
#include <cstdlib>
#include <string_view>

#include "format/dcp_metadata.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  PickleLimits limits;
  limits.max_objects = 1u << 16;
  limits.max_stack = 1u << 14;
  limits.max_entries = 1u << 16;
  limits.max_total_bytes = 64u << 20;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  Result<DcpMetadata> m = ParseDcpMetadata(text, "fuzz", limits);
  if (!m.ok()) return 0;
  for (const auto& [fqn, t] : m->tensors) {
    for (const DcpChunk& c : t.chunks) {
      if (c.offsets.size() != t.size.size() || c.sizes.size() != t.size.size()) std::abort();
      for (size_t d = 0; d < t.size.size(); ++d) {
        if (c.offsets[d] > t.size[d] || c.sizes[d] > t.size[d] - c.offsets[d]) std::abort();
      }
      if (c.storage.relative_path.empty() || c.storage.relative_path.find('/') != std::string::npos)
        std::abort();
    }
  }
  Result<std::string> again = WriteDcpMetadata(*m);
  if (!again.ok()) return 0;  // a dtype torch cannot name
  Result<DcpMetadata> back = ParseDcpMetadata(*again, "fuzz rewrite");
  if (!back.ok() || back->tensors.size() != m->tensors.size() ||
      back->bytes.size() != m->bytes.size())
    std::abort();
  return 0;
}
