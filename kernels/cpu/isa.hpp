// isa.hpp — the hot primitives of the CPU kernels, implemented once (isa_kernels.inc) and compiled twice: for
// AVX2+FMA+F16C (isa_avx2.cpp, through function target attributes) and for baseline x86-64 (isa_portable.cpp).
// select_isa() picks one at run time from the CPU's features; the attention drivers (forward.cpp, backward.cpp,
// naive.cpp) only call through this table.
//
// Conventions: matrices are fp32, row-major with an explicit leading dimension (elements). "Transposed score tiles"
// S^T hold keys in rows and queries in columns, so every per-query quantity (running max, sum, LSE, D) is a
// contiguous vector and the softmax vectorises across queries. Query counts passed as `cols` are multiples of 8.
#pragma once

#include <cstdint>

namespace fa::cpu {

enum class GemmMode : int32_t {
  kOverwrite = 0,  // C = A.B
  kAccumulate = 1, // C += A.B
  kRowScale = 2,   // C = diag(row_scale).C + A.B   (the online-softmax rescale of O)
};

// C (M x N) [op]= A (M x K) . B (K x N). A is read by element at A[i*a_row + k*a_col] (any layout, e.g. a transposed
// tile); B is row-major with N contiguous floats per row (N a multiple of 8; B may be read up to N columns);
// C is row-major. K may be 0.
struct Gemm {
  int32_t m, n, k;
  const float* a;
  int64_t a_row, a_col;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  GemmMode mode;
  const float* row_scale;  // kRowScale only: M factors
};

// Per-tile modifiers of the raw scores s = (scale*q).k, applied in flash-attn's order: softcap, ALiBi, mask.
struct ScoreMods {
  float softcap;             // 0 = off: s = softcap * tanh(s / softcap)
  const float* alibi_slope;  // per query column (its head's slope), or NULL = off: s -= slope * |q_pos - key|
  const float* q_pos;        // per query column: i + seqlen_k - seqlen_q (ALiBi distance origin)
  const int32_t* visible_lo; // per query column: first and last visible key, or NULL when every key of the tile is
  const int32_t* visible_hi; //   visible to every column (no masking needed); masked scores become -inf
  float* softcap_grad;       // backward with softcap: receives ds/dx = 1 - tanh^2 per element (layout of S), or NULL
};

struct IsaKernels {
  const char* name;  // "avx2" or "portable"

  void (*gemm)(const Gemm& g);

  // dst (rows x d_pad, ld) = scale * src rows converted to fp32, columns d..d_pad zero. src row r starts at
  // src + r*row_stride elements of `dtype`.
  void (*load_rows)(int32_t dtype, const void* src, int64_t row_stride, int32_t rows, int32_t d, float scale, float* dst,
                    int64_t ld, int32_t d_pad);
  // dst (d x cols_pad, ld) = the same rows transposed: dst[k*ld + r] = scale * src[r][k]; columns rows..cols_pad zero.
  void (*load_rows_transposed)(int32_t dtype, const void* src, int64_t row_stride, int32_t rows, int32_t d, float scale,
                               float* dst, int64_t ld, int32_t cols_pad);
  // dst row r (dtype, at dst + r*row_stride) = src row r * row_scale[r] (or * 1 when row_scale is NULL), rounded to
  // nearest even for fp16/bf16.
  void (*store_rows)(int32_t dtype, const float* src, int64_t ld, int32_t rows, int32_t d, const float* row_scale,
                     void* dst, int64_t row_stride);

  // Applies `mods` to the S^T tile (rows = keys key0.., cols = queries).
  void (*transform_scores)(float* st, int64_t ld, int32_t rows, int32_t cols, int32_t key0, const ScoreMods& mods);
  // One online-softmax step over an S^T tile, per query column c:
  //   m' = max(m, max_r S[r][c]);  P[r][c] = exp(S[r][c] - m');  alpha = exp(m - m');  l = alpha*l + sum_r P[r][c]
  // with exp(-inf) = 0 and m' = -inf treated as 0 (a column with no visible key so far keeps P = 0, alpha = 0).
  // p may equal st (in place).
  void (*softmax_step)(const float* st, float* p, int64_t ld, int32_t rows, int32_t cols, float* m, float* l, float* alpha);
  // fp8 forward: P[r][c] rounded to the nearest fp8 E4M3 value, in place, before P.V: what an fp8 tensor core
  // multiplies (flashattn.h, "FP8"). cols is a multiple of 8.
  void (*round_probs_e4m3)(float* p, int64_t ld, int32_t rows, int32_t cols);
  // Backward: P[r][c] = exp(S[r][c] - lse[c]) (lse = +inf for a column without visible keys gives 0).
  void (*probs_from_lse)(const float* st, float* p, int64_t ld, int32_t rows, int32_t cols, const float* lse);
  // Backward: dS[r][c] = P[r][c] * (dP[r][c] - D[c]) * (softcap_grad ? G[r][c] : 1), written over dP.
  void (*score_grads)(float* dp, const float* p, const float* softcap_grad, int64_t ld, int32_t rows, int32_t cols,
                      const float* d_row);
};

const IsaKernels& isa_avx2();
const IsaKernels& isa_portable();
bool cpu_has_avx2();  // AVX2 + FMA + F16C, as the avx2 kernels need

// The kernels this process uses: avx2 when the CPU has it, else portable; FLASHATTN_CPU_ISA=portable forces the
// portable path (tests cover both), FLASHATTN_CPU_ISA=avx2 on a CPU without it falls back to portable.
const IsaKernels& select_isa();

}  // namespace fa::cpu
