#!/usr/bin/env python3
"""Checks one kernel path of a GPU libflashattn against an fp64 reference, on an odd-shape grid.

Usage (on a machine with an NVIDIA GPU and PyTorch):
    FLASHATTN_KERNEL is set by this script from --kernel (default "portable"; "auto" leaves the choice to the library)
    python3 scripts/portable_verify.py --lib build/libflashattn_cuda.so [--kernel portable] [--json out.json] [--bench]

Every case runs fa_forward then fa_backward through ctypes on torch-allocated device memory, after poisoning every
output with NaN, and compares with a plain fp64 implementation of the flash-attn 2.x semantics (bottom-right causal,
window, softcap, ALiBi, GQA/MQA, varlen, strided views). Tolerance (DESIGN.md): relative error ||out - ref|| / ||ref||
<= 1e-2 and <= 2x the error of a naive implementation computed in the same low precision (+1e-6 absolute slack for
outputs the naive version gets exact). NaN never passes; every element must be written. Exit code 1 if any check fails.
"""
import argparse
import ctypes
import json
import math
import os
import re
import sys
import time

import torch

# ---- the C ABI (kernels/include/flashattn.h) -------------------------------------------------------------------------

FA_ABI_VERSION = 1
FA_DTYPE = {torch.float16: 1, torch.bfloat16: 2}
FA_DIR_FORWARD, FA_DIR_BACKWARD = 0, 1
# Where tensors live: "cuda" for a GPU library; "cpu" runs the same grid against libflashattn_cpu (host memory), which
# checks this script itself on a machine without a GPU.
DEVICE = "cuda"


def synchronize():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def device_name():
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"


class FaTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("batch_stride", ctypes.c_int64), ("row_stride", ctypes.c_int64),
                ("head_stride", ctypes.c_int64)]


class FaParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("abi_version", ctypes.c_uint32), ("dtype", ctypes.c_int32),
                ("batch", ctypes.c_int32), ("seqlen_q", ctypes.c_int32), ("seqlen_k", ctypes.c_int32),
                ("heads_q", ctypes.c_int32), ("heads_kv", ctypes.c_int32), ("head_dim", ctypes.c_int32),
                ("is_causal", ctypes.c_int32), ("window_left", ctypes.c_int32), ("window_right", ctypes.c_int32),
                ("scale", ctypes.c_float), ("softcap", ctypes.c_float), ("alibi_mode", ctypes.c_int32),
                ("num_splits", ctypes.c_int32), ("deterministic", ctypes.c_int32), ("total_q", ctypes.c_int32),
                ("total_k", ctypes.c_int32), ("algorithm", ctypes.c_int32), ("alibi_slopes", ctypes.c_void_p),
                ("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p), ("stream", ctypes.c_void_p),
                ("q", FaTensor), ("k", FaTensor), ("v", FaTensor), ("o", FaTensor), ("lse", ctypes.c_void_p),
                ("dout", FaTensor), ("dq", FaTensor), ("dk", FaTensor), ("dv", FaTensor),
                ("out_kernel", ctypes.c_int32), ("out_num_splits", ctypes.c_int32)]


LAYOUT_FIELDS = ("struct_size,abi_version,dtype,batch,seqlen_q,seqlen_k,heads_q,heads_kv,head_dim,is_causal,window_left,"
                 "window_right,scale,softcap,alibi_mode,num_splits,deterministic,total_q,total_k,algorithm,alibi_slopes,"
                 "cu_seqlens_q,cu_seqlens_k,stream,q,k,v,o,lse,dout,dq,dk,dv,out_kernel,out_num_splits").split(",")


