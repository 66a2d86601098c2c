"""fa_ctypes.py — the one ctypes binding of the flashattn C ABI (kernels/include/flashattn.h) for the scripts.

No torch, no NumPy: callers fill FaParams with raw pointers (NumPy's a.ctypes.data, torch's t.data_ptr()).
Used by cpu_check.py / cpu_vs_numpy.py (libflashattn_cpu) and, through cuda_ffi.py, by cuda_verify.py /
cuda_fp8.py / cuda_bench.py (libflashattn_cuda; fp8 inputs carry FaDescale views). Library(path) refuses a library
whose ABI version or fa_attn_params layout (fa_params_layout) differs from the structures below.
"""
import ctypes as C
import json
import os

ABI_VERSION = 3  # FA_ABI_VERSION

# fa_status
OK = 0
ERR_INVALID_ARGUMENT = 1
ERR_UNSUPPORTED = 2
ERR_OUT_OF_MEMORY = 3
ERR_NO_DEVICE = 4
ERR_DEVICE = 5
ERR_ABI = 6
ERR_INTERNAL = 7
ERR_BUFFER_TOO_SMALL = 8

F32, F16, BF16, FP8_E4M3, FP8_E5M2 = 0, 1, 2, 3, 4  # fa_dtype
DIR_FWD, DIR_BWD, DIR_FWD_BWD = 0, 1, 2  # fa_direction


class FaTensor(C.Structure):
    """fa_tensor: a strided (batch, row, head, dim) view; strides in elements. 32 bytes."""
    _fields_ = [("data", C.c_void_p), ("batch_stride", C.c_int64), ("row_stride", C.c_int64),
                ("head_stride", C.c_int64)]


class FaDescale(C.Structure):
    """fa_descale: fp8 descale factors, element (b, kv head h) at data[b * batch_stride + h * head_stride]. 16 bytes."""
    _fields_ = [("data", C.c_void_p), ("batch_stride", C.c_int32), ("head_stride", C.c_int32)]


class FaParams(C.Structure):
    """fa_attn_params, field for field (440 bytes). Start from new_params()."""
    _fields_ = [
        ("struct_size", C.c_uint32), ("abi_version", C.c_uint32), ("dtype", C.c_int32), ("batch", C.c_int32),
        ("seqlen_q", C.c_int32), ("seqlen_k", C.c_int32), ("heads_q", C.c_int32), ("heads_kv", C.c_int32),
        ("head_dim", C.c_int32), ("is_causal", C.c_int32), ("window_left", C.c_int32), ("window_right", C.c_int32),
        ("scale", C.c_float), ("softcap", C.c_float), ("alibi_mode", C.c_int32), ("num_splits", C.c_int32),
        ("deterministic", C.c_int32), ("total_q", C.c_int32), ("total_k", C.c_int32), ("algorithm", C.c_int32),
        ("alibi_slopes", C.c_void_p), ("cu_seqlens_q", C.c_void_p), ("cu_seqlens_k", C.c_void_p),
        ("stream", C.c_void_p),
        ("q", FaTensor), ("k", FaTensor), ("v", FaTensor), ("o", FaTensor), ("lse", C.c_void_p),
        ("dout", FaTensor), ("dq", FaTensor), ("dk", FaTensor), ("dv", FaTensor),
        ("out_kernel", C.c_int32), ("out_num_splits", C.c_int32), ("out_dtype", C.c_int32), ("reserved", C.c_int32),
        ("q_descale", FaDescale), ("k_descale", FaDescale), ("v_descale", FaDescale),
    ]


assert C.sizeof(FaTensor) == 32 and C.sizeof(FaDescale) == 16 and C.sizeof(FaParams) == 440
assert (FaParams.scale.offset, FaParams.alibi_slopes.offset, FaParams.stream.offset, FaParams.q.offset,
        FaParams.lse.offset, FaParams.dout.offset, FaParams.dv.offset, FaParams.out_kernel.offset,
        FaParams.out_num_splits.offset) == (48, 80, 104, 112, 240, 248, 344, 376, 380)

