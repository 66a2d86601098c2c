// bwd_sm90.cuh — FlashAttention backward on Hopper's warpgroup tensor cores (wgmma, sm_90a), one instantiation per
// (dtype, head dim 64 or 128).
//
// Grid (key blocks, heads_kv, batch), as the mma.sync backward: a CTA owns BN = 128 keys of one kv head (64 per
// warpgroup, the M of one wgmma) and walks every (query head of the GQA group, query block of BM = 64 rows) that can
// see them, so dK / dV of the group are summed in registers and written once. All tiles are 128B-swizzled (wgmma.cuh);
// Q, dO and their row statistics are double-buffered with cp.async. Per step and warpgroup (its 64 keys):
//   S^T  = K_w Q^T                 SS, m64 x BM                 P^T = exp2(S^T c - lse2[q])  (0 where masked)
//   dP^T = V_w dO^T                SS, issued with S^T          dS^T = P^T (dP^T - dsum[q])  (x (1 - tanh^2) softcap)
//   dV  += P^T dO                  RS, P^T from registers, dO N-major; runs while dS^T is computed
//   dK  += dS^T Q                  RS (times scale at the end)
//   dQ  += dS K                    SS from the dS^T tile in smem (M-major, imm-trans-a) and K (N-major), fp32 into
//                                  dq_accum: head dim 128 splits dQ's columns between the warpgroups (64 each, over
//                                  all 128 keys, after a CTA barrier); at head dim 64 each warpgroup multiplies its
//                                  own 64 keys (a warpgroup barrier only) and the two partials are summed through
//                                  smem, each warpgroup adding 32 columns.
// Work per step: 5 products of 2 BN BM D flops; exp2 for BN BM scores; BM D fp32 dQ additions per warpgroup.
#pragma once

#include "attn.cuh"
#include "wgmma.cuh"

