// bwd.cuh — FlashAttention-2 backward on mma.sync tensor cores (sm_80+), one instantiation per (dtype, head dim).
//
// Grid (key blocks, heads_kv, batch). A CTA owns BN keys of one kv head and walks every (query head of the GQA
// group, query block of BM rows) that can see them, so dK/dV of the group are summed in registers and written once.
// Warps are split KG = NW / DSPLIT ways over the keys (16 keys each) and DSPLIT ways over the head dim of dK/dV;
// the products are computed in transposed form so every left operand is already a register fragment:
//   S^T  = K Q^T                        (16 keys x BM per warp; fp32)
//   P^T  = exp2(S^T c - lse2[q])        lse2 = LSE log2(e), +inf for rows without keys (P = 0)
//   dV  += P^T dO
//   dP^T = V dO^T
//   dS^T = P^T (dP^T - dsum[q]) (1 - tanh^2 with softcap),  dsum = rowsum(dO O) from the preprocess kernel
//   dK  += dS^T Q                       (times scale at the end)
//   dQ  += dS K                         dS^T goes through smem; warps split the BM x D product into 16-row x DQC
//                                       pieces and add them to the fp32 dq_accum (atomics, or a per-CTA slice when
//                                       deterministic), converted to dQ (times scale) by a later kernel.
// Q and dO tiles are double-buffered with cp.async: the next (head, query block) streams in during this one.
#pragma once

#include "attn.cuh"

