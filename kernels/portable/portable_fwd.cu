// portable_fwd.cu — the portable forward: one block per BM query rows of one (batch, query head), the sweep of
// portable_fwd.cuh over the rows' visible keys, O and LSE written in place (never split).
#include "portable_fwd.cuh"

namespace fa {
namespace portable {

template <typename T, typename C>
__global__ void __launch_bounds__(C::THREADS) forward_kernel(const Args a) {
  __shared__ FwdShared<T, C> sm;

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * C::BM;
  const Seq seq = sequence(a, b);
  if (m0 >= seq.len_q) return;  // varlen: this sequence is shorter than the longest one
  const int hk = h / a.group;
  const int i = m0 + threadIdx.x / C::LANES;
  const bool vec = a.vec16 != 0;
  const ScoreMod mod = score_mod(a, seq, b, h);

  const T* q = static_cast<const T*>(a.q.data) + head_base(a.q, seq, b, seq.q_token0, h);
  const T* k = static_cast<const T*>(a.k.data) + head_base(a.k, seq, b, seq.k_token0, hk);
  const T* v = static_cast<const T*>(a.v.data) + head_base(a.v, seq, b, seq.k_token0, hk);
  const int rows_q = min(C::BM, seq.len_q - m0);
  load_tile<T, C::D, C::BM, C::THREADS>(sm.q, q + m0 * a.q.row_stride, a.q.row_stride, rows_q, a.head_dim, vec);

  int n_begin, n_end;
  key_range(mod, m0, m0 + rows_q - 1, &n_begin, &n_end);
  RowState<C> st;
  sweep_keys<T, C>(sm, mod, i, n_begin, n_end,
                   [&](int n0, int rows_k) {
                     load_tile<T, C::D, C::BN, C::THREADS>(sm.k, k + n0 * a.k.row_stride, a.k.row_stride, rows_k,
                                                           a.head_dim, vec);
                     load_tile<T, C::D, C::BN, C::THREADS>(sm.v, v + n0 * a.v.row_stride, a.v.row_stride, rows_k,
                                                           a.head_dim, vec);
                   },
                   st);

  const float l = row_sum(st);
  if (i >= seq.len_q) return;
  T* out = static_cast<T*>(a.o.data) + head_base(a.o, seq, b, seq.q_token0, h) + static_cast<int64_t>(i) * a.o.row_stride;
  store_row(st, l, out, a.head_dim, vec);
  if (a.lse != nullptr && threadIdx.x % C::LANES == 0) a.lse[row_stat_index(a, seq, b, h, i)] = row_lse(st, l, INFINITY);
}

int32_t forward(fa_attn_params& p, const LaunchContext& ctx) {
  p.out_num_splits = 1;  // this path never splits the key range
  const Args a = make_args(p);
  return with_fwd_config(p.dtype, p.head_dim, [&](auto element, auto config) {
    using T = typename decltype(element)::type;
    using C = typename decltype(config)::type;
    const dim3 grid((a.seqlen_q + C::BM - 1) / C::BM, a.heads_q, a.batch);
    forward_kernel<T, C><<<grid, C::THREADS, 0, ctx.stream>>>(a);
    return check_launch("launching the portable forward kernel");
  });
}

}  // namespace portable
}  // namespace fa
