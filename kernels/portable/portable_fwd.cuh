// portable_fwd.cuh — the tiled FlashAttention forward sweep with scalar FMAs (no matrix instructions), shared by the
// portable forward (portable_fwd.cu) and the portable KV-cache attention (portable_kvcache.cu), which differ only in
// where their query rows and keys live and where the result goes.
//
// One block holds BM query rows:
//   Q tile  (BM x D)  in shared memory for the whole block,
//   K, V tiles (BN x D) streamed through shared memory over the block's key range,
//   S = Q K^T (BM x BN) in registers, online softmax in fp32:
//     m' = max(m, rowmax(S)),  alpha = exp(m - m'),  P = exp(S - m'),  l = alpha*l + rowsum(P),  O = alpha*O + P V
//     (rowsum(P) and P V summed per tile, then added: fp32 running sums keep their precision over long rows)
//   and at the end O /= l, LSE = m + log(l) (a row that saw no key: O = 0, LSE = +inf).
// Threads: THREADS = 128; LANES = THREADS / BM adjacent threads share one query row. Lane t of a row holds scores of
// keys t, t+LANES, ... and the O columns of 16-byte chunks t, t+LANES, ...; P goes through shared memory for P V.
#pragma once

#include <type_traits>

#include "portable.hpp"

namespace fa {
namespace portable {

template <int D_, int BM_, int BN_>
struct FwdConfig {
  static constexpr int D = D_, BM = BM_, BN = BN_, THREADS = 128;
  static constexpr int LANES = THREADS / BM;               // threads per query row
  static constexpr int SCORES = BN / LANES;                // scores per thread per K tile
  static constexpr int CHUNKS = TileShape<D>::chunks / LANES;  // 8-column chunks of O per thread
  static constexpr int LDS = TileShape<D>::stride;
  static_assert(THREADS % BM == 0 && BN % LANES == 0 && TileShape<D>::chunks % LANES == 0, "tile shape");
};
// Shared memory per config stays under the 48 KiB every CUDA and HIP GPU gives without opt-in:
//   D 64: 3 * 64 * 72 * 2 + 64 * 65 * 4 = 43.3 KiB;  D 128: (64 + 2 * 32) * 136 * 2 + 64 * 33 * 4 = 42.3 KiB;
//   D 256: (32 + 2 * 16) * 264 * 2 + 32 * 17 * 4 = 35.1 KiB.
using Fwd64 = FwdConfig<64, 64, 64>;
using Fwd128 = FwdConfig<128, 64, 32>;
using Fwd256 = FwdConfig<256, 32, 16>;

// A type as a value, to pick template arguments in a generic lambda.
template <typename T>
struct TypeTag {
  using type = T;
};

// Calls launch(TypeTag<element>, TypeTag<config>) with the element type of `dtype` (fp16 or bf16) and the smallest
// config whose D holds head_dim.
template <typename Launch>
int32_t with_fwd_config(int32_t dtype, int head_dim, Launch&& launch) {
  auto for_dim = [&](auto element) {
    if (head_dim <= 64) return launch(element, TypeTag<Fwd64>{});
    if (head_dim <= 128) return launch(element, TypeTag<Fwd128>{});
    return launch(element, TypeTag<Fwd256>{});
  };
  return dtype == FA_DTYPE_F16 ? for_dim(TypeTag<half_t>{}) : for_dim(TypeTag<bf16_t>{});
}

template <typename T, typename C>
struct FwdShared {
  __align__(16) T q[C::BM * C::LDS];
  __align__(16) T k[C::BN * C::LDS];
  __align__(16) T v[C::BN * C::LDS];
  float p[C::BM][C::BN + 1];
};

// One thread's share of its query row: O columns, running max, and its lanes' part of the row sum.
template <typename C>
struct RowState {
  float o[C::CHUNKS * 8];
  float m_run = -INFINITY, l_part = 0.f;
  __device__ RowState() {
#pragma unroll
    for (int x = 0; x < C::CHUNKS * 8; ++x) o[x] = 0.f;
  }
};

// The online-softmax sweep of every row of the block over keys [n_begin, n_end) (the same range for the whole block:
// it synchronises). sm.q holds the block's query rows; load_kv(n0, rows) fills sm.k and sm.v with keys n0.. (rows past
// `rows` zero-filled). `i` is this thread's query index and `mod` its row's score rule.
template <typename T, typename C, typename LoadKV>
__device__ inline void sweep_keys(FwdShared<T, C>& sm, const ScoreMod& mod, int i, int n_begin, int n_end, LoadKV load_kv,
                                  RowState<C>& st) {
  constexpr int LDS = C::LDS;
  const int row = threadIdx.x / C::LANES, lane = threadIdx.x % C::LANES;
  for (int n0 = n_begin; n0 < n_end; n0 += C::BN) {
    __syncthreads();  // the previous tile's readers are done with sm.k, sm.v, sm.p
    load_kv(n0, min(C::BN, n_end - n0));
    __syncthreads();

    // S[row][lane + s * LANES] = Q[row] . K[lane + s * LANES], over 16-byte chunks of the head dimension.
    float s[C::SCORES];
#pragma unroll
    for (int x = 0; x < C::SCORES; ++x) s[x] = 0.f;
#pragma unroll 1
    for (int c = 0; c < TileShape<C::D>::chunks; ++c) {
      const uint4 q8 = *reinterpret_cast<const uint4*>(sm.q + row * LDS + c * 8);
#pragma unroll
      for (int x = 0; x < C::SCORES; ++x)
        s[x] += dot8<T>(q8, *reinterpret_cast<const uint4*>(sm.k + (lane + x * C::LANES) * LDS + c * 8));
    }
    float tile_max = -INFINITY;
#pragma unroll
    for (int x = 0; x < C::SCORES; ++x) {
      const int j = n0 + lane + x * C::LANES;
      float unused_grad;
      s[x] = mod.visible(i, j) ? mod.apply(s[x], i, j, &unused_grad) : -INFINITY;
      tile_max = fmaxf(tile_max, s[x]);
    }
    const float m_new = fmaxf(st.m_run, lanes_max<C::LANES>(tile_max));
    const float m_safe = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: keep exp() finite and P = 0
    const float alpha = __expf(st.m_run - m_safe);
    float p_sum = 0.f;
#pragma unroll
    for (int x = 0; x < C::SCORES; ++x) {
      const float p = __expf(s[x] - m_safe);
      sm.p[row][lane + x * C::LANES] = p;
      p_sum += p;
    }
    st.l_part = st.l_part * alpha + p_sum;
    st.m_run = m_new;
    __syncthreads();

    // O[row][chunk] = alpha O[row][chunk] + sum_j P[row][j] * V[j][chunk]. The tile's sum starts from zero and is
    // added to O once: added key by key, an fp32 O stops growing once it holds 2^24 keys' worth (2^25 equal keys gave
    // half the right value).
    float pv[C::CHUNKS * 8];
#pragma unroll
    for (int x = 0; x < C::CHUNKS * 8; ++x) pv[x] = 0.f;
#pragma unroll 2
    for (int j = 0; j < C::BN; ++j) {
      const float p = sm.p[row][j];
#pragma unroll
      for (int x = 0; x < C::CHUNKS; ++x) {
        float v8[8];
        unpack8<T>(*reinterpret_cast<const uint4*>(sm.v + j * LDS + (lane + x * C::LANES) * 8), v8);
#pragma unroll
        for (int e = 0; e < 8; ++e) pv[x * 8 + e] = fmaf(p, v8[e], pv[x * 8 + e]);
      }
    }
#pragma unroll
    for (int x = 0; x < C::CHUNKS * 8; ++x) st.o[x] = fmaf(st.o[x], alpha, pv[x]);
  }
}

// The row sum over the row's lanes (every thread of the block must call it: it shuffles).
template <typename C>
__device__ inline float row_sum(const RowState<C>& st) {
  return lanes_sum<C::LANES>(st.l_part);
}

// Writes this thread's columns of O / l (l = row_sum; 0 leaves a zero row) to `out`: the dtype (16-byte stores when
// vec16) or fp32.
template <typename C, typename Out>
__device__ inline void store_row(const RowState<C>& st, float l, Out* out, int head_dim, bool vec16) {
  const int lane = threadIdx.x % C::LANES;
  const float inv_l = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int x = 0; x < C::CHUNKS; ++x) {
    const int col = (lane + x * C::LANES) * 8;
    if (col >= head_dim) continue;
    float r[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) r[e] = st.o[x * 8 + e] * inv_l;
    if constexpr (std::is_same<Out, float>::value) {  // fp32 partials: plain stores
#pragma unroll
      for (int e = 0; e < 8; ++e) out[col + e] = r[e];
    } else {
      store8_global(out + col, r, vec16);
    }
  }
}

// The row's log-sum-exp, or `empty` for a row that saw no key.
template <typename C>
__device__ inline float row_lse(const RowState<C>& st, float l, float empty) {
  return l > 0.f ? st.m_run + __logf(l) : empty;
}

}  // namespace portable
}  // namespace fa
