// wgmma_layouts.cu — checks, on an sm_90 GPU, the three operand layouts the Hopper kernels build with wgmma.cuh,
// one warpgroup each, against a host fp64 product of the same bf16 values:
//   qk  C(64x128) = A(64x128) B(128x128)^T   SS, both K-major (S = Q K^T; S^T = K Q^T in the backward)
//   pv  C(64x128) = P(64x64) V(64x128)       RS, P as register fragments, V N-major over two 64-column blocks
//   dq  C(64x64)  = dS(64x128) K(128x128)    SS, dS stored transposed (M-major A), K N-major from column block 1
// A wrong descriptor, swizzle or fragment map shows up as a large error in its own line. Exit status 1 on failure.
//
// Build and run (from the repository root; the kernels' generated headers come from `bun kernels/build.ts cuda`):
//   nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a -Ibuild/gen/cuda scripts/check/wgmma_layouts.cu -o build/wgmma_layouts
//   build/wgmma_layouts
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../kernels/cuda/wgmma.cuh"

using fa::bf16_t;
using namespace fa::tc;

constexpr int M = 64, N = 128, K = 128, KP = 64;

__global__ void __launch_bounds__(128) layouts_kernel(const bf16_t* a, const bf16_t* b, const bf16_t* p, const bf16_t* v,
                                                      float* c_qk, float* c_pv, float* c_dq) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char raw[];
  unsigned char* smem = swizzle_aligned_smem(raw);
  bf16_t* sA = reinterpret_cast<bf16_t*>(smem);  // [M x K] swizzled
  bf16_t* sB = sA + M * K;                       // [N x K] swizzled
  bf16_t* sV = sB + N * K;                       // [KP x N] swizzled
  bf16_t* sDsT = sV + KP * N;                    // [K x M]: A(64 x 128) stored transposed, swizzled
  const RowView<bf16_t> av{a, K, M, K}, bv{b, K, N, K}, vv{v, N, KP, N};
  load_tile_sw128_async<M, K, 128>(sA, av, 0);
  load_tile_sw128_async<N, K, 128>(sB, bv, 0);
  load_tile_sw128_async<KP, N, 128>(sV, vv, 0);
  // A^T by plain stores: row k of the transposed tile holds column k of A.
  for (int i = threadIdx.x; i < K * (M / 2); i += 128) {
    const int kr = i / (M / 2), m = 2 * (i % (M / 2));
    const __nv_bfloat162 pair = __halves2bfloat162(a[m * K + kr], a[(m + 1) * K + kr]);
    sw128_store_pair<K>(sDsT, kr, m, *reinterpret_cast<const uint32_t*>(&pair));
  }
  cp_async_commit();
  cp_async_wait<0>();
  fence_async_smem();
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  float acc[N / 2];
  wgmma_fence();
  for (int kk = 0; kk < K / 16; ++kk) Wgmma<N, bf16_t>::ss<0, 0>(acc, desc_k_major<M>(tile_desc_k_major(sA), 0, kk), desc_k_major<N>(tile_desc_k_major(sB), 0, kk), kk > 0);
  wgmma_commit();
  wgmma_wait<0>();
  reg_fence(acc);
  for (int i = 0; i < N / 2; ++i) {
    const int row = warp * 16 + g + 8 * ((i / 2) % 2), col = 8 * (i / 4) + 2 * t + i % 2;
    c_qk[row * N + col] = acc[i];
  }

  // P fragments straight from global memory in the A-operand map: a[r] = (row g + 8 (r % 2), k 2t + 8 (r / 2) ..).
  uint32_t pa[KP / 16][4];
  for (int kk = 0; kk < KP / 16; ++kk)
    for (int r = 0; r < 4; ++r) {
      const int row = warp * 16 + g + 8 * (r % 2), col = kk * 16 + 2 * t + 8 * (r / 2);
      const __nv_bfloat162 pair = __halves2bfloat162(p[row * KP + col], p[row * KP + col + 1]);
      pa[kk][r] = *reinterpret_cast<const uint32_t*>(&pair);
    }
  wgmma_fence();
  for (int kk = 0; kk < KP / 16; ++kk) Wgmma<N, bf16_t>::rs<1>(acc, pa[kk], desc_mn_major<KP>(tile_desc_mn_major<KP>(sV), kk), kk > 0);
  wgmma_commit();
  wgmma_wait<0>();
  reg_fence(acc);
  for (int i = 0; i < N / 2; ++i) {
    const int row = warp * 16 + g + 8 * ((i / 2) % 2), col = 8 * (i / 4) + 2 * t + i % 2;
    c_pv[row * N + col] = acc[i];
  }

  float dq[32];
  wgmma_fence();
  for (int kk = 0; kk < K / 16; ++kk) Wgmma<64, bf16_t>::ss<1, 1>(dq, desc_mn_major<K>(tile_desc_mn_major<K>(sDsT), kk), desc_mn_major<N>(tile_desc_mn_major<N>(sB), kk, 1), kk > 0);
  wgmma_commit();
  wgmma_wait<0>();
  reg_fence(dq);
  for (int i = 0; i < 32; ++i) {
    const int row = warp * 16 + g + 8 * ((i / 2) % 2), col = 8 * (i / 4) + 2 * t + i % 2;
    c_dq[row * 64 + col] = dq[i];
  }
