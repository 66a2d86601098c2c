/*
 * flashattn.h — the C ABI of libflashattn_{cpu,cuda,hip}.
 *
 * One header, three libraries with the same symbols. The TypeScript side (ffi/) loads any of them the same way.
 *
 * Principles (see docs/DESIGN.md, "The C ABI"):
 *   - plain C, `fa_` prefix, every call returns an fa_status (0 = ok);
 *   - the last error message is thread-local and copied into a caller buffer by fa_last_error() (never returned by
 *     pointer: Deno's scoped --allow-ffi cannot read C strings);
 *   - parameters travel in a fixed-layout struct passed by pointer that carries its own size and ABI version;
 *     the library reports the layout it was compiled with (fa_params_layout) so a loader can refuse a mismatch;
 *   - no structs by value, no callbacks, no C++ exceptions across the boundary;
 *   - validation happens at the boundary: bad input returns FA_ERR_INVALID_ARGUMENT (or FA_ERR_UNSUPPORTED) with a
 *     sentence a user understands, never a crash or an out-of-bounds write;
 *   - device memory is managed through the library (fa_malloc/fa_free/fa_memcpy_*); on the CPU backend "device"
 *     memory is ordinary 64-byte-aligned host memory.
 *
 * Tensor semantics are flash-attn 2.x's (BSHD layout, bottom-right causal, GQA, sliding window, softcap, ALiBi,
 * varlen via cu_seqlens, LSE in natural log). Shapes, in elements:
 *   padded:  q (batch, seqlen_q, heads_q, head_dim), k/v (batch, seqlen_k, heads_kv, head_dim), o like q,
 *            lse (batch, heads_q, seqlen_q) fp32 contiguous
 *   varlen:  q (total_q, heads_q, head_dim), k/v (total_k, heads_kv, head_dim), o like q,
 *            lse (heads_q, total_q) fp32 contiguous; cu_seqlens_q/k int32 of length batch+1, starting at 0,
 *            non-decreasing, ending at total_q/total_k; seqlen_q/seqlen_k hold the maximum sequence lengths.
 * The last dimension is contiguous; batch/row/head strides are free (packed QKV works). Strides count elements.
 *
 * Sizes every backend supports (larger ones return FA_ERR_UNSUPPORTED with the reason): seqlen_q and seqlen_k up to
 * 2^28, heads_q and batch up to 65535, batch x heads_q x seqlen_q (varlen: heads_q x total_q) below 2^31. scale and
 * softcap are 0 (default / off) or positive normal floats; window bounds -1 or non-negative (a bound past every key is
 * the same as -1).
 *
 * A query row with no allowed key (possible with windows or seqlen_k = 0) gets O = 0 and LSE = +inf (flash-attn
 * 2.x); backward
 * treats such a row as contributing nothing (dQ row = 0, no dK/dV contribution).
 */
#ifndef FLASHATTN_H
#define FLASHATTN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FA_API __declspec(dllexport)
#else
#define FA_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a signature or the fa_attn_params / fa_kvcache_params layout changes (both structs carry it). */
#define FA_ABI_VERSION 3

typedef enum fa_status {
  FA_OK = 0,
  FA_ERR_INVALID_ARGUMENT = 1, /* the caller's input is wrong (shape, stride, value, null pointer, ...) */
  FA_ERR_UNSUPPORTED = 2,      /* valid input that no kernel of this library implements (head dim, dtype, arch) */
  FA_ERR_OUT_OF_MEMORY = 3,    /* host or device allocation failed */
  FA_ERR_NO_DEVICE = 4,        /* no usable device / driver / runtime for this backend */
  FA_ERR_DEVICE = 5,           /* the device reported a failure (illegal address, launch failure, ...) */
  FA_ERR_ABI = 6,              /* params struct_size / abi_version do not match this library */
  FA_ERR_INTERNAL = 7,         /* a bug in the library: please report it */
  FA_ERR_BUFFER_TOO_SMALL = 8  /* an output string buffer was too short; the text was truncated */
} fa_status;

