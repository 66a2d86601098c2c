// fwd.cuh — FlashAttention-2 forward on mma.sync tensor cores (sm_80+), one instantiation per (dtype, head dim).
//
// Grid (m blocks, heads_q, batch * num_splits); a CTA of NW warps owns BM query rows of one head (each warp owns
// MF = BM / (16 NW) fragments of 16 rows) and walks the visible key blocks of BN keys from last to first
// (the masked diagonal blocks come first), with its share of them when split-KV is on:
//   S    = Q K^T                       (BM x BN, fp32 in registers; Q re-read from smem with ldmatrix)
//   m'   = max(m, rowmax(S))           online softmax in base 2: the scale is folded into the exponent,
//   P    = exp2(S * c - m' * c)        c = scale * log2(e)  (or 1 once softcap/ALiBi rewrote S into log2 units)
//   l    = l * exp2((m - m') c) + rowsum(P),   O = O * exp2((m - m') c) + P V
// and finally O / l, LSE = (m c + log2 l) ln 2. K and V live in single smem buffers, pipelined FA2-style with
// cp.async: V(n) streams in during Q K(n)^T, K(n-1) during P V(n).
#pragma once

#include "attn.cuh"

namespace fa::tc {

template <int D_, int BM_, int BN_, int NW_>
struct FwdTile {
  static constexpr int D = D_, BM = BM_, BN = BN_, NW = NW_;
  static constexpr int MF = BM / (16 * NW);  // 16-row fragments per warp
  static constexpr int LD = D + kPad;
  static constexpr int kThreads = NW * 32;
  static constexpr size_t smem_bytes(size_t elem) { return static_cast<size_t>(BM + 2 * BN) * LD * elem; }
  static_assert(MF >= 1 && BM == MF * 16 * NW, "BM must be a multiple of 16 * warps");
  static_assert(D % 16 == 0 && BN % 16 == 0, "D and BN must be multiples of 16");
};

// The per-head-dim tile table (H100/A100 sized; supports() checks the smem need against the device). `type` serves
// full and ragged attention, `windowed` causal / sliding-window attention, where a narrower key block wastes less
// of the diagonal tile (measured at hdim 64: BN 128 is +10% non-causal, BN 64 +20% causal at seqlen 512..2k).
template <int D> struct FwdTileFor;
template <> struct FwdTileFor<32> { using type = FwdTile<32, 128, 128, 4>; using windowed = type; };
template <> struct FwdTileFor<64> { using type = FwdTile<64, 128, 128, 4>; using windowed = FwdTile<64, 128, 64, 4>; };
template <> struct FwdTileFor<96> { using type = FwdTile<96, 128, 64, 4>; using windowed = type; };
template <> struct FwdTileFor<128> { using type = FwdTile<128, 128, 64, 4>; using windowed = type; };
template <> struct FwdTileFor<192> { using type = FwdTile<192, 128, 64, 8>; using windowed = type; };
template <> struct FwdTileFor<256> { using type = FwdTile<256, 128, 64, 8>; using windowed = type; };

template <typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads) fwd_kernel(const AttnArgs a) {
  constexpr int D = Tile::D, BM = Tile::BM, BN = Tile::BN, MF = Tile::MF, LD = Tile::LD, NT = BN / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * LD;
  T* sV = sK + BN * LD;

  const int m_block = gridDim.x - 1 - blockIdx.x;  // heaviest (causal) row blocks start first
  const int h = blockIdx.y, b = blockIdx.z / a.num_splits, split = blockIdx.z % a.num_splits;
  const SeqInfo s = seq_info(a, b);
  const int m0 = m_block * BM;
  if (m0 >= s.sq) return;
  const int hk = h / a.group;
  const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4;
  const int warp_row0 = warp * MF * 16;

  const RowView<T> q = row_view<T>(a.q, a, b, h, s.q_start, s.sq);
  const RowView<T> k = row_view<T>(a.k, a, b, hk, s.k_start, s.sk);
  const RowView<T> v = row_view<T>(a.v, a, b, hk, s.k_start, s.sk);

  const KeyBlocks blocks = split_key_blocks(a, s, m0, BM, BN, split);
  const int nb_lo = blocks.lo, nb_hi = blocks.hi;

  load_tile_async<BM, D, Tile::kThreads>(sQ, q, m0);
  if (nb_hi > nb_lo) load_tile_async<BN, D, Tile::kThreads>(sK, k, (nb_hi - 1) * BN);
  cp_async_commit();

  const bool transform = a.softcap > 0.f || a.alibi != nullptr;
  const float mult = transform ? 1.f : a.scale_log2;  // multiplier from S to log2 units inside exp2
  const float slope = alibi_slope_log2(a, b, h);

  float o_acc[MF][D / 8][4];
  float row_max[MF][2], row_sum[MF][2];
  clear_accumulators(o_acc, row_max, row_sum);

  for (int nb = nb_hi - 1; nb >= nb_lo; --nb) {
    const int n0 = nb * BN;
    cp_async_wait<0>();
    __syncthreads();  // K(nb) landed; every warp is done with V(nb + 1)
    load_tile_async<BN, D, Tile::kThreads>(sV, v, n0);
    cp_async_commit();

    // S = Q K^T (BM x BN = BM x D . (BN x D)^T, this warp's MF x 16 rows) over D in k-steps of 16.
    float sc[MF][NT][4];
    scores_QKt<T, StridedRows<LD>, D, BN, MF>(sc, sQ, warp_row0, sK);

    // Online softmax, one 16-row fragment at a time; O's rows are rescaled by the change of their max.
    const bool masked = tile_needs_mask(a, s, m0, BM, n0, BN);
#pragma unroll
    for (int mf = 0; mf < MF; ++mf) {
      float alpha[2];
      const int i0 = m0 + warp_row0 + mf * 16 + g;
      online_softmax_block<NT>(a, s, [&](int j, int e) -> float& { return sc[mf][j][e]; },
                               [&](int hf) { return ScoreRow{i0 + hf * 8, slope}; }, n0, transform, masked, mult, row_max[mf],
                               row_sum[mf], alpha);
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) o_acc[mf][j][e] *= alpha[e / 2];
    }

    cp_async_wait<0>();
    __syncthreads();  // V(nb) landed; every warp is done with K(nb)
    if (nb > nb_lo) {
      load_tile_async<BN, D, Tile::kThreads>(sK, k, (nb - 1) * BN);
      cp_async_commit();
    }

    // O += P V (BM x D += BM x BN . BN x D), P taken straight from the accumulators (C layout of two n-tiles = A
    // layout of one k-step).
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t pa[MF][4];
#pragma unroll
      for (int mf = 0; mf < MF; ++mf) acc_to_a<T>(pa[mf], sc[mf][2 * kk], sc[mf][2 * kk + 1]);
      mm_AB<T, StridedRows<LD>, D, MF>([&](int mf, int j) -> float(&)[4] { return o_acc[mf][j]; },
                          [&](int mf) -> const uint32_t(&)[4] { return pa[mf]; }, sV, 0, kk * 16);
    }
  }

  // Epilogue: each warp stages its rows of O in its own rows of sQ.
  cp_async_wait<0>();  // with no visible key block the Q copy may still be in flight
  __syncwarp();
