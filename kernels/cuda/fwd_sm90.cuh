// fwd_sm90.cuh — FlashAttention forward on Hopper's warpgroup tensor cores (wgmma, sm_90a), one instantiation per
// (dtype, head dim).
//
// Grid (m blocks, heads_q, batch * num_splits), as the mma.sync forward. A CTA of two warpgroups owns BM = 128 query
// rows of one head (64 per warpgroup, the M of one wgmma) and walks its visible key blocks of BN keys from last to
// first (the masked diagonal blocks first). Q, K and V sit in 128B-swizzled smem tiles (wgmma.cuh); K and V are
// double-buffered and fetched with cp.async one block ahead. Per key block n and warpgroup:
//   S_n  = Q K_n^T                      SS wgmma, m64 x BN, fp32 accumulators
//   O   += P_{n-1} V_{n-1}              RS wgmma, P from registers, V read N-major; issued right after S_n, so the
//                                       tensor cores work on it while this warpgroup computes the softmax of S_n
//   m', l, P_n = exp2(S_n c - m' c)     the online softmax of fwd.cuh (shared helper), base 2, scale folded in
//   O   *= exp2((m - m') c)             once the P V product has landed
// and finally O += P_last V_last, O / l, LSE. Work per block: 4 BM BN D flops in two products; exp2 for BM BN scores.
#pragma once

#include "attn.cuh"
#include "wgmma.cuh"

