#include "convert/float_cast.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace ckpt {
namespace {

// Rounds |x| (finite, non-zero) to a binary format with `ebits` exponent and
// `mbits` fraction bits; returns the encoding without the sign bit.
uint32_t EncodeMagnitude(double x, int ebits, int mbits) {
  const int bias = (1 << (ebits - 1)) - 1;
  const int emin = 1 - bias;
  const uint32_t inf = static_cast<uint32_t>((1 << ebits) - 1) << mbits;
  int e;
  std::frexp(x, &e);
  int exp = e - 1;  // x = 1.f * 2^exp
  if (exp < emin) {
    // Subnormal: count units of the smallest subnormal, rounded to even.
    double q = std::nearbyint(std::ldexp(x, mbits - emin));
    return static_cast<uint32_t>(q);  // q == 2^mbits is the smallest normal
  }
  double frac = std::ldexp(x, -exp) - 1.0;
  double q = std::nearbyint(std::ldexp(frac, mbits));
  if (q == std::ldexp(1.0, mbits)) {
    q = 0;
    ++exp;
  }
  if (exp > bias) return inf;
  return (static_cast<uint32_t>(exp + bias) << mbits) | static_cast<uint32_t>(q);
}

uint32_t Encode(double x, int ebits, int mbits) {
  const uint32_t sign = std::signbit(x) ? 1u << (ebits + mbits) : 0;
  const uint32_t exp_all = static_cast<uint32_t>((1 << ebits) - 1) << mbits;
  if (std::isnan(x)) return sign | exp_all | (1u << (mbits - 1));
  if (std::isinf(x)) return sign | exp_all;
  if (x == 0) return sign;
  return sign | EncodeMagnitude(std::fabs(x), ebits, mbits);
}

template <typename T>
T Load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
void Store(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

double ReadOne(DType d, const std::byte* p) {
  switch (d) {
    case DType::kF16:
      return HalfToDouble(Load<uint16_t>(p));
    case DType::kBF16:
      return Bf16ToDouble(Load<uint16_t>(p));
    case DType::kF32:
      return static_cast<double>(Load<float>(p));
    default:
      return Load<double>(p);
  }
}

void WriteOne(DType d, std::byte* p, double v) {
  switch (d) {
    case DType::kF16:
      Store<uint16_t>(p, DoubleToHalf(v));
      break;
    case DType::kBF16:
      Store<uint16_t>(p, DoubleToBf16(v));
      break;
    case DType::kF32:
      Store<float>(p, static_cast<float>(v));
      break;  // IEEE rounding: to nearest even
    default:
      Store<double>(p, v);
      break;
  }
}

}  // namespace

bool IsOrdinaryFloat(DType d) {
  return d == DType::kF16 || d == DType::kBF16 || d == DType::kF32 || d == DType::kF64;
}

double HalfToDouble(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1F, frac = h & 0x3FF;
  double v;
  if (exp == 0x1F) {
    v = frac ? std::nan("") : INFINITY;
  } else if (exp == 0) {
    v = std::ldexp(frac, -24);
  } else {
    v = std::ldexp(1024 + frac, exp - 25);
  }
  return sign ? -v : v;
}

double Bf16ToDouble(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t DoubleToHalf(double x) { return static_cast<uint16_t>(Encode(x, 5, 10)); }
uint16_t DoubleToBf16(double x) { return static_cast<uint16_t>(Encode(x, 8, 7)); }

Status CastFloats(DType from, std::span<const std::byte> in, DType to, std::span<std::byte> out) {
  if (!IsOrdinaryFloat(from) || !IsOrdinaryFloat(to)) {
    return InvalidArgumentError("cannot cast " + std::string(DTypeName(from)) + " to " +
                                std::string(DTypeName(to)) +
                                ": only F16, BF16, F32 and F64 are cast");
  }
  const size_t in_size = DTypeBits(from) / 8, out_size = DTypeBits(to) / 8;
  const size_t n = in.size() / in_size;
  if (in.size() % in_size != 0 || out.size() != n * out_size) {
    return InvalidArgumentError("cast buffers of " + std::to_string(in.size()) + " and " +
                                std::to_string(out.size()) + " bytes do not match");
  }
  if (from == to) {
    std::memcpy(out.data(), in.data(), in.size());
    return Status();
  }
  for (size_t i = 0; i < n; ++i)
    WriteOne(to, out.data() + i * out_size, ReadOne(from, in.data() + i * in_size));
  return Status();
}

float Fp8E4M3ToFloat(uint8_t v) {
  const bool neg = v & 0x80;
  const int exp = (v >> 3) & 0xf, man = v & 7;
  float x;
  if (exp == 0xf && man == 7) {
    x = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    x = std::ldexp(static_cast<float>(man), -9);  // subnormal: man/8 · 2^-6
  } else {
    x = std::ldexp(static_cast<float>(8 + man), exp - 10);  // (1 + man/8) · 2^(exp-7)
  }
  return neg ? -x : x;
}

}  // namespace ckpt
