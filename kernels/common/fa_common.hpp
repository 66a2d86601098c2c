// fa_common.hpp — host-side pieces every backend shares: the thread-local last error, the boundary guard that turns
// C++ exceptions into status codes, validation of fa_attn_params, the layout report and a tiny JSON writer.
// Header-only C++17 so that g++, nvcc and hipcc host passes all compile it into their library.
#pragma once

#include <array>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "../include/flashattn.h"

namespace fa {

// ---- last error ---------------------------------------------------------------------------------------------------

inline std::string& last_error_slot() {
  static thread_local std::string message;
  return message;
}

// Records `message` as the calling thread's last error and returns `status` so call sites read `return fail(...)`.
inline int32_t fail(fa_status status, const std::string& message) {
  last_error_slot() = message;
  return status;
}

inline std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string format(const char* fmt, ...) {
  char small[512];
  va_list args;
  va_start(args, fmt);
  int n = std::vsnprintf(small, sizeof small, fmt, args);
  va_end(args);
  if (n < 0) return std::string(fmt);
  if (static_cast<size_t>(n) < sizeof small) return std::string(small, static_cast<size_t>(n));
  std::string big(static_cast<size_t>(n) + 1, '\0');
  va_start(args, fmt);
  std::vsnprintf(&big[0], big.size(), fmt, args);
  va_end(args);
  big.resize(static_cast<size_t>(n));
  return big;
}

// Copies `text` into a caller buffer, always NUL-terminated when len > 0.
inline int32_t copy_out(const std::string& text, char* buf, int64_t len) {
  if (buf == nullptr || len <= 0) return fail(FA_ERR_INVALID_ARGUMENT, "output buffer is NULL or has no room");
  size_t room = static_cast<size_t>(len) - 1;
  size_t n = text.size() < room ? text.size() : room;
  std::memcpy(buf, text.data(), n);
  buf[n] = '\0';
  if (n < text.size()) return fail(FA_ERR_BUFFER_TOO_SMALL, format("output buffer of %lld bytes is too small for %zu bytes",
                                                                    static_cast<long long>(len), text.size() + 1));
  return FA_OK;
}

// Every exported function body runs inside guard(): no C++ exception crosses the C boundary.
template <typename F>
int32_t guard(F&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(FA_ERR_OUT_OF_MEMORY, "out of host memory");
  } catch (const std::exception& e) {
    return fail(FA_ERR_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return fail(FA_ERR_INTERNAL, "internal error: unknown exception");
  }
}

// ---- layout report ------------------------------------------------------------------------------------------------

inline int32_t params_layout(int64_t* out, int32_t capacity) {
  const int64_t entries[FA_PARAMS_LAYOUT_COUNT] = {
      sizeof(fa_attn_params),
      sizeof(fa_tensor),
      sizeof(fa_descale),
      offsetof(fa_attn_params, struct_size),
      offsetof(fa_attn_params, abi_version),
      offsetof(fa_attn_params, dtype),
      offsetof(fa_attn_params, batch),
      offsetof(fa_attn_params, seqlen_q),
      offsetof(fa_attn_params, seqlen_k),
      offsetof(fa_attn_params, heads_q),
      offsetof(fa_attn_params, heads_kv),
      offsetof(fa_attn_params, head_dim),
      offsetof(fa_attn_params, is_causal),
      offsetof(fa_attn_params, window_left),
      offsetof(fa_attn_params, window_right),
      offsetof(fa_attn_params, scale),
      offsetof(fa_attn_params, softcap),
      offsetof(fa_attn_params, alibi_mode),
      offsetof(fa_attn_params, num_splits),
      offsetof(fa_attn_params, deterministic),
      offsetof(fa_attn_params, total_q),
      offsetof(fa_attn_params, total_k),
      offsetof(fa_attn_params, algorithm),
      offsetof(fa_attn_params, alibi_slopes),
      offsetof(fa_attn_params, cu_seqlens_q),
      offsetof(fa_attn_params, cu_seqlens_k),
      offsetof(fa_attn_params, stream),
      offsetof(fa_attn_params, q),
      offsetof(fa_attn_params, k),
      offsetof(fa_attn_params, v),
      offsetof(fa_attn_params, o),
      offsetof(fa_attn_params, lse),
      offsetof(fa_attn_params, dout),
      offsetof(fa_attn_params, dq),
      offsetof(fa_attn_params, dk),
      offsetof(fa_attn_params, dv),
      offsetof(fa_attn_params, out_kernel),
      offsetof(fa_attn_params, out_num_splits),
      offsetof(fa_attn_params, out_dtype),
      offsetof(fa_attn_params, reserved),
      offsetof(fa_attn_params, q_descale),
      offsetof(fa_attn_params, k_descale),
      offsetof(fa_attn_params, v_descale),
      offsetof(fa_tensor, data),
      offsetof(fa_tensor, batch_stride),
      offsetof(fa_tensor, row_stride),
      offsetof(fa_tensor, head_stride),
      offsetof(fa_descale, data),
      offsetof(fa_descale, batch_stride),
      offsetof(fa_descale, head_stride),
  };
  if (out != nullptr)
    for (int32_t i = 0; i < capacity && i < FA_PARAMS_LAYOUT_COUNT; ++i) out[i] = entries[i];
  return FA_PARAMS_LAYOUT_COUNT;
}

static_assert(sizeof(fa_tensor) == 32, "fa_tensor layout changed: bump FA_ABI_VERSION and ffi/layout.ts");
static_assert(sizeof(fa_descale) == 16, "fa_descale layout changed: bump FA_ABI_VERSION and ffi/layout.ts");
static_assert(sizeof(fa_attn_params) == 440, "fa_attn_params layout changed: bump FA_ABI_VERSION and ffi/layout.ts");
static_assert(offsetof(fa_attn_params, q) == 112 && offsetof(fa_attn_params, out_kernel) == 376 &&
                  offsetof(fa_attn_params, out_dtype) == 384 && offsetof(fa_attn_params, q_descale) == 392,
              "layout");

// ---- JSON writer --------------------------------------------------------------------------------------------------

inline std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) out += format("\\u%04x", c);
        else out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

