// naive.cu — the baseline without FlashAttention: materialise S = scores(Q K^T) in fp32 for every (batch, head),
// softmax it in place into P, then O = P V. Memory grows as batch * heads * seqlen_q * seqlen_k * 4 bytes (taken as
// workspace slot 0, so fa_memory_stats shows it). Simple one-thread-per-output kernels on purpose: this is what
// `flashattn bench` compares the tiled kernels against. Builds with nvcc and hipcc (gpu* names only).
#include "device.hpp"

namespace fa {
namespace {

constexpr int kNaiveId = 1;

struct NaiveArgs {
  fa_attn_params p;
  Resolved r;
  float* scores;  // [batch][heads_q][seqlen_q][seqlen_k] (maxima in varlen mode)
};

struct Seq {
  int q_start, k_start, sq, sk;
};

__device__ Seq naive_seq(const fa_attn_params& p, int b) {
  if (p.cu_seqlens_q == nullptr) return Seq{0, 0, p.seqlen_q, p.seqlen_k};
  return Seq{p.cu_seqlens_q[b], p.cu_seqlens_k[b], p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b],
             p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b]};
}

template <typename T>
__device__ const T* row_ptr(const fa_tensor& t, const fa_attn_params& p, int b, int start, int row, int h) {
  const int64_t base = p.cu_seqlens_q != nullptr ? static_cast<int64_t>(start + row) * t.row_stride
                                                 : b * t.batch_stride + static_cast<int64_t>(row) * t.row_stride;
  return static_cast<const T*>(t.data) + base + h * t.head_stride;
}

__device__ float* score_row(const NaiveArgs& a, int b, int h, int i) {
  return a.scores + ((static_cast<int64_t>(b) * a.p.heads_q + h) * a.p.seqlen_q + i) * a.p.seqlen_k;
}

// S[i][j] = the score of docs/DESIGN.md (scale, softcap, ALiBi), -inf where j is not visible from i.
template <typename T>
__global__ void naive_scores(const NaiveArgs a) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y * blockDim.y + threadIdx.y;
  const int bh = blockIdx.z, b = bh / a.p.heads_q, h = bh % a.p.heads_q;
  const Seq s = naive_seq(a.p, b);
  if (i >= s.sq || j >= s.sk) return;
  const int diag = s.sk - s.sq;
  float x = -INFINITY;
  const bool visible = (a.r.win_right < 0 || j <= i + diag + a.r.win_right) && (a.r.win_left < 0 || j >= i + diag - a.r.win_left);
  if (visible) {
    const T* q = row_ptr<T>(a.p.q, a.p, b, s.q_start, i, h);
    const T* k = row_ptr<T>(a.p.k, a.p, b, s.k_start, j, h / a.r.group);
    float dot = 0.f;
    for (int d = 0; d < a.p.head_dim; ++d) dot += to_float(q[d]) * to_float(k[d]);
    x = dot * a.r.scale;
    if (a.p.softcap > 0.f) x = a.p.softcap * tanhf(x / a.p.softcap);
    if (a.p.alibi_mode != FA_ALIBI_NONE) {
      const float slope = a.p.alibi_slopes[a.p.alibi_mode == FA_ALIBI_PER_BATCH_HEAD ? b * a.p.heads_q + h : h];
      x -= slope * fabsf(static_cast<float>(i + diag - j));
    }
  }
  score_row(a, b, h, i)[j] = x;
}

// Softmax of one score row in place (one block per row), LSE out; a row without visible keys becomes all zeros.
__global__ void naive_softmax(const NaiveArgs a) {
  const int i = blockIdx.x, bh = blockIdx.y, b = bh / a.p.heads_q, h = bh % a.p.heads_q;
  const Seq s = naive_seq(a.p, b);
  if (i >= s.sq) return;
  float* row = score_row(a, b, h, i);
  __shared__ float red[256];
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < s.sk; j += blockDim.x) mx = fmaxf(mx, row[j]);
  red[threadIdx.x] = mx;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + w]);
    __syncthreads();
  }
  mx = red[0];
  __syncthreads();
  float sum = 0.f;
  for (int j = threadIdx.x; j < s.sk; j += blockDim.x) sum += mx == -INFINITY ? 0.f : expf(row[j] - mx);
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  sum = red[0];
  for (int j = threadIdx.x; j < s.sk; j += blockDim.x) row[j] = sum > 0.f ? expf(row[j] - mx) / sum : 0.f;
  if (threadIdx.x == 0 && a.p.lse != nullptr) {
    const int64_t lrow = a.p.cu_seqlens_q != nullptr ? static_cast<int64_t>(h) * a.p.total_q + s.q_start + i
                                                     : (static_cast<int64_t>(b) * a.p.heads_q + h) * a.p.seqlen_q + i;
    a.p.lse[lrow] = sum > 0.f ? mx + logf(sum) : INFINITY;
  }
}

