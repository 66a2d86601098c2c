// portable.cu — the registry entry of the portable kernels (the fallback the dispatcher tries after the vendor's matrix
// paths) and their host-side helpers: argument resolution, what the paths support, launch error reporting.
#include "portable.hpp"

#include "../gpu/device.hpp"

namespace fa {
namespace portable {

// 16-byte vector accesses need a 16-byte aligned base and strides that are multiples of 8 two-byte elements
// (head_dim is a multiple of 8 on GPUs).
bool allows_vec16(const fa_tensor& t, bool varlen) {
  if (t.data == nullptr) return true;
  const bool strides_ok = t.row_stride % 8 == 0 && t.head_stride % 8 == 0 && (varlen || t.batch_stride % 8 == 0);
  return strides_ok && reinterpret_cast<uintptr_t>(t.data) % 16 == 0;
}

Args make_args(const fa_attn_params& p) {
  const Resolved r = resolve(p);
  const bool varlen = is_varlen(p);
  Args a{};
  a.q = p.q, a.k = p.k, a.v = p.v, a.o = p.o;
  a.dout = p.dout, a.dq = p.dq, a.dk = p.dk, a.dv = p.dv;
  a.lse = p.lse;
  a.dsum = nullptr;
  a.alibi_slopes = p.alibi_mode == FA_ALIBI_NONE ? nullptr : p.alibi_slopes;
  a.alibi_per_batch = p.alibi_mode == FA_ALIBI_PER_BATCH_HEAD;
  a.cu_seqlens_q = p.cu_seqlens_q;
  a.cu_seqlens_k = p.cu_seqlens_k;
  a.batch = p.batch, a.seqlen_q = p.seqlen_q, a.seqlen_k = p.seqlen_k;
  a.heads_q = p.heads_q, a.heads_kv = p.heads_kv, a.head_dim = p.head_dim, a.group = r.group;
  a.total_q = varlen ? p.total_q : 0;
  a.scale = r.scale;
  a.softcap = p.softcap;
  a.win_left = r.win_left;
  a.win_right = r.win_right;
  bool vec = true;
  for (const fa_tensor* t : {&p.q, &p.k, &p.v, &p.o, &p.dout, &p.dq, &p.dk, &p.dv}) vec = vec && allows_vec16(*t, varlen);
  a.vec16 = vec;
  return a;
}

bool supports_common(const fa_attn_params& p, std::vector<std::string>& reasons) {
  const size_t before = reasons.size();
  if (p.dtype != FA_DTYPE_F16 && p.dtype != FA_DTYPE_BF16)
    reasons.push_back(format("computes fp16 and bf16 only, not %s", dtype_name(p.dtype)));
  if (p.head_dim % 8 != 0 || p.head_dim > 256)
    reasons.push_back(format("needs head_dim a multiple of 8 up to 256, got %d", p.head_dim));
  if (p.algorithm != FA_ALGO_FLASH) reasons.push_back("implements the flash algorithm, not naive");
  // Grid y = heads, z = batch: 65535 is the smallest limit among the GPUs we build for.
  if (p.heads_q > 65535 || p.batch > 65535)
    reasons.push_back(format("launches one block row per head and batch entry, at most 65535 each (got %d heads, batch %d)",
                             p.heads_q, p.batch));
  return reasons.size() == before;
}

int32_t check_launch(const char* what) {
  const gpuError_t err = gpuGetLastError();
  return err == gpuSuccess ? FA_OK : vendor_fail(err, what);
}

namespace {

constexpr const char* kFeatures =
    "[\"causal\",\"window\",\"softcap\",\"alibi\",\"gqa\",\"varlen\",\"lse\",\"strided\",\"deterministic\"]";
constexpr const char* kDtypes = "[\"fp16\",\"bf16\"]";

bool path_supports(const fa_attn_params& p, const DeviceCaps&, int32_t, std::vector<std::string>& reasons) {
  return supports_common(p, reasons);
}

}  // namespace
}  // namespace portable

const std::vector<KernelPath>& portable_paths() {
  static const std::vector<KernelPath> paths = {
      // One path for both directions and the KV-cache attention: the dispatcher serves forward+backward requests
      // (fa_bench, fa_plan "fwd+bwd") from a single path, and FLASHATTN_KERNEL=portable then forces all of them.
      {100, "portable", portable::kFeatures, portable::kDtypes, 256, portable::path_supports, portable::forward, portable::backward,
       nullptr, portable::supports_kvcache, portable::forward_kvcache},
  };
  return paths;
}

}  // namespace fa
