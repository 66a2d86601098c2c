"""cuda_ffi.py — torch side of the GPU scripts (cuda_verify.py, cuda_fp8.py, cuda_bench.py): loads libflashattn_cuda
through the ctypes binding of fa_ctypes.py and fills FaParams from torch tensors (data_ptr(), strides, current stream).
CPU tensors work too (no stream), so the same calls can drive libflashattn_cpu ($FLASHATTN_LIB).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fa_ctypes import BF16, F16, FP8_E4M3, FP8_E5M2, FaDescale, FaTensor, Library, new_params  # noqa: E402

DTYPES = {torch.float16: F16, torch.bfloat16: BF16, torch.float8_e4m3fn: FP8_E4M3, torch.float8_e5m2: FP8_E5M2}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def cuda_library():
    """libflashattn_cuda from $FLASHATTN_LIB, else build/libflashattn_cuda.so next to scripts/."""
    return Library(os.environ.get("FLASHATTN_LIB") or
                   os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "libflashattn_cuda.so"))


def view(t, varlen=False):
    """fa_tensor of a (batch, rows, heads, dim) or varlen (rows, heads, dim) torch view."""
    if t is None:
        return FaTensor()
    if varlen:
        return FaTensor(t.data_ptr(), 0, t.stride(0), t.stride(1))
    return FaTensor(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


def descale_view(t, batch, heads_kv, name):
    """fa_descale of an fp8 descale tensor (flashattn.h): float32, one element (a per-tensor scalar: strides 0, 0) or
    (batch, heads_kv) with its own strides; None = factor 1. The values are the library's to check (finite, > 0)."""
    if t is None:
        return FaDescale()
    if t.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {t.dtype}")
    if t.numel() == 1:
        return FaDescale(t.data_ptr(), 0, 0)
    if tuple(t.shape) != (batch, heads_kv):
        raise ValueError(f"{name} must hold one element or have shape (batch, heads_kv) = ({batch}, {heads_kv}), "
                         f"got {tuple(t.shape)}")
    return FaDescale(t.data_ptr(), t.stride(0), t.stride(1))


def make_params(q, k, v, o, lse=None, *, causal=False, window=(-1, -1), softcap=0.0, scale=0.0, alibi=None,
                alibi_per_batch=False, cu_q=None, cu_k=None, max_q=0, max_k=0, num_splits=0, deterministic=False,
                naive=False, dout=None, dq=None, dk=None, dv=None, q_descale=None, k_descale=None, v_descale=None):
    """FaParams of one call. o's dtype is the output dtype (out_dtype: fp16 / bf16 for fp8 inputs, q's dtype
    otherwise); q_descale / k_descale / v_descale go with fp8 inputs (see descale_view)."""
    varlen = cu_q is not None
    p = new_params()
    p.dtype = DTYPES[q.dtype]
    if varlen:
        p.batch, p.seqlen_q, p.seqlen_k = cu_q.numel() - 1, max_q, max_k
        p.total_q, p.total_k = q.shape[0], k.shape[0]
        p.heads_q, p.heads_kv, p.head_dim = q.shape[1], k.shape[1], q.shape[2]
        p.cu_seqlens_q, p.cu_seqlens_k = cu_q.data_ptr(), cu_k.data_ptr()
    else:
        p.batch, p.seqlen_q, p.seqlen_k = q.shape[0], q.shape[1], k.shape[1]
        p.heads_q, p.heads_kv, p.head_dim = q.shape[2], k.shape[2], q.shape[3]
    p.is_causal = int(causal)
    p.window_left, p.window_right = window
    p.scale, p.softcap = scale, softcap
    if alibi is not None:
        p.alibi_mode = 2 if alibi_per_batch else 1
        p.alibi_slopes = alibi.data_ptr()
    p.num_splits, p.deterministic, p.algorithm = num_splits, int(deterministic), int(naive)
    p.q, p.k, p.v, p.o = view(q, varlen), view(k, varlen), view(v, varlen), view(o, varlen)
    # 0 (the default) for 16-bit inputs keeps their struct what it was before out_dtype existed; an o of another dtype
    # is passed on for the library to refuse.
    p.out_dtype = DTYPES[o.dtype] if o is not None and (q.dtype in FP8_DTYPES or o.dtype != q.dtype) else 0
    p.q_descale = descale_view(q_descale, p.batch, p.heads_kv, "q_descale")
    p.k_descale = descale_view(k_descale, p.batch, p.heads_kv, "k_descale")
    p.v_descale = descale_view(v_descale, p.batch, p.heads_kv, "v_descale")
    p.lse = lse.data_ptr() if lse is not None else None
    p.dout, p.dq, p.dk, p.dv = view(dout, varlen), view(dq, varlen), view(dk, varlen), view(dv, varlen)
    p.stream = torch.cuda.current_stream().cuda_stream if q.is_cuda else None
    # The struct holds raw pointers: it keeps the tensors alive (make_params(..., k_descale=ks * 2) would otherwise
    # hand the library freed memory).
    p.tensors = (q, k, v, o, lse, alibi, cu_q, cu_k, dout, dq, dk, dv, q_descale, k_descale, v_descale)
    return p
