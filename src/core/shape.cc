#include "ckpt/shape.h"

namespace ckpt {

Result<uint64_t> Shape::NumElements() const {
  uint64_t n = 1;
  for (uint64_t d : dims_) {
    if (!CheckedMul(n, d, &n)) {
      return InvalidArgumentError("shape " + ToString() + ": element count overflows 64 bits");
    }
  }
  return n;
}

Result<uint64_t> Shape::NumBytes(DType dtype) const {
  CKPT_ASSIGN_OR_RETURN(uint64_t n, NumElements());
  uint64_t bits = 0;
  if (!CheckedMul(n, DTypeBits(dtype), &bits)) {
    return InvalidArgumentError("shape " + ToString() + " of " + std::string(DTypeName(dtype)) +
                                ": bit count overflows 64 bits");
  }
  if (bits % 8 != 0) {
    return InvalidArgumentError("shape " + ToString() + " of " + std::string(DTypeName(dtype)) +
                                ": " + std::to_string(bits) +
                                " bits is not a whole number of bytes");
  }
  return bits / 8;
}

std::string Shape::ToString() const {
  std::string s = "[";
  for (size_t i = 0; i < dims_.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims_[i]);
  }
  return s + "]";
}

}  // namespace ckpt