inline std::string json_list(const std::vector<std::string>& quoted_items) {
  std::string out = "[";
  for (size_t i = 0; i < quoted_items.size(); ++i) out += (i ? "," : "") + quoted_items[i];
  return out + "]";
}

inline std::string json_strings(const std::vector<std::string>& items) {
  std::vector<std::string> quoted;
  for (const auto& s : items) quoted.push_back(json_quote(s));
  return json_list(quoted);
}

// ---- validation ---------------------------------------------------------------------------------------------------

// What one backend accepts at all; the dispatcher adds per-kernel limits on top.
struct BackendLimits {
  bool allow_f32;
  int min_head_dim;
  int max_head_dim;
  int head_dim_multiple;  // 1 on the CPU, 8 on GPUs (16-byte vector loads)
};

struct Problem {
  fa_status code;
  std::string message;
};

inline const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case FA_DTYPE_F32: return "fp32";
    case FA_DTYPE_F16: return "fp16";
    case FA_DTYPE_BF16: return "bf16";
    case FA_DTYPE_FP8_E4M3: return "fp8_e4m3";
    case FA_DTYPE_FP8_E5M2: return "fp8_e5m2";
    default: return "unknown";
  }
}

inline bool is_fp8(int32_t dtype) { return dtype == FA_DTYPE_FP8_E4M3 || dtype == FA_DTYPE_FP8_E5M2; }

inline size_t dtype_size(int32_t dtype) { return dtype == FA_DTYPE_F32 ? 4 : is_fp8(dtype) ? 1 : 2; }

// The dtype o is written in (out_dtype of fa_attn_params or fa_kvcache_params): 0 is the default, the input dtype itself
// or bf16 for fp8.
template <typename Params>
int32_t output_dtype(const Params& p) {
  if (p.out_dtype != 0) return p.out_dtype;
  return is_fp8(p.dtype) ? FA_DTYPE_BF16 : p.dtype;
}