// O[i][d] = sum_j P[i][j] V[j][d].
template <typename T>
__global__ void naive_pv(const NaiveArgs a) {
  const int d = blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y, bh = blockIdx.z;
  const int b = bh / a.p.heads_q, h = bh % a.p.heads_q;
  const Seq s = naive_seq(a.p, b);
  if (i >= s.sq || d >= a.p.head_dim) return;
  const float* prob = score_row(a, b, h, i);
  // Summed in chunks of 256 keys, each added to the total once: a total grown key by key stops growing once it holds
  // 2^24 keys' worth (fp32), which 2^25 keys of equal weight reach at half their sum.
  float acc = 0.f;
  for (int j0 = 0; j0 < s.sk; j0 += 256) {
    float chunk = 0.f;
    for (int j = j0; j < min(s.sk, j0 + 256); ++j)
      chunk += prob[j] * to_float(row_ptr<T>(a.p.v, a.p, b, s.k_start, j, h / a.r.group)[d]);
    acc += chunk;
  }
  T* o = const_cast<T*>(row_ptr<T>(a.p.o, a.p, b, s.q_start, i, h));
  o[d] = from_float<T>(acc);
}

bool naive_supports(const fa_attn_params& p, const DeviceCaps&, int32_t direction, std::vector<std::string>& reasons) {
  const size_t before = reasons.size();
  if (direction != FA_DIR_FORWARD) reasons.push_back("the naive baseline implements the forward pass only");
  if (p.dtype != FA_DTYPE_F16 && p.dtype != FA_DTYPE_BF16)
    reasons.push_back(format("computes fp16 and bf16 only, not %s", dtype_name(p.dtype)));
  return reasons.size() == before;
}

template <typename T>
gpuError_t naive_launch(const NaiveArgs& a, gpuStream_t stream) {
  const int bh = a.p.batch * a.p.heads_q;
  if (a.p.seqlen_k > 0)  // no keys: the softmax writes LSE = +inf and P V gives zeros
    naive_scores<T><<<dim3((a.p.seqlen_k + 15) / 16, (a.p.seqlen_q + 15) / 16, bh), dim3(16, 16), 0, stream>>>(a);
  naive_softmax<<<dim3(a.p.seqlen_q, bh), 256, 0, stream>>>(a);
  naive_pv<T><<<dim3((a.p.head_dim + 63) / 64, a.p.seqlen_q, bh), 64, 0, stream>>>(a);
  return gpuGetLastError();
}

int32_t naive_forward(fa_attn_params& p, const LaunchContext& ctx) {
  if (p.seqlen_q > 65535) return fail(FA_ERR_UNSUPPORTED, "the naive baseline handles seqlen_q up to 65535 (grid limit)");
  if (static_cast<int64_t>(p.batch) * p.heads_q > 65535)
    return fail(FA_ERR_UNSUPPORTED, "the naive baseline handles batch * heads_q up to 65535 (grid limit)");
  NaiveArgs a{p, resolve(p), nullptr};
  if (p.seqlen_k > 0) {
    const size_t bytes = static_cast<size_t>(p.batch) * p.heads_q * p.seqlen_q * p.seqlen_k * sizeof(float);
    a.scores = static_cast<float*>(ctx.workspace.get(0, bytes));
    if (a.scores == nullptr) return FA_ERR_OUT_OF_MEMORY;
  }
  gpuError_t err = p.dtype == FA_DTYPE_F16 ? naive_launch<half_t>(a, ctx.stream) : naive_launch<bf16_t>(a, ctx.stream);
  if (err != gpuSuccess) return vendor_fail(err, "launching the naive attention kernels");
  return FA_OK;
}

}  // namespace

const std::vector<KernelPath>& naive_paths() {
  static const std::vector<KernelPath> paths = {
      {kNaiveId, "naive-materialised", "[\"causal\",\"window\",\"softcap\",\"alibi\",\"gqa\",\"varlen\",\"lse\",\"strided\"]",
       "[\"fp16\",\"bf16\"]", 256, naive_supports, naive_forward, nullptr, nullptr},
  };
  return paths;
}

}  // namespace fa
