// mfma_fwd.cu — FlashAttention forward on CDNA matrix cores (gfx90a, gfx94x), HIP build only.
//
// NEVER RUN: no AMD GPU was reachable while this was written; it compiles for gfx90a and its logic mirrors
// portable_fwd.cu (same Args, ScoreMod, key range, online softmax), with the two matrix products done by
//   __builtin_amdgcn_mfma_f32_16x16x16f16 / __builtin_amdgcn_mfma_f32_16x16x16bf16_1k   (D = A(16x16) B(16x16) + C).
// Operand layout of the 16x16x16 MFMA for lane l of the 64-lane wavefront (col = l % 16, quad = l / 16):
//   A[m][k]: lane (m + 16 * (k / 4)) holds element k % 4  ->  lane l holds A[col][4 * quad + 0..3]
//   B[k][n]: lane (n + 16 * (k / 4)) holds element k % 4  ->  lane l holds B[4 * quad + 0..3][col]
//   D[m][n]: lane (n + 16 * (m / 4)) holds element m % 4  ->  lane l holds D[4 * quad + 0..3][col]
//
// Block: 4 wavefronts, 64 query rows of one (batch, query head); wavefront w owns rows 16w .. 16w + 15.
//   Q: each lane keeps its A operands (row col, all head-dim chunks) in registers for the whole block.
//   K, V tiles of BN = 32 keys go through shared memory (load_tile of portable_common.cuh, zero-padded).
//   S (16 x 32 per wavefront)  = sum over 16-wide head-dim chunks kc of MFMA(Q[:, kc], K^T[kc, :])
//   online softmax in fp32 on the D layout: lane l holds rows 4*quad + e (e = 0..3) for key column col of each
//   16-key block, so a row max/sum is a reduction over the 16 lanes of one quad (xor shuffles 1, 2, 4, 8).
//   P goes to shared memory as T (the D layout is not the A layout), then O(16 x D) += MFMA(P, V) per 16-wide
//   head-dim block; O stays in the D layout, whose rows are the rows of the lane's softmax statistics.
#include "../portable/portable.hpp"

namespace fa {
namespace hip_mfma {

using portable::Args;

#if defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__)
#define FA_MFMA_DEVICE 1
#endif

typedef float floatx4 __attribute__((ext_vector_type(4)));
typedef _Float16 halfx4 __attribute__((ext_vector_type(4)));
typedef short shortx4 __attribute__((ext_vector_type(4)));

// Four consecutive 16-bit elements as raw bits (one MFMA operand).
struct Raw4 {
  uint2 bits;
};

template <typename T>
__device__ inline Raw4 raw4_from(const T (&e)[4]) {
  Raw4 r;
  __builtin_memcpy(&r.bits, e, sizeof r.bits);
  return r;
}

// acc += A(16x16) B(16x16) for one pair of operands in the layouts above.
template <typename T>
__device__ inline floatx4 mfma16(const Raw4& a, const Raw4& b, const floatx4& acc);

#ifdef FA_MFMA_DEVICE
template <>
__device__ inline floatx4 mfma16<half_t>(const Raw4& a, const Raw4& b, const floatx4& acc) {
  halfx4 av, bv;
  __builtin_memcpy(&av, &a.bits, sizeof av);
  __builtin_memcpy(&bv, &b.bits, sizeof bv);
  return __builtin_amdgcn_mfma_f32_16x16x16f16(av, bv, acc, 0, 0, 0);
}
template <>
__device__ inline floatx4 mfma16<bf16_t>(const Raw4& a, const Raw4& b, const floatx4& acc) {
  shortx4 av, bv;
  __builtin_memcpy(&av, &a.bits, sizeof av);
  __builtin_memcpy(&bv, &b.bits, sizeof bv);
  return __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(av, bv, acc, 0, 0, 0);
}
#endif

constexpr int kWaves = 4, kThreads = 64 * kWaves, kRowsPerWave = 16, kBM = kWaves * kRowsPerWave, kBN = 32;

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) mfma_forward_kernel(const Args a) {
#ifdef FA_MFMA_DEVICE
  constexpr int LDS = portable::TileShape<D>::stride;
  constexpr int KC = D / 16;        // 16-wide head-dim chunks (MFMA K for S, MFMA N blocks for O)
  constexpr int NB = kBN / 16;      // 16-key blocks per tile
  constexpr int P_LDS = kBN + 8;    // padded row of the P staging buffer
  __shared__ __align__(16) T sK[kBN * LDS];
  __shared__ __align__(16) T sV[kBN * LDS];
  __shared__ __align__(16) T sP[kWaves][kRowsPerWave * P_LDS];

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kBM;
  const portable::Seq seq = portable::sequence(a, b);
  if (m0 >= seq.len_q) return;
  const int hk = h / a.group;
  const int wave = threadIdx.x / 64, col = threadIdx.x % 16, quad = (threadIdx.x % 64) / 16;
  const bool vec = a.vec16 != 0;
  const portable::ScoreMod mod = portable::score_mod(a, seq, b, h);
  const int wave_row0 = m0 + wave * kRowsPerWave;  // first query row of this wavefront

  const T* q = static_cast<const T*>(a.q.data) + portable::head_base(a.q, seq, b, seq.q_token0, h);
  const T* k = static_cast<const T*>(a.k.data) + portable::head_base(a.k, seq, b, seq.k_token0, hk);
  const T* v = static_cast<const T*>(a.v.data) + portable::head_base(a.v, seq, b, seq.k_token0, hk);

  // Q as A operands: row wave_row0 + col, head-dim elements 16 kc + 4 quad + 0..3 (zero past the row or head_dim;
  // head_dim is a multiple of 8, so a group of 4 is wholly inside or wholly outside).
  Raw4 qa[KC];
  {
    const int i = wave_row0 + col;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
      const int d = kc * 16 + quad * 4;
      T e[4];
#pragma unroll
      for (int x = 0; x < 4; ++x)
        e[x] = (i < seq.len_q && d < a.head_dim) ? q[static_cast<int64_t>(i) * a.q.row_stride + d + x] : from_float<T>(0.f);
      qa[kc] = raw4_from(e);
    }
  }