// Effective right window bound after folding in causal (causal is window (-1, 0)); -1 = unbounded.
inline int32_t effective_window_right(const fa_attn_params& p) {
  if (!p.is_causal) return p.window_right;
  return (p.window_right < 0 || p.window_right > 0) ? 0 : p.window_right;
}

inline bool is_varlen(const fa_attn_params& p) { return p.cu_seqlens_q != nullptr; }

// Largest element offset a (rows x heads x dim) view reaches, or -1 on overflow / negative stride.
inline int64_t view_extent(const fa_tensor& t, int64_t batches, int64_t rows, int64_t heads, int64_t dim) {
  if (t.batch_stride < 0 || t.row_stride < 0 || t.head_stride < 0) return -1;
  const int64_t limit = INT64_MAX / 4;
  auto term = [&](int64_t count, int64_t stride) -> int64_t {
    if (count <= 1 || stride == 0) return 0;
    if (stride > limit / (count - 1)) return -1;
    return (count - 1) * stride;
  };
  int64_t a = term(batches, t.batch_stride), b = term(rows, t.row_stride), c = term(heads, t.head_stride);
  if (a < 0 || b < 0 || c < 0) return -1;
  if (a > limit - b || a + b > limit - c || a + b + c > limit - dim) return -1;
  return a + b + c + dim;
}

// Sizes every kernel supports. Sequence lengths up to 2^28 keep every index sum the kernels form in 32 bits (query +
// diagonal offset + window, block starts + block size) below 2^31, and a row's running sums exact enough (the fp32
// partial sums of a key block stay far above the rounding step of a total of 2^28 probabilities). Head and batch
// counts up to 65535 fit a CUDA / HIP grid's y and z dimensions; the lse rows (batch x heads_q x seqlen_q) stay below
// 2^31 so tile and row counters fit an int.
constexpr int32_t kMaxSeqlen = 1 << 28;
constexpr int32_t kMaxHeads = 65535;
constexpr int32_t kMaxBatch = 65535;
constexpr int64_t kMaxLseRows = INT32_MAX;

// The largest softmax scale taken (lib/problem.ts MAX_SCALE): the kernels keep scaled scores in float32, and past
// 2^64 even fp16 inputs (|q.k| <= 256 * 65504^2) could overflow them; the softmax of infinite scores is silently wrong.
constexpr float kMaxScale = 18446744073709551616.0f;  // 2^64

// 0 or a normal float (a subnormal scale or softcap would be flushed to zero on GPUs, which compute with ftz).
inline bool zero_or_normal(float x) { return x == 0.f || std::fpclassify(x) == FP_NORMAL; }

// The first checks of every params struct (fa_attn_params here, fa_kvcache_params in fa_kvcache.hpp): a pointer, to a
// struct built for this ABI. False, with the one problem in `out`, when either fails: no field may be read then.
// `what` names the struct in the ABI sentence ("params", "KV-cache params").
template <typename Params>
bool check_struct_header(const Params* pp, const char* what, std::vector<Problem>& out) {
  if (pp == nullptr) {
    out.push_back({FA_ERR_INVALID_ARGUMENT, "params pointer is NULL"});
    return false;
  }
  if (pp->abi_version != FA_ABI_VERSION || pp->struct_size != sizeof(Params)) {
    out.push_back({FA_ERR_ABI, format("%s built for ABI %u with %u bytes, but this library has ABI %d with %zu bytes: "
                                      "rebuild the library or update the caller",
                                      what, pp->abi_version, pp->struct_size, FA_ABI_VERSION, sizeof(Params))});
    return false;
  }
  return true;
}