namespace fa::tc {

template <int D_, int BM_, int NW_, int DSPLIT_>
struct BwdTile {
  static constexpr int D = D_, BM = BM_, NW = NW_, DSPLIT = DSPLIT_;
  static constexpr int KG = NW / DSPLIT;         // key groups of 16
  static constexpr int BN = KG * 16;
  static constexpr int DP = D / DSPLIT;          // dK/dV columns per warp
  static constexpr int RG = BM / 16;             // dQ row groups
  static constexpr int CG = NW / RG;             // dQ column groups
  static constexpr int DQC = D / CG;             // dQ columns per warp
  static constexpr int LD = D + kPad;
  static constexpr int LDS = BM + kPad;          // dS^T row length
  static constexpr int kThreads = NW * 32;
  static constexpr size_t smem_bytes(size_t elem) {
    return (static_cast<size_t>(2 * BN + 4 * BM) * LD + static_cast<size_t>(BN) * LDS) * elem + 4 * BM * sizeof(float);
  }
  static_assert(NW % DSPLIT == 0 && NW % RG == 0, "warp split must divide the warps");
  static_assert(DP % 16 == 0 && DQC % 16 == 0 && BM % 16 == 0, "per-warp tiles must be multiples of 16");
};

template <int D> struct BwdTileFor;
template <> struct BwdTileFor<32> { using type = BwdTile<32, 64, 4, 1>; };
template <> struct BwdTileFor<64> { using type = BwdTile<64, 64, 8, 1>; };
template <> struct BwdTileFor<96> { using type = BwdTile<96, 64, 4, 1>; };
template <> struct BwdTileFor<128> { using type = BwdTile<128, 64, 8, 1>; };
template <> struct BwdTileFor<192> { using type = BwdTile<192, 64, 8, 2>; };
template <> struct BwdTileFor<256> { using type = BwdTile<256, 32, 8, 2>; };

template <typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads) bwd_kernel(const AttnArgs a) {
  constexpr int D = Tile::D, BM = Tile::BM, BN = Tile::BN, LD = Tile::LD, LDS = Tile::LDS;
  constexpr int DP = Tile::DP, DQC = Tile::DQC, MT = BM / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + BN * LD;
  T* sQ = sV + BN * LD;        // [2][BM][LD]
  T* sdO = sQ + 2 * BM * LD;   // [2][BM][LD]
  T* sdS = sdO + 2 * BM * LD;  // [BN][LDS], dS^T
  float* sLse2 = reinterpret_cast<float*>(sdS + BN * LDS);  // [2][BM]
  float* sDsum = sLse2 + 2 * BM;                             // [2][BM]

  const int hk = blockIdx.y, b = blockIdx.z;
  const SeqInfo s = seq_info(a, b);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int key_row0 = (warp / Tile::DSPLIT) * 16, dcol0 = (warp % Tile::DSPLIT) * DP;
  const int dq_row0 = (warp / Tile::CG) * 16, dq_col0 = (warp % Tile::CG) * DQC;
  const bool transform = a.softcap > 0.f || a.alibi != nullptr;
  float* dq_accum = a.dq_accum + (a.deterministic ? static_cast<int64_t>(blockIdx.x) * a.lse_rows * a.head_dim : 0);

  const RowView<T> k = row_view<T>(a.k, a, b, hk, s.k_start, s.sk);
  const RowView<T> v = row_view<T>(a.v, a, b, hk, s.k_start, s.sk);

  // Deterministic mode runs fewer CTAs than key blocks, each looping over its own; otherwise one iteration.
  for (int nb = blockIdx.x; nb * BN < s.sk; nb += gridDim.x) {
    const int n0 = nb * BN;
    __syncthreads();  // the previous key block's readers of sK / sV are done
    load_tile_async<BN, D, Tile::kThreads>(sK, k, n0);
    load_tile_async<BN, D, Tile::kThreads>(sV, v, n0);

    const QueryBlocks blocks = visible_query_blocks(a, s, n0, BN, BM);
    const int mb_first = blocks.first, mb_count = blocks.count;
    const int steps = mb_count * a.group;  // (query head, query block) pairs

    // Issues the async loads of step `step` into buffer `buf`.
    auto prefetch = [&](int step, int buf) {
      const int h = hk * a.group + step / mb_count, m0 = (mb_first + step % mb_count) * BM;
      load_tile_async<BM, D, Tile::kThreads>(sQ + buf * BM * LD, row_view<T>(a.q, a, b, h, s.q_start, s.sq), m0);
      load_tile_async<BM, D, Tile::kThreads>(sdO + buf * BM * LD, row_view<T>(a.dout, a, b, h, s.q_start, s.sq), m0);
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

    float dk_acc[DP / 8][4], dv_acc[DP / 8][4];
#pragma unroll
    for (int j = 0; j < DP / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk_acc[j][e] = dv_acc[j][e] = 0.f;

    for (int step = 0; step < steps; ++step) {
      const int buf = step & 1;
      const int h = hk * a.group + step / mb_count, m0 = (mb_first + step % mb_count) * BM;
      if (step + 1 < steps) prefetch(step + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();  // this step's Q, dO, lse2, dsum (and K, V on the first step) are in smem
      const T* q_s = sQ + buf * BM * LD;
      const T* do_s = sdO + buf * BM * LD;
      const float* lse2_s = sLse2 + buf * BM;
      const float* dsum_s = sDsum + buf * BM;

      // S^T = K Q^T (16 keys x BM = 16 x D . (BM x D)^T) for this warp's 16 keys.
      float st[MT][4];
#pragma unroll
      for (int j = 0; j < MT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ka[4];
        load_a<StridedRows<LD>>(ka, sK, key_row0, kk * 16);
        mm_ABt<T, StridedRows<LD>, BM, 1>([&](int, int j) -> float(&)[4] { return st[j]; }, [&](int) -> const uint32_t(&)[4] { return ka; },
                             q_s, kk * 16);
      }

      // P^T (packed for the dV product) and P^T * (1 - tanh^2) kept in st for dS.
      const bool masked = tile_needs_mask(a, s, m0, BM, n0, BN);
      const float slope = alibi_slope_log2(a, b, h);
      uint32_t pa[BM / 16][4];
#pragma unroll
      for (int j = 0; j < MT; ++j)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int key = n0 + key_row0 + g + hf * 8;
          int lo = INT_MIN, hi = INT_MAX;
          if (masked) visible_query_range(a, s, key, lo, hi);
          float p[2];
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int e = 2 * hf + c;
            const int qr = j * 8 + 2 * t + c, i = m0 + qr;
            float th = 0.f;
            const float x = transform ? transformed_logit(a, st[j][e], slope, i + s.diag - key, th) : st[j][e] * a.scale_log2;
            p[c] = (i < lo || i > hi) ? 0.f : fast_exp2(x - lse2_s[qr]);
            st[j][e] = p[c] * (1.f - th * th);
          }
          pa[j / 2][(j % 2) * 2 + hf] = pack2<T>(p[0], p[1]);
        }

      // dV += P^T dO (16 keys x DP += 16 x BM . BM x DP: this warp's DP columns).
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk)
        mm_AB<T, StridedRows<LD>, DP, 1>([&](int, int j) -> float(&)[4] { return dv_acc[j]; }, [&](int) -> const uint32_t(&)[4] { return pa[kk]; },
                            do_s, dcol0, kk * 16);

      // dP^T = V dO^T (16 keys x BM = 16 x D . (BM x D)^T).
      float dpt[MT][4];
#pragma unroll
      for (int j = 0; j < MT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) dpt[j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t va[4];
        load_a<StridedRows<LD>>(va, sV, key_row0, kk * 16);
        mm_ABt<T, StridedRows<LD>, BM, 1>([&](int, int j) -> float(&)[4] { return dpt[j]; }, [&](int) -> const uint32_t(&)[4] { return va; },
                             do_s, kk * 16);
      }

      // dS^T = P^T (dP^T - dsum), packed as A fragments; the first warp of each key group also stores it for dQ.
      uint32_t dsa[BM / 16][4];
#pragma unroll
      for (int j = 0; j < MT; ++j)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int qr = j * 8 + 2 * t;
          const float d0 = st[j][2 * hf] * (dpt[j][2 * hf] - dsum_s[qr]);
          const float d1 = st[j][2 * hf + 1] * (dpt[j][2 * hf + 1] - dsum_s[qr + 1]);
          const uint32_t packed = pack2<T>(d0, d1);
          dsa[j / 2][(j % 2) * 2 + hf] = packed;
          if (dcol0 == 0) *reinterpret_cast<uint32_t*>(sdS + (key_row0 + g + hf * 8) * LDS + qr) = packed;
        }

      // dK += dS^T Q (16 keys x DP += 16 x BM . BM x DP).
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk)
        mm_AB<T, StridedRows<LD>, DP, 1>([&](int, int j) -> float(&)[4] { return dk_acc[j]; }, [&](int) -> const uint32_t(&)[4] { return dsa[kk]; },
                            q_s, dcol0, kk * 16);
      __syncthreads();  // dS^T complete in smem

      // dQ (rows dq_row0.., cols dq_col0..) += dS K (16 x DQC += 16 x BN . BN x DQC), reduced over this block's BN
      // keys, then added to dq_accum.
      float dq[DQC / 8][4];
#pragma unroll
      for (int j = 0; j < DQC / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) dq[j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t da[4];
        load_a_trans<StridedRows<LDS>>(da, sdS, dq_row0, kk * 16);
        mm_AB<T, StridedRows<LD>, DQC, 1>([&](int, int j) -> float(&)[4] { return dq[j]; }, [&](int) -> const uint32_t(&)[4] { return da; },
                             sK, dq_col0, kk * 16);
      }
      accumulate_dq_rows<DQC / 8>(a, dq_accum, lse_row0(a, s, b, h), m0 + dq_row0, s.sq, dq_col0,
                                  [&](int j, int e) { return dq[j][e]; });
      __syncthreads();  // sdS and this step's buffers are free for the next prefetch
    }
    cp_async_wait<0>();  // with no visible query the K / V copies may still be in flight

    // dK (times scale) and dV for this warp's 16 keys x DP columns; rows past the sequence are not written.
    store_key_rows<T, DP / 8>(a.dk, a, s, b, hk, n0 + key_row0, dcol0, [&](int j, int e) { return dk_acc[j][e]; }, a.scale);
    store_key_rows<T, DP / 8>(a.dv, a, s, b, hk, n0 + key_row0, dcol0, [&](int j, int e) { return dv_acc[j][e]; }, 1.f);
  }
}

template <typename T, int D>
gpuError_t launch_bwd(const AttnArgs& a, int grid_keys, gpuStream_t stream) {
  using Tile = typename BwdTileFor<D>::type;
  return launch_attention_kernel(bwd_kernel<T, Tile>, dim3(grid_keys, a.heads_kv, a.batch), Tile::kThreads,
                                 Tile::smem_bytes(sizeof(T)), stream, a);
}

}  // namespace fa::tc
