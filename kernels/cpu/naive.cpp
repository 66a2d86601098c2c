// naive.cpp — the materialised baseline (FA_ALGO_NAIVE, forward only): what "standard attention" does, the thing
// bench compares the flash kernels against. For every (sequence, head) at once it keeps the full fp32 score matrix
// S and probability matrix P (batch * heads_q * seqlen_k * seqlen_q floats each, counted in fa_memory_stats and
// refused with FA_ERR_OUT_OF_MEMORY when the machine cannot hold them):
//   S^T = K . (scale * Q)^T,  S^T <- softcap / ALiBi / mask,  P^T = exp(S^T - colmax) / colsum,  O = P . V
// It uses the same GEMM and softmax primitives as the flash kernels, so the two differ only in memory traffic (fp8: q, k,
// v dequantised on loading, the unnormalised P rounded to E4M3 before P . V, as in forward.cpp).
#include <cmath>
#include <vector>

#include "attention.hpp"
#include "memory.hpp"
#include "thread_pool.hpp"

namespace fa::cpu {

namespace {

constexpr int32_t kNaiveKeyBand = 128;

struct NaiveScratch {
  float *qt, *k, *v, *o, *m, *l, *alpha, *q_pos, *slope, *inv_l;
  int32_t *lo, *hi;

  NaiveScratch(Carver& c, const Geometry& g, int32_t cols) {
    const int64_t keys = std::max(1, g.p.seqlen_k);
    qt = c.take<float>(int64_t{g.d_pad} * cols);
    k = c.take<float>(keys * g.d_pad);
    v = c.take<float>(keys * g.d_pad);
    o = c.take<float>(int64_t{cols} * g.d_pad);
    m = c.take<float>(cols);
    l = c.take<float>(cols);
    alpha = c.take<float>(cols);
    q_pos = c.take<float>(cols);
    slope = c.take<float>(cols);
    inv_l = c.take<float>(cols);
    lo = c.take<int32_t>(cols);
    hi = c.take<int32_t>(cols);
  }
};

}  // namespace

int32_t naive_forward(const fa_attn_params& p, const IsaKernels& isa) {
  const Geometry g(p);
  const int64_t padded_queries = (int64_t{p.seqlen_q} + 15) / 16 * 16;  // S^T columns: queries, in 16-float strips
  if (padded_queries > INT32_MAX / 16)
    throw WorkspaceError(format("the naive algorithm materialises seqlen_q x seqlen_k and cannot take %d queries", p.seqlen_q));
  const int32_t cols = static_cast<int32_t>(padded_queries);
  const int64_t heads = int64_t{p.batch} * p.heads_q;
  const int64_t matrix = int64_t{p.seqlen_k} * cols;  // floats of one head's S (and of its P)
  const char* what = "the naive algorithm's score and probability matrices";
  Workspace scores(checked_bytes(what, {static_cast<uint64_t>(heads), static_cast<uint64_t>(matrix), 2, sizeof(float)}), what);

  PerWorker<NaiveScratch> slices("naive scratch", worker_count(), g, cols);

  parallel_for(heads, [&](int64_t task, int worker) {
    NaiveScratch& w = slices[worker];
    const int32_t b = static_cast<int32_t>(task / p.heads_q), h = static_cast<int32_t>(task % p.heads_q);
    const int32_t kvh = h / g.r.group, d = g.d, d_pad = g.d_pad;
    const Sequence s = g.sequence(b);
    if (s.len_q == 0) return;
    float* st = scores.as<float>() + task * matrix;
    float* pt = scores.as<float>() + (heads + task) * matrix;
    const int32_t used_cols = round_up(s.len_q, 16);
    block_visibility(g, s, 0, s.len_q, used_cols, w.lo, w.hi);
    std::fill(w.m, w.m + used_cols, -INFINITY);
    std::fill(w.l, w.l + used_cols, 0.0f);
    if (s.len_k > 0) {
      isa.load_rows_transposed(p.dtype, g.row(p.q, b, s.q_start, 0, h), p.q.row_stride, s.len_q, d,
                               g.r.scale * descale_at(p.q_descale, b, kvh), w.qt, cols, used_cols);
      isa.load_rows(p.dtype, g.row(p.k, b, s.k_start, 0, kvh), p.k.row_stride, s.len_k, d, descale_at(p.k_descale, b, kvh),
                    w.k, d_pad, d_pad);
      isa.load_rows(p.dtype, g.row(p.v, b, s.k_start, 0, kvh), p.v.row_stride, s.len_k, d, descale_at(p.v_descale, b, kvh),
                    w.v, d_pad, d_pad);
      for (int32_t c = 0; c < used_cols; ++c) {
        w.q_pos[c] = static_cast<float>(c + s.len_k - s.len_q);
        w.slope[c] = g.alibi_slope(b, h);
      }
      const ScoreMods mods{p.softcap, p.alibi_mode != FA_ALIBI_NONE ? w.slope : nullptr, w.q_pos, w.lo, w.hi, nullptr};
      isa.gemm({s.len_k, used_cols, d, w.k, d_pad, 1, w.qt, cols, st, cols, GemmMode::kOverwrite, nullptr});
      isa.transform_scores(st, cols, s.len_k, used_cols, 0, mods);
      isa.softmax_step(st, pt, cols, s.len_k, used_cols, w.m, w.l, w.alpha);
      if (is_fp8(p.dtype)) isa.round_probs_e4m3(pt, cols, s.len_k, used_cols);
    }
    // O = P.V with P read through P^T (consecutive keys are `cols` floats apart): in bands of keys, so that the
    // rows one micro-tile walks stay within the TLB's reach.
    std::fill(w.o, w.o + int64_t{s.len_q} * d_pad, 0.0f);
    for (int32_t k0 = 0; k0 < s.len_k; k0 += kNaiveKeyBand) {
      const int32_t keys = std::min(kNaiveKeyBand, s.len_k - k0);
      isa.gemm({s.len_q, d_pad, keys, pt + int64_t{k0} * cols, 1, cols, w.v + int64_t{k0} * d_pad, d_pad, w.o, d_pad,
                GemmMode::kAccumulate, nullptr});
    }
    for (int32_t c = 0; c < s.len_q; ++c) w.inv_l[c] = w.l[c] > 0.0f ? 1.0f / w.l[c] : 0.0f;
    isa.store_rows(g.dtype_of(p.o), w.o, d_pad, s.len_q, d, w.inv_l, g.row(p.o, b, s.q_start, 0, h), p.o.row_stride);
    if (p.lse != nullptr)
      for (int32_t c = 0; c < s.len_q; ++c)
        p.lse[g.lse_index(b, h, s, c)] = w.l[c] > 0.0f ? w.m[c] + std::log(w.l[c]) : INFINITY;
  });
  return is_avx2(isa) ? kNaiveForwardAvx2 : kNaiveForwardPortable;
}

}  // namespace fa::cpu