// The checks of the fields fa_attn_params and fa_kvcache_params share (fa_kvcache.hpp), written once: dtype, batch
// and seqlen_q first; then (after the caller's key-length checks) heads, head_dim and the score semantics.
template <typename Params>
void check_dtype_batch_queries(const Params& p, const BackendLimits& lim, std::vector<Problem>& out) {
  auto invalid = [&](const std::string& m) { out.push_back({FA_ERR_INVALID_ARGUMENT, m}); };
  auto unsupported = [&](const std::string& m) { out.push_back({FA_ERR_UNSUPPORTED, m}); };
  if (p.dtype < FA_DTYPE_F32 || p.dtype > FA_DTYPE_FP8_E5M2)
    invalid(format("dtype %d is not one of fp32 (0), fp16 (1), bf16 (2), fp8_e4m3 (3), fp8_e5m2 (4)", p.dtype));
  else if (p.dtype == FA_DTYPE_F32 && !lim.allow_f32)
    unsupported("fp32 tensors are not supported by this backend: use fp16 or bf16");

  if (p.batch < 1) invalid(format("batch must be at least 1, got %d", p.batch));
  else if (p.batch > kMaxBatch) unsupported(format("batch %d exceeds the supported maximum %d", p.batch, kMaxBatch));
  if (p.seqlen_q < 1) invalid(format("seqlen_q must be at least 1, got %d", p.seqlen_q));
  else if (p.seqlen_q > kMaxSeqlen)
    unsupported(format("seqlen_q %d exceeds the supported maximum %d (2^28)", p.seqlen_q, kMaxSeqlen));
}

template <typename Params>
void check_heads_and_semantics(const Params& p, const BackendLimits& lim, std::vector<Problem>& out) {
  auto invalid = [&](const std::string& m) { out.push_back({FA_ERR_INVALID_ARGUMENT, m}); };
  auto unsupported = [&](const std::string& m) { out.push_back({FA_ERR_UNSUPPORTED, m}); };
  if (p.heads_q < 1 || p.heads_kv < 1)
    invalid(format("head counts must be at least 1, got heads_q %d and heads_kv %d", p.heads_q, p.heads_kv));
  else if (p.heads_q % p.heads_kv != 0)
    invalid(format("heads_q (%d) must be a multiple of heads_kv (%d) for GQA/MQA", p.heads_q, p.heads_kv));
  else if (p.heads_q > kMaxHeads)
    unsupported(format("heads_q %d exceeds the supported maximum %d", p.heads_q, kMaxHeads));

  if (p.head_dim < 1) invalid(format("head_dim must be positive, got %d", p.head_dim));
  else if (p.head_dim < lim.min_head_dim || p.head_dim > lim.max_head_dim)
    unsupported(format("head_dim %d is outside the supported range %d..%d", p.head_dim, lim.min_head_dim, lim.max_head_dim));
  else if (p.head_dim % lim.head_dim_multiple != 0)
    unsupported(format("head_dim %d is not a multiple of %d", p.head_dim, lim.head_dim_multiple));

  if (p.is_causal != 0 && p.is_causal != 1) invalid(format("is_causal must be 0 or 1, got %d", p.is_causal));
  if (p.window_left < -1 || p.window_right < -1)
    invalid(format("window bounds must be -1 (unbounded) or non-negative, got (%d, %d)", p.window_left, p.window_right));
  if (!std::isfinite(p.scale) || p.scale < 0.f || !zero_or_normal(p.scale))
    invalid(format("scale must be 0 (= 1/sqrt(head_dim)) or a positive normal float, got %g", static_cast<double>(p.scale)));
  else if (p.scale > kMaxScale)
    invalid(format("scale %g is above 2^64: scaled scores would overflow float32", static_cast<double>(p.scale)));
  if (!std::isfinite(p.softcap) || p.softcap < 0.f || !zero_or_normal(p.softcap))
    invalid(format("softcap must be 0 (off) or a positive normal float, got %g", static_cast<double>(p.softcap)));
  if (p.alibi_mode < FA_ALIBI_NONE || p.alibi_mode > FA_ALIBI_PER_BATCH_HEAD)
    invalid(format("alibi_mode %d is not none (0), per head (1) or per batch and head (2)", p.alibi_mode));
  else if (p.alibi_mode != FA_ALIBI_NONE && p.alibi_slopes == nullptr)
    invalid("ALiBi is on but alibi_slopes is NULL");
  if (p.num_splits < 0 || p.num_splits > 256) invalid(format("num_splits must be 0 (auto) to 256, got %d", p.num_splits));
}