typedef enum fa_dtype {
  FA_DTYPE_F32 = 0,      /* CPU backend only */
  FA_DTYPE_F16 = 1,
  FA_DTYPE_BF16 = 2,
  FA_DTYPE_FP8_E4M3 = 3, /* q, k, v (and KV caches) of a forward call only (see "FP8" below); OCP E4M3: bias 7, no inf,
                            max 448 */
  FA_DTYPE_FP8_E5M2 = 4  /* the same; OCP E5M2: bias 15, IEEE-like with inf and NaN, max 57344 */
} fa_dtype;

typedef enum fa_alibi_mode {
  FA_ALIBI_NONE = 0,
  FA_ALIBI_PER_HEAD = 1,      /* alibi_slopes: fp32 [heads_q] */
  FA_ALIBI_PER_BATCH_HEAD = 2 /* alibi_slopes: fp32 [batch, heads_q] */
} fa_alibi_mode;

typedef enum fa_algorithm {
  FA_ALGO_FLASH = 0, /* tiled, online softmax, never materialises seqlen_q x seqlen_k */
  FA_ALGO_NAIVE = 1  /* materialised scores (fp32 S and P), the baseline bench compares against; forward only */
} fa_algorithm;

typedef enum fa_direction {
  FA_DIR_FORWARD = 0,
  FA_DIR_BACKWARD = 1,
  FA_DIR_FORWARD_BACKWARD = 2
} fa_direction;

/* A strided 4-D view (batch, row, head, dim) of one tensor; dim is contiguous. 32 bytes. */
typedef struct fa_tensor {
  void* data;           /*  0: device pointer (host pointer on the CPU backend) */
  int64_t batch_stride; /*  8: elements between sequences; ignored in varlen mode */
  int64_t row_stride;   /* 16: elements between consecutive tokens */
  int64_t head_stride;  /* 24: elements between consecutive heads */
} fa_tensor;

/*
 * FP8 descale factors of one tensor (q_descale, k_descale, v_descale in fa_attn_params), fp32 in device memory, the
 * FlashAttention-3 convention: logically (batch, heads_kv), and the value of every element of sequence b, kv head h is
 * its fp8 number times data[b * batch_stride + h * head_stride] (query head h uses the factor of its kv head
 * h / (heads_q / heads_kv)). A stride of 0 broadcasts: both 0 = one per-tensor scalar, (heads_kv, 1) = contiguous
 * (batch, heads_kv). data NULL = factor 1. Factors must be finite and positive. 16 bytes.
 */
typedef struct fa_descale {
  const float* data;    /*  0 */
  int32_t batch_stride; /*  8: elements between sequences, >= 0 */
  int32_t head_stride;  /* 12: elements between kv heads, >= 0 */
} fa_descale;

/*
 * Everything one forward or backward call needs. Zero-initialise, then set struct_size = sizeof(fa_attn_params)
 * and abi_version = FA_ABI_VERSION. Unused tensors stay zero (data = NULL). 440 bytes, naturally aligned.
 *
 * Masking (key j visible from query i, with d = seqlen_k - seqlen_q of that sequence):
 *   causal:  j <= i + d                      (bottom-right aligned; equivalent to window (-1, 0))
 *   window:  i + d - window_left <= j <= i + d + window_right, a negative bound is unbounded
 * Score:     s = scale * q.k; if softcap > 0: s = softcap * tanh(s / softcap); if ALiBi: s -= slope * |i + d - j|
 *
 * FP8 (dtype FA_DTYPE_FP8_E4M3 / FA_DTYPE_FP8_E5M2): q, k and v are fp8 numbers times their descale factors (see
 * fa_descale; NULL = 1); o is written in out_dtype (fp16 or bf16; 0 = bf16); forward only (a backward request is
 * refused). The softmax and every accumulation run in fp32; the probabilities P = exp(s - running max), values in
 * [0, 1], are rounded to fp8 E4M3 (nearest even) before the P.V product, as fp8 tensor cores take both operands in
 * fp8 - the CPU backend rounds them the same way so that its results are what a GPU fp8 kernel computes. The row sum
 * l (hence O = P.V / l and the LSE) uses the unrounded P.
 */