#pragma unroll
  for (int mf = 0; mf < MF; ++mf)
    store_output_rows<T, D>(a, s, b, h, split, m0, warp_row0 + mf * 16, [&](int j, int e) { return o_acc[mf][j][e]; },
                            row_max[mf], row_sum[mf], mult, sQ);
}

template <typename T, typename Tile>
gpuError_t launch_fwd_tile(const AttnArgs& a, int m_blocks, gpuStream_t stream) {
  return launch_attention_kernel(fwd_kernel<T, Tile>, dim3(m_blocks, a.heads_q, a.batch * a.num_splits), Tile::kThreads,
                                 Tile::smem_bytes(sizeof(T)), stream, a);
}

// Launches the forward for head dim D (the caller picked D >= head_dim). Returns the CUDA error of the launch.
template <typename T, int D>
gpuError_t launch_fwd(const AttnArgs& a, int m_blocks, gpuStream_t stream) {
  static_assert(FwdTileFor<D>::type::BM == FwdTileFor<D>::windowed::BM, "both tiles share the row-block grid");
  if (a.win_left >= 0 || a.win_right >= 0) return launch_fwd_tile<T, typename FwdTileFor<D>::windowed>(a, m_blocks, stream);
  return launch_fwd_tile<T, typename FwdTileFor<D>::type>(a, m_blocks, stream);
}

}  // namespace fa::tc
