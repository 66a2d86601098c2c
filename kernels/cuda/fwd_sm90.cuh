// fwd_sm90.cuh — FlashAttention forward on Hopper's warpgroup tensor cores (wgmma, sm_90a), one instantiation per
// (dtype, head dim).
//
// Grid (m blocks, heads_q, batch * num_splits), as the mma.sync forward. A CTA owns BM = 64 x kConsumers query rows
// of one head and walks its visible key blocks of BN keys from last to first (the masked diagonal blocks first).
// It is warp-specialised (FA3's schedule, with cp.async where FA3 has TMA):
//   warpgroup 0, the producer: copies Q once and K / V into a two-slot ring of 128B-swizzled tiles (wgmma.cuh),
//     each slot guarded by full / empty mbarriers, so no math warp issues a copy or waits at a CTA barrier;
//   warpgroups 1.., the consumers, 64 query rows each. Per key block n:
//     S_n  = Q K_n^T                    SS wgmma, m64 x BN, fp32 accumulators
//     O   += P_{n-1} V_{n-1}            RS wgmma, P from registers, V read N-major; issued right after S_n, so the
//                                       tensor cores work on it while this warpgroup computes the softmax of S_n
//     m', l, P_n = exp2(S_n c - m' c)   the online softmax of fwd.cuh (shared helper), base 2, scale folded in
//     O   *= exp2((m - m') c)           once the P V product has landed
//   and finally O += P_last V_last, O / l, LSE. The consumers take turns to issue their products (ping-pong over
//   named barriers): while one warpgroup's exp2s run on the MUFU, the tensor cores work for the other.
// Work per block and consumer: 4 x 64 BN D flops in two products; exp2 for 64 BN scores.
#pragma once

#include "attn.cuh"
#include "wgmma.cuh"