class Library:
    def __init__(self, path):
        self.lib = ctypes.CDLL(os.path.abspath(path))
        for name in ("fa_abi_version", "fa_params_layout", "fa_last_error", "fa_forward", "fa_backward", "fa_bench",
                     "fa_synchronize", "fa_info"):
            getattr(self.lib, name).restype = ctypes.c_int32
        self.lib.fa_params_layout.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.c_int32]
        self.lib.fa_last_error.argtypes = [ctypes.c_char_p, ctypes.c_int64]
        self.lib.fa_info.argtypes = [ctypes.c_char_p, ctypes.c_int64]
        self.lib.fa_bench.argtypes = [ctypes.POINTER(FaParams), ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                                      ctypes.POINTER(ctypes.c_float)]
        self.check_layout()

    def check_layout(self):
        if self.lib.fa_abi_version() != FA_ABI_VERSION:
            sys.exit(f"library ABI {self.lib.fa_abi_version()} != {FA_ABI_VERSION} of this script")
        out = (ctypes.c_int64 * 41)()
        self.lib.fa_params_layout(out, 41)
        mine = [ctypes.sizeof(FaParams), ctypes.sizeof(FaTensor)] + [getattr(FaParams, f).offset for f in LAYOUT_FIELDS] + \
               [getattr(FaTensor, f).offset for f in ("data", "batch_stride", "row_stride", "head_stride")]
        if list(out) != mine:
            sys.exit(f"fa_attn_params layout differs: library {list(out)} vs script {mine}")

    def last_error(self):
        buf = ctypes.create_string_buffer(4096)
        self.lib.fa_last_error(buf, len(buf))
        return buf.value.decode()

    def info(self):
        buf = ctypes.create_string_buffer(1 << 16)
        self.lib.fa_info(buf, len(buf))
        return json.loads(buf.value.decode())

    def call(self, name, params):
        status = getattr(self.lib, name)(ctypes.byref(params))
        if status != 0:
            raise RuntimeError(f"{name} returned {status}: {self.last_error()}")


