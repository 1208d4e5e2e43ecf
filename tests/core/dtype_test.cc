#include "ckpt/dtype.h"

#include <gtest/gtest.h>

#include <set>

#include "ckpt/shape.h"
#include "test_util.h"

namespace ckpt {
namespace {

using ::ckpt::testing::StatusIs;

TEST(DTypeTest, TableMatchesTheSafetensorsSpec) {
  struct Want {
    const char* name;
    uint32_t bits;
    DTypeClass cls;
  };
  using C = DTypeClass;
  const Want want[] = {
      {"BOOL", 8, C::kBool},       {"U8", 8, C::kInt},          {"I8", 8, C::kInt},
      {"F8_E5M2", 8, C::kFp8},     {"F8_E4M3", 8, C::kFp8},     {"F8_E8M0", 8, C::kFp8},
      {"F8_E4M3FNUZ", 8, C::kFp8}, {"F8_E5M2FNUZ", 8, C::kFp8}, {"I16", 16, C::kInt},
      {"U16", 16, C::kInt},        {"F16", 16, C::kFloat},      {"BF16", 16, C::kFloat},
      {"I32", 32, C::kInt},        {"U32", 32, C::kInt},        {"F32", 32, C::kFloat},
      {"C64", 64, C::kComplex},    {"F64", 64, C::kFloat},      {"I64", 64, C::kInt},
      {"U64", 64, C::kInt},        {"F4", 4, C::kSubByte},      {"F6_E2M3", 6, C::kSubByte},
      {"F6_E3M2", 6, C::kSubByte},
  };
  EXPECT_EQ(AllDTypes().size(), std::size(want));
  std::set<std::string_view> seen;
  for (const Want& w : want) {
    Result<DType> d = ParseDType(w.name);
    ASSERT_TRUE(d.ok()) << w.name;
    EXPECT_EQ(DTypeName(*d), w.name);
    EXPECT_EQ(DTypeBits(*d), w.bits) << w.name;
    EXPECT_EQ(DTypeClassOf(*d), w.cls) << w.name;
    seen.insert(DTypeName(*d));
  }
  EXPECT_EQ(seen.size(), std::size(want));
}

TEST(DTypeTest, EnumOrderIsNonDecreasingWidth) {
  uint32_t prev = 0;
  for (const DTypeInfo& info : AllDTypes()) {
    if (info.cls != DTypeClass::kSubByte && info.cls != DTypeClass::kBool) {
      EXPECT_GE(info.bits, prev) << info.name;
      prev = info.bits;
    }
  }
}

TEST(DTypeTest, ParseIsExact) {
  for (const char* bad : {"bf16", "F8", "float32", "", "F32 ", "I128", "F8_E4M3FN"}) {
    Result<DType> d = ParseDType(bad);
    EXPECT_THAT(d, StatusIs(StatusCode::kInvalidArgument, "unknown dtype")) << bad;
  }
}

TEST(ShapeTest, CountsAndScalars) {
  EXPECT_EQ(*Shape{}.NumElements(), 1u);
  EXPECT_EQ(*Shape({2, 3, 4}).NumElements(), 24u);
  EXPECT_EQ(*Shape({5, 0, 7}).NumElements(), 0u);
  EXPECT_EQ(*Shape({2, 3}).NumBytes(DType::kBF16), 12u);
  EXPECT_EQ(*Shape({}).NumBytes(DType::kF64), 8u);
  EXPECT_EQ(*Shape({2, 4}).NumBytes(DType::kF4), 4u);
  EXPECT_EQ(*Shape({4}).NumBytes(DType::kF6_E2M3), 3u);
  EXPECT_EQ(*Shape({0}).NumBytes(DType::kF6_E3M2), 0u);
  EXPECT_EQ(Shape({2, 3}).ToString(), "[2, 3]");
  EXPECT_EQ(Shape().ToString(), "[]");
}

TEST(ShapeTest, OverflowAndPartialBytesAreErrors) {
  Result<uint64_t> n = Shape({1ull << 32, 1ull << 32}).NumElements();
  EXPECT_THAT(n, StatusIs(StatusCode::kInvalidArgument, "element count overflows 64 bits"));
  Result<uint64_t> b = Shape({1ull << 62}).NumBytes(DType::kF32);
  EXPECT_THAT(b, StatusIs(StatusCode::kInvalidArgument, "bit count overflows"));
  Result<uint64_t> f4 = Shape({3}).NumBytes(DType::kF4);
  EXPECT_THAT(f4, StatusIs(StatusCode::kInvalidArgument, "12 bits is not a whole number of bytes"));
  EXPECT_THAT(Shape({5}).NumBytes(DType::kF6_E2M3),
              StatusIs(StatusCode::kInvalidArgument, "30 bits is not a whole number of bytes"));
}

TEST(ShapeTest, CheckedArithmetic) {
  uint64_t out;
  EXPECT_TRUE(CheckedAdd(1, 2, &out));
  EXPECT_EQ(out, 3u);
  EXPECT_FALSE(CheckedAdd(~0ull, 1, &out));
  EXPECT_FALSE(CheckedMul(1ull << 40, 1ull << 30, &out));
  EXPECT_TRUE(CheckedMul(1ull << 31, 1ull << 31, &out));
  EXPECT_EQ(out, 1ull << 62);
}

}  // namespace
}  // namespace ckpt