  const int rows_q = min(kBM, seq.len_q - m0);
  int n_begin, n_end;
  portable::key_range(mod, m0, m0 + rows_q - 1, &n_begin, &n_end);

  floatx4 o[KC];
#pragma unroll
  for (int kc = 0; kc < KC; ++kc) o[kc] = floatx4{0.f, 0.f, 0.f, 0.f};
  float m_run[4], l_part[4];  // per row 4 quad + e: running max, this lane's share of the row sum
#pragma unroll
  for (int e = 0; e < 4; ++e) m_run[e] = -INFINITY, l_part[e] = 0.f;

  for (int n0 = n_begin; n0 < n_end; n0 += kBN) {
    __syncthreads();  // every wavefront is done with sK, sV, sP of the previous tile
    const int rows_k = min(kBN, n_end - n0);
    portable::load_tile<T, D, kBN, kThreads>(sK, k + n0 * a.k.row_stride, a.k.row_stride, rows_k, a.head_dim, vec);
    portable::load_tile<T, D, kBN, kThreads>(sV, v + n0 * a.v.row_stride, a.v.row_stride, rows_k, a.head_dim, vec);
    __syncthreads();

    // S block nb: B operand K^T[16 kc + 4 quad + x][key nb*16 + col] = sK[nb*16 + col][16 kc + 4 quad + x].
    floatx4 s[NB];
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      s[nb] = floatx4{0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int kc = 0; kc < KC; ++kc) {
        const Raw4 kb{*reinterpret_cast<const uint2*>(sK + (nb * 16 + col) * LDS + kc * 16 + quad * 4)};
        s[nb] = mfma16<T>(qa[kc], kb, s[nb]);
      }
    }

    // Online softmax for the lane's rows 4 quad + e; P written to sP[row][key] for the A-layout reload below.
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = wave_row0 + quad * 4 + e;
      float sc[NB], tile_max = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        const int j = n0 + nb * 16 + col;
        float unused_grad;
        sc[nb] = mod.visible(i, j) ? mod.apply(s[nb][e], i, j, &unused_grad) : -INFINITY;
        tile_max = fmaxf(tile_max, sc[nb]);
      }
      const float m_new = fmaxf(m_run[e], portable::lanes_max<16>(tile_max));
      const float m_safe = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = __expf(m_run[e] - m_safe);
      m_run[e] = m_new;
      float p_sum = 0.f;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        const float p = __expf(sc[nb] - m_safe);
        p_sum += p;
        sP[wave][(quad * 4 + e) * P_LDS + nb * 16 + col] = from_float<T>(p);
      }
      l_part[e] = l_part[e] * alpha + p_sum;
