// libFuzzer target: the input is a whole safetensors file. Anything the
// parser accepts must satisfy the format's invariants and survive a rewrite.
#include <cstdlib>
#include <span>

#include "ckpt/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  auto bytes = std::as_bytes(std::span(data, size));
  Result<SafetensorsHeader> h = SafetensorsHeader::ParsePrefix(bytes, size, "fuzz");
  if (!h.ok()) {
    if (h.status().message().empty()) std::abort();  // every refusal explains itself
    return 0;
  }
  uint64_t expected = 0;
  std::vector<TensorSpec> specs;
  for (const TensorInfo& t : h->tensors()) {
    if (t.begin != expected || t.nbytes() != *t.shape.NumBytes(t.dtype)) std::abort();
    if (h->Find(t.name) != &t) std::abort();
    expected = t.end;
    specs.push_back({t.name, t.dtype, t.shape});
  }
  if (expected != h->data_size() || h->data_offset() + h->data_size() != size) std::abort();

  std::optional<SafetensorsMetadata> md;
  if (h->has_metadata()) md = h->metadata();
  Result<SafetensorsLayout> layout = PlanSafetensors(specs, md);
  if (!layout.ok()) {
    // Only a header that grows past the cap when re-serialized may fail.
    if (layout.status().message().find("exceeds the safetensors limit") == std::string::npos) {
      std::abort();
    }
    return 0;
  }
  Result<SafetensorsHeader> again =
      SafetensorsHeader::Parse(layout->header, layout->data_size, "rewrite");
  if (!again.ok() || again->tensors().size() != h->tensors().size()) std::abort();
  return 0;
}
