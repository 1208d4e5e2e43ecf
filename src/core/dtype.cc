#include "ckpt/dtype.h"

#include <array>
#include <string>

namespace ckpt {
namespace {

using C = DTypeClass;
constexpr std::array<DTypeInfo, 22> kDTypes = {{
    {DType::kBool, "BOOL", 8, C::kBool, false},
    {DType::kF4, "F4", 4, C::kSubByte, true},
    {DType::kF6_E2M3, "F6_E2M3", 6, C::kSubByte, true},
    {DType::kF6_E3M2, "F6_E3M2", 6, C::kSubByte, true},
    {DType::kU8, "U8", 8, C::kInt, false},
    {DType::kI8, "I8", 8, C::kInt, true},
    {DType::kF8_E5M2, "F8_E5M2", 8, C::kFp8, true},
    {DType::kF8_E4M3, "F8_E4M3", 8, C::kFp8, true},
    {DType::kF8_E8M0, "F8_E8M0", 8, C::kFp8, false},
    {DType::kF8_E4M3FNUZ, "F8_E4M3FNUZ", 8, C::kFp8, true},
    {DType::kF8_E5M2FNUZ, "F8_E5M2FNUZ", 8, C::kFp8, true},
    {DType::kI16, "I16", 16, C::kInt, true},
    {DType::kU16, "U16", 16, C::kInt, false},
    {DType::kF16, "F16", 16, C::kFloat, true},
    {DType::kBF16, "BF16", 16, C::kFloat, true},
    {DType::kI32, "I32", 32, C::kInt, true},
    {DType::kU32, "U32", 32, C::kInt, false},
    {DType::kF32, "F32", 32, C::kFloat, true},
    {DType::kC64, "C64", 64, C::kComplex, true},
    {DType::kF64, "F64", 64, C::kFloat, true},
    {DType::kI64, "I64", 64, C::kInt, true},
    {DType::kU64, "U64", 64, C::kInt, false},
}};

constexpr bool TableMatchesEnum() {
  for (size_t i = 0; i < kDTypes.size(); ++i) {
    if (static_cast<size_t>(kDTypes[i].dtype) != i) return false;
  }
  return true;
}
static_assert(TableMatchesEnum(), "dtype table must be in enum order");

}  // namespace

std::span<const DTypeInfo> AllDTypes() { return kDTypes; }

const DTypeInfo& GetDTypeInfo(DType dtype) { return kDTypes[static_cast<size_t>(dtype)]; }

std::string_view DTypeClassName(DTypeClass cls) {
  switch (cls) {
    case C::kBool:
      return "bool";
    case C::kInt:
      return "int";
    case C::kFloat:
      return "float";
    case C::kFp8:
      return "fp8";
    case C::kSubByte:
      return "sub-byte";
    case C::kComplex:
      return "complex";
  }
  return "unknown";
}

Result<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return InvalidArgumentError("unknown dtype \"" + std::string(name) + "\"");
}

namespace {

struct TorchName {
  std::string_view name;
  DType dtype;
};

// Canonical names first; aliases after.
constexpr TorchName kTorchNames[] = {
    {"bool", DType::kBool},
    {"uint8", DType::kU8},
    {"int8", DType::kI8},
    {"float8_e5m2", DType::kF8_E5M2},
    {"float8_e4m3fn", DType::kF8_E4M3},
    {"float8_e8m0fnu", DType::kF8_E8M0},
    {"float8_e4m3fnuz", DType::kF8_E4M3FNUZ},
    {"float8_e5m2fnuz", DType::kF8_E5M2FNUZ},
    {"int16", DType::kI16},
    {"uint16", DType::kU16},
    {"float16", DType::kF16},
    {"bfloat16", DType::kBF16},
    {"int32", DType::kI32},
    {"uint32", DType::kU32},
    {"float32", DType::kF32},
    {"complex64", DType::kC64},
    {"float64", DType::kF64},
    {"int64", DType::kI64},
    {"uint64", DType::kU64},
    {"half", DType::kF16},
    {"float", DType::kF32},
    {"double", DType::kF64},
    {"short", DType::kI16},
    {"int", DType::kI32},
    {"long", DType::kI64},
    {"cfloat", DType::kC64},
};

}  // namespace

std::string_view TorchDTypeName(DType d) {
  for (const TorchName& t : kTorchNames) {
    if (t.dtype == d) return t.name;
  }
  return {};
}

Result<DType> ParseTorchDType(std::string_view name) {
  std::string_view n = name;
  if (n.substr(0, 6) == "torch.") n.remove_prefix(6);
  for (const TorchName& t : kTorchNames) {
    if (t.name == n) return t.dtype;
  }
  return NotFoundError("\"" + std::string(name) +
                       "\" is not a torch dtype with a safetensors counterpart");
}

}  // namespace ckpt