typedef struct fa_attn_params {
  uint32_t struct_size;  /*   0 */
  uint32_t abi_version;  /*   4 */
  int32_t dtype;         /*   8: fa_dtype of q, k, v, o, dout, dq, dk, dv */
  int32_t batch;         /*  12: number of sequences (varlen: cu_seqlens length - 1) */
  int32_t seqlen_q;      /*  16: (varlen: max query length) */
  int32_t seqlen_k;      /*  20: (varlen: max key length) */
  int32_t heads_q;       /*  24 */
  int32_t heads_kv;      /*  28: heads_q % heads_kv == 0 */
  int32_t head_dim;      /*  32: multiple of 8 on GPUs, 8..256 */
  int32_t is_causal;     /*  36: 0 or 1 */
  int32_t window_left;   /*  40: -1 = unbounded */
  int32_t window_right;  /*  44: -1 = unbounded */
  float scale;           /*  48: softmax scale; 0 means 1/sqrt(head_dim) */
  float softcap;         /*  52: 0 = off */
  int32_t alibi_mode;    /*  56: fa_alibi_mode */
  int32_t num_splits;    /*  60: split-KV count for forward; 0 = heuristic, 1 = no split */
  int32_t deterministic; /*  64: backward without atomics-order dependence */
  int32_t total_q;       /*  68: varlen only: tokens in q/o */
  int32_t total_k;       /*  72: varlen only: tokens in k/v */
  int32_t algorithm;     /*  76: fa_algorithm */
  const float* alibi_slopes;     /*  80: fp32, in device memory */
  const int32_t* cu_seqlens_q;   /*  88: NULL = padded batch; else varlen, in device memory */
  const int32_t* cu_seqlens_k;   /*  96 */
  void* stream;                  /* 104: cudaStream_t / hipStream_t; NULL = default stream; ignored on CPU */
  fa_tensor q;                   /* 112 */
  fa_tensor k;                   /* 144 */
  fa_tensor v;                   /* 176 */
  fa_tensor o;                   /* 208: written by forward, read by backward */
  float* lse;                    /* 240: fp32; written by forward (may be NULL there), read by backward */
  fa_tensor dout;                /* 248: backward input */
  fa_tensor dq;                  /* 280: backward outputs */
  fa_tensor dk;                  /* 312 */
  fa_tensor dv;                  /* 344 */
  int32_t out_kernel;            /* 376: filled by the library: id of the kernel path that ran (see fa_info) */
  int32_t out_num_splits;        /* 380: filled by the library: split-KV count used */
  int32_t out_dtype;             /* 384: fa_dtype of o. 0 = the default: dtype itself for fp32 / fp16 / bf16 inputs
                                           (naming dtype is the same), bf16 for fp8 inputs (or FA_DTYPE_F16) */
  int32_t reserved;              /* 388: must be 0 */
  fa_descale q_descale;          /* 392: fp8 inputs only; all NULL otherwise */
  fa_descale k_descale;          /* 408 */
  fa_descale v_descale;          /* 424 */
} fa_attn_params;                /* 440 */

/*
 * Field order of fa_params_layout(): out[0] = sizeof(fa_attn_params), out[1] = sizeof(fa_tensor), out[2] =
 * sizeof(fa_descale), then the byte offset of each field below, in this order. The TS loader keeps the same list and refuses a library whose
 * layout differs.
 */
#define FA_PARAMS_LAYOUT_FIELDS                                                                                     \
  "struct_size,abi_version,dtype,batch,seqlen_q,seqlen_k,heads_q,heads_kv,head_dim,is_causal,window_left,"          \
  "window_right,scale,softcap,alibi_mode,num_splits,deterministic,total_q,total_k,algorithm,alibi_slopes,"          \
  "cu_seqlens_q,cu_seqlens_k,stream,q,k,v,o,lse,dout,dq,dk,dv,out_kernel,out_num_splits,out_dtype,reserved,"      \
  "q_descale,k_descale,v_descale,tensor.data,tensor.batch_stride,tensor.row_stride,tensor.head_stride,"            \
  "descale.data,descale.batch_stride,descale.head_stride"