def view(t, varlen):
    """fa_tensor of a (batch, rows, heads, dim) or varlen (tokens, heads, dim) torch view; dim must be contiguous."""
    assert t.stride(-1) == 1
    if varlen:
        return FaTensor(t.data_ptr(), 0, t.stride(0), t.stride(1))
    return FaTensor(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


# ---- the reference (fp64, or the input dtype for the naive low-precision baseline) ------------------------------------

def attention_reference(q, k, v, case, slopes, lens_q, lens_k):
    """O and LSE of every sequence, in q's dtype. q: list of (sq, hq, d) per sequence, k/v: (sk, hkv, d)."""
    outs, lses = [], []
    group = case["hq"] // case["hkv"]
    left, right = case["window"]
    if case["causal"]:
        right = 0
    for b, (qb, kb, vb) in enumerate(zip(q, k, v)):
        sq, sk = lens_q[b], lens_k[b]
        kh = kb.repeat_interleave(group, dim=1)
        vh = vb.repeat_interleave(group, dim=1)
        s = torch.einsum("qhd,khd->hqk", qb, kh) * case["scale"]
        if case["softcap"] > 0:
            s = case["softcap"] * torch.tanh(s / case["softcap"])
        i = torch.arange(sq, device=q[0].device).view(1, sq, 1)
        j = torch.arange(sk, device=q[0].device).view(1, 1, sk)
        c = i + sk - sq
        if slopes is not None:
            slope = (slopes[b] if slopes.dim() == 2 else slopes).to(s.dtype).view(-1, 1, 1)
            s = s - slope * (c - j).abs().to(s.dtype)
        mask = torch.ones(1, sq, sk, dtype=torch.bool, device=s.device)
        if right >= 0:
            mask &= j <= c + right
        if left >= 0:
            mask &= j >= c - left
        s = s.masked_fill(~mask, -math.inf)
        m = s.amax(dim=-1, keepdim=True) if sk > 0 else torch.full((s.shape[0], sq, 1), -math.inf, dtype=s.dtype, device=s.device)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()  # P does not depend on m
        e = torch.exp(s - m_safe)
        l = e.sum(dim=-1, keepdim=True)
        p = e / torch.where(l > 0, l, torch.ones_like(l))
        outs.append(torch.einsum("hqk,khd->qhd", p, vh))
        lses.append(torch.where(l > 0, torch.log(l) + m_safe, torch.full_like(l, -math.inf)).squeeze(-1))
    return outs, lses


def relative_error(actual, expected):
    a, e = actual.double(), expected.double()
    if torch.isnan(a).any():
        return math.inf
    finite = torch.isfinite(e)
    if not torch.equal(torch.isfinite(a), finite) or not torch.equal(a[~finite], e[~finite]):
        return math.inf  # -inf LSE rows must match exactly
    a, e = a[finite], e[finite]
    denom = e.norm().item()
    num = (a - e).norm().item()
    if denom == 0:
        return 0.0 if num == 0 else math.inf
    return num / denom


# ---- cases ----------------------------------------------------------------------------------------------------------

def make_cases():
    base = dict(batch=1, sq=113, sk=203, hq=4, hkv=4, d=64, causal=False, window=(-1, -1), softcap=0.0, scale=0.0,
                alibi=None, varlen=None, layout="contiguous", dtype=torch.float16)
    specs = [
        dict(batch=2, sq=113, sk=203, d=64),
        dict(sq=203, sk=113, hq=8, hkv=2, d=128, causal=True),                 # GQA 4, rows with no key (sq > sk)
        dict(batch=2, sq=1, sk=203, hq=8, hkv=1, d=256, dtype=torch.bfloat16),  # MQA decode
        dict(batch=3, sq=3, sk=3, hq=2, hkv=2, d=40, causal=True),
        dict(sq=203, sk=203, d=96, window=(32, 8), dtype=torch.bfloat16),
        dict(sq=113, sk=203, d=72, window=(-1, 16)),
        dict(sq=203, sk=113, d=48, window=(16, -1), dtype=torch.bfloat16),
        dict(sq=113, sk=113, d=128, softcap=30.0, scale=0.2),
        dict(sq=203, sk=203, hq=4, hkv=2, d=64, alibi="head", causal=True, dtype=torch.bfloat16),
        dict(batch=2, sq=113, sk=203, d=160, alibi="batch"),
        dict(batch=3, hq=4, hkv=2, d=128, causal=True, varlen=([1, 113, 203], [203, 3, 113])),
        dict(batch=3, hq=8, hkv=8, d=256, varlen=([113, 3, 1], [3, 203, 113]), window=(24, 4), softcap=20.0,
             alibi="head", dtype=torch.bfloat16),
        dict(batch=2, sq=113, sk=0, d=64),                                       # no keys at all
        dict(batch=2, sq=113, sk=113, d=64, layout="packed_qkv", causal=True),
        dict(batch=2, sq=113, sk=203, d=88, layout="unaligned", dtype=torch.bfloat16),
        dict(batch=1, sq=1023, sk=799, hq=2, hkv=1, d=128, causal=True, dtype=torch.bfloat16),
        dict(batch=1, sq=799, sk=1023, hq=3, hkv=3, d=8),
        dict(batch=1, sq=203, sk=203, hq=8, hkv=1, d=192, window=(64, 64), softcap=10.0),
    ]
    cases = []
    for s in specs:
        c = dict(base)
        c.update(s)
        c["scale"] = c["scale"] or 1.0 / math.sqrt(c["d"])
        cases.append(c)
    return cases


def describe(c):
    parts = [f"b{c['batch']}", f"sq{c['sq'] if not c['varlen'] else c['varlen'][0]}",
             f"sk{c['sk'] if not c['varlen'] else c['varlen'][1]}", f"h{c['hq']}/{c['hkv']}", f"d{c['d']}",
             "bf16" if c["dtype"] == torch.bfloat16 else "fp16"]
    if c["causal"]:
        parts.append("causal")
    if c["window"] != (-1, -1):
        parts.append(f"win{c['window'][0]},{c['window'][1]}")
    if c["softcap"]:
        parts.append(f"cap{c['softcap']:g}")
    if c["alibi"]:
        parts.append(f"alibi-{c['alibi']}")
    if c["varlen"]:
        parts.append("varlen")
    if c["layout"] != "contiguous":
        parts.append(c["layout"])
    return " ".join(parts)


class Problem:
    """Device tensors of one case in the layout the case asks for, plus the per-sequence views for the reference."""

    def __init__(self, c, gen):
        dev, dt = DEVICE, c["dtype"]
        self.c = c
        self.varlen = c["varlen"] is not None
        b, hq, hkv, d = c["batch"], c["hq"], c["hkv"], c["d"]
        if self.varlen:
            self.lens_q, self.lens_k = c["varlen"]
        else:
            self.lens_q, self.lens_k = [c["sq"]] * b, [c["sk"]] * b
        rand = lambda *shape: torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32).to(dt)
        if self.varlen:
            tq, tk = sum(self.lens_q), sum(self.lens_k)
            self.q, self.k, self.v = rand(tq, hq, d), rand(max(tk, 1), hkv, d)[:tk], rand(max(tk, 1), hkv, d)[:tk]
            self.do = rand(tq, hq, d)
            self.o = torch.full((tq, hq, d), math.nan, device=dev, dtype=dt)
            self.cu_q = torch.tensor([0] + torch.tensor(self.lens_q).cumsum(0).tolist(), dtype=torch.int32, device=dev)
            self.cu_k = torch.tensor([0] + torch.tensor(self.lens_k).cumsum(0).tolist(), dtype=torch.int32, device=dev)
            self.lse = torch.full((hq, tq), math.nan, device=dev)
        else:
            sq, sk = c["sq"], c["sk"]
            if c["layout"] == "packed_qkv":  # one (b, s, 3, h, d) buffer: q, k, v are strided views
                qkv = rand(b, sq, 3, hq, d)
                self.q, self.k, self.v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
                self.o = torch.full((b, sq, hq, d + 8), math.nan, device=dev, dtype=dt)[..., :d]
            elif c["layout"] == "unaligned":  # odd head strides: no 16-byte vector accesses are possible
                self.q = rand(b, sq, hq, d + 1)[..., 1:]
                self.k = rand(b, sk, hkv, d + 3)[..., :d]
                self.v = rand(b, sk, hkv, d + 1)[..., 1:]
                self.o = torch.full((b, sq, hq, d + 1), math.nan, device=dev, dtype=dt)[..., 1:]
            else:
                self.q, self.k, self.v = rand(b, sq, hq, d), rand(b, max(sk, 1), hkv, d)[:, :sk], rand(b, max(sk, 1), hkv, d)[:, :sk]
                self.o = torch.full((b, sq, hq, d), math.nan, device=dev, dtype=dt)
            self.do = rand(b, sq, hq, d)
            self.cu_q = self.cu_k = None
            self.lse = torch.full((b, hq, sq), math.nan, device=dev)
        self.dq = torch.full_like(self.q, math.nan)
        self.dk = torch.full(self.k.shape, math.nan, device=dev, dtype=dt) if self.k.numel() else torch.empty(self.k.shape, device=dev, dtype=dt)
        self.dv = torch.full(self.v.shape, math.nan, device=dev, dtype=dt) if self.v.numel() else torch.empty(self.v.shape, device=dev, dtype=dt)
        if c["alibi"] == "head":
            self.slopes = torch.rand(hq, generator=gen, device=dev) * 0.5
        elif c["alibi"] == "batch":
            self.slopes = torch.rand(b, hq, generator=gen, device=dev) * 0.5
        else:
            self.slopes = None
        # Zero-size tensors have no storage; the library needs non-NULL pointers, never dereferenced for zero rows.
        self.placeholder = torch.zeros(64, device=dev, dtype=dt)

    def params(self):
        c = self.c
        p = FaParams()
        p.struct_size, p.abi_version = ctypes.sizeof(FaParams), FA_ABI_VERSION
        p.dtype, p.batch = FA_DTYPE[c["dtype"]], c["batch"]
        p.seqlen_q, p.seqlen_k = max(self.lens_q), max(self.lens_k)
        p.heads_q, p.heads_kv, p.head_dim = c["hq"], c["hkv"], c["d"]
        p.is_causal = int(c["causal"])
        p.window_left, p.window_right = c["window"]
        p.scale, p.softcap = c["scale"], c["softcap"]
        p.alibi_mode = {None: 0, "head": 1, "batch": 2}[c["alibi"]]
        p.alibi_slopes = self.slopes.data_ptr() if self.slopes is not None else None
        if self.varlen:
            p.cu_seqlens_q, p.cu_seqlens_k = self.cu_q.data_ptr(), self.cu_k.data_ptr()
            p.total_q, p.total_k = sum(self.lens_q), sum(self.lens_k)
        p.deterministic = 1
        for name in ("q", "k", "v", "o", "dq", "dk", "dv"):
            t = getattr(self, name)
            fa = view(t, self.varlen)
            if t.numel() == 0:
                fa.data = self.placeholder.data_ptr()
            setattr(p, name, fa)
        p.dout = view(self.do, self.varlen)
        p.lse = self.lse.data_ptr()
        return p

    def sequences(self, t, lens, dtype):
        """Per-sequence (rows, heads, dim) slices in `dtype`."""
        if self.varlen:
            starts = [0] + list(torch.tensor(lens).cumsum(0).tolist())
            return [t[starts[i]:starts[i + 1]].to(dtype) for i in range(len(lens))]
        return [t[i].to(dtype) for i in range(t.shape[0])]

    def lse_sequences(self, lse):
        if self.varlen:
            starts = [0] + list(torch.tensor(self.lens_q).cumsum(0).tolist())
            return [lse[:, starts[i]:starts[i + 1]] for i in range(len(self.lens_q))]
        return [lse[i] for i in range(lse.shape[0])]

    def reference(self, dtype):
        """(O, LSE, dQ, dK, dV) of the reference computed in `dtype`, each a list per sequence."""
        q = [x.detach().requires_grad_() for x in self.sequences(self.q, self.lens_q, dtype)]
        k = [x.detach().requires_grad_() for x in self.sequences(self.k, self.lens_k, dtype)]
        v = [x.detach().requires_grad_() for x in self.sequences(self.v, self.lens_k, dtype)]
        slopes = self.slopes.to(dtype) if self.slopes is not None else None
        o, lse = attention_reference(q, k, v, self.c, slopes, self.lens_q, self.lens_k)
        do = self.sequences(self.do, self.lens_q, dtype)
        grads = torch.autograd.grad(o, q + k + v, do, allow_unused=True)
        n = len(q)
        fix = lambda gs, xs: [g if g is not None else torch.zeros_like(x) for g, x in zip(gs, xs)]
        return ([x.detach() for x in o], [x.detach() for x in lse], fix(grads[:n], q), fix(grads[n:2 * n], k),
                fix(grads[2 * n:], v))


