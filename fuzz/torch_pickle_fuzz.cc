// libFuzzer target for the restricted pickle machine: any input either is
// refused or yields tensor views that lie inside their storages.
#include <cstdlib>
#include <string_view>

#include "format/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  PickleLimits limits;
  limits.max_objects = 1u << 16;
  limits.max_stack = 1u << 14;
  limits.max_entries = 1u << 16;
  limits.max_total_bytes = 64u << 20;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  Result<TorchPickle> p = ParseTorchPickle(text, "fuzz", limits);
  if (!p.ok()) return 0;
  for (const TorchTensorRecord& t : p->tensors) {
    if (t.size.size() != t.stride.size()) std::abort();
    const uint64_t esz = DTypeBits(t.dtype) / 8;
    if (esz == 0) std::abort();
    bool empty = false;
    uint64_t last = t.offset;
    for (size_t d = 0; d < t.size.size(); ++d) {
      if (t.size[d] == 0) empty = true;
    }
    if (empty) continue;
    for (size_t d = 0; d < t.size.size(); ++d) last += (t.size[d] - 1) * t.stride[d];
    if (last >= t.storage_bytes / esz) std::abort();
  }
  return 0;
}