#define FA_PARAMS_LAYOUT_COUNT 50 /* 3 sizes + 47 offsets */

/*
 * KV-cache attention (flash-attn 2.x flash_attn_with_kvcache). Zero-initialise, then set struct_size =
 * sizeof(fa_kvcache_params) and abi_version = FA_ABI_VERSION. 416 bytes, naturally aligned. One dtype for q, the
 * caches, k_new / v_new and the rotary tables: fp32, fp16, bf16 or fp8; o is in out_dtype (as in fa_attn_params).
 * FP8 caches: q, k_cache, v_cache, k_new and v_new are all of the one fp8 dtype, with fa_attn_params' "FP8" semantics
 * (descale factors per (sequence, kv head), P rounded to E4M3, o in fp16 or bf16); k_new / v_new are fp8 numbers in the
 * cache's scale (the same k_descale / v_descale of sequence b apply to its cache and its new rows) and are appended bit
 * for bit. Rotary with fp8 is refused (FA_ERR_UNSUPPORTED): rotate before quantising. Shapes, in elements:
 *   q (batch, seqlen_q, heads_q, head_dim); o like q; lse (batch, heads_q, seqlen_q) fp32 contiguous (may be NULL)
 *   contiguous cache (block_table NULL): k_cache / v_cache (cache_batch, cache_rows, heads_kv, head_dim);
 *     sequence b lives in cache row cache_batch_idx[b] (b when cache_batch_idx is NULL)
 *   paged cache (block_table != NULL): k_cache / v_cache (cache_batch = num_blocks, cache_rows = page_size, heads_kv,
 *     head_dim); block_table (batch, max_blocks) int32: token t of sequence b is row t % page_size of page
 *     block_table[b * max_blocks + t / page_size]; any page size from 1
 *   k_new / v_new (batch, seqlen_new, heads_kv, head_dim), or data NULL with seqlen_new 0
 *   cache_seqlens (batch,) int32: tokens already in the cache (counting the leftpad rows). NULL = every sequence's
 *     cache is full (flash-attn without cache_seqlens): capacity tokens, i.e. cache_rows (contiguous) or
 *     max_blocks * page_size (paged); NULL is refused when seqlen_new > 0 (an append needs to know where to write)
 *   cache_leftpad (batch,) int32 or NULL: sequence b's keys start at cache token cache_leftpad[b]
 *   rotary_cos / rotary_sin (seqlen_rotary, rotary_dim / 2) contiguous, of the tensors' dtype; rotary_dim 0 = none
 * The call first writes k_new / v_new (k_new rotated) into the cache at tokens cache_seqlens[b] .. + seqlen_new - 1,
 * IN PLACE, then attends q (rotated) to cache tokens [leftpad, cache_seqlens[b] + seqlen_new): L keys. Rotary position
 * of k_new row j: cache_seqlens[b] + j; of q row i: cache_seqlens[b] + i when causal or windowed, cache_seqlens[b]
 * otherwise. Masks, ALiBi and the causal diagonal are those of fa_attn_params with seqlen_k = L (bottom-right).
 * The arrays (cache_seqlens, block_table, cache_batch_idx, cache_leftpad, alibi_slopes, rotary tables) live in device
 * memory like the tensors.
 */
