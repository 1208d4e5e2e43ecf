// Element types of stored tensors: exactly the safetensors dtype set.
//
// Every dtype has a canonical safetensors name ("BF16"), a width in bits and a
// class. Sub-byte dtypes (F4, F6_*) pack elements tightly, so a tensor of them
// is only storable when its total bit count is a multiple of 8.
#ifndef CKPT_DTYPE_H_
#define CKPT_DTYPE_H_

#include <cstdint>
#include <span>
#include <string_view>

#include "ckpt/status.h"

namespace ckpt {

// Declared in increasing element width; the order is part of the writer's
// tensor ordering (widest dtype first, then by name).
enum class DType : uint8_t {
  kBool,
  kF4,
  kF6_E2M3,
  kF6_E3M2,
  kU8,
  kI8,
  kF8_E5M2,
  kF8_E4M3,
  kF8_E8M0,
  kF8_E4M3FNUZ,
  kF8_E5M2FNUZ,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kC64,
  kF64,
  kI64,
  kU64,
};

enum class DTypeClass : uint8_t { kBool, kInt, kFloat, kFp8, kSubByte, kComplex };

struct DTypeInfo {
  DType dtype;
  std::string_view name;  // safetensors spelling
  uint32_t bits;          // bits per element
  DTypeClass cls;
  bool is_signed;  // for integers; floats are signed too
};

// All dtypes, in enum order.
std::span<const DTypeInfo> AllDTypes();
const DTypeInfo& GetDTypeInfo(DType dtype);

inline std::string_view DTypeName(DType d) { return GetDTypeInfo(d).name; }
inline uint32_t DTypeBits(DType d) { return GetDTypeInfo(d).bits; }
inline DTypeClass DTypeClassOf(DType d) { return GetDTypeInfo(d).cls; }
std::string_view DTypeClassName(DTypeClass cls);

// Parses a safetensors dtype string; the match is exact (case-sensitive).
Result<DType> ParseDType(std::string_view name);

// PyTorch's name ("bfloat16", "float8_e4m3fn", ...) when torch has the
// dtype; empty otherwise (sub-byte floats, F8_E8M0 in older releases...).
std::string_view TorchDTypeName(DType d);
// Accepts "torch.bfloat16" or "bfloat16" and torch's aliases ("half",
// "float", "long", ...). NotFound when torch has no such dtype here.
Result<DType> ParseTorchDType(std::string_view name);

}  // namespace ckpt

#endif  // CKPT_DTYPE_H_
