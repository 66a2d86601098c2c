// isa_avx2.cpp — the AVX2 + FMA + F16C build of isa_kernels.inc. No -mavx2 for this file: the target attribute on
// each function keeps AVX2 code out of anything the rest of the library (or the C++ runtime) might share, so the
// library still loads and runs on an x86-64 without AVX2; isa.cpp only calls in here after checking the CPU.
#include <immintrin.h>

#include <cstdint>

#include "../include/flashattn.h"
#include "half.hpp"
#include "isa.hpp"

namespace fa::cpu {
namespace avx2 {

#define FA_TARGET __attribute__((target("avx2,fma,f16c")))
#define FA_ISA_AVX2 1
#define FA_GEMM_MR 6
#include "isa_kernels.inc"
#undef FA_TARGET
#undef FA_ISA_AVX2
#undef FA_GEMM_MR

}  // namespace avx2

const IsaKernels& isa_avx2() {
  static const IsaKernels kernels{"avx2",           avx2::gemm,           avx2::load_rows,
                                  avx2::load_rows_transposed, avx2::store_rows, avx2::transform_scores,
                                  avx2::softmax_step, avx2::round_probs_e4m3, avx2::probs_from_lse, avx2::score_grads};
  return kernels;
}

}  // namespace fa::cpu