def cat(parts):
    return torch.cat([p.reshape(-1).double() for p in parts]) if parts else torch.zeros(0, dtype=torch.float64)


def check_case(lib, c, gen, kernel_id_expected):
    prob = Problem(c, gen)
    result = {"case": describe(c), "checks": {}}
    p = prob.params()
    lib.call("fa_forward", p)
    synchronize()
    result["kernel_fwd"] = p.out_kernel
    ours_fwd = {"o": prob.sequences(prob.o, prob.lens_q, torch.float64), "lse": prob.lse_sequences(prob.lse)}
    unwritten = {"o": torch.isnan(prob.o).sum().item(), "lse": torch.isnan(prob.lse).sum().item()}

    p_bwd = prob.params()
    lib.call("fa_backward", p_bwd)
    synchronize()
    result["kernel_bwd"] = p_bwd.out_kernel
    first = [getattr(prob, name).clone() for name in ("dq", "dk", "dv")]
    for name in ("dq", "dk", "dv"):
        unwritten[name] = torch.isnan(getattr(prob, name)).sum().item()
    # Determinism: a second backward must give identical bits (NaN-free outputs are checked above).
    lib.call("fa_backward", prob.params())
    synchronize()
    result["deterministic"] = all(torch.equal(a.nan_to_num(0), getattr(prob, n).nan_to_num(0))
                                  for a, n in zip(first, ("dq", "dk", "dv")))

    ref = prob.reference(torch.float64)
    try:
        naive = prob.reference(c["dtype"])
    except RuntimeError:  # CPU PyTorch builds without fp16 matmul: no naive bound, only the 1e-2 one
        naive = [[torch.full_like(x, math.nan) for x in part] for part in ref]
    ours = {"o": ours_fwd["o"], "lse": ours_fwd["lse"], "dq": prob.sequences(prob.dq, prob.lens_q, torch.float64),
            "dk": prob.sequences(prob.dk, prob.lens_k, torch.float64), "dv": prob.sequences(prob.dv, prob.lens_k, torch.float64)}
    ok = True
    for idx, name in enumerate(("o", "lse", "dq", "dk", "dv")):
        err = relative_error(cat(ours[name]), cat(ref[idx]))
        naive_err = relative_error(cat(naive[idx]), cat(ref[idx]))
        bound = min(1e-2, 2 * naive_err + 1e-6) if math.isfinite(naive_err) else 1e-2  # NaN naive: no naive bound
        passed = err <= bound and unwritten[name] == 0
        ok &= passed
        result["checks"][name] = {"err": err, "naive_err": naive_err, "bound": bound, "unwritten": unwritten[name],
                                  "ok": passed}
    if kernel_id_expected is not None:
        ok &= result["kernel_fwd"] == kernel_id_expected and result["kernel_bwd"] == kernel_id_expected
    ok &= result["deterministic"]
    result["ok"] = bool(ok)
    return result


