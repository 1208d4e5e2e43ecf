// A distributed state dict: what one rank saves or loads.
//
// Each tensor has a fully-qualified name (fqn), a dtype, a global shape and
// this rank's local chunk(s): the chunk's start in the global tensor
// (offsets), its shape, and a pointer to its first element, contiguous
// row-major or with explicit element strides. A replicated tensor is the
// same chunk held by several ranks; it is written once. Non-tensor entries
// (JSON values, raw bytes) travel beside the tensors.
//
// Ownership: the state dict only points at tensor memory. For a save the
// memory must stay unchanged until the save returns; for a load it is
// written in place.
#ifndef CKPT_STATE_DICT_H_
#define CKPT_STATE_DICT_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ckpt/dtype.h"
#include "ckpt/shape.h"

namespace ckpt {

struct LocalChunk {
  std::vector<uint64_t> offsets;  // global index of the chunk's first element, per dimension
  Shape shape;                    // chunk shape
  std::byte* data = nullptr;      // first element
  std::vector<int64_t> strides;   // in elements per dimension; empty = contiguous row-major
};

struct DistTensor {
  std::string fqn;
  DType dtype = DType::kF32;
  Shape global_shape;
  std::vector<LocalChunk> chunks;  // usually one; none when this rank holds no part
};

struct StateDict {
  std::vector<DistTensor> tensors;
  std::map<std::string, std::string> json;              // key → JSON text
  std::map<std::string, std::vector<std::byte>> bytes;  // key → raw bytes
};

// A tensor held whole by this rank (replicated, or not sharded at all).
inline DistTensor WholeTensor(std::string fqn, DType dtype, Shape shape, std::byte* data) {
  LocalChunk c{std::vector<uint64_t>(shape.rank(), 0), shape, data, {}};
  return DistTensor{std::move(fqn), dtype, std::move(shape), {std::move(c)}};
}

}  // namespace ckpt

#endif  // CKPT_STATE_DICT_H_
