// isa_portable.cpp — the baseline x86-64 (SSE2) build of isa_kernels.inc, for CPUs without AVX2/FMA/F16C and for
// FLASHATTN_CPU_ISA=portable.
#include <cstdint>

#include "../include/flashattn.h"
#include "half.hpp"
#include "isa.hpp"

// The 8-float vector helpers are static and always inlined, so the "AVX vector ABI" note GCC gives for passing
// them without AVX cannot matter: no such function is ever called across an ABI boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fa::cpu {
namespace portable {

#define FA_TARGET
#define FA_ISA_AVX2 0
#define FA_GEMM_MR 2
#include "isa_kernels.inc"
#undef FA_TARGET
#undef FA_ISA_AVX2
#undef FA_GEMM_MR

}  // namespace portable

const IsaKernels& isa_portable() {
  static const IsaKernels kernels{"portable",           portable::gemm,       portable::load_rows,
                                  portable::load_rows_transposed, portable::store_rows, portable::transform_scores,
                                  portable::softmax_step, portable::round_probs_e4m3, portable::probs_from_lse, portable::score_grads};
  return kernels;
}

}  // namespace fa::cpu