// The three descale views of a params struct (fa_attn_params or fa_kvcache_params) with their names, in q, k, v order.
struct NamedDescale {
  const char* name;
  const fa_descale& view;
};
template <typename Params>
std::array<NamedDescale, 3> named_descales(const Params& p) {
  return {{{"q_descale", p.q_descale}, {"k_descale", p.k_descale}, {"v_descale", p.v_descale}}};
}

// The factor of sequence b, kv head h in a descale view (flashattn.h, fa_descale): 1 when none is given. The view's
// data must be host memory (the CPU backend, or a host copy made with the same strides).
inline float descale_at(const fa_descale& f, int32_t b, int32_t h) {
  return f.data ? f.data[int64_t{b} * f.batch_stride + int64_t{h} * f.head_stride] : 1.0f;
}

// The fields fp8 adds, at the end of both params structs: the output dtype, the descale views (their values need
// device memory: check_descale_values reads them where it is host memory) and the forward-only rule (a KV-cache call
// is a forward).
template <typename Params>
void check_fp8_fields(const Params& p, int32_t direction, std::vector<Problem>& out) {
  auto invalid = [&](const std::string& m) { out.push_back({FA_ERR_INVALID_ARGUMENT, m}); };
  auto unsupported = [&](const std::string& m) { out.push_back({FA_ERR_UNSUPPORTED, m}); };
  const bool fp8 = is_fp8(p.dtype);
  if (p.reserved != 0) invalid(format("the reserved field must be 0, got %d", p.reserved));
  if (fp8 && p.out_dtype != 0 && p.out_dtype != FA_DTYPE_F16 && p.out_dtype != FA_DTYPE_BF16)
    invalid(format("out_dtype %d is not one an fp8 forward writes: 0 (bf16), fp16 (1) or bf16 (2)", p.out_dtype));
  if (!fp8 && p.out_dtype != 0 && p.out_dtype != p.dtype)
    invalid(format("out_dtype %d differs from dtype %d: only fp8 inputs take another output dtype (0 = same as dtype)",
                   p.out_dtype, p.dtype));
  for (const NamedDescale& x : named_descales(p)) {
    if (x.view.data == nullptr) {
      if (x.view.batch_stride != 0 || x.view.head_stride != 0)
        invalid(format("%s.data is NULL but its strides are (%d, %d): an absent descale has zero strides", x.name,
                       x.view.batch_stride, x.view.head_stride));
      continue;
    }
    if (!fp8)
      invalid(format("%s is given but dtype is %s: descale factors apply to fp8 inputs only", x.name, dtype_name(p.dtype)));
    if (x.view.batch_stride < 0 || x.view.head_stride < 0)
      invalid(format("%s has a negative stride (%d, %d)", x.name, x.view.batch_stride, x.view.head_stride));
  }
  if (fp8 && direction != FA_DIR_FORWARD)
    unsupported(format("%s is forward only: fp8 attention has no backward pass (train in fp16 or bf16)", dtype_name(p.dtype)));
}

// Reads the factors of a descale view whose data is host memory (the CPU backend, or a host copy with the same strides)
// and refuses a non-finite or non-positive one.
template <typename Params>
std::vector<Problem> check_descale_values(const Params& p, const char* name, const fa_descale& host) {
  for (int32_t b = 0; b < p.batch; ++b)
    for (int32_t h = 0; h < p.heads_kv; ++h) {
      const float x = descale_at(host, b, h);
      // A subnormal factor would be flushed to zero by GPUs (ftz), so it is refused like 0.
      if (!std::isfinite(x) || x <= 0.f || !zero_or_normal(x))
        return {{FA_ERR_INVALID_ARGUMENT, format("%s[%d, %d] is %g: descale factors must be finite positive normal floats",
                                                 name, b, h, static_cast<double>(x))}};
    }
  return {};
}