namespace fa::tc {

template <int D_>
struct Sm90BwdTile {
  static constexpr int D = D_, BN = 128, BM = 64, kThreads = 256;
  static constexpr bool kDqPerWarpgroupKeys = D == 64;  // else: warpgroup w computes dQ columns [64w, 64w + 64)
  static constexpr int kTileKV = BN * D * 2, kTileQ = BM * D * 2, kTileDs = BN * BM * 2;  // bytes
  // Head dim 64: the fp32 dQ halves the warpgroups hand each other, [2][BM rows][kRedLd] (rows padded by 8 floats,
  // so the float2 accesses of a half-warp hit 32 distinct banks).
  static constexpr int kRedLd = 32 + 8;
  static constexpr size_t kRedBytes = kDqPerWarpgroupKeys ? 2 * BM * kRedLd * sizeof(float) : 0;
  static constexpr size_t smem_bytes() {
    return kSwizzleAlign + 2 * static_cast<size_t>(kTileKV) + 4 * kTileQ + kTileDs + 4 * BM * sizeof(float) + kRedBytes;
  }
  static_assert(D == 64 || D == 128, "dK and dV of 64 keys stay in registers up to head dim 128");
};

template <typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads, 1) bwd_sm90_kernel(const __grid_constant__ AttnArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int D = Tile::D, BN = Tile::BN, BM = Tile::BM, MT = BM / 8;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = swizzle_aligned_smem(smem_raw);
  T* sK = reinterpret_cast<T*>(smem);   // [BN x D]
  T* sV = sK + BN * D;                  // [BN x D]
  T* sQ = sV + BN * D;                  // [2][BM x D]
  T* sdO = sQ + 2 * BM * D;             // [2][BM x D]
  T* sdS = sdO + 2 * BM * D;            // [BN keys x BM queries]: dS^T, read as the M-major A of dQ = dS K
  float* sLse2 = reinterpret_cast<float*>(sdS + BN * BM);  // [2][BM]
  float* sDsum = sLse2 + 2 * BM;                            // [2][BM]
  float* sRed = sDsum + 2 * BM;                             // head dim 64: [2][BM][kRedLd]

  const int hk = blockIdx.y, b = blockIdx.z;
  const SeqInfo s = seq_info(a, b);
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int wg_key0 = wg * 64;  // this warpgroup's keys within the block
  const bool transform = a.softcap > 0.f || a.alibi != nullptr;
  float* dq_accum = a.dq_accum + (a.deterministic ? static_cast<int64_t>(blockIdx.x) * a.lse_rows * a.head_dim : 0);

  // Tile descriptors, built once (K, Q and dO serve as K-major and as N-major operands).
  const uint64_t k_kmaj = tile_desc_k_major(sK), v_kmaj = tile_desc_k_major(sV), k_nmaj = tile_desc_mn_major<BN>(sK);
  const uint64_t q_kmaj[2] = {tile_desc_k_major(sQ), tile_desc_k_major(sQ + BM * D)};
  const uint64_t q_nmaj[2] = {tile_desc_mn_major<BM>(sQ), tile_desc_mn_major<BM>(sQ + BM * D)};
  const uint64_t do_kmaj[2] = {tile_desc_k_major(sdO), tile_desc_k_major(sdO + BM * D)};
  const uint64_t do_nmaj[2] = {tile_desc_mn_major<BM>(sdO), tile_desc_mn_major<BM>(sdO + BM * D)};
  const uint64_t ds_mmaj = tile_desc_mn_major<BN>(sdS);

  const RowView<T> k = row_view<T>(a.k, a, b, hk, s.k_start, s.sk);
  const RowView<T> v = row_view<T>(a.v, a, b, hk, s.k_start, s.sk);

  // Deterministic mode runs fewer CTAs than key blocks, each looping over its own; otherwise one iteration.
  for (int nb = blockIdx.x; nb * BN < s.sk; nb += gridDim.x) {
    const int n0 = nb * BN;
    __syncthreads();  // the previous key block's products are done with sK / sV
    load_tile_sw128_async<BN, D, Tile::kThreads>(sK, k, n0);
    load_tile_sw128_async<BN, D, Tile::kThreads>(sV, v, n0);

    const QueryBlocks blocks = visible_query_blocks(a, s, n0, BN, BM);
    const int mb_first = blocks.first, mb_count = blocks.count;
    const int steps = mb_count * a.group;  // (query head, query block) pairs
    auto step_head = [&](int step) { return hk * a.group + step / mb_count; };
    auto step_row0 = [&](int step) { return (mb_first + step % mb_count) * BM; };

    // Issues the async loads of step `step` into buffer `buf`.
    auto prefetch = [&](int step, int buf) {
      const int h = step_head(step), m0 = step_row0(step);
      load_tile_sw128_async<BM, D, Tile::kThreads>(sQ + buf * BM * D, row_view<T>(a.q, a, b, h, s.q_start, s.sq), m0);
      load_tile_sw128_async<BM, D, Tile::kThreads>(sdO + buf * BM * D, row_view<T>(a.dout, a, b, h, s.q_start, s.sq), m0);
      const int64_t lrow0 = lse_row0(a, s, b, h);
      for (int r = threadIdx.x; r < BM; r += Tile::kThreads) {
        if (m0 + r < s.sq) {
          cp_async_4(sLse2 + buf * BM + r, a.lse2 + lrow0 + m0 + r);
          cp_async_4(sDsum + buf * BM + r, a.dsum + lrow0 + m0 + r);
        } else {
          sLse2[buf * BM + r] = INFINITY;  // rows past the end: P = 0
          sDsum[buf * BM + r] = 0.f;
        }
      }
    };
    if (steps > 0) prefetch(0, 0);
    cp_async_commit();

    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

    for (int step = 0; step < steps; ++step) {
      const int buf = step & 1, h = step_head(step), m0 = step_row0(step);
      cp_async_wait<0>();  // this step's Q, dO, lse2, dsum (and K, V on the first step)
      fence_async_smem();
      __syncthreads();     // ... from every thread; and every warpgroup is done with the other buffer and sdS
      if (step + 1 < steps) prefetch(step + 1, buf ^ 1);
      cp_async_commit();
      const float* lse2_s = sLse2 + buf * BM;
      const float* dsum_s = sDsum + buf * BM;

      float st[BM / 2], dpt[BM / 2];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        Wgmma<BM, T>::template ss<0, 0>(st, desc_k_major<BN>(k_kmaj, wg_key0, kk), desc_k_major<BM>(buf ? q_kmaj[1] : q_kmaj[0], 0, kk), kk > 0);
      wgmma_commit();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        Wgmma<BM, T>::template ss<0, 0>(dpt, desc_k_major<BN>(v_kmaj, wg_key0, kk), desc_k_major<BM>(buf ? do_kmaj[1] : do_kmaj[0], 0, kk), kk > 0);
      wgmma_commit();
      wgmma_wait<1>();  // S^T landed; dP^T still runs
      reg_fence(st);

      // P^T (packed for the dV product) and P^T (1 - tanh^2) kept in st for dS. Thread columns (queries) are the
      // pairs 8j + 2t, +1, so their statistics come as float2.
      const bool masked = tile_needs_mask(a, s, m0, BM, n0 + wg_key0, 64);
      const float2* lse2_pairs = reinterpret_cast<const float2*>(lse2_s) + t;  // [4 j] = queries 8j + 2t, +1
      uint32_t pa[BM / 16][4];
      if (!transform && !masked) {  // the common interior tile: one FFMA and one exp2 per score
#pragma unroll
        for (int j = 0; j < MT; ++j) {
          const float2 l2 = lse2_pairs[4 * j];
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int e = j * 4 + 2 * hf;
            st[e] = fast_exp2(fmaf(st[e], a.scale_log2, -l2.x));
            st[e + 1] = fast_exp2(fmaf(st[e + 1], a.scale_log2, -l2.y));
            pa[j / 2][(j % 2) * 2 + hf] = pack2<T>(st[e], st[e + 1]);
          }
        }
      } else {
        const float slope = alibi_slope_log2(a, b, h);
#pragma unroll
        for (int j = 0; j < MT; ++j)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int key = n0 + wg_key0 + warp * 16 + g + hf * 8;
            int lo = INT_MIN, hi = INT_MAX;
            if (masked) visible_query_range(a, s, key, lo, hi);
            float p[2];
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int e = j * 4 + 2 * hf + c;
              const int qr = j * 8 + 2 * t + c, i = m0 + qr;
              float th = 0.f;
              const float x = transform ? transformed_logit(a, st[e], slope, i + s.diag - key, th) : st[e] * a.scale_log2;
              p[c] = (i < lo || i > hi) ? 0.f : fast_exp2(x - lse2_s[qr]);
              st[e] = p[c] * (1.f - th * th);
            }
            pa[j / 2][(j % 2) * 2 + hf] = pack2<T>(p[0], p[1]);
          }
      }
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) Wgmma<D, T>::template rs<1>(dv, pa[kk], desc_mn_major<BM>(buf ? do_nmaj[1] : do_nmaj[0], kk), 1);
      wgmma_commit();
      wgmma_wait<1>();  // dP^T landed; dV still runs
      reg_fence(dpt);

      // dS^T = P^T (dP^T - dsum): A fragments for dK, and the smem tile dQ reads.
      uint32_t dsa[BM / 16][4];
      const float2* dsum_pairs = reinterpret_cast<const float2*>(dsum_s) + t;