typedef struct fa_kvcache_params {
  uint32_t struct_size;          /*   0 */
  uint32_t abi_version;          /*   4 */
  int32_t dtype;                 /*   8: fa_dtype of every tensor and the rotary tables */
  int32_t batch;                 /*  12 */
  int32_t seqlen_q;              /*  16 */
  int32_t seqlen_new;            /*  20: rows of k_new / v_new; 0 = no append */
  int32_t heads_q;               /*  24 */
  int32_t heads_kv;              /*  28: heads_q % heads_kv == 0 */
  int32_t head_dim;              /*  32 */
  int32_t is_causal;             /*  36: 0 or 1 */
  int32_t window_left;           /*  40: -1 = unbounded */
  int32_t window_right;          /*  44: -1 = unbounded */
  float scale;                   /*  48: 0 means 1/sqrt(head_dim) */
  float softcap;                 /*  52: 0 = off */
  int32_t alibi_mode;            /*  56: fa_alibi_mode */
  int32_t num_splits;            /*  60: split-KV count; 0 = heuristic, 1 = no split */
  int32_t cache_batch;           /*  64: contiguous: sequences the cache holds; paged: num_blocks */
  int32_t cache_rows;            /*  68: contiguous: tokens per sequence (capacity); paged: page_size */
  int32_t max_blocks;            /*  72: paged: columns of block_table; 0 when contiguous */
  int32_t rotary_dim;            /*  76: 0 = no rotary; else even, <= head_dim */
  int32_t seqlen_rotary;         /*  80: rows of rotary_cos / rotary_sin */
  int32_t rotary_interleaved;    /*  84: 0 = GPT-NeoX halves, 1 = GPT-J pairs */
  const float* alibi_slopes;     /*  88: fp32 [heads_q] or [batch, heads_q] */
  const int32_t* cache_seqlens;  /*  96 */
  const int32_t* block_table;    /* 104: NULL = contiguous cache */
  const int32_t* cache_batch_idx;/* 112: NULL = identity; contiguous caches only */
  const int32_t* cache_leftpad;  /* 120: NULL = no left padding */
  const void* rotary_cos;        /* 128 */
  const void* rotary_sin;        /* 136 */
  void* stream;                  /* 144: ignored on CPU */
  fa_tensor q;                   /* 152 */
  fa_tensor k_cache;             /* 184: batch_stride = elements between cache sequences / pages */
  fa_tensor v_cache;             /* 216 */
  fa_tensor k_new;               /* 248 */
  fa_tensor v_new;               /* 280 */
  fa_tensor o;                   /* 312 */
  float* lse;                    /* 344 */
  int32_t out_kernel;            /* 352: filled by the library */
  int32_t out_num_splits;        /* 356: filled by the library */
  int32_t out_dtype;             /* 360: fa_dtype of o, as fa_attn_params.out_dtype (0 = dtype; bf16 for fp8) */
  int32_t reserved;              /* 364: must be 0 */
  fa_descale q_descale;          /* 368: fp8 only, as in fa_attn_params; all NULL otherwise */
  fa_descale k_descale;          /* 384: of k_cache and k_new */
  fa_descale v_descale;          /* 400: of v_cache and v_new */
} fa_kvcache_params;             /* 416 */

/* Field order of fa_kvcache_layout(): out[0] = sizeof(fa_kvcache_params), then each field's byte offset (fa_tensor and
 * fa_descale members are those fa_params_layout reports). */
#define FA_KVCACHE_LAYOUT_FIELDS                                                                                    \
  "struct_size,abi_version,dtype,batch,seqlen_q,seqlen_new,heads_q,heads_kv,head_dim,is_causal,window_left,"        \
  "window_right,scale,softcap,alibi_mode,num_splits,cache_batch,cache_rows,max_blocks,rotary_dim,seqlen_rotary,"    \
  "rotary_interleaved,alibi_slopes,cache_seqlens,block_table,cache_batch_idx,cache_leftpad,rotary_cos,rotary_sin,"  \
  "stream,q,k_cache,v_cache,k_new,v_new,o,lse,out_kernel,out_num_splits,out_dtype,reserved,q_descale,k_descale,"   \
  "v_descale"
#define FA_KVCACHE_LAYOUT_COUNT 45 /* 1 size + 44 offsets */

/* ---- identity and errors ------------------------------------------------------------------------------------ */

/* FA_ABI_VERSION the library was built with. */
FA_API int32_t fa_abi_version(void);

/* Writes min(capacity, FA_PARAMS_LAYOUT_COUNT) entries of the layout described above; returns the full count. */
FA_API int32_t fa_params_layout(int64_t* out, int32_t capacity);

