// The README's C++ tour, compiled and run as a test so it stays true.
//   save_load DIR
#include <cstdio>
#include <vector>

#include "ckpt/safetensors.h"

using namespace ckpt;

Status SaveAndLoad(const std::string& dir, std::span<const std::byte> q_proj,
                   std::span<const std::byte> norm) {
  Storage& fs = *PosixStorage();
  const std::string path = JoinPath(dir, "model.safetensors");
  std::vector<TensorData> tensors = {
      {"model.layers.0.self_attn.q_proj.weight", DType::kBF16, Shape({4096, 4096}), q_proj},
      {"model.norm.weight", DType::kBF16, Shape({4096}), norm},
  };
  // Streams from your buffers, fsyncs, renames into place, fsyncs the directory.
  CKPT_RETURN_IF_ERROR(WriteSafetensors(fs, path, tensors, SafetensorsMetadata{{"format", "pt"}}));

  CKPT_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(fs, path));
  CKPT_ASSIGN_OR_RETURN(TensorView view, file->View("model.norm.weight"));  // zero-copy (mmap)
  std::vector<std::byte> row(2 * 4096);
  // Reads only row 7 of q_proj from disk.
  CKPT_RETURN_IF_ERROR(
      file->ReadRange("model.layers.0.self_attn.q_proj.weight", 7 * row.size(), row));

  if (view.data.size() != norm.size() || view.data[10] != norm[10] ||
      row[0] != q_proj[7 * row.size()]) {
    return InternalError("read back different bytes");
  }
  return Status();
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: save_load DIR\n");
    return 2;
  }
  std::vector<std::byte> q(2ull * 4096 * 4096), n(2 * 4096);
  for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<std::byte>(i * 7);
  for (size_t i = 0; i < n.size(); ++i) n[i] = static_cast<std::byte>(i * 3);
  Status s = SaveAndLoad(argv[1], q, n);
  std::printf("%s\n", s.ToString().c_str());
  return s.ok() ? 0 : 1;
}
