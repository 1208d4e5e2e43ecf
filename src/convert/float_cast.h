// Casts between the ordinary float dtypes (F16, BF16, F32, F64), rounding to
// nearest with ties to even, in one rounding step: every source value is
// first widened exactly to double. NaN stays NaN (quiet, sign kept),
// infinities stay infinite, values beyond the target's range become
// infinities, subnormals are produced and read correctly.
#ifndef CKPT_CONVERT_FLOAT_CAST_H_
#define CKPT_CONVERT_FLOAT_CAST_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include "ckpt/dtype.h"
#include "ckpt/status.h"

namespace ckpt {

// F16, BF16, F32 and F64.
bool IsOrdinaryFloat(DType d);

// Converts `count` elements from `in` (dtype `from`) into `out` (dtype `to`).
// Both must be ordinary floats; `in` and `out` must not overlap.
Status CastFloats(DType from, std::span<const std::byte> in, DType to, std::span<std::byte> out);

// Single-value helpers, exposed for tests.
double HalfToDouble(uint16_t h);
double Bf16ToDouble(uint16_t b);
uint16_t DoubleToHalf(double x);
uint16_t DoubleToBf16(double x);
// FP8 E4M3 (no infinities; S.1111.111 is NaN) to float, exactly.
float Fp8E4M3ToFloat(uint8_t v);

}  // namespace ckpt

#endif  // CKPT_CONVERT_FLOAT_CAST_H_