// Checks everything that does not need to read device memory. Returns the problems found, first one first.
// `direction` is an fa_direction. The caller turns problems[0] into the status and message of the call.
inline std::vector<Problem> check_params(const fa_attn_params* pp, const BackendLimits& lim, int32_t direction) {
  std::vector<Problem> out;
  auto invalid = [&](const std::string& m) { out.push_back({FA_ERR_INVALID_ARGUMENT, m}); };
  auto unsupported = [&](const std::string& m) { out.push_back({FA_ERR_UNSUPPORTED, m}); };
  if (!check_struct_header(pp, "params", out)) return out;
  const fa_attn_params& p = *pp;
  if (direction < FA_DIR_FORWARD || direction > FA_DIR_FORWARD_BACKWARD)
    invalid(format("direction %d is not forward (0), backward (1) or forward+backward (2)", direction));

  check_dtype_batch_queries(p, lim, out);
  if (p.seqlen_k < 0) invalid(format("seqlen_k must not be negative, got %d", p.seqlen_k));
  else if (p.seqlen_k > kMaxSeqlen)
    unsupported(format("seqlen_k %d exceeds the supported maximum %d (2^28)", p.seqlen_k, kMaxSeqlen));
  check_heads_and_semantics(p, lim, out);
  if (p.deterministic != 0 && p.deterministic != 1) invalid(format("deterministic must be 0 or 1, got %d", p.deterministic));
  check_fp8_fields(p, direction, out);
  if (p.algorithm != FA_ALGO_FLASH && p.algorithm != FA_ALGO_NAIVE)
    invalid(format("algorithm %d is not flash (0) or naive (1)", p.algorithm));
  else if (p.algorithm == FA_ALGO_NAIVE && direction != FA_DIR_FORWARD)
    unsupported("the naive (materialised) algorithm implements the forward pass only");

  const bool varlen = is_varlen(p);
  if ((p.cu_seqlens_q == nullptr) != (p.cu_seqlens_k == nullptr))
    invalid("cu_seqlens_q and cu_seqlens_k must be given together (varlen) or both be NULL");
  if (varlen && (p.total_q < 0 || p.total_k < 0))
    invalid(format("varlen totals must not be negative, got total_q %d and total_k %d", p.total_q, p.total_k));

  if (!out.empty()) return out;  // shapes below rely on the scalars above

  const int64_t lse_rows = varlen ? int64_t{p.heads_q} * p.total_q : int64_t{p.batch} * p.heads_q * p.seqlen_q;
  if (lse_rows > kMaxLseRows)
    unsupported(format("%s (%lld query rows over all heads) exceeds the supported maximum 2^31 - 1",
                       varlen ? "heads_q x total_q" : "batch x heads_q x seqlen_q", static_cast<long long>(lse_rows)));

  // Tensor presence and extents: (batches, rows) per tensor in padded vs varlen mode.
  const int64_t batches = varlen ? 1 : p.batch;
  const int64_t rows_q = varlen ? p.total_q : p.seqlen_q;
  const int64_t rows_k = varlen ? p.total_k : p.seqlen_k;
  struct View {
    const char* name;
    const fa_tensor* t;
    int64_t rows, heads;
    bool needed;
  };
  const bool fwd = direction == FA_DIR_FORWARD || direction == FA_DIR_FORWARD_BACKWARD;
  const bool bwd = direction == FA_DIR_BACKWARD || direction == FA_DIR_FORWARD_BACKWARD;
  const View views[] = {
      {"q", &p.q, rows_q, p.heads_q, true},        {"k", &p.k, rows_k, p.heads_kv, true},
      {"v", &p.v, rows_k, p.heads_kv, true},       {"o", &p.o, rows_q, p.heads_q, true},
      {"dout", &p.dout, rows_q, p.heads_q, bwd},   {"dq", &p.dq, rows_q, p.heads_q, bwd},
      {"dk", &p.dk, rows_k, p.heads_kv, bwd},      {"dv", &p.dv, rows_k, p.heads_kv, bwd},
  };
  for (const View& v : views) {
    if (!v.needed) continue;
    if (v.t->data == nullptr) {
      invalid(format("tensor %s is NULL", v.name));
      continue;
    }
    if (view_extent(*v.t, batches, v.rows, v.heads, p.head_dim) < 0)
      invalid(format("tensor %s has a negative stride or its strides overflow 64-bit offsets", v.name));
  }
  if (bwd && p.lse == nullptr) invalid("backward needs the forward's LSE, but lse is NULL");
  (void)fwd;
  return out;
}