namespace fa::tc {

template <int D_, int BN_>
struct Sm90FwdTile {
  static constexpr int D = D_, BN = BN_, BM = 128;
  static constexpr int kThreads = 256;                     // two warpgroups of 64 rows
  static constexpr int kTileQ = BM * D * 2, kTileKV = BN * D * 2;  // bytes (16-bit elements)
  static constexpr size_t smem_bytes() { return kSwizzleAlign + kTileQ + 4 * static_cast<size_t>(kTileKV); }
  static_assert(D % 64 == 0 && BN % 16 == 0 && BN <= 256 && D <= 256, "wgmma shapes: N <= 256, whole swizzle rows");
  static_assert(BM * (D + kPad) * 2 <= kTileQ + 2 * kTileKV, "the output staging fits over Q and the K buffers");
};

// Tile table (H100/H200: 227 KB of smem per block). hdim 64/128: 128-key blocks (160 KB at 128); 192/256: 64-key
// blocks keep Q + 2 K + 2 V under the limit and O (D/2 registers per thread) beside S and P.
template <int D> struct Sm90FwdTileFor;
template <> struct Sm90FwdTileFor<64> { using type = Sm90FwdTile<64, 128>; };
template <> struct Sm90FwdTileFor<128> { using type = Sm90FwdTile<128, 128>; };
template <> struct Sm90FwdTileFor<192> { using type = Sm90FwdTile<192, 64>; };
template <> struct Sm90FwdTileFor<256> { using type = Sm90FwdTile<256, 64>; };

template <typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads, 1) fwd_sm90_kernel(const __grid_constant__ AttnArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int D = Tile::D, BM = Tile::BM, BN = Tile::BN, NT = BN / 8;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = swizzle_aligned_smem(smem_raw);
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = reinterpret_cast<T*>(smem + Tile::kTileQ);  // [2][BN x D], swizzled
  T* sV = sK + 2 * BN * D;                             // [2][BN x D], swizzled
  auto k_buf = [&](int it) { return sK + (it & 1) * BN * D; };
  auto v_buf = [&](int it) { return sV + (it & 1) * BN * D; };

  const int m_block = gridDim.x - 1 - blockIdx.x;  // heaviest (causal) row blocks start first
  const int h = blockIdx.y, b = blockIdx.z / a.num_splits, split = blockIdx.z % a.num_splits;
  const SeqInfo s = seq_info(a, b);
  const int m0 = m_block * BM;
  if (m0 >= s.sq) return;
  const int hk = h / a.group;
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, g = (threadIdx.x % 32) / 4;
  const int wg_row0 = wg * 64, warp_row0 = wg_row0 + warp * 16;

  const RowView<T> q = row_view<T>(a.q, a, b, h, s.q_start, s.sq);
  const RowView<T> k = row_view<T>(a.k, a, b, hk, s.k_start, s.sk);
  const RowView<T> v = row_view<T>(a.v, a, b, hk, s.k_start, s.sk);

  // Iteration it works on key block hi - 1 - it (last first).
  const KeyBlocks blocks = split_key_blocks(a, s, m0, BM, BN, split);
  const int n_blocks = blocks.hi - blocks.lo;
  auto key0 = [&](int it) { return (blocks.hi - 1 - it) * BN; };

  load_tile_sw128_async<BM, D, Tile::kThreads>(sQ, q, m0);
  if (n_blocks > 0) {
    load_tile_sw128_async<BN, D, Tile::kThreads>(k_buf(0), k, key0(0));
    load_tile_sw128_async<BN, D, Tile::kThreads>(v_buf(0), v, key0(0));
  }
  cp_async_commit();
  if (n_blocks > 1) load_tile_sw128_async<BN, D, Tile::kThreads>(k_buf(1), k, key0(1));
  cp_async_commit();

  const bool transform = a.softcap > 0.f || a.alibi != nullptr;
  const float mult = transform ? 1.f : a.scale_log2;  // multiplier from S to log2 units inside exp2
  const float slope = alibi_slope_log2(a, b, h);

  float o[D / 2];         // O, 64 x D per warpgroup
  float sc[BN / 2];       // S_n, then P_n in fp32
  uint32_t p[BN / 16][4];  // P_{n-1} as the A operand of the P V product
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  auto scores = [&](int j, int e) -> float& { return sc[j * 4 + e]; };

  // Tile descriptors, built once: Q, and K / V of buffer it & 1.
  const uint64_t q_desc = tile_desc_k_major(sQ);
  const uint64_t k_desc[2] = {tile_desc_k_major(k_buf(0)), tile_desc_k_major(k_buf(1))};
  const uint64_t v_desc[2] = {tile_desc_mn_major<BN>(v_buf(0)), tile_desc_mn_major<BN>(v_buf(1))};
  // S = Q K^T for key block it (SS: both operands K-major over the head dim).
  auto issue_qk = [&](int it) {
    const uint64_t kd = (it & 1) ? k_desc[1] : k_desc[0];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      Wgmma<BN, T>::template ss<0, 0>(sc, desc_k_major<BM>(q_desc, wg_row0, kk), desc_k_major<BN>(kd, 0, kk), kk > 0);
    wgmma_commit();
  };
  // O += P V for key block it (RS: P from registers, V N-major).
  auto issue_pv = [&](int it) {
    const uint64_t vd = (it & 1) ? v_desc[1] : v_desc[0];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) Wgmma<D, T>::template rs<1>(o, p[kk], desc_mn_major<BN>(vd, kk), 1);
    wgmma_commit();
  };
  auto softmax = [&](int it, float (&alpha)[2]) {
    const int n0 = key0(it);
    const bool masked = tile_needs_mask(a, s, m0 + wg_row0, 64, n0, BN);
    online_softmax_block<NT>(a, s, scores, m0 + warp_row0 + g, n0, transform, masked, slope, mult, row_max, row_sum, alpha);
  };
  auto pack_p = [&]() {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      p[kk][0] = pack2<T>(sc[8 * kk + 0], sc[8 * kk + 1]);
      p[kk][1] = pack2<T>(sc[8 * kk + 2], sc[8 * kk + 3]);
      p[kk][2] = pack2<T>(sc[8 * kk + 4], sc[8 * kk + 5]);
      p[kk][3] = pack2<T>(sc[8 * kk + 6], sc[8 * kk + 7]);
    }
  };

  cp_async_wait<1>();  // Q, K(0), V(0)
  fence_async_smem();
  __syncthreads();
  if (n_blocks > 0) {
    float alpha[2];
    wgmma_fence();
    issue_qk(0);
    wgmma_wait<0>();
    reg_fence(sc);
    softmax(0, alpha);  // O is still zero: nothing to rescale
    pack_p();
  }
  for (int it = 1; it < n_blocks; ++it) {
    cp_async_wait<0>();  // K(it) and V(it - 1)
    fence_async_smem();
    __syncthreads();     // ... from every thread; and every warpgroup is done with K(it - 1) and V(it - 2)
    load_tile_sw128_async<BN, D, Tile::kThreads>(v_buf(it), v, key0(it));
    if (it + 1 < n_blocks) load_tile_sw128_async<BN, D, Tile::kThreads>(k_buf(it + 1), k, key0(it + 1));
    cp_async_commit();

    wgmma_fence();
    issue_qk(it);
    issue_pv(it - 1);
    float alpha[2];
    wgmma_wait<1>();  // S(it) landed; P(it - 1) V(it - 1) still runs
    reg_fence(sc);
    softmax(it, alpha);
    wgmma_wait<0>();
    reg_fence(o);
    reg_fence(p);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] *= alpha[(i / 2) % 2];
    pack_p();
  }
  if (n_blocks > 0) {
    cp_async_wait<0>();  // V(last)
    fence_async_smem();
    __syncthreads();
    wgmma_fence();
    issue_pv(n_blocks - 1);
    wgmma_wait<0>();
    reg_fence(o);
  }

  // Epilogue: O is staged (padded rows, each warp its own) over Q and the K buffers, which no product reads any more
  // once every thread is past this barrier (with no key block, the Q copy may still be landing).
  cp_async_wait<0>();
  __syncthreads();
  store_output_rows<T, D>(a, s, b, h, split, m0, warp_row0, [&](int j, int e) { return o[j * 4 + e]; }, row_max, row_sum,
                          mult, sQ);
#endif
}

// Launches the Hopper forward for head dim D (the caller picked D >= head_dim). Returns the CUDA error of the launch.
template <typename T, int D>
gpuError_t launch_fwd_sm90(const AttnArgs& a, int m_blocks, gpuStream_t stream) {
  using Tile = typename Sm90FwdTileFor<D>::type;
  return launch_attention_kernel(fwd_sm90_kernel<T, Tile>, dim3(m_blocks, a.heads_q, a.batch * a.num_splits),
                                 Tile::kThreads, Tile::smem_bytes(), stream, a);
}

}  // namespace fa::tc