#pragma unroll
      for (int j = 0; j < MT; ++j)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int qr = j * 8 + 2 * t, e = j * 4 + 2 * hf;
          const float2 ds = dsum_pairs[4 * j];
          const uint32_t packed = pack2<T>(st[e] * (dpt[e] - ds.x), st[e + 1] * (dpt[e + 1] - ds.y));
          dsa[j / 2][(j % 2) * 2 + hf] = packed;
          sw128_store_pair<BN>(sdS, wg_key0 + warp * 16 + g + hf * 8, qr, packed);
        }
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) Wgmma<D, T>::template rs<1>(dk, dsa[kk], desc_mn_major<BM>(buf ? q_nmaj[1] : q_nmaj[0], kk), 1);
      wgmma_commit();

      // dQ (64 queries x 64 columns per warpgroup) = dS K over this warpgroup's keys or over all of them.
      fence_async_smem();
      float dq[32];
      if constexpr (Tile::kDqPerWarpgroupKeys) {
        warpgroup_sync(wg);  // this warpgroup's dS^T rows are in smem
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          Wgmma<64, T>::template ss<1, 1>(dq, desc_mn_major<BN>(ds_mmaj, wg * 4 + kk), desc_mn_major<BN>(k_nmaj, wg * 4 + kk), kk > 0);
      } else {
        __syncthreads();  // both warpgroups' dS^T rows are in smem
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
          Wgmma<64, T>::template ss<1, 1>(dq, desc_mn_major<BN>(ds_mmaj, kk), desc_mn_major<BN>(k_nmaj, kk, wg), kk > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dq);
      reg_fence(dk);
      reg_fence(dv);
      reg_fence(pa);
      reg_fence(dsa);
      const int64_t lrow0 = lse_row0(a, s, b, h);
      if constexpr (Tile::kDqPerWarpgroupKeys) {
        // Each partial covers all 64 columns over one warpgroup's keys. Warpgroup w owns columns [32w, 32w + 32):
        // it hands the other's 32 columns over through smem (the partner thread, same warp and lane, holds the same
        // rows and columns) and adds the sum of its own, so every dQ element gets one addition per step.
        const int other = 1 - wg;
        float* handed = sRed + wg * 64 * Tile::kRedLd;
        const float* received = sRed + other * 64 * Tile::kRedLd;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            // n-tile j + 4 other, with compile-time register indices (a run-time one would spill dq to local memory)
            const int e0 = j * 4 + 2 * hf, e1 = (j + 4) * 4 + 2 * hf;
            const float2 pair = wg == 0 ? make_float2(dq[e1], dq[e1 + 1]) : make_float2(dq[e0], dq[e0 + 1]);
            *reinterpret_cast<float2*>(handed + (warp * 16 + g + 8 * hf) * Tile::kRedLd + 8 * j + 2 * t) = pair;
          }
        __syncthreads();
        accumulate_dq_rows<4>(a, dq_accum, lrow0, m0 + warp * 16, s.sq, 32 * wg, [&](int j, int e) {
          const float own = wg == 0 ? dq[j * 4 + e] : dq[(j + 4) * 4 + e];
          return own + received[(warp * 16 + g + 8 * (e / 2)) * Tile::kRedLd + 8 * j + 2 * t + e % 2];
        });
      } else {
        accumulate_dq_rows<8>(a, dq_accum, lrow0, m0 + warp * 16, s.sq, wg * 64, [&](int j, int e) { return dq[j * 4 + e]; });
      }
    }
    cp_async_wait<0>();  // with no visible query the K / V copies may still be in flight

    // dK (times scale) and dV of this warp's 16 keys.
    const int key0 = n0 + wg_key0 + warp * 16;
    store_key_rows<T, D / 8>(a.dk, a, s, b, hk, key0, 0, [&](int j, int e) { return dk[j * 4 + e]; }, a.scale);
    store_key_rows<T, D / 8>(a.dv, a, s, b, hk, key0, 0, [&](int j, int e) { return dv[j * 4 + e]; }, 1.f);
  }
#endif
}

template <typename T, int D>
gpuError_t launch_bwd_sm90(const AttnArgs& a, int grid_keys, gpuStream_t stream) {
  using Tile = Sm90BwdTile<D>;
  return launch_attention_kernel(bwd_sm90_kernel<T, Tile>, dim3(grid_keys, a.heads_kv, a.batch), Tile::kThreads,
                                 Tile::smem_bytes(), stream, a);
}

}  // namespace fa::tc