namespace fa::tc {

template <int D_, int BN_>
struct Sm90FwdTile {
  static constexpr int D = D_, BN = BN_, kConsumers = 2, BM = 64 * kConsumers;
  static constexpr int kThreads = 128 * (kConsumers + 1);  // the producer warpgroup + the consumers
  static constexpr int kConsumerThreads = 128 * kConsumers;
  // setmaxnreg budgets (128 x producer + consumer threads x consumer <= 65536, multiples of 8): below 56 the
  // producer's copy loop spills.
  static constexpr int kProducerRegs = 56, kConsumerRegs = 224;
  static constexpr int kTileQ = BM * D * 2, kTileKV = BN * D * 2;  // bytes (16-bit elements)
  static constexpr int kBarriers = 9;                              // Q full; K full / empty, V full / empty per slot
  static constexpr size_t smem_bytes() {
    return kSwizzleAlign + kTileQ + 4 * static_cast<size_t>(kTileKV) + kBarriers * sizeof(uint64_t);
  }
  static_assert(D % 64 == 0 && BN % 16 == 0 && BN <= 256 && D <= 256, "wgmma shapes: N <= 256, whole swizzle rows");
  static_assert(128 * kProducerRegs + kConsumerThreads * kConsumerRegs <= 65536, "register budget");
  static_assert(BM * (D + kPad) * 2 <= kTileQ + 2 * kTileKV, "the output staging fits over Q and the K slots");
};

// Tile table (H100/H200: 227 KB of smem per block). hdim 64/128: 128-key blocks (160 KB at 128); 192/256: 64-key
// blocks keep Q + 2 K + 2 V under the limit and O (D/2 registers per thread) beside S and P. (Tried at hdim 64: three
// consumers of 192 rows with 96-key blocks, to fit 160 registers: +6% at 8k, -7% at 2k; see docs/perf-cuda.md.)
template <int D> struct Sm90FwdTileFor;
template <> struct Sm90FwdTileFor<64> { using type = Sm90FwdTile<64, 128>; };
template <> struct Sm90FwdTileFor<128> { using type = Sm90FwdTile<128, 128>; };
template <> struct Sm90FwdTileFor<192> { using type = Sm90FwdTile<192, 64>; };
template <> struct Sm90FwdTileFor<256> { using type = Sm90FwdTile<256, 64>; };

template <typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads, 1) fwd_sm90_kernel(const __grid_constant__ AttnArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int D = Tile::D, BM = Tile::BM, BN = Tile::BN, NT = BN / 8, NC = Tile::kConsumers;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = swizzle_aligned_smem(smem_raw);
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = reinterpret_cast<T*>(smem + Tile::kTileQ);  // [2][BN x D], swizzled
  T* sV = sK + 2 * BN * D;                             // [2][BN x D], swizzled
  uint64_t* q_full = reinterpret_cast<uint64_t*>(sV + 2 * BN * D);
  uint64_t* k_full = q_full + 1;   // [2]
  uint64_t* v_full = q_full + 3;   // [2]
  uint64_t* k_empty = q_full + 5;  // [2]
  uint64_t* v_empty = q_full + 7;  // [2]
  auto k_buf = [&](int it) { return sK + (it & 1) * BN * D; };
  auto v_buf = [&](int it) { return sV + (it & 1) * BN * D; };

  const int m_block = gridDim.x - 1 - blockIdx.x;  // heaviest (causal) row blocks start first
  const int h = blockIdx.y, b = blockIdx.z / a.num_splits, split = blockIdx.z % a.num_splits;
  const SeqInfo s = seq_info(a, b);
  const int m0 = m_block * BM;
  if (m0 >= s.sq) return;
  const int hk = h / a.group;
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, g = (threadIdx.x % 32) / 4;

  // Iteration it works on key block hi - 1 - it (last first), in ring slot it & 1.
  const KeyBlocks blocks = split_key_blocks(a, s, m0, BM, BN, split);
  const int n_blocks = blocks.hi - blocks.lo;
  auto key0 = [&](int it) { return (blocks.hi - 1 - it) * BN; };

  if (threadIdx.x == 0) {
    mbarrier_init(q_full, 128);
    for (int slot = 0; slot < 2; ++slot) {
      mbarrier_init(k_full + slot, 128), mbarrier_init(v_full + slot, 128);
      mbarrier_init(k_empty + slot, Tile::kConsumerThreads), mbarrier_init(v_empty + slot, Tile::kConsumerThreads);
    }
    mbarrier_init_fence();
  }
  __syncthreads();

  if (wg == 0) {  // the producer: Q, then K(it), V(it) into slot it & 1 once every consumer has released it
    warpgroup_release_registers<Tile::kProducerRegs>();
    load_tile_sw128_async<BM, D, 128>(sQ, row_view<T>(a.q, a, b, h, s.q_start, s.sq), m0);
    cp_async_arrive(q_full);
    const RowView<T> k = row_view<T>(a.k, a, b, hk, s.k_start, s.sk);
    const RowView<T> v = row_view<T>(a.v, a, b, hk, s.k_start, s.sk);
    for (int it = 0; it < n_blocks; ++it) {
      const int slot = it & 1, reuse_parity = ((it >> 1) & 1) ^ 1;  // completion it / 2 - 1 of the empty barrier
      if (it >= 2) mbarrier_wait(k_empty + slot, reuse_parity);
      load_tile_sw128_async<BN, D, 128>(k_buf(it), k, key0(it));
      cp_async_arrive(k_full + slot);
      if (it >= 2) mbarrier_wait(v_empty + slot, reuse_parity);
      load_tile_sw128_async<BN, D, 128>(v_buf(it), v, key0(it));
      cp_async_arrive(v_full + slot);
    }
    return;
  }

  warpgroup_claim_registers<Tile::kConsumerRegs>();
  const int cw = wg - 1;  // consumer index
  const int wg_row0 = cw * 64, warp_row0 = wg_row0 + warp * 16;
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

  // Tile descriptors, built once: Q, and K / V of slot it & 1.
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
  // Waits for slot it & 1 of a ring (its it / 2-th filling), then orders the async proxy's reads after the copies.
  auto wait_full = [&](uint64_t* full, int it) {
    mbarrier_wait(full + (it & 1), (it >> 1) & 1);
    fence_async_smem();
  };
  // Ping-pong: consumer cw issues when the previous one (cyclically) has issued the same round; consumer NC - 1 hands
  // the first turn to consumer 0 and, to keep every barrier's arrivals matched, passes on no turn after its last.
  auto begin_turn = [&]() { named_barrier_sync(1 + cw, 256); };
  auto end_turn = [&](bool last) {
    if (!(last && cw == NC - 1)) named_barrier_arrive(1 + (cw + 1) % NC, 256);
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

  mbarrier_wait(q_full, 0);
  fence_async_smem();
  if (n_blocks > 0) {
    if (cw == NC - 1) named_barrier_arrive(1, 256);
    float alpha[2];
    wait_full(k_full, 0);
    begin_turn();
    wgmma_fence();
    issue_qk(0);
    end_turn(false);
    wgmma_wait<0>();
    reg_fence(sc);
    mbarrier_arrive(k_empty);
    softmax(0, alpha);  // O is still zero: nothing to rescale
    pack_p();
  }
  for (int it = 1; it < n_blocks; ++it) {
    wait_full(k_full, it);
    wait_full(v_full, it - 1);
    begin_turn();
    wgmma_fence();
    issue_qk(it);
    issue_pv(it - 1);
    end_turn(false);
    float alpha[2];
    wgmma_wait<1>();  // S(it) landed; P(it - 1) V(it - 1) still runs
    reg_fence(sc);
    mbarrier_arrive(k_empty + (it & 1));
    softmax(it, alpha);
    wgmma_wait<0>();
    reg_fence(o);
    reg_fence(p);
    mbarrier_arrive(v_empty + ((it - 1) & 1));
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] *= alpha[(i / 2) % 2];
    pack_p();
  }
  if (n_blocks > 0) {
    wait_full(v_full, n_blocks - 1);
    begin_turn();
    wgmma_fence();
    issue_pv(n_blocks - 1);
    end_turn(true);
    wgmma_wait<0>();
    reg_fence(o);
  }

  // Epilogue: O is staged (padded rows, each warp its own) over Q and the K slots, which no product reads any more
  // once every consumer is past this barrier (the producer's copies have all landed: every slot was waited for).
  named_barrier_sync(NC + 1, Tile::kConsumerThreads);
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
