// half.hpp — scalar fp16 / bf16 <-> fp32 conversions (round to nearest even), used for row tails and by the
// portable kernels, and the fp8 decoding tables. Plain inline functions: safe to inline into any target.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace fa::cpu {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays a (quiet) NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf / NaN
  if (exponent != 0) return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // zero or subnormal: mantissa * 2^-24, exact in fp32
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

inline uint16_t float_to_half(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;              // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;             // rounds to >= 65520: inf
  if (magnitude >= 0x38800000u) {                                  // normal half (>= 2^-14)
    const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
    return sign | static_cast<uint16_t>((rounded - (112u << 23)) >> 13);
  }
  // subnormal half or zero: value / 2^-24 rounded to nearest even, done in fp32 (exact: below 2^-14 a float
  // times 2^24 is < 1024, and adding 2^23 rounds its fraction with the current (nearest-even) mode)
  const float scaled = bits_float(magnitude) * 16777216.0f;
  const float rounded = (scaled + 8388608.0f) - 8388608.0f;
  return sign | static_cast<uint16_t>(rounded);
}

// OCP fp8 (the formats of NVIDIA's and AMD's fp8 tensor cores), decoded exactly:
//   E4M3: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, S.1111.111 is NaN; largest 448, smallest 2^-9
//   E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits; IEEE-like with inf (S.11111.00) and NaN; largest 57344
// Every fp8 value is exact in fp32 (at most 4 significant bits, exponents -16..15).
constexpr float fp8_to_float(uint8_t bits, bool e4m3) {
  const int mantissa_bits = e4m3 ? 3 : 2, exponent_mask = e4m3 ? 0xf : 0x1f, bias = e4m3 ? 7 : 15;
  const int exponent = (bits >> mantissa_bits) & exponent_mask, mantissa = bits & ((1 << mantissa_bits) - 1);
  float magnitude = 0.0f;
  if (e4m3 && exponent == 0xf && mantissa == 7) {
    magnitude = std::numeric_limits<float>::quiet_NaN();
  } else if (!e4m3 && exponent == 0x1f) {
    magnitude = mantissa ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    // normal: (2^m + mantissa) * 2^(exponent - bias - m); subnormal (exponent 0): mantissa * 2^(1 - bias - m)
    magnitude = static_cast<float>(exponent ? (1 << mantissa_bits) + mantissa : mantissa);
    for (int shift = (exponent ? exponent : 1) - bias - mantissa_bits; shift != 0; shift += shift < 0 ? 1 : -1)
      magnitude = shift < 0 ? magnitude * 0.5f : magnitude * 2.0f;
  }
  return (bits & 0x80) ? -magnitude : magnitude;
}

// All 256 values of one format, built at compile time: decoding is one table lookup.
struct Fp8Table {
  float value[256];
  constexpr explicit Fp8Table(bool e4m3) : value() {
    for (int i = 0; i < 256; ++i) value[i] = fp8_to_float(static_cast<uint8_t>(i), e4m3);
  }
};
inline constexpr Fp8Table kFp8E4m3{true};
inline constexpr Fp8Table kFp8E5m2{false};

}  // namespace fa::cpu
