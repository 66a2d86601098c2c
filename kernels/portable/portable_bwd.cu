// portable_bwd.cu — tiled FlashAttention backward with scalar FMAs (no matrix instructions, no atomics), for any GPU.
//
// Three launches on the caller's stream, all deterministic (every output element is written by one thread, sums run
// in a fixed order), so the `deterministic` flag is always honoured:
//   1. dsum_kernel:  D[i] = sum_d dO[i][d] * O[i][d]                      (fp32, lse layout, library workspace)
//   2. dkdv_kernel:  one block per BN keys of one kv head; loops over the query heads of its GQA group and the query
//                    tiles that can see those keys:  P = exp(S - LSE) (recomputed), dP = dO V^T,
//                    dS = P * (dP - D) * dscore/d(q.k),  dV += P^T dO,  dK += dS^T Q
//   3. dq_kernel:    one block per BM query rows of one query head; loops over the visible key tiles:
//                    the same P, dS, then dQ += dS K
// A row whose LSE is +inf (it saw no key) has P = 0 and contributes nothing; its dQ row is 0.
#include "portable.hpp"

namespace fa {
namespace portable {

template <int D_, int BM_, int BN_>
struct BwdConfig {
  static constexpr int D = D_, BM = BM_, BN = BN_, THREADS = 128;
  static constexpr int PAIR_LANES = THREADS / BM;                     // threads per query row (pairs stage, dQ)
  static constexpr int PAIRS = BN / PAIR_LANES;                       // keys per thread in the pairs stage
  static constexpr int KEY_LANES = THREADS / BN;                      // threads per key row (dK, dV)
  static constexpr int DQ_CHUNKS = TileShape<D>::chunks / PAIR_LANES;  // 8-column chunks of dQ per thread
  static constexpr int DKV_CHUNKS = TileShape<D>::chunks / KEY_LANES;  // 8-column chunks of dK and dV per thread
  static_assert(THREADS % BM == 0 && THREADS % BN == 0 && BN % PAIR_LANES == 0, "tile shape");
  static_assert(TileShape<D>::chunks % PAIR_LANES == 0 && TileShape<D>::chunks % KEY_LANES == 0, "tile shape");
};
// Shared memory (BwdSmem) per config, under 48 KiB: D 64: (2*32 + 2*64) * 72 * 2 + 2 * 32 * 65 * 4 = 43.6 KiB;
// D 128: 4 * 32 * 136 * 2 + 2 * 32 * 33 * 4 = 42.3 KiB; D 256: 4 * 16 * 264 * 2 + 2 * 16 * 17 * 4 = 35.1 KiB.
// Accumulators per thread: 64 floats (dK + dV) in dkdv_kernel, 16..32 floats in dq_kernel.
using Bwd64 = BwdConfig<64, 32, 64>;
using Bwd128 = BwdConfig<128, 32, 32>;
using Bwd256 = BwdConfig<256, 16, 16>;

template <typename T, typename C>
struct BwdSmem {
  static constexpr int LDS = TileShape<C::D>::stride;
  __align__(16) T q[C::BM * LDS];
  __align__(16) T dout[C::BM * LDS];
  __align__(16) T k[C::BN * LDS];
  __align__(16) T v[C::BN * LDS];
  float p[C::BM][C::BN + 1];
  float ds[C::BM][C::BN + 1];
  float lse[C::BM];
  float dsum[C::BM];
};

// Loads LSE and D of query rows m0 .. m0 + rows_valid - 1; rows past that get LSE = -inf, i.e. P = 0.
template <typename T, typename C>
__device__ inline void load_row_stats(BwdSmem<T, C>& sm, const Args& a, const Seq& seq, int b, int h, int m0, int rows_valid) {
  for (int r = threadIdx.x; r < C::BM; r += C::THREADS) {
    const bool live = r < rows_valid;
    const int64_t idx = row_stat_index(a, seq, b, h, m0 + r);
    sm.lse[r] = live ? a.lse[idx] : -INFINITY;
    sm.dsum[r] = live ? a.dsum[idx] : 0.f;
  }
}

// The pairs stage for query rows m0.. (sm.q, sm.dout, sm.lse, sm.dsum) against key rows n0.. (sm.k, sm.v):
// thread (row, lane) handles keys lane, lane + PAIR_LANES, ...; writes P (when STORE_P) and dS.
template <typename T, typename C, bool STORE_P>
__device__ inline void pairs_stage(BwdSmem<T, C>& sm, const ScoreMod& mod, int m0, int n0) {
  constexpr int LDS = BwdSmem<T, C>::LDS;
  const int row = threadIdx.x / C::PAIR_LANES, lane = threadIdx.x % C::PAIR_LANES;
  float s[C::PAIRS], dp[C::PAIRS];
#pragma unroll
  for (int x = 0; x < C::PAIRS; ++x) s[x] = dp[x] = 0.f;
#pragma unroll 1
  for (int c = 0; c < TileShape<C::D>::chunks; ++c) {
    const uint4 q8 = *reinterpret_cast<const uint4*>(sm.q + row * LDS + c * 8);
    const uint4 do8 = *reinterpret_cast<const uint4*>(sm.dout + row * LDS + c * 8);
#pragma unroll
    for (int x = 0; x < C::PAIRS; ++x) {
      const int key = lane + x * C::PAIR_LANES;
      s[x] += dot8<T>(q8, *reinterpret_cast<const uint4*>(sm.k + key * LDS + c * 8));
      dp[x] += dot8<T>(do8, *reinterpret_cast<const uint4*>(sm.v + key * LDS + c * 8));
    }
  }
  const int i = m0 + row;
  const float lse = sm.lse[row], dsum = sm.dsum[row];
#pragma unroll
  for (int x = 0; x < C::PAIRS; ++x) {
    const int key = lane + x * C::PAIR_LANES, j = n0 + key;
    float p = 0.f, ds = 0.f;
    if (!isinf(lse) && mod.visible(i, j)) {
      float dscore_ddot;
      const float score = mod.apply(s[x], i, j, &dscore_ddot);
      p = __expf(score - lse);
      ds = p * (dp[x] - dsum) * dscore_ddot;
    }
    if (STORE_P) sm.p[row][key] = p;
    sm.ds[row][key] = ds;
  }
}

// 16 rows x 8 lanes per block; lane t sums chunks t, t + 8, ... of dO[i] * O[i].
constexpr int kDsumLanes = 8, kDsumRows = 128 / kDsumLanes;

template <typename T>
__global__ void __launch_bounds__(128) dsum_kernel(const Args a) {
  const int b = blockIdx.z, h = blockIdx.y;
  const Seq seq = sequence(a, b);
  if (blockIdx.x * kDsumRows >= seq.len_q) return;
  const int i = blockIdx.x * kDsumRows + threadIdx.x / kDsumLanes, lane = threadIdx.x % kDsumLanes;
  const bool vec = a.vec16 != 0;
  float acc = 0.f;
  if (i < seq.len_q) {
    const T* dout = static_cast<const T*>(a.dout.data) + head_base(a.dout, seq, b, seq.q_token0, h) + i * a.dout.row_stride;
    const T* o = static_cast<const T*>(a.o.data) + head_base(a.o, seq, b, seq.q_token0, h) + i * a.o.row_stride;
    for (int c = lane; c < a.head_dim / 8; c += kDsumLanes) acc += dot8<T>(load8_global(dout + c * 8, vec), load8_global(o + c * 8, vec));
  }
  acc = lanes_sum<kDsumLanes>(acc);
  if (i < seq.len_q && lane == 0) a.dsum[row_stat_index(a, seq, b, h, i)] = acc;
}

template <typename T, int CHUNKS, int LANES>
__device__ inline void store_row(T* dst, const float (&acc)[CHUNKS * 8], int lane, int head_dim, bool vec) {
#pragma unroll
  for (int x = 0; x < CHUNKS; ++x) {
    const int col = (lane + x * LANES) * 8;
    if (col >= head_dim) continue;
    float r[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) r[e] = acc[x * 8 + e];
    store8_global(dst + col, r, vec);
  }
}

template <typename T, typename C>
__global__ void __launch_bounds__(C::THREADS) dkdv_kernel(const Args a) {
  constexpr int LDS = BwdSmem<T, C>::LDS;
  __shared__ BwdSmem<T, C> sm;
  const int b = blockIdx.z, hk = blockIdx.y, n0 = blockIdx.x * C::BN;
  const Seq seq = sequence(a, b);
  if (n0 >= seq.len_k) return;
  const bool vec = a.vec16 != 0;
  const int rows_k = min(C::BN, seq.len_k - n0);
  const T* k = static_cast<const T*>(a.k.data) + head_base(a.k, seq, b, seq.k_token0, hk) + n0 * a.k.row_stride;
  const T* v = static_cast<const T*>(a.v.data) + head_base(a.v, seq, b, seq.k_token0, hk) + n0 * a.v.row_stride;
  load_tile<T, C::D, C::BN, C::THREADS>(sm.k, k, a.k.row_stride, rows_k, a.head_dim, vec);
  load_tile<T, C::D, C::BN, C::THREADS>(sm.v, v, a.v.row_stride, rows_k, a.head_dim, vec);

  const int key_row = threadIdx.x / C::KEY_LANES, key_lane = threadIdx.x % C::KEY_LANES;
  float dk[C::DKV_CHUNKS * 8], dv[C::DKV_CHUNKS * 8];
#pragma unroll
  for (int x = 0; x < C::DKV_CHUNKS * 8; ++x) dk[x] = dv[x] = 0.f;

  for (int h = hk * a.group; h < (hk + 1) * a.group; ++h) {  // GQA: dK, dV sum over the group's query heads
    const ScoreMod mod = score_mod(a, seq, b, h);
    int i_begin, i_end;
    query_range(mod, seq.len_q, n0, n0 + rows_k - 1, &i_begin, &i_end);
    const T* q = static_cast<const T*>(a.q.data) + head_base(a.q, seq, b, seq.q_token0, h);
    const T* dout = static_cast<const T*>(a.dout.data) + head_base(a.dout, seq, b, seq.q_token0, h);
    for (int m0 = i_begin; m0 < i_end; m0 += C::BM) {
      __syncthreads();  // the previous tile's readers are done with sm.q, sm.dout, sm.p, sm.ds
      const int rows_q = min(C::BM, i_end - m0);
      load_tile<T, C::D, C::BM, C::THREADS>(sm.q, q + m0 * a.q.row_stride, a.q.row_stride, rows_q, a.head_dim, vec);
      load_tile<T, C::D, C::BM, C::THREADS>(sm.dout, dout + m0 * a.dout.row_stride, a.dout.row_stride, rows_q, a.head_dim, vec);
      load_row_stats(sm, a, seq, b, h, m0, rows_q);
      __syncthreads();
      pairs_stage<T, C, true>(sm, mod, m0, n0);
      __syncthreads();
      // dV[key] += sum_r P[r][key] dO[r];  dK[key] += sum_r dS[r][key] Q[r]
#pragma unroll 2
      for (int r = 0; r < C::BM; ++r) {
        const float p = sm.p[r][key_row], ds = sm.ds[r][key_row];
#pragma unroll
        for (int x = 0; x < C::DKV_CHUNKS; ++x) {
          const int col = (key_lane + x * C::KEY_LANES) * 8;
          float do8[8], q8[8];
          unpack8<T>(*reinterpret_cast<const uint4*>(sm.dout + r * LDS + col), do8);
          unpack8<T>(*reinterpret_cast<const uint4*>(sm.q + r * LDS + col), q8);
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            dv[x * 8 + e] = fmaf(p, do8[e], dv[x * 8 + e]);
            dk[x * 8 + e] = fmaf(ds, q8[e], dk[x * 8 + e]);
          }
        }
      }
    }
  }
  if (key_row >= rows_k) return;
  T* dk_out = static_cast<T*>(a.dk.data) + head_base(a.dk, seq, b, seq.k_token0, hk) + (n0 + key_row) * a.dk.row_stride;
  T* dv_out = static_cast<T*>(a.dv.data) + head_base(a.dv, seq, b, seq.k_token0, hk) + (n0 + key_row) * a.dv.row_stride;
  store_row<T, C::DKV_CHUNKS, C::KEY_LANES>(dk_out, dk, key_lane, a.head_dim, vec);
  store_row<T, C::DKV_CHUNKS, C::KEY_LANES>(dv_out, dv, key_lane, a.head_dim, vec);
}

template <typename T, typename C>
__global__ void __launch_bounds__(C::THREADS) dq_kernel(const Args a) {
  constexpr int LDS = BwdSmem<T, C>::LDS;
  __shared__ BwdSmem<T, C> sm;
  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * C::BM;
  const Seq seq = sequence(a, b);
  if (m0 >= seq.len_q) return;
  const int hk = h / a.group;
  const bool vec = a.vec16 != 0;
  const ScoreMod mod = score_mod(a, seq, b, h);
  const int rows_q = min(C::BM, seq.len_q - m0);
  const T* q = static_cast<const T*>(a.q.data) + head_base(a.q, seq, b, seq.q_token0, h) + m0 * a.q.row_stride;
  const T* dout = static_cast<const T*>(a.dout.data) + head_base(a.dout, seq, b, seq.q_token0, h) + m0 * a.dout.row_stride;
  load_tile<T, C::D, C::BM, C::THREADS>(sm.q, q, a.q.row_stride, rows_q, a.head_dim, vec);
  load_tile<T, C::D, C::BM, C::THREADS>(sm.dout, dout, a.dout.row_stride, rows_q, a.head_dim, vec);
  load_row_stats(sm, a, seq, b, h, m0, rows_q);

  int n_begin, n_end;
  key_range(mod, m0, m0 + rows_q - 1, &n_begin, &n_end);
  const T* k = static_cast<const T*>(a.k.data) + head_base(a.k, seq, b, seq.k_token0, hk);
  const T* v = static_cast<const T*>(a.v.data) + head_base(a.v, seq, b, seq.k_token0, hk);
  const int row = threadIdx.x / C::PAIR_LANES, lane = threadIdx.x % C::PAIR_LANES;
  float dq[C::DQ_CHUNKS * 8];
#pragma unroll
  for (int x = 0; x < C::DQ_CHUNKS * 8; ++x) dq[x] = 0.f;

  for (int n0 = n_begin; n0 < n_end; n0 += C::BN) {
    __syncthreads();  // the previous tile's readers are done with sm.k, sm.v, sm.ds
    const int rows_k = min(C::BN, n_end - n0);
    load_tile<T, C::D, C::BN, C::THREADS>(sm.k, k + n0 * a.k.row_stride, a.k.row_stride, rows_k, a.head_dim, vec);
    load_tile<T, C::D, C::BN, C::THREADS>(sm.v, v + n0 * a.v.row_stride, a.v.row_stride, rows_k, a.head_dim, vec);
    __syncthreads();
    pairs_stage<T, C, false>(sm, mod, m0, n0);
    __syncthreads();
    // dQ[row] += sum_j dS[row][j] K[j]
#pragma unroll 2
    for (int j = 0; j < C::BN; ++j) {
      const float ds = sm.ds[row][j];
#pragma unroll
      for (int x = 0; x < C::DQ_CHUNKS; ++x) {
        float k8[8];
        unpack8<T>(*reinterpret_cast<const uint4*>(sm.k + j * LDS + (lane + x * C::PAIR_LANES) * 8), k8);
#pragma unroll
        for (int e = 0; e < 8; ++e) dq[x * 8 + e] = fmaf(ds, k8[e], dq[x * 8 + e]);
      }
    }
  }
  if (row >= rows_q) return;
  T* dq_out = static_cast<T*>(a.dq.data) + head_base(a.dq, seq, b, seq.q_token0, h) + (m0 + row) * a.dq.row_stride;
  store_row<T, C::DQ_CHUNKS, C::PAIR_LANES>(dq_out, dq, lane, a.head_dim, vec);
}

template <typename T, typename C>
static int32_t launch(const Args& a, gpuStream_t stream) {
  const dim3 dsum_grid((a.seqlen_q + kDsumRows - 1) / kDsumRows, a.heads_q, a.batch);
  dsum_kernel<T><<<dsum_grid, 128, 0, stream>>>(a);
  if (int32_t st = check_launch("launching the portable backward dO.O kernel")) return st;
  if (a.seqlen_k > 0) {  // no keys: dK and dV are empty
    const dim3 dkdv_grid((a.seqlen_k + C::BN - 1) / C::BN, a.heads_kv, a.batch);
    dkdv_kernel<T, C><<<dkdv_grid, C::THREADS, 0, stream>>>(a);
    if (int32_t st = check_launch("launching the portable backward dK/dV kernel")) return st;
  }
  const dim3 dq_grid((a.seqlen_q + C::BM - 1) / C::BM, a.heads_q, a.batch);
  dq_kernel<T, C><<<dq_grid, C::THREADS, 0, stream>>>(a);
  return check_launch("launching the portable backward dQ kernel");
}

template <typename T>
static int32_t launch_for_dim(const Args& a, gpuStream_t stream) {
  if (a.head_dim <= 64) return launch<T, Bwd64>(a, stream);
  if (a.head_dim <= 128) return launch<T, Bwd128>(a, stream);
  return launch<T, Bwd256>(a, stream);
}

int32_t backward(fa_attn_params& p, const LaunchContext& ctx) {
  Args a = make_args(p);
  // D has the lse layout: varlen (heads_q, total_q), padded (batch, heads_q, seqlen_q). Three int32 factors can
  // overflow 64 bits, so the size is checked before it reaches the allocator.
  const uint64_t rows_per_head = is_varlen(p) ? static_cast<uint64_t>(p.total_q)
                                              : static_cast<uint64_t>(p.batch) * static_cast<uint64_t>(p.seqlen_q);
  uint64_t rows = 0, bytes = 0;
  if (__builtin_mul_overflow(rows_per_head, static_cast<uint64_t>(p.heads_q), &rows) ||
      __builtin_mul_overflow(rows, static_cast<uint64_t>(sizeof(float)), &bytes))
    return fail(FA_ERR_INVALID_ARGUMENT, "the backward row statistics (heads x rows x 4 bytes) overflow 64 bits");
  a.dsum = static_cast<float*>(ctx.workspace.get(kWorkspaceSlotDsum, bytes > 0 ? bytes : sizeof(float)));
  if (a.dsum == nullptr) return FA_ERR_OUT_OF_MEMORY;  // the workspace has set the message
  return p.dtype == FA_DTYPE_F16 ? launch_for_dim<half_t>(a, ctx.stream) : launch_for_dim<bf16_t>(a, ctx.stream);
}

}  // namespace portable
}  // namespace fa
