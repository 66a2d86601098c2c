#!/usr/bin/env python3
"""Checks build/libflashattn_cpu.so through its C ABI against a float64 NumPy reference of the full semantics
(causal, windows, softcap, ALiBi, GQA, varlen, free strides, fp32/fp16/bf16 I/O), forward and backward, plus bad
input, through the ctypes binding of scripts/check/fa_ctypes.py. scripts/perf/cpu_vs_numpy.py reuses its reference and views.

Usage: python3 scripts/check/cpu_check.py [--lib build/libflashattn_cpu.so] [--quick]
Exit status 0 when every check passes. FLASHATTN_CPU_ISA=portable checks the portable kernels.
"""
import argparse
import ctypes as C
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fa_ctypes import (BF16, ERR_ABI, ERR_BUFFER_TOO_SMALL, ERR_INVALID_ARGUMENT, ERR_OUT_OF_MEMORY,  # noqa: E402
                       ERR_UNSUPPORTED, F16, F32, FaTensor, FlashAttnError, Library, new_params)


# ---- tensors ----------------------------------------------------------------------------------------------------

def to_bf16_bits(x):
    """float -> bf16 bits, round to nearest even (NaN-free inputs)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bits(a, dtype):
    if dtype == F32:
        return a.astype(np.float64)
    if dtype == F16:
        return a.view(np.float16).astype(np.float64)
    return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def to_storage(x, dtype):
    if dtype == F32:
        return np.ascontiguousarray(x, np.float32)
    if dtype == F16:
        return np.ascontiguousarray(x, np.float16).view(np.uint16)
    return to_bf16_bits(x)


def view(a, varlen):
    """fa_tensor of a (batch, rows, heads, dim) or varlen (rows, heads, dim) array; strides in elements."""
    if a.size == 0:  # NumPy gives empty arrays zero strides: use the tight layout
        s = [int(np.prod(a.shape[i + 1:])) for i in range(a.ndim)]
    else:
        s = [st // a.itemsize for st in a.strides]
    assert s[-1] == 1
    if varlen:
        return FaTensor(a.ctypes.data, 0, s[0], s[1])
    return FaTensor(a.ctypes.data, s[0], s[1], s[2])


# ---- reference (float64, no tiling) -----------------------------------------------------------------------------

def reference_sequence(q, k, v, dout, scale, causal, window, softcap, slopes):
    """One sequence, all heads. q (sq, hq, d), k/v (sk, hkv, d) float64. Returns o, lse, (dq, dk, dv)."""
    sq, hq, d = q.shape
    sk, hkv, _ = k.shape
    group = hq // hkv
    kk = np.repeat(k, group, axis=1)
    vv = np.repeat(v, group, axis=1)
    x = np.einsum("ihd,jhd->hij", q, kk) * scale
    if softcap > 0:
        t = np.tanh(x / softcap)
        s = softcap * t
    else:
        t, s = None, x
    i = np.arange(sq)[:, None] + sk - sq
    j = np.arange(sk)[None, :]
    if slopes is not None:
        s = s - slopes[:, None, None] * np.abs(i - j)[None]
    left, right = window
    if causal:
        right = 0
    allowed = np.ones((sq, sk), bool)
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    s = np.where(allowed[None], s, -np.inf)
    m = s.max(axis=2, initial=-np.inf)
    has = np.isfinite(m)
    p = np.where(has[..., None], np.exp(s - np.where(has, m, 0)[..., None]), 0.0)
    l = p.sum(axis=2)
    p = p / np.where(l > 0, l, 1)[..., None]
    o = np.einsum("hij,jhd->ihd", p, vv)
    lse = np.where(l > 0, np.where(has, m, 0) + np.log(np.where(l > 0, l, 1)), np.inf)  # no key: +inf (flash-attn 2.x)
    grads = None
    if dout is not None:
        dv = np.einsum("hij,ihd->jhd", p, dout)
        dp = np.einsum("ihd,jhd->hij", dout, vv)
        ds = p * (dp - (dp * p).sum(axis=2, keepdims=True))
        if t is not None:
            ds = ds * (1 - t * t)
        dq = np.einsum("hij,jhd->ihd", ds, kk) * scale
        dk = np.einsum("hij,ihd->jhd", ds, q) * scale
        dk = dk.reshape(sk, hkv, group, d).sum(axis=2)
        dv = dv.reshape(sk, hkv, group, d).sum(axis=2)
        grads = (dq, dk, dv)
    return o, lse, grads


def rel_err(a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    if not np.all(np.isfinite(a)):
        return math.inf
    n = np.linalg.norm(e)
    return np.linalg.norm(a - e) / (n if n > 0 else 1.0)


# ---- one case ---------------------------------------------------------------------------------------------------

def run_case(lib, rng, *, batch=1, sq=16, sk=16, hq=2, hkv=2, d=32, dtype=F32, causal=False, window=(-1, -1),
             softcap=0.0, alibi=0, varlen_lens=None, strided=False, backward=True, algorithm=0, scale=0.0):
    """Runs forward (and backward) and returns {name: relative error}. varlen_lens: [(len_q, len_k), ...]."""
    varlen = varlen_lens is not None
    if varlen:
        batch = len(varlen_lens)
        cu_q = np.concatenate([[0], np.cumsum([a for a, _ in varlen_lens])]).astype(np.int32)
        cu_k = np.concatenate([[0], np.cumsum([b for _, b in varlen_lens])]).astype(np.int32)
        sq, sk = max([a for a, _ in varlen_lens] + [1]), max(b for _, b in varlen_lens)
        shape_q, shape_k = (int(cu_q[-1]), hq, d), (int(cu_k[-1]), hkv, d)
    else:
        shape_q, shape_k = (batch, sq, hq, d), (batch, sk, hkv, d)

    def make(shape, extra_heads=0):
        x = rng.standard_normal(shape)
        st = to_storage(x, dtype)
        if strided:  # embed in a wider buffer: row/head strides bigger than the tight layout
            wide = np.zeros(shape[:-2] + (shape[-2] + 1, shape[-1] + 5), st.dtype)
            wide[..., : shape[-2], : shape[-1]] = st
            st = wide[..., : shape[-2], : shape[-1]]
        return st

    q, k, v = make(shape_q), make(shape_k), make(shape_k)
    dout = make(shape_q)
    poison = {F32: np.float32(np.nan).view(np.uint32), F16: 0x7E00, BF16: 0x7FC0}[dtype]
    empty_like = lambda a: np.full(a.shape, poison, np.uint32 if dtype == F32 else np.uint16).view(a.dtype)
    o = empty_like(q)
    lse_shape = (hq, shape_q[0]) if varlen else (batch, hq, sq)
    lse = np.full(lse_shape, np.nan, np.float32)
    slopes = None
    if alibi:
        slopes = rng.uniform(0.01, 0.5, (hq,) if alibi == 1 else (batch, hq)).astype(np.float32)

    p = new_params()
    p.dtype = dtype
    p.batch, p.seqlen_q, p.seqlen_k, p.heads_q, p.heads_kv, p.head_dim = batch, sq, sk, hq, hkv, d
    p.is_causal, p.window_left, p.window_right = int(causal), window[0], window[1]
    p.scale, p.softcap, p.algorithm = scale, softcap, algorithm
    if slopes is not None:
        p.alibi_mode, p.alibi_slopes = alibi, slopes.ctypes.data
    if varlen:
        p.cu_seqlens_q, p.cu_seqlens_k, p.total_q, p.total_k = cu_q.ctypes.data, cu_k.ctypes.data, shape_q[0], shape_k[0]
    p.q, p.k, p.v, p.o = view(q, varlen), view(k, varlen), view(v, varlen), view(o, varlen)
    p.lse = lse.ctypes.data
    lib.forward(p)

    grads = None
    if backward:
        dq, dk, dv = empty_like(q), empty_like(k), empty_like(v)
        p.dout, p.dq, p.dk, p.dv = view(dout, varlen), view(dq, varlen), view(dk, varlen), view(dv, varlen)
        lib.backward(p)
        grads = (dq, dk, dv)

    # reference, sequence by sequence
    scale_used = scale if scale > 0 else 1 / math.sqrt(d)
    errs = {}
    outs = {"o": [], "lse": [], "dq": [], "dk": [], "dv": []}
    refs = {key: [] for key in outs}
    for b in range(batch):
        if varlen:
            qs, qe, ks, ke = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
            sel_q, sel_k = (slice(qs, qe),), (slice(ks, ke),)
            lse_b = lse[:, qs:qe]
        else:
            sel_q = sel_k = (b,)
            lse_b = lse[b]
        f = lambda a, sel: from_bits(a[sel], dtype)
        sl = None if slopes is None else (slopes if alibi == 1 else slopes[b]).astype(np.float64)
        ro, rlse, rg = reference_sequence(f(q, sel_q), f(k, sel_k), f(v, sel_k), f(dout, sel_q) if backward else None,
                                          scale_used, causal, window, softcap, sl)
        outs["o"].append(f(o, sel_q)); refs["o"].append(ro)
        outs["lse"].append(lse_b.T.astype(np.float64)); refs["lse"].append(rlse.T)
        if backward:
            for name, got, ref, sel in zip(("dq", "dk", "dv"), grads, rg, (sel_q, sel_k, sel_k)):
                outs[name].append(f(got, sel)); refs[name].append(ref)
    for name in outs:
        if not outs[name]:
            continue
        got = np.concatenate([x.ravel() for x in outs[name]])
        ref = np.concatenate([x.ravel() for x in refs[name]])
        if name == "lse":  # rows with no key (+inf) must match exactly; finite ones by relative error
            if not np.array_equal(np.isposinf(got), np.isposinf(ref)) or np.isneginf(got).any() or np.isnan(got).any():
                errs[name] = math.inf
                continue
            finite = np.isfinite(ref)
            got, ref = got[finite], ref[finite]
        errs[name] = rel_err(got, ref)
    return errs


TOLERANCE = {F32: 1e-5, F16: 2e-3, BF16: 1.5e-2}


def cases(quick):
    """(description, kwargs) pairs covering the semantics on odd shapes."""
    out = []
    for sq, sk in [(1, 1), (3, 3), (113, 113), (203, 203), (1, 203), (113, 37), (37, 203), (128, 96), (97, 0)]:
        out.append((f"sq={sq} sk={sk}", dict(sq=sq, sk=sk)))
        out.append((f"causal sq={sq} sk={sk}", dict(sq=sq, sk=sk, causal=True)))
    for d in [1, 8, 24, 40, 64, 100, 128, 200, 256]:
        out.append((f"d={d}", dict(sq=70, sk=130, d=d, hq=2, hkv=1)))
    for hq, hkv in [(8, 1), (6, 2), (4, 4), (8, 4)]:
        out.append((f"gqa {hq}/{hkv}", dict(sq=50, sk=77, hq=hq, hkv=hkv, causal=True)))
    out.append(("decode gqa 8/2", dict(sq=1, sk=300, hq=8, hkv=2, d=64)))
    out.append(("group of 200 heads", dict(sq=3, sk=40, hq=200, hkv=1, d=8, causal=True)))
    out.append(("alibi gqa varlen", dict(varlen_lens=[(7, 30), (50, 50)], hq=8, hkv=2, alibi=2, causal=True)))
    for w in [(0, 0), (16, -1), (-1, 16), (8, 8), (100, 3)]:
        out.append((f"window {w}", dict(sq=150, sk=203, window=w)))
        out.append((f"window {w} sq>sk", dict(sq=203, sk=150, window=w, causal=w[1] == 0)))
    out.append(("softcap 5", dict(sq=113, sk=203, softcap=5.0)))
    out.append(("softcap 30 causal gqa", dict(sq=113, sk=113, softcap=30.0, causal=True, hq=4, hkv=2)))
    out.append(("alibi per head", dict(sq=113, sk=150, alibi=1, causal=True)))
    out.append(("alibi per batch-head", dict(batch=3, sq=40, sk=60, alibi=2)))
    out.append(("alibi+softcap+window", dict(sq=99, sk=140, alibi=1, softcap=10.0, window=(20, 5))))
    out.append(("scale 0.3", dict(sq=33, sk=44, scale=0.3)))
    out.append(("strided", dict(batch=2, sq=65, sk=77, strided=True, hq=4, hkv=2, d=48)))
    out.append(("batch 3", dict(batch=3, sq=100, sk=120, causal=True)))
    lens = [(5, 9), (0, 3), (113, 113), (1, 200), (37, 0), (150, 60)]
    out.append(("varlen", dict(varlen_lens=lens)))
    out.append(("varlen causal gqa", dict(varlen_lens=lens, causal=True, hq=4, hkv=2)))
    out.append(("varlen window alibi2", dict(varlen_lens=lens, window=(10, 4), alibi=2)))
    out.append(("varlen strided softcap", dict(varlen_lens=lens, strided=True, softcap=8.0)))
    for dtype, name in [(F16, "fp16"), (BF16, "bf16")]:
        out.append((f"{name}", dict(dtype=dtype, sq=113, sk=203, d=64)))
        out.append((f"{name} causal gqa d=100", dict(dtype=dtype, sq=77, sk=77, d=100, hq=4, hkv=1, causal=True)))
        out.append((f"{name} varlen strided", dict(dtype=dtype, varlen_lens=lens, strided=True, d=40)))
    out.append(("naive", dict(sq=113, sk=203, backward=False, algorithm=1)))
    out.append(("naive causal alibi gqa", dict(sq=77, sk=50, causal=True, alibi=1, hq=4, hkv=2, backward=False, algorithm=1)))
    out.append(("naive varlen bf16", dict(varlen_lens=lens, dtype=BF16, backward=False, algorithm=1, window=(9, 9))))
    if not quick:
        out.append(("long causal", dict(sq=799, sk=1023, causal=True, d=64, hq=2, hkv=1)))
        out.append(("long window", dict(sq=1023, sk=1023, window=(100, 0), d=128)))
    return out


def bad_input_checks(lib):
    """Every check of fa::check_params (and the CPU's own) must give its status and a message, never a crash.
    Yields (description, passed, detail)."""
    rng = np.random.default_rng(5)
    q, k, v, o = (rng.standard_normal((2, 8, 2, 16)).astype(np.float32) for _ in range(4))
    lse = np.zeros((2, 2, 8), np.float32)
    slopes = np.ones(2, np.float32)
    cu_bad = np.array([0, 9, 16], np.int32)  # 9 > seqlen 8

    def base():
        p = new_params()
        p.dtype = F32
        p.batch, p.seqlen_q, p.seqlen_k, p.heads_q, p.heads_kv, p.head_dim = 2, 8, 8, 2, 2, 16
        p.window_left = p.window_right = -1
        p.q, p.k, p.v, p.o = view(q, False), view(k, False), view(v, False), view(o, False)
        p.lse = lse.ctypes.data
        return p

    INVALID, UNSUPPORTED, OOM, ABI = ERR_INVALID_ARGUMENT, ERR_UNSUPPORTED, ERR_OUT_OF_MEMORY, ERR_ABI
    mutations = [
        ("struct_size", lambda p: setattr(p, "struct_size", 100), ABI),
        ("abi_version", lambda p: setattr(p, "abi_version", 99), ABI),
        ("dtype 7", lambda p: setattr(p, "dtype", 7), INVALID),
        ("batch 0", lambda p: setattr(p, "batch", 0), INVALID),
        ("seqlen_q 0", lambda p: setattr(p, "seqlen_q", 0), INVALID),
        ("seqlen_k -1", lambda p: setattr(p, "seqlen_k", -1), INVALID),
        ("heads 3/2", lambda p: setattr(p, "heads_q", 3), INVALID),
        ("heads_kv 0", lambda p: setattr(p, "heads_kv", 0), INVALID),
        ("head_dim 0", lambda p: setattr(p, "head_dim", 0), INVALID),
        ("head_dim 264", lambda p: setattr(p, "head_dim", 264), UNSUPPORTED),
        ("is_causal 2", lambda p: setattr(p, "is_causal", 2), INVALID),
        ("window -2", lambda p: setattr(p, "window_left", -2), INVALID),
        ("scale nan", lambda p: setattr(p, "scale", float("nan")), INVALID),
        ("softcap -1", lambda p: setattr(p, "softcap", -1.0), INVALID),
        ("alibi mode 5", lambda p: setattr(p, "alibi_mode", 5), INVALID),
        ("alibi NULL slopes", lambda p: setattr(p, "alibi_mode", 1), INVALID),
        ("num_splits 999", lambda p: setattr(p, "num_splits", 999), INVALID),
        ("deterministic 3", lambda p: setattr(p, "deterministic", 3), INVALID),
        ("algorithm 4", lambda p: setattr(p, "algorithm", 4), INVALID),
        ("q NULL", lambda p: setattr(p.q, "data", None), INVALID),
        ("v NULL", lambda p: setattr(p.v, "data", None), INVALID),
        ("o NULL", lambda p: setattr(p.o, "data", None), INVALID),
        ("negative stride", lambda p: setattr(p.k, "row_stride", -32), INVALID),
        ("overflowing stride", lambda p: setattr(p.k, "batch_stride", 1 << 62), INVALID),
        ("misaligned q", lambda p: setattr(p.q, "data", q.ctypes.data + 2), INVALID),
        ("only cu_seqlens_q", lambda p: setattr(p, "cu_seqlens_q", cu_bad.ctypes.data), INVALID),
        ("cu_seqlens step > max", lambda p: (setattr(p, "cu_seqlens_q", cu_bad.ctypes.data),
                                             setattr(p, "cu_seqlens_k", cu_bad.ctypes.data),
                                             setattr(p, "total_q", 16), setattr(p, "total_k", 16)), INVALID),
        ("varlen total -1", lambda p: (setattr(p, "cu_seqlens_q", cu_bad.ctypes.data),
                                       setattr(p, "cu_seqlens_k", cu_bad.ctypes.data), setattr(p, "total_q", -1)), INVALID),
        # sizes no memory can hold, with zero strides so the tensors themselves stay tiny
        ("naive scores too big", lambda p: (setattr(p, "algorithm", 1), setattr(p, "batch", 64),
                                            setattr(p, "seqlen_q", 1 << 16), setattr(p, "seqlen_k", 1 << 16),
                                            [setattr(t, name, 0) for t in (p.q, p.k, p.v, p.o)
                                             for name in ("batch_stride", "row_stride")],
                                            setattr(p, "lse", None)), OOM),
    ]
    for name, mutate, expected in mutations:
        p = base()
        mutate(p)
        status = lib.lib.fa_forward(C.byref(p))
        message = lib.last_error()
        yield f"fa_forward {name}", status == expected and len(message) > 10, f"status {status}: {message}"
        # fa_plan reads no data: alignment, cu_seqlens contents and memory are the run's business
        plan = lib.text(lib.lib.fa_plan, C.byref(p), 0)
        data_dependent = expected == OOM or name in ("misaligned q", "cu_seqlens step > max")
        yield f"fa_plan {name}", ('"ok":true' if data_dependent else '"ok":false') in plan, plan[:120]
    p = base()  # backward without its inputs
    status = lib.lib.fa_backward(C.byref(p))
    yield "fa_backward without dout", status == INVALID, lib.last_error()
    p.algorithm = 1
    yield "fa_plan naive backward", '"ok":false' in lib.text(lib.lib.fa_plan, C.byref(p), 1), ""
    status = lib.lib.fa_forward(None)
    yield "fa_forward NULL", status == INVALID, lib.last_error()
    ptr = C.c_void_p()
    status = lib.lib.fa_malloc(C.byref(ptr), C.c_uint64(1 << 62))
    yield "fa_malloc 2^62 bytes", status == OOM, lib.last_error()
    lib.check(lib.lib.fa_malloc(C.byref(ptr), C.c_uint64(100)))
    before = lib.memory_stats()[0]
    host = (C.c_char * 200)()
    status = lib.lib.fa_memcpy_h2d(ptr, host, C.c_uint64(200))
    yield "fa_memcpy_h2d past the block", status == INVALID, lib.last_error()
    status = lib.lib.fa_free(C.c_void_p(ptr.value + 8))
    yield "fa_free of an inner pointer", status == INVALID, lib.last_error()
    lib.check(lib.lib.fa_free(ptr))
    yield "fa_free returns the bytes", lib.memory_stats()[0] == before - 100, str(lib.memory_stats())
    status = lib.lib.fa_free(ptr)
    yield "double fa_free", status == INVALID, lib.last_error()
    small = C.create_string_buffer(8)
    status = lib.lib.fa_info(small, len(small))
    yield "fa_info into 8 bytes", status == ERR_BUFFER_TOO_SMALL and small.value == b'{"backe', small.value.decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", default=os.path.join(ROOT, "build", "libflashattn_cpu.so"))
    ap.add_argument("--quick", action="store_true", help="skip the long cases")
    ap.add_argument("--only", default="", help="run cases whose name contains this")
    args = ap.parse_args()
    lib = Library(args.lib)
    rng = np.random.default_rng(1234)
    failed = 0
    for name, kw in cases(args.quick):
        if args.only not in name:
            continue
        tol = TOLERANCE[kw.get("dtype", F32)]
        try:
            errs = run_case(lib, rng, **kw)
        except FlashAttnError as e:
            errs, tol = {"error": e.message}, None
        bad = tol is None or any(not (e <= (tol if n != "lse" else 1e-5)) for n, e in errs.items())
        failed += bad
        shown = " ".join(f"{n}={e:.1e}" if isinstance(e, float) else f"{n}={e}" for n, e in errs.items())
        print(f"{'FAIL' if bad else 'ok  '} {name:36s} {shown}")
    if not args.only:
        for name, passed, detail in bad_input_checks(lib):
            failed += not passed
            print(f"{'ok  ' if passed else 'FAIL'} bad input: {name:32s} {detail}")
    print(f"{failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