#pragma unroll
      for (int kc = 0; kc < KC; ++kc) o[kc][e] *= alpha;
    }
    __syncthreads();  // sP complete (written and read by the same wavefront; a block barrier keeps it simple)

    // O[:, 16 db .. 16 db + 15] += P[:, 16 kb ..] V[16 kb .., 16 db ..]:
    //   A = P[col][16 kb + 4 quad + x] (sP row col), B = V[16 kb + 4 quad + x][16 db + col] (four sV rows).
#pragma unroll
    for (int kb = 0; kb < NB; ++kb) {
      const Raw4 pa{*reinterpret_cast<const uint2*>(&sP[wave][col * P_LDS + kb * 16 + quad * 4])};
#pragma unroll
      for (int db = 0; db < KC; ++db) {
        T e4[4];
#pragma unroll
        for (int x = 0; x < 4; ++x) e4[x] = sV[(kb * 16 + quad * 4 + x) * LDS + db * 16 + col];
        o[db] = mfma16<T>(pa, raw4_from(e4), o[db]);
      }
    }
  }

  // Lane holds O[4 quad + e][16 db + col]; 16 lanes of a quad write 16 consecutive elements of a row.
  T* out = static_cast<T*>(a.o.data) + portable::head_base(a.o, seq, b, seq.q_token0, h);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float l = portable::lanes_sum<16>(l_part[e]);
    const int i = wave_row0 + quad * 4 + e;
    if (i >= seq.len_q) continue;
    const float inv_l = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int db = 0; db < KC; ++db) {
      const int d = db * 16 + col;
      if (d < a.head_dim) out[static_cast<int64_t>(i) * a.o.row_stride + d] = from_float<T>(o[db][e] * inv_l);
    }
    if (a.lse != nullptr && col == 0)
      a.lse[portable::row_stat_index(a, seq, b, h, i)] = l > 0.f ? m_run[e] + __logf(l) : INFINITY;
  }
#else
  (void)a;  // not a CDNA target: hip_mfma_supports() never selects this path there
#endif
}

template <typename T, int D>
static int32_t launch(const Args& a, gpuStream_t stream) {
  const dim3 grid((a.seqlen_q + kBM - 1) / kBM, a.heads_q, a.batch);
  mfma_forward_kernel<T, D><<<grid, kThreads, 0, stream>>>(a);
  return portable::check_launch("launching the MFMA forward kernel");
}

template <typename T>
static int32_t launch_for_dim(const Args& a, gpuStream_t stream) {
  if (a.head_dim <= 64) return launch<T, 64>(a, stream);
  if (a.head_dim <= 128) return launch<T, 128>(a, stream);
  return launch<T, 256>(a, stream);
}

int32_t forward(fa_attn_params& p, const LaunchContext& ctx) {
  p.out_num_splits = 1;  // this path never splits the key range
  const Args a = portable::make_args(p);
  return p.dtype == FA_DTYPE_F16 ? launch_for_dim<half_t>(a, ctx.stream) : launch_for_dim<bf16_t>(a, ctx.stream);
}

// CDNA2 (gfx90a) and CDNA3 (gfx940/941/942) have the 16x16x16 f16 and bf16_1k MFMA instructions used above.
bool is_cdna2_or_3(int arch) { return arch == 0x90a || arch == 0x940 || arch == 0x941 || arch == 0x942; }

// The dispatcher itself refuses this forward-only path for backward requests; the portable path serves those.
bool supports(const fa_attn_params& p, const DeviceCaps& caps, int32_t, std::vector<std::string>& reasons) {
  bool ok = portable::supports_common(p, reasons);
  if (!caps.is_hip || !is_cdna2_or_3(caps.arch)) {
    reasons.push_back(format("needs a CDNA2/CDNA3 GPU (gfx90a, gfx94x), this one is gfx%x", caps.arch));
    ok = false;
  }
  return ok;
}

}  // namespace hip_mfma

const std::vector<KernelPath>& hip_matrix_core_paths() {
  static const std::vector<KernelPath> paths = {
      {200, "hip-mfma-fwd", "[\"causal\",\"window\",\"softcap\",\"alibi\",\"gqa\",\"varlen\",\"lse\",\"strided\"]",
       "[\"fp16\",\"bf16\"]", 256, hip_mfma::supports, hip_mfma::forward, nullptr},
  };
  return paths;
}

}  // namespace fa
