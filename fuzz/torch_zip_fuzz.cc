// libFuzzer target for whole .bin archives (zip directory, records, pickle):
// an archive that opens reads every tensor (sanitizers catch any read
// outside the file).
#include <cstdlib>
#include <string>
#include <vector>

#include "ckpt/storage.h"
#include "ckpt/torch_bin.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  std::shared_ptr<Storage> st = NewMemoryStorage();
  if (!WriteFileAtomically(*st, "/m.bin", std::string(reinterpret_cast<const char*>(data), size))
           .ok())
    std::abort();
  TorchArchiveLimits limits;
  limits.max_objects = 1u << 16;
  Result<std::unique_ptr<TorchArchive>> a = TorchArchive::Open(*st, "/m.bin", limits);
  if (!a.ok()) return 0;
  for (const TorchTensorInfo& t : (*a)->tensors()) {
    if (t.nbytes > (16u << 20)) continue;  // a broadcast (stride 0) view may be large
    std::vector<std::byte> buf(t.nbytes);
    if (!(*a)->ReadTensor(t.name, buf).ok()) std::abort();
  }
  (*a)->CheckData().IgnoreError();
  return 0;
}