// Validates host-side cu_seqlens: starts at 0, non-decreasing, ends at total, and the largest step fits max_len.
inline std::vector<Problem> check_cu_seqlens(const int32_t* cu, int32_t batch, int32_t total, int32_t max_len, const char* name) {
  std::vector<Problem> out;
  if (cu[0] != 0) out.push_back({FA_ERR_INVALID_ARGUMENT, format("%s[0] must be 0, got %d", name, cu[0])});
  for (int32_t b = 0; b < batch && out.empty(); ++b) {
    int64_t len = static_cast<int64_t>(cu[b + 1]) - cu[b];
    if (len < 0)
      out.push_back({FA_ERR_INVALID_ARGUMENT, format("%s must be non-decreasing, but %s[%d] = %d > %s[%d] = %d", name, name, b,
                                                     cu[b], name, b + 1, cu[b + 1])});
    else if (len > max_len)
      out.push_back({FA_ERR_INVALID_ARGUMENT, format("sequence %d has %lld tokens in %s, more than the given maximum %d", b,
                                                     static_cast<long long>(len), name, max_len)});
  }
  if (out.empty() && cu[batch] != total)
    out.push_back({FA_ERR_INVALID_ARGUMENT, format("%s[%d] = %d must equal the token count %d", name, batch, cu[batch], total)});
  return out;
}

// The status + message of the first problem, or FA_OK.
// fa_bench's and fa_bench_kvcache's counts, on every backend.
inline int32_t check_bench_counts(int32_t warmup, int32_t iters, const float* times_ms) {
  if (warmup < 0 || warmup > 100000 || iters < 1 || iters > 100000)
    return fail(FA_ERR_INVALID_ARGUMENT, format("bench needs warmup 0..100000 and 1..100000 iterations, got %d and %d", warmup, iters));
  if (times_ms == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, "times_ms is NULL");
  return static_cast<int32_t>(FA_OK);
}

inline int32_t report_first(const std::vector<Problem>& problems) {
  if (problems.empty()) return FA_OK;
  return fail(problems.front().code, problems.front().message);
}

inline std::string plan_refusal_json(const std::vector<Problem>& problems) {
  std::vector<std::string> reasons;
  for (const auto& pr : problems) reasons.push_back(pr.message);
  return "{\"ok\":false,\"reasons\":" + json_strings(reasons) + "}";
}

// Resolved per-call scalars every kernel wants.
struct Resolved {
  float scale;         // softmax scale
  int32_t win_left;    // -1 = unbounded (also for any bound that reaches past every key)
  int32_t win_right;   // -1 = unbounded, causal folded in
  int32_t group;       // heads_q / heads_kv
};

inline Resolved resolve(const fa_attn_params& p) {
  Resolved r;
  r.scale = p.scale > 0.f ? p.scale : 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  // A left bound >= seqlen_k (right bound >= seqlen_q) admits every key of every query of every sequence (i + sk - sq
  // - left < 0, i + sk - sq + right >= sk - 1), so it is exactly "unbounded"; folding it keeps the kernels' 32-bit
  // index sums (query + offset + window) small.
  r.win_left = p.window_left >= p.seqlen_k ? -1 : p.window_left;
  r.win_right = effective_window_right(p) >= p.seqlen_q ? -1 : effective_window_right(p);
  r.group = p.heads_q / p.heads_kv;
  return r;
}

}  // namespace fa
