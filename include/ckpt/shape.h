// Tensor shapes with overflow-checked element and byte counts.
//
// A shape is a list of non-negative dimension sizes; [] is a scalar (one
// element) and any zero dimension makes an empty tensor. Counts are computed
// with checked multiplication because shapes come from untrusted files.
#ifndef CKPT_SHAPE_H_
#define CKPT_SHAPE_H_

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

#include "ckpt/dtype.h"
#include "ckpt/status.h"

namespace ckpt {

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<uint64_t> dims) : dims_(dims) {}
  explicit Shape(std::vector<uint64_t> dims) : dims_(std::move(dims)) {}

  size_t rank() const { return dims_.size(); }
  uint64_t operator[](size_t i) const { return dims_[i]; }
  const std::vector<uint64_t>& dims() const { return dims_; }

  // Product of the dimensions; InvalidArgument on uint64 overflow.
  Result<uint64_t> NumElements() const;
  // Storage size in bytes for `dtype`; InvalidArgument on overflow or when
  // the total bit count is not a multiple of 8 (sub-byte dtypes).
  Result<uint64_t> NumBytes(DType dtype) const;

  // "[2, 3]"; "[]" for a scalar.
  std::string ToString() const;

  friend bool operator==(const Shape&, const Shape&) = default;

 private:
  std::vector<uint64_t> dims_;
};

// Checked arithmetic on uint64 sizes read from files.
inline bool CheckedMul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}
inline bool CheckedAdd(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}

}  // namespace ckpt

#endif  // CKPT_SHAPE_H_
