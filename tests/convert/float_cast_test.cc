#include "convert/float_cast.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "test_util.h"

namespace ckpt {
namespace {

using ::ckpt::testing::StatusIs;

uint32_t F32Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float F32(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

TEST(FloatCastTest, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 lies exactly halfway between BF16 1.0 (0x3F80) and 1.0078125 (0x3F81): even wins.
  EXPECT_EQ(DoubleToBf16(F32(0x3F808000)), 0x3F80);
  // 1.0078125 + 2^-8 is halfway between 0x3F81 and 0x3F82: even (0x3F82) wins.
  EXPECT_EQ(DoubleToBf16(F32(0x3F818000)), 0x3F82);
  // Just above halfway rounds up, just below rounds down.
  EXPECT_EQ(DoubleToBf16(F32(0x3F808001)), 0x3F81);
  EXPECT_EQ(DoubleToBf16(F32(0x3F807FFF)), 0x3F80);
  // Exact values are kept.
  EXPECT_EQ(DoubleToBf16(-2.5), 0xC020);
}

TEST(FloatCastTest, SpecialValues) {
  EXPECT_EQ(DoubleToBf16(INFINITY), 0x7F80);
  EXPECT_EQ(DoubleToBf16(-INFINITY), 0xFF80);
  EXPECT_EQ(DoubleToHalf(INFINITY), 0x7C00);
  EXPECT_TRUE(std::isnan(Bf16ToDouble(DoubleToBf16(std::nan("")))));
  EXPECT_TRUE(std::isnan(HalfToDouble(DoubleToHalf(-std::nan("")))));
  EXPECT_EQ(DoubleToHalf(-std::nan("")) & 0x8000, 0x8000);  // sign kept
  EXPECT_EQ(DoubleToHalf(-0.0), 0x8000);
  EXPECT_EQ(DoubleToBf16(0.0), 0x0000);
}

TEST(FloatCastTest, HalfOverflowAndSubnormals) {
  EXPECT_EQ(DoubleToHalf(65504.0), 0x7BFF);  // largest finite
  EXPECT_EQ(DoubleToHalf(65519.0), 0x7BFF);  // below the halfway point
  EXPECT_EQ(DoubleToHalf(65520.0), 0x7C00);  // halfway to 65536: ties to even = infinity
  EXPECT_EQ(DoubleToHalf(1e6), 0x7C00);
  EXPECT_EQ(DoubleToHalf(-1e6), 0xFC00);
  EXPECT_EQ(DoubleToHalf(std::ldexp(1.0, -24)), 0x0001);     // smallest subnormal
  EXPECT_EQ(DoubleToHalf(std::ldexp(1.0, -25)), 0x0000);     // halfway to it: ties to even = 0
  EXPECT_EQ(DoubleToHalf(std::ldexp(3.0, -25)), 0x0002);     // 1.5 units: ties to even = 2
  EXPECT_EQ(DoubleToHalf(std::ldexp(1023.0, -24)), 0x03FF);  // largest subnormal
  EXPECT_EQ(DoubleToHalf(std::ldexp(2047.0, -25)), 0x0400);  // rounds up into the smallest normal
  EXPECT_EQ(HalfToDouble(0x0001), std::ldexp(1.0, -24));
  EXPECT_EQ(HalfToDouble(0x3C00), 1.0);
  EXPECT_EQ(HalfToDouble(0xC000), -2.0);
}

TEST(FloatCastTest, Bf16SubnormalsAndOverflowFromF64) {
  const double min_sub = std::ldexp(1.0, -133);  // smallest BF16 subnormal
  EXPECT_EQ(DoubleToBf16(min_sub), 0x0001);
  EXPECT_EQ(DoubleToBf16(min_sub / 2), 0x0000);  // tie to even
  EXPECT_EQ(DoubleToBf16(1e39), 0x7F80);         // beyond BF16 (and F32) range
  EXPECT_EQ(Bf16ToDouble(0x0001), min_sub);
}

TEST(FloatCastTest, F64ToBf16RoundsOnce) {
  // 1 + 2^-8 + 2^-40: above the BF16 halfway point, but rounding to F32 first
  // would drop the 2^-40 and then round the tie down to 1.0.
  double x = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  EXPECT_EQ(DoubleToBf16(x), 0x3F81);
}

TEST(FloatCastTest, BuffersAndRoundTrips) {
  std::vector<float> src = {0.f, -1.5f, 3.14159f, 1e-40f, -INFINITY, 65504.f, 1e30f};
  std::vector<std::byte> in(src.size() * 4), half(src.size() * 2), back(src.size() * 4);
  std::memcpy(in.data(), src.data(), in.size());
  ASSERT_TRUE(CastFloats(DType::kF32, in, DType::kF16, half).ok());
  ASSERT_TRUE(CastFloats(DType::kF16, half, DType::kF32, back).ok());
  std::vector<float> got(src.size());
  std::memcpy(got.data(), back.data(), back.size());
  EXPECT_EQ(got[0], 0.f);
  EXPECT_EQ(got[1], -1.5f);
  EXPECT_NEAR(got[2], 3.14159f, 1e-3);
  EXPECT_EQ(got[3], 0.f);  // F32 subnormal underflows F16
  EXPECT_EQ(got[4], -INFINITY);
  EXPECT_EQ(got[5], 65504.f);
  EXPECT_EQ(got[6], INFINITY);
  // Every BF16 value survives BF16 -> F32 -> BF16 and BF16 -> F64 -> BF16.
  for (uint32_t b = 0; b < 0x10000; ++b) {
    uint16_t h = static_cast<uint16_t>(b);
    if (std::isnan(Bf16ToDouble(h))) continue;
    float f = F32(static_cast<uint32_t>(h) << 16);
    ASSERT_EQ(F32Bits(f) >> 16, h);
    ASSERT_EQ(DoubleToBf16(Bf16ToDouble(h)), h) << b;
    if (!std::isnan(HalfToDouble(h))) {
      ASSERT_EQ(DoubleToHalf(HalfToDouble(h)), h) << b;
    }
  }
  Status s = CastFloats(DType::kF8_E4M3, in, DType::kF32, back);
  EXPECT_THAT(s, StatusIs(StatusCode::kInvalidArgument, "cannot cast F8_E4M3 to F32"));
}

}  // namespace
}  // namespace ckpt

namespace ckpt {
namespace {

TEST(FloatCastTest, Fp8E4M3DecodesTheOcpTableExactly) {
  EXPECT_EQ(Fp8E4M3ToFloat(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(Fp8E4M3ToFloat(0x80))) << "-0";
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), std::ldexp(1.0f, -9)) << "smallest subnormal";
  EXPECT_EQ(Fp8E4M3ToFloat(0x07), 7 * std::ldexp(1.0f, -9)) << "largest subnormal";
  EXPECT_EQ(Fp8E4M3ToFloat(0x08), std::ldexp(1.0f, -6)) << "smallest normal";
  EXPECT_EQ(Fp8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0xB8), -1.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x3C), 1.5f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x7E), 448.0f) << "largest finite; E4M3 has no infinity";
  EXPECT_EQ(Fp8E4M3ToFloat(0xFE), -448.0f);
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0x7F)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0xFF)));
  int nans = 0;
  for (int v = 0; v < 256; ++v) nans += std::isnan(Fp8E4M3ToFloat(static_cast<uint8_t>(v))) ? 1 : 0;
  EXPECT_EQ(nans, 2);
}

}  // namespace
}  // namespace ckpt