def median_cuda_ms(step, warmup=2, iters=5):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return sorted(times)[len(times) // 2]


def bench(lib, dtype, causal, direction, b=4, s=2048, h=16, d=128):
    gen = torch.Generator(device=DEVICE).manual_seed(7)
    c = dict(batch=b, sq=s, sk=s, hq=h, hkv=h, d=d, causal=causal, window=(-1, -1), softcap=0.0, scale=1 / math.sqrt(d),
             alibi=None, varlen=None, layout="contiguous", dtype=dtype)
    prob = Problem(c, gen)
    p = prob.params()
    lib.call("fa_forward", p)
    times = (ctypes.c_float * 5)()
    status = lib.lib.fa_bench(ctypes.byref(p), direction, 2, 5, times)
    if status != 0:
        raise RuntimeError(f"fa_bench: {lib.last_error()}")
    ms = sorted(times)[2]
    flops = 4 * b * h * s * s * d / (2 if causal else 1) * (2.5 if direction == FA_DIR_BACKWARD else 1)
    # Baseline in the same run: PyTorch SDPA (its flash backend on an H100), median of 5 after 2 warm-ups.
    q, k, v = (x.transpose(1, 2).contiguous().requires_grad_() for x in (prob.q, prob.k, prob.v))
    do = prob.do.transpose(1, 2).contiguous()
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if direction == FA_DIR_FORWARD:
        step = sdpa
    else:
        out = sdpa()
        step = lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    sdpa_ms = median_cuda_ms(step)
    return {"shape": f"b{b} s{s} h{h} d{d} {'bf16' if dtype == torch.bfloat16 else 'fp16'}{' causal' if causal else ''}",
            "direction": "fwd" if direction == FA_DIR_FORWARD else "bwd", "ms": ms, "tflops": flops / ms / 1e9,
            "sdpa_ms": sdpa_ms, "sdpa_tflops": flops / sdpa_ms / 1e9}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default="build/libflashattn_cuda.so")
    ap.add_argument("--kernel", default="portable", help='kernel path to force through FLASHATTN_KERNEL ("auto": none)')
    ap.add_argument("--json", help="write the full results as JSON here")
    ap.add_argument("--bench", action="store_true", help="also time fa_bench against PyTorch SDPA on one shape")
    ap.add_argument("--only", help="run only the cases whose description matches this regular expression")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: host tensors, for libflashattn_cpu (checks this script without a GPU)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch")
    if args.kernel == "auto":
        os.environ.pop("FLASHATTN_KERNEL", None)
    else:
        os.environ["FLASHATTN_KERNEL"] = args.kernel
    lib = Library(args.lib)
    info = lib.info()
    ids = {k["name"]: k["id"] for k in info.get("kernels", [])}
    expected = ids.get(args.kernel) if args.kernel != "auto" else None
    if args.kernel != "auto" and expected is None:
        sys.exit(f"the library has no kernel path {args.kernel!r}; it has {sorted(ids)}")

    gen = torch.Generator(device=DEVICE).manual_seed(1234)
    results = []
    for c in make_cases():
        if args.only and not re.search(args.only, describe(c)):
            continue
        t0 = time.time()
        try:
            r = check_case(lib, c, gen, expected)
        except RuntimeError as e:
            r = {"case": describe(c), "ok": False, "error": str(e)}
        r["seconds"] = round(time.time() - t0, 2)
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    timings = []
    if args.bench:
        for dtype, causal, direction in ((torch.bfloat16, False, FA_DIR_FORWARD), (torch.bfloat16, True, FA_DIR_FORWARD),
                                         (torch.bfloat16, False, FA_DIR_BACKWARD)):
            try:
                timings.append(bench(lib, dtype, causal, direction))
            except RuntimeError as e:
                timings.append({"error": str(e)})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kernel": args.kernel, "device": device_name(), "results": results,
                       "timings": timings}, f, indent=1)

    print(f"kernel {args.kernel} on {device_name()}: rel. error vs fp64 (naive low-precision error)")
    print(f"{'case':58} {'o':>17} {'lse':>17} {'dq':>17} {'dk':>17} {'dv':>17}  ok")
    for r in results:
        if "error" in r:
            print(f"{r['case']:58} ERROR {r['error']}")
            continue
        cells = [f"{r['checks'][n]['err']:.1e}({r['checks'][n]['naive_err']:.0e})" +
                 ("" if r['checks'][n]['unwritten'] == 0 else f"!{r['checks'][n]['unwritten']}") for n in ("o", "lse", "dq", "dk", "dv")]
        print(f"{r['case']:58} " + " ".join(f"{x:>17}" for x in cells) + f"  {'ok' if r['ok'] else 'FAIL'}"
              + ("" if r["deterministic"] else " nondet") + f" k{r['kernel_fwd']}/{r['kernel_bwd']}")
    for t in timings:
        print(t if "error" in t else f"{t['direction']} {t['shape']}: {t['ms']:.3f} ms {t['tflops']:.1f} TFLOP/s; "
              f"SDPA {t['sdpa_ms']:.3f} ms {t['sdpa_tflops']:.1f} TFLOP/s; ratio {t['tflops'] / t['sdpa_tflops']:.2f}")
    failed = sum(not r["ok"] for r in results)
    print(f"{len(results) - failed}/{len(results)} cases passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