# FA_PARAMS_LAYOUT_FIELDS of flashattn.h, written out (not derived from _fields_, so a reordering is caught).
LAYOUT_FIELDS = ("struct_size,abi_version,dtype,batch,seqlen_q,seqlen_k,heads_q,heads_kv,head_dim,is_causal,"
                 "window_left,window_right,scale,softcap,alibi_mode,num_splits,deterministic,total_q,total_k,"
                 "algorithm,alibi_slopes,cu_seqlens_q,cu_seqlens_k,stream,q,k,v,o,lse,dout,dq,dk,dv,out_kernel,"
                 "out_num_splits,out_dtype,reserved,q_descale,k_descale,v_descale,tensor.data,tensor.batch_stride,"
                 "tensor.row_stride,tensor.head_stride,descale.data,descale.batch_stride,descale.head_stride").split(",")


def layout():
    """What fa_params_layout() must report for these structures: the three sizes, then every offset."""
    nested = {"tensor": FaTensor, "descale": FaDescale}
    offsets = [getattr(nested.get(f.split(".")[0], FaParams), f.split(".")[-1]).offset for f in LAYOUT_FIELDS]
    return [C.sizeof(FaParams), C.sizeof(FaTensor), C.sizeof(FaDescale)] + offsets


def new_params():
    """A zeroed FaParams with struct_size and abi_version set, as the header asks."""
    p = FaParams()
    p.struct_size, p.abi_version = C.sizeof(FaParams), ABI_VERSION
    return p


class FlashAttnError(RuntimeError):
    def __init__(self, status, message):
        super().__init__(f"status {status}: {message}")
        self.status, self.message = status, message


_PARAMS = C.POINTER(FaParams)
_SIGNATURES = {
    "fa_abi_version": [],
    "fa_params_layout": [C.POINTER(C.c_int64), C.c_int32],
    "fa_last_error": [C.c_char_p, C.c_int64],
    "fa_info": [C.c_char_p, C.c_int64],
    "fa_malloc": [C.POINTER(C.c_void_p), C.c_uint64],
    "fa_free": [C.c_void_p],
    "fa_memcpy_h2d": [C.c_void_p, C.c_void_p, C.c_uint64],
    "fa_memory_stats": [C.POINTER(C.c_int64)],
    "fa_forward": [_PARAMS],
    "fa_backward": [_PARAMS],
    "fa_plan": [_PARAMS, C.c_int32, C.c_char_p, C.c_int64],
    "fa_bench": [_PARAMS, C.c_int32, C.c_int32, C.c_int32, C.POINTER(C.c_float)],
}


class Library:
    """A loaded libflashattn_{cpu,cuda,hip}. self.lib is the CDLL (raw calls return the fa_status); the methods
    raise FlashAttnError with the library's message instead."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.lib = C.CDLL(self.path)
        for name, args in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, C.c_int32
        if self.lib.fa_abi_version() != ABI_VERSION:
            raise SystemExit(f"{self.path} has ABI {self.lib.fa_abi_version()}, these scripts speak {ABI_VERSION}")
        theirs = (C.c_int64 * len(layout()))()
        self.lib.fa_params_layout(theirs, len(theirs))
        if list(theirs) != layout():
            raise SystemExit(f"{self.path}: fa_attn_params layout differs: library {list(theirs)}, "
                             f"fa_ctypes.py {layout()}")

    def last_error(self):
        buf = C.create_string_buffer(4096)
        self.lib.fa_last_error(buf, len(buf))
        return buf.value.decode()

    def check(self, status):
        if status != OK:
            raise FlashAttnError(status, self.last_error())

    def text(self, fn, *args):
        """Calls fn(*args, buf, len) of a function that writes a string (fa_info, fa_plan) and returns the text."""
        buf = C.create_string_buffer(1 << 16)
        self.check(fn(*args, buf, len(buf)))
        return buf.value.decode()

    def info(self):
        return json.loads(self.text(self.lib.fa_info))

    def kernel_names(self):
        return {k["id"]: k["name"] for k in self.info()["kernels"]}

    def plan(self, p, direction):
        return json.loads(self.text(self.lib.fa_plan, C.byref(p), direction))

    def forward(self, p):
        self.check(self.lib.fa_forward(C.byref(p)))

    def backward(self, p):
        self.check(self.lib.fa_backward(C.byref(p)))

    def bench(self, p, direction, warmup, iters):
        """Per-run times in ms of `iters` runs, timed inside the library."""
        times = (C.c_float * iters)()
        self.check(self.lib.fa_bench(C.byref(p), direction, warmup, iters, times))
        return list(times)

    def memory_stats(self):
        """(bytes held now, peak since the last reset)."""
        out = (C.c_int64 * 2)()
        self.check(self.lib.fa_memory_stats(out))
        return out[0], out[1]
