// fp8.cuh — the fp8 element types (OCP E4M3 / E5M2) and the exact conversions the mma.sync kernels need to compute
// fp8 attention on 16-bit tensor cores (sm_80+): fp8 -> fp16 (every E4M3 and E5M2 value is exact in fp16) and the
// rounding of probabilities to E4M3 (flashattn.h, "FP8"), as instructions on sm_89+ and integer / fp32 arithmetic on
// sm_80 / sm_86 with the same results bit for bit (the CPU backend's decoding tables and round_e4m3 are the reference).
#pragma once

#include <cstdint>

#include "tile.cuh"

namespace fa::tc {

// fp8 elements as the kernels see them: bytes in memory that only the tensor cores and the conversions below read as
// numbers.
struct fp8_e4m3_t { uint8_t bits; };
struct fp8_e5m2_t { uint8_t bits; };

// Bytes 0 and 1 (lo) and 2 and 3 (hi) of x as fp16 pairs (byte 0 in the low half of lo), each byte the high byte of
// its half: exactly E5M2's encoding within fp16's (the same sign, exponent width and bias), infinities and NaNs too.
__device__ __forceinline__ void bytes_to_high_halves(uint32_t x, uint32_t& lo, uint32_t& hi) {
  lo = __byte_perm(x, 0u, 0x1404u);
  hi = __byte_perm(x, 0u, 0x3424u);
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 890
// Two E4M3 bytes, each the high byte of its half (bytes_to_high_halves), as fp16 without fp8 instructions. The byte's
// exponent and mantissa bits moved down one place sit in fp16's exponent and mantissa fields: the fp16 number they
// make is the E4M3 value times 2^-8 (bias 15 against 7), subnormals included (E4M3 subnormals become fp16 subnormals),
// so one exact multiply by 256 finishes it. S.1111.111 (E4M3's NaN) would make 480: it becomes NaN instead.
__device__ __forceinline__ uint32_t e4m3_halves_to_f16x2(uint32_t w) {
  const uint32_t bits = (w & 0x80008000u) | ((w >> 1) & 0x3f803f80u);
  const __half2 h = __hmul2(*reinterpret_cast<const __half2*>(&bits), __halves2half2(__ushort_as_half(0x5c00), __ushort_as_half(0x5c00)));
  uint32_t r = *reinterpret_cast<const uint32_t*>(&h);
  const uint32_t nan = ((w & 0x7f007f00u) + 0x01000100u) & 0x80008000u;  // bit 15 of a half whose byte is S.1111.111
  return r | (nan - (nan >> 6));                                         // 0x7e00 there: 480 (0x5f80) becomes 0x7f80
}
#endif

// Four fp8 values (byte 0 first) as two fp16 pairs: lo = bytes 0, 1, hi = bytes 2, 3.
template <typename T>
__device__ __forceinline__ void fp8x4_to_f16(uint32_t x, uint32_t& lo, uint32_t& hi) {
  if constexpr (std::is_same<T, fp8_e5m2_t>::value) {
    bytes_to_high_halves(x, lo, hi);
  } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e4m3x2 %0, l;\n cvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
        : "=r"(lo), "=r"(hi)
        : "r"(x));
#else
    bytes_to_high_halves(x, lo, hi);
    lo = e4m3_halves_to_f16x2(lo);
    hi = e4m3_halves_to_f16x2(hi);
#endif
  }
}

// ROWS rows of D fp8 values (src, row length D bytes) into an fp16 tile of layout L (tile.cuh), by the NT threads
// numbered `id`: each takes 8 adjacent values per pass (an 8-byte load, a 16-byte store, both conflict-free).
template <typename T, int ROWS, int D, typename L, int NT>
__device__ __forceinline__ void fp8_rows_to_f16(half_t* dst, const uint8_t* src, int id) {
  constexpr int kUnitsPerRow = D / 8;
  static_assert((ROWS * kUnitsPerRow) % NT == 0, "the rows' 8-value units must spread evenly over the threads");
#pragma unroll
  for (int u = id; u < ROWS * kUnitsPerRow; u += NT) {
    const int r = u / kUnitsPerRow, c = (u % kUnitsPerRow) * 8;
    const uint2 x = *reinterpret_cast<const uint2*>(src + r * D + c);
    uint4 h;
    fp8x4_to_f16<T>(x.x, h.x, h.y);
    fp8x4_to_f16<T>(x.y, h.z, h.w);
    *reinterpret_cast<uint4*>(dst + L::at(r, c)) = h;
  }
}

// Two probabilities (values in [0, 1], or NaN) rounded to E4M3, nearest even, as an fp16 pair (lo in the low half):
// what an fp8 tensor core would multiply V by (flashattn.h, "FP8"); every E4M3 value is exact in fp16.
__device__ __forceinline__ uint32_t pack2_probs_e4m3(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint32_t r;
  // cvt puts its first source in the upper byte of the pair.
  asm("{\n .reg .b16 p;\n cvt.rn.satfinite.e4m3x2.f32 p, %2, %1;\n cvt.rn.f16x2.e4m3x2 %0, p;\n}\n" : "=r"(r) : "f"(lo), "f"(hi));
  return r;
#else
  // The CPU's round_e4m3 for x >= 0: from 2^-6 up, drop 20 of fp32's 23 mantissa bits with nearest even on the bit
  // pattern (NaN stays NaN); below, the subnormal step 2^-9 is the ulp of fp32 numbers in [2^14, 2^15), so adding and
  // subtracting 2^14 rounds to it. The results fit fp16 exactly.
  auto round = [](float x) {
    const uint32_t u = __float_as_uint(x);
    const float normal = __uint_as_float((u + 0x7ffffu + ((u >> 20) & 1u)) & ~0xfffffu);
    return x < 0.015625f ? __fsub_rn(__fadd_rn(x, 16384.f), 16384.f) : normal;
  };
  return pack2<half_t>(round(lo), round(hi));
#endif
}

// acc_to_a (tile.cuh) with P rounded to E4M3: the fp16 A fragment of k-step kk of O += P V from n-tiles 2kk, 2kk + 1.
__device__ __forceinline__ void probs_to_a_e4m3(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack2_probs_e4m3(c0[0], c0[1]);
  a[1] = pack2_probs_e4m3(c0[2], c0[3]);
  a[2] = pack2_probs_e4m3(c1[0], c1[1]);
  a[3] = pack2_probs_e4m3(c1[2], c1[3]);
}

}  // namespace fa::tc
