// tma_layout.cu — checks, on an sm_90 GPU, that a tile copied by the TMA engine (tma.cuh) is byte for byte the tile
// the Hopper kernels build with cp.async (wgmma.cuh load_tile_sw128_async): the same 128-byte swizzle, the same zeros
// past the sequence's rows and past the head dim. bf16 BSHD tensors of distinct values; per case, one CTA copies the
// same 64 x 128 tile both ways and counts the bytes that differ. Cases: whole tiles, a tile running past the last row,
// head dim 96 in a 128-column tile, another sequence and head (the map's batch and head coordinates). Exit status 1
// on any difference or when the driver refuses the map.
//
// Build and run (from the repository root; generated headers from `bun kernels/build.ts cuda`):
//   nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a -Ibuild/gen/cuda scripts/check/tma_layout.cu -o build/tma_layout
//   build/tma_layout
#include <cstdio>
#include <string>
#include <vector>

#include "../../kernels/cuda/tma.cuh"

using fa::bf16_t;
using namespace fa::tc;

constexpr int R = 64, C = 128;  // the tile: R rows x C bf16 columns (two column blocks)

__global__ void __launch_bounds__(128) tile_both_ways(const __grid_constant__ CUtensorMap map, const RowView<bf16_t> rows, int head,
                                                      int row0, int seq, int* differences) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char raw[];
  unsigned char* smem = swizzle_aligned_smem(raw);
  unsigned char* by_copy = smem;              // R x C x 2 bytes, cp.async
  unsigned char* by_tma = smem + R * C * 2;   // the same, TMA (1024-byte aligned: R x C x 2 is a multiple)
  __shared__ uint64_t bar;
  if (threadIdx.x == 0) {
    mbarrier_init(&bar, 1);
    mbarrier_init_fence();
  }
  // Garbage first, so that a byte the copies leave alone differs.
  for (int i = threadIdx.x; i < 2 * R * C * 2; i += 128) smem[i] = static_cast<unsigned char>(0xA5 ^ (i * 7));
  __syncthreads();
  load_tile_sw128_async<R, C, 128>(reinterpret_cast<bf16_t*>(by_copy), rows, row0);
  cp_async_commit();
  fence_async_smem();  // the garbage stores (generic proxy) before the TMA writes (async proxy) to the same bytes
  __syncthreads();
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_bytes(&bar, R * C * 2);  // zero-filled bytes count too: the box is always whole
    tma_load_tile_sw128<R, C, 2>(by_tma, &map, head, row0, seq, &bar);
  }
  cp_async_wait<0>();
  mbarrier_wait(&bar, 0);
  __syncthreads();
  int diff = 0;
  for (int i = threadIdx.x; i < R * C * 2; i += 128) diff += by_copy[i] != by_tma[i];
  atomicAdd(differences, diff);
#endif
}

int main() {
  // BSHD bf16 tensor: 3 sequences x 100 rows x 4 heads x 128 dims, element (b, s, h, d) = a distinct small integer.
  constexpr int B = 3, S = 100, H = 4, D = 128;
  std::vector<bf16_t> host(static_cast<size_t>(B) * S * H * D);
  for (size_t i = 0; i < host.size(); ++i) host[i] = __float2bfloat16(static_cast<float>(static_cast<int>(i % 509) - 254));
  bf16_t* dev = nullptr;
  int* differences = nullptr;
  if (cudaMalloc(&dev, host.size() * sizeof(bf16_t)) != cudaSuccess || cudaMalloc(&differences, sizeof(int)) != cudaSuccess) {
    std::printf("FAIL: cudaMalloc\n");
    return 1;
  }
  cudaMemcpy(dev, host.data(), host.size() * sizeof(bf16_t), cudaMemcpyHostToDevice);
  const size_t smem = 2 * R * C * 2 + 1024;
  cudaFuncSetAttribute(tile_both_ways, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));

  struct Case { const char* name; int head_dim, seq, head, row0; };
  const Case cases[] = {{"whole tile", 128, 0, 0, 0},           {"past the last row (rows 64..127 of 100)", 128, 0, 0, 64},
                        {"head dim 96 in 128 columns", 96, 1, 2, 0}, {"head dim 96, past the last row", 96, 2, 3, 64},
                        {"last sequence, last head", 128, 2, 3, 32}};
  int failures = 0;
  for (const Case& c : cases) {
    // A head dim of 96 is a tensor whose rows hold 96 of the 128 stored dims: same strides, smaller dim 0.
    const TmaTensor t{CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, dev, B, S, H, c.head_dim, int64_t{S} * H * D, int64_t{H} * D, D};
    CUtensorMap map;
    std::string why;
    if (!encode_tile_map(&map, t, R, &why)) {
      std::printf("FAIL %-44s %s\n", c.name, why.c_str());
      ++failures;
      continue;
    }
    const RowView<bf16_t> rows{dev + static_cast<int64_t>(c.seq) * S * H * D + static_cast<int64_t>(c.head) * D, int64_t{H} * D, S, c.head_dim};
    cudaMemset(differences, 0, sizeof(int));
    tile_both_ways<<<1, 128, smem>>>(map, rows, c.head, c.row0, c.seq, differences);
    int diff = -1;
    const cudaError_t err = cudaMemcpy(&diff, differences, sizeof(int), cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) {
      std::printf("FAIL %-44s %s\n", c.name, cudaGetErrorString(err));
      return 1;  // the context is unusable after a kernel fault
    }
    std::printf("%s %-44s %d of %d bytes differ\n", diff == 0 ? "ok  " : "FAIL", c.name, diff, R * C * 2);
    failures += diff != 0;
  }
  std::printf("%s\n", failures == 0 ? "PASS: the TMA tile equals the cp.async tile in every case" : "FAIL");
  return failures == 0 ? 0 : 1;
}