/* Copies the calling thread's last error message (NUL-terminated, truncated to len-1 bytes) into buf.
 * Returns the message length in bytes without the NUL (0 when there is none). */
FA_API int32_t fa_last_error(char* buf, int64_t len);

/* Self-description as one JSON object, copied into buf (NUL-terminated). Keys:
 *   backend ("cpu"|"cuda"|"hip"), version, abi, compiler, built_with ({"cuda": "13.0"} / {"hip": "5.2"} / {}),
 *   archs (list of compiled targets, e.g. ["sm_80","sm_90","compute_90"]; CPU: ["x86_64-avx2", "x86_64"]),
 *   kernels: [{id, name, directions: ["fwd","bwd","kvcache"], dtypes, head_dims: [max or list], features: [...],
 *              min_arch?: "sm_80", row_bytes_multiple?: 16}]
 *   (row_bytes_multiple: the path takes only head_dim x element size a multiple of it, e.g. fp8 head_dim % 16)
 *   (directions lists what the path implements: "fwd" / "bwd" of fa_forward / fa_backward, "kvcache" when it also
 *    serves fa_forward_kvcache; FLASHATTN_KERNEL=<name> forces that path for every one of them)
 * Returns FA_ERR_BUFFER_TOO_SMALL (after writing a truncated, still NUL-terminated prefix) if len is too small. */
FA_API int32_t fa_info(char* buf, int64_t len);

/* Writes min(capacity, FA_KVCACHE_LAYOUT_COUNT) entries of the layout above; returns the full count. */
FA_API int32_t fa_kvcache_layout(int64_t* out, int32_t capacity);

/* ---- devices and memory ------------------------------------------------------------------------------------- */

/* Number of usable devices. The CPU backend always reports 1. A GPU backend on a machine without the driver or
 * device returns FA_ERR_NO_DEVICE with the reason ("no NVIDIA driver found (libcuda.so.1)", ...) and sets 0. */
FA_API int32_t fa_device_count(int32_t* count);

/* JSON object about one device: name, arch (e.g. "sm_90" / "gfx90a" / "x86_64-avx2"), multiprocessors (or
 * cores), memory_bytes, shared_memory_optin_bytes, l2_bytes, driver_version, runtime_version. */
FA_API int32_t fa_device_info(int32_t device, char* buf, int64_t len);

/* Selects the device later calls use on this thread. */
FA_API int32_t fa_set_device(int32_t device);

/* Device memory. *out receives the pointer (pass an 8-byte buffer). Zero bytes yields a valid unique pointer. */
FA_API int32_t fa_malloc(void** out, uint64_t bytes);
FA_API int32_t fa_free(void* ptr);
FA_API int32_t fa_memcpy_h2d(void* dst_device, const void* src_host, uint64_t bytes);
FA_API int32_t fa_memcpy_d2h(void* dst_host, const void* src_device, uint64_t bytes);
FA_API int32_t fa_memcpy_d2d(void* dst_device, const void* src_device, uint64_t bytes);
FA_API int32_t fa_memset(void* dst_device, int32_t byte_value, uint64_t bytes);
FA_API int32_t fa_synchronize(void);

/* Bytes the library holds now and the peak since the last reset: out[0] = current, out[1] = peak. Counts
 * fa_malloc and the library's own workspaces (split-KV partials, dQ accumulators, naive scores, the persistent
 * forward's tile counter, the KV-cache call's rotated queries). Those workspaces are one per device, shared by every
 * stream: attention calls on different streams of one device must not run at the same time (queue them on one stream,
 * or synchronise in between). */
FA_API int32_t fa_memory_stats(int64_t* out2);
FA_API int32_t fa_reset_peak_memory(void);

/* ---- attention ---------------------------------------------------------------------------------------------- */

/* O (and LSE when p->lse != NULL) from Q, K, V. Fills p->out_kernel and p->out_num_splits. */
FA_API int32_t fa_forward(fa_attn_params* p);

