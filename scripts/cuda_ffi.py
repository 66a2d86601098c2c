"""cuda_ffi.py — ctypes binding of libflashattn_cuda for the GPU scripts (cuda_verify.py, cuda_bench.py).

Tensors are torch CUDA tensors passed by data_ptr(); fa_attn_params is filled field for field as in
kernels/include/flashattn.h, and the layout is checked against the library's fa_params_layout() on load.
"""
import ctypes
import json
import os

import torch

FA_ABI_VERSION = 1
DIR_FWD, DIR_BWD, DIR_FWD_BWD = 0, 1, 2
DTYPES = {torch.float16: 1, torch.bfloat16: 2}


class FaTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("batch_stride", ctypes.c_int64), ("row_stride", ctypes.c_int64),
                ("head_stride", ctypes.c_int64)]


class FaParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32), ("abi_version", ctypes.c_uint32), ("dtype", ctypes.c_int32),
        ("batch", ctypes.c_int32), ("seqlen_q", ctypes.c_int32), ("seqlen_k", ctypes.c_int32),
        ("heads_q", ctypes.c_int32), ("heads_kv", ctypes.c_int32), ("head_dim", ctypes.c_int32),
        ("is_causal", ctypes.c_int32), ("window_left", ctypes.c_int32), ("window_right", ctypes.c_int32),
        ("scale", ctypes.c_float), ("softcap", ctypes.c_float), ("alibi_mode", ctypes.c_int32),
        ("num_splits", ctypes.c_int32), ("deterministic", ctypes.c_int32), ("total_q", ctypes.c_int32),
        ("total_k", ctypes.c_int32), ("algorithm", ctypes.c_int32), ("alibi_slopes", ctypes.c_void_p),
        ("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p), ("stream", ctypes.c_void_p),
        ("q", FaTensor), ("k", FaTensor), ("v", FaTensor), ("o", FaTensor), ("lse", ctypes.c_void_p),
        ("dout", FaTensor), ("dq", FaTensor), ("dk", FaTensor), ("dv", FaTensor),
        ("out_kernel", ctypes.c_int32), ("out_num_splits", ctypes.c_int32),
    ]


assert ctypes.sizeof(FaParams) == 384 and FaParams.q.offset == 112 and FaParams.out_kernel.offset == 376


class FlashAttnError(RuntimeError):
    def __init__(self, status, message):
        super().__init__(f"status {status}: {message}")
        self.status = status
        self.message = message


class Library:
    def __init__(self, path=None):
        path = path or os.environ.get("FLASHATTN_LIB") or os.path.join(os.path.dirname(__file__), "..", "build",
                                                                           "libflashattn_cuda.so")
        self.lib = ctypes.CDLL(os.path.abspath(path))
        self.lib.fa_bench.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p]
        self.lib.fa_plan.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_int64]
        self.lib.fa_info.argtypes = [ctypes.c_char_p, ctypes.c_int64]
        self.lib.fa_last_error.argtypes = [ctypes.c_char_p, ctypes.c_int64]
        if self.lib.fa_abi_version() != FA_ABI_VERSION:
            raise RuntimeError("ABI version mismatch")

    def last_error(self):
        buf = ctypes.create_string_buffer(4096)
        self.lib.fa_last_error(buf, len(buf))
        return buf.value.decode()

    def check(self, status):
        if status != 0:
            raise FlashAttnError(status, self.last_error())

    def info(self):
        buf = ctypes.create_string_buffer(1 << 16)
        self.check(self.lib.fa_info(buf, len(buf)))
        return json.loads(buf.value)

    def kernel_names(self):
        return {k["id"]: k["name"] for k in self.info()["kernels"]}

    def forward(self, p):
        self.check(self.lib.fa_forward(ctypes.byref(p)))

    def backward(self, p):
        self.check(self.lib.fa_backward(ctypes.byref(p)))

    def plan(self, p, direction):
        buf = ctypes.create_string_buffer(1 << 16)
        self.check(self.lib.fa_plan(ctypes.byref(p), direction, buf, len(buf)))
        return json.loads(buf.value)

    def bench(self, p, direction, warmup, iters):
        times = (ctypes.c_float * iters)()
        self.check(self.lib.fa_bench(ctypes.byref(p), direction, warmup, iters, times))
        return list(times)


def view(t, varlen=False):
    """fa_tensor of a (batch, rows, heads, dim) or varlen (rows, heads, dim) torch view."""
    if t is None:
        return FaTensor()
    if varlen:
        return FaTensor(t.data_ptr(), 0, t.stride(0), t.stride(1))
    return FaTensor(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


def make_params(q, k, v, o, lse=None, *, causal=False, window=(-1, -1), softcap=0.0, scale=0.0, alibi=None,
                alibi_per_batch=False, cu_q=None, cu_k=None, max_q=0, max_k=0, num_splits=0, deterministic=False,
                naive=False, dout=None, dq=None, dk=None, dv=None):
    varlen = cu_q is not None
    p = FaParams()
    p.struct_size, p.abi_version = ctypes.sizeof(FaParams), FA_ABI_VERSION
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
    p.lse = lse.data_ptr() if lse is not None else None
    p.dout, p.dq, p.dk, p.dv = view(dout, varlen), view(dq, varlen), view(dk, varlen), view(dv, varlen)
    p.stream = torch.cuda.current_stream().cuda_stream
    return p
