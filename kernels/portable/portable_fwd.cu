// portable_fwd.cu — tiled FlashAttention forward with scalar FMAs (no matrix instructions), for any GPU.
//
// One block computes BM query rows of one (batch, query head):
//   Q tile  (BM x D)  in shared memory for the whole block,
//   K, V tiles (BN x D) streamed through shared memory over the visible key range,
//   S = Q K^T (BM x BN) in registers, online softmax in fp32:
//     m' = max(m, rowmax(S)),  alpha = exp(m - m'),  P = exp(S - m'),  l = alpha*l + rowsum(P),  O = alpha*O + P V
//     (rowsum(P) and P V summed per tile, then added: fp32 running sums keep their precision over long rows)
//   and at the end O /= l, LSE = m + log(l) (a row that saw no key: O = 0, LSE = +inf).
// Threads: THREADS = 128; LANES = THREADS / BM adjacent threads share one query row. Lane t of a row holds scores of
// keys t, t+LANES, ... and the O columns of 16-byte chunks t, t+LANES, ...; P goes through shared memory for P V.
#include "portable.hpp"

namespace fa {
namespace portable {

template <int D_, int BM_, int BN_>
struct FwdConfig {
  static constexpr int D = D_, BM = BM_, BN = BN_, THREADS = 128;
  static constexpr int LANES = THREADS / BM;               // threads per query row
  static constexpr int SCORES = BN / LANES;                // scores per thread per K tile
  static constexpr int CHUNKS = TileShape<D>::chunks / LANES;  // 8-column chunks of O per thread
  static_assert(THREADS % BM == 0 && BN % LANES == 0 && TileShape<D>::chunks % LANES == 0, "tile shape");
};
// Shared memory per config stays under the 48 KiB every CUDA and HIP GPU gives without opt-in:
//   D 64: 3 * 64 * 72 * 2 + 64 * 65 * 4 = 43.3 KiB;  D 128: (64 + 2 * 32) * 136 * 2 + 64 * 33 * 4 = 42.3 KiB;
//   D 256: (32 + 2 * 16) * 264 * 2 + 32 * 17 * 4 = 35.1 KiB.
using Fwd64 = FwdConfig<64, 64, 64>;
using Fwd128 = FwdConfig<128, 64, 32>;
using Fwd256 = FwdConfig<256, 32, 16>;

template <typename T, typename C>
__global__ void __launch_bounds__(C::THREADS) forward_kernel(const Args a) {
  constexpr int LDS = TileShape<C::D>::stride;
  __shared__ __align__(16) T sQ[C::BM * LDS];
  __shared__ __align__(16) T sK[C::BN * LDS];
  __shared__ __align__(16) T sV[C::BN * LDS];
  __shared__ float sP[C::BM][C::BN + 1];

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * C::BM;
  const Seq seq = sequence(a, b);
  if (m0 >= seq.len_q) return;  // varlen: this sequence is shorter than the longest one
  const int hk = h / a.group;
  const int row = threadIdx.x / C::LANES, lane = threadIdx.x % C::LANES;
  const int i = m0 + row;
  const bool vec = a.vec16 != 0;
  const ScoreMod mod = score_mod(a, seq, b, h);

  const T* q = static_cast<const T*>(a.q.data) + head_base(a.q, seq, b, seq.q_token0, h);
  const T* k = static_cast<const T*>(a.k.data) + head_base(a.k, seq, b, seq.k_token0, hk);
  const T* v = static_cast<const T*>(a.v.data) + head_base(a.v, seq, b, seq.k_token0, hk);
  const int rows_q = min(C::BM, seq.len_q - m0);
  load_tile<T, C::D, C::BM, C::THREADS>(sQ, q + m0 * a.q.row_stride, a.q.row_stride, rows_q, a.head_dim, vec);

  int n_begin, n_end;
  key_range(mod, m0, m0 + rows_q - 1, &n_begin, &n_end);

  float o[C::CHUNKS * 8];
#pragma unroll
  for (int x = 0; x < C::CHUNKS * 8; ++x) o[x] = 0.f;
  float m_run = -INFINITY, l_part = 0.f;  // l_part: this lane's share of the row sum (same rescaling on every lane)

  for (int n0 = n_begin; n0 < n_end; n0 += C::BN) {
    __syncthreads();  // the previous tile's readers are done with sK, sV, sP
    const int rows_k = min(C::BN, n_end - n0);
    load_tile<T, C::D, C::BN, C::THREADS>(sK, k + n0 * a.k.row_stride, a.k.row_stride, rows_k, a.head_dim, vec);
    load_tile<T, C::D, C::BN, C::THREADS>(sV, v + n0 * a.v.row_stride, a.v.row_stride, rows_k, a.head_dim, vec);
    __syncthreads();

    // S[row][lane + s * LANES] = Q[row] . K[lane + s * LANES], over 16-byte chunks of the head dimension.
    float s[C::SCORES];
#pragma unroll
    for (int x = 0; x < C::SCORES; ++x) s[x] = 0.f;
#pragma unroll 1
    for (int c = 0; c < TileShape<C::D>::chunks; ++c) {
      const uint4 q8 = *reinterpret_cast<const uint4*>(sQ + row * LDS + c * 8);
#pragma unroll
      for (int x = 0; x < C::SCORES; ++x)
        s[x] += dot8<T>(q8, *reinterpret_cast<const uint4*>(sK + (lane + x * C::LANES) * LDS + c * 8));
    }
    float tile_max = -INFINITY;
#pragma unroll
    for (int x = 0; x < C::SCORES; ++x) {
      const int j = n0 + lane + x * C::LANES;
      float unused_grad;
      s[x] = mod.visible(i, j) ? mod.apply(s[x], i, j, &unused_grad) : -INFINITY;
      tile_max = fmaxf(tile_max, s[x]);
    }
    const float m_new = fmaxf(m_run, lanes_max<C::LANES>(tile_max));
    const float m_safe = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: keep exp() finite and P = 0
    const float alpha = __expf(m_run - m_safe);
    float p_sum = 0.f;
#pragma unroll
    for (int x = 0; x < C::SCORES; ++x) {
      const float p = __expf(s[x] - m_safe);
      sP[row][lane + x * C::LANES] = p;
      p_sum += p;
    }
    l_part = l_part * alpha + p_sum;
    m_run = m_new;
    __syncthreads();

    // O[row][chunk] = alpha O[row][chunk] + sum_j P[row][j] * V[j][chunk]. The tile's sum starts from zero and is
    // added to O once: added key by key, an fp32 O stops growing once it holds 2^24 keys' worth (2^25 equal keys gave
    // half the right value).
    float pv[C::CHUNKS * 8];
#pragma unroll
    for (int x = 0; x < C::CHUNKS * 8; ++x) pv[x] = 0.f;
#pragma unroll 2
    for (int j = 0; j < C::BN; ++j) {
      const float p = sP[row][j];
#pragma unroll
      for (int x = 0; x < C::CHUNKS; ++x) {
        float v8[8];
        unpack8<T>(*reinterpret_cast<const uint4*>(sV + j * LDS + (lane + x * C::LANES) * 8), v8);
#pragma unroll
        for (int e = 0; e < 8; ++e) pv[x * 8 + e] = fmaf(p, v8[e], pv[x * 8 + e]);
      }
    }
#pragma unroll
    for (int x = 0; x < C::CHUNKS * 8; ++x) o[x] = fmaf(o[x], alpha, pv[x]);
  }

  const float l = lanes_sum<C::LANES>(l_part);
  if (i >= seq.len_q) return;
  const float inv_l = l > 0.f ? 1.f / l : 0.f;
  T* out = static_cast<T*>(a.o.data) + head_base(a.o, seq, b, seq.q_token0, h) + static_cast<int64_t>(i) * a.o.row_stride;
#pragma unroll
  for (int x = 0; x < C::CHUNKS; ++x) {
    const int col = (lane + x * C::LANES) * 8;
    if (col >= a.head_dim) continue;
    float r[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) r[e] = o[x * 8 + e] * inv_l;
    store8_global(out + col, r, vec);
  }
  if (a.lse != nullptr && lane == 0) a.lse[row_stat_index(a, seq, b, h, i)] = l > 0.f ? m_run + __logf(l) : INFINITY;
}

template <typename T, typename C>
static int32_t launch(const Args& a, gpuStream_t stream) {
  const dim3 grid((a.seqlen_q + C::BM - 1) / C::BM, a.heads_q, a.batch);
  forward_kernel<T, C><<<grid, C::THREADS, 0, stream>>>(a);
  return check_launch("launching the portable forward kernel");
}

template <typename T>
static int32_t launch_for_dim(const Args& a, gpuStream_t stream) {
  if (a.head_dim <= 64) return launch<T, Fwd64>(a, stream);
  if (a.head_dim <= 128) return launch<T, Fwd128>(a, stream);
  return launch<T, Fwd256>(a, stream);
}

int32_t forward(fa_attn_params& p, const LaunchContext& ctx) {
  p.out_num_splits = 1;  // this path never splits the key range
  const Args a = make_args(p);
  return p.dtype == FA_DTYPE_F16 ? launch_for_dim<half_t>(a, ctx.stream) : launch_for_dim<bf16_t>(a, ctx.stream);
}

}  // namespace portable
}  // namespace fa