/* dQ, dK, dV from dO, O, LSE, Q, K, V (P recomputed from LSE). Fills p->out_kernel. */
FA_API int32_t fa_backward(fa_attn_params* p);

/* KV-cache attention (see fa_kvcache_params): appends k_new / v_new into the cache in place, then writes O (and LSE
 * when p->lse != NULL). Validation reads the int32 arrays; an invalid call writes nothing. Fills p->out_kernel and
 * p->out_num_splits. The GPU libraries queue the work on p->stream (the int32 arrays are read back synchronously for
 * validation first) and use the library workspaces (see fa_memory_stats). fa_info marks each kernel that serves this
 * call with "kvcache" in its directions; FLASHATTN_KERNEL=<name> forces one of them on the GPU libraries. */
FA_API int32_t fa_forward_kvcache(fa_kvcache_params* p);

/* Which kernel would run for this request, without running it: a JSON object copied into buf,
 *   {"ok": true, "kernel": {"id": 3, "name": "..."}, "num_splits": 1}  or
 *   {"ok": false, "reasons": ["head_dim 264 exceeds 256", ...]}
 * direction is an fa_direction. Validation errors are reasons here, not a failing status: the call returns FA_OK
 * whenever it could write the answer. fa_plan never dereferences the data pointers in p (tensors, lse, slopes,
 * cu_seqlens): callers plan before allocating and may pass any non-NULL placeholder. */
FA_API int32_t fa_plan(const fa_attn_params* p, int32_t direction, char* buf, int64_t len);

/*
 * Times `iters` runs of `direction` after `warmup` untimed runs, inside native code (CUDA/HIP events around each
 * run; a monotonic clock on the CPU). Before every run the last-level cache is flushed (a write over a buffer of
 * twice its size, outside the timed region). times_ms receives `iters` per-run times in milliseconds.
 * For backward, p must hold a valid O and LSE (run fa_forward first).
 */
FA_API int32_t fa_bench(fa_attn_params* p, int32_t direction, int32_t warmup, int32_t iters, float* times_ms);

/*
 * fa_bench for fa_forward_kvcache: validates p once (the struct and the int32 arrays, as the call does), then times
 * `iters` runs of the append, rotary and attention work after `warmup` untimed runs, with the same cache flush and
 * clock as fa_bench. The host-side validation is outside the timed region: in a serving loop it is part of every
 * call (on the GPU libraries a blocking read of the int32 arrays). Each run appends k_new / v_new at the same
 * cache_seqlens, so every run writes the same cache rows.
 */
FA_API int32_t fa_bench_kvcache(fa_kvcache_params* p, int32_t warmup, int32_t iters, float* times_ms);

/* ---- context parallelism (lib/ring.ts) -------------------------------------------------------------------- */

/* Merges a partial attention result into a running one through their log-sum-exp (the split-KV combine's maths):
 * per (batch, head, row), lse = log(e^acc_lse + e^part_lse), acc = acc * e^(acc_lse - lse) + part * e^(part_lse - lse).
 * acc: fp32, contiguous (batch, rows, heads, head_dim); acc_lse: fp32 (batch, heads, rows); part: `dtype` (fp32, fp16
 * or bf16) in acc's layout; part_lse in acc_lse's. A row whose two LSEs are both -inf is left unchanged. The GPU
 * libraries queue the work on the default stream of the current device. */
FA_API int32_t fa_merge_partial(int32_t dtype, int32_t batch, int32_t rows, int32_t heads, int32_t head_dim, float* acc,
                                float* acc_lse, const void* part, const float* part_lse);

/* dst[i] = (accumulate ? dst[i] : 0) + src[i] for i < count: src read as src_dtype, the sum rounded to dst_dtype
 * (nearest even); dtypes fp32, fp16, bf16. accumulate = 1 sums partial gradients into an fp32 accumulator, 0 casts
 * an accumulator to the output dtype. The GPU libraries queue the work on the default stream of the current device. */
FA_API int32_t fa_convert(int32_t dst_dtype, void* dst, int32_t src_dtype, const void* src, uint64_t count,
                          int32_t accumulate);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FLASHATTN_H */