#endif
}

static float bf(bf16_t x) { return __bfloat162float(x); }

static double rel_err(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

#define CHECK(x)                                                                      \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      return 1;                                                                       \
    }                                                                                 \
  } while (0)

int main() {
  srand(12345);
  auto fill = [](std::vector<bf16_t>& x) {
    for (auto& e : x) e = __float2bfloat16(static_cast<float>(rand()) / RAND_MAX * 2.f - 1.f);
  };
  std::vector<bf16_t> a(M * K), b(N * K), p(M * KP), v(KP * N);
  fill(a), fill(b), fill(p), fill(v);
  bf16_t *da, *db, *dp, *dv;
  float *dqk, *dpv, *ddq;
  CHECK(cudaMalloc(&da, a.size() * 2));
  CHECK(cudaMalloc(&db, b.size() * 2));
  CHECK(cudaMalloc(&dp, p.size() * 2));
  CHECK(cudaMalloc(&dv, v.size() * 2));
  CHECK(cudaMalloc(&dqk, M * N * 4));
  CHECK(cudaMalloc(&dpv, M * N * 4));
  CHECK(cudaMalloc(&ddq, M * 64 * 4));
  CHECK(cudaMemcpy(da, a.data(), a.size() * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(db, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dp, p.data(), p.size() * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dv, v.data(), v.size() * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemset(dqk, 0xff, M * N * 4));  // NaN poison: every element must be written
  CHECK(cudaMemset(dpv, 0xff, M * N * 4));
  CHECK(cudaMemset(ddq, 0xff, M * 64 * 4));
  const int smem = kSwizzleAlign + 2 * (M * K + N * K + KP * N + K * M);
  CHECK(cudaFuncSetAttribute(layouts_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  layouts_kernel<<<1, 128, smem>>>(da, db, dp, dv, dqk, dpv, ddq);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::vector<float> qk(M * N), pv(M * N), dq(M * 64);
  CHECK(cudaMemcpy(qk.data(), dqk, qk.size() * 4, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(pv.data(), dpv, pv.size() * 4, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(dq.data(), ddq, dq.size() * 4, cudaMemcpyDeviceToHost));

  std::vector<double> rqk(M * N, 0), rpv(M * N, 0), rdq(M * 64, 0);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      for (int k = 0; k < K; ++k) rqk[m * N + n] += static_cast<double>(bf(a[m * K + k])) * bf(b[n * K + k]);
      for (int k = 0; k < KP; ++k) rpv[m * N + n] += static_cast<double>(bf(p[m * KP + k])) * bf(v[k * N + n]);
    }
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < 64; ++n)
      for (int k = 0; k < K; ++k) rdq[m * 64 + n] += static_cast<double>(bf(a[m * K + k])) * bf(b[k * K + 64 + n]);
  const double e_qk = rel_err(qk, rqk), e_pv = rel_err(pv, rpv), e_dq = rel_err(dq, rdq);
  std::printf("wgmma layouts (relative error vs fp64, fp32 accumulation of bf16 inputs should be < 1e-5):\n");
  std::printf("  qk  SS K-major / K-major            %.2e %s\n", e_qk, e_qk < 1e-5 ? "ok" : "FAIL");
  std::printf("  pv  RS, B N-major (2 blocks)        %.2e %s\n", e_pv, e_pv < 1e-5 ? "ok" : "FAIL");
  std::printf("  dq  SS, A M-major, B N-major blk 1  %.2e %s\n", e_dq, e_dq < 1e-5 ? "ok" : "FAIL");
  return e_qk < 1e-5 && e_pv < 1e-5 && e_dq < 1e-5 ? 0 : 1;
}
