#!/usr/bin/env python3
"""cuda_fp8.py — the fp8 forward (default path cuda-wgmma-fp8-sm90) on a real GPU: correctness against an fp64
reference and, with --bench, its speed beside our bf16 forward.

Each case draws fresh real-valued q, k, v (randn, or a wide dynamic range: rows spread over e^+-4.5, outlier
channels, q scaled so that the largest score is 100 — see real_inputs), quantises them to fp8 per tensor or per
(batch, kv head) — scale = amax / 448 (E4M3) or amax / 57344 (E5M2), descale = scale — poisons o and the LSE with
NaN, forces the path with FLASHATTN_KERNEL (a silent fallback cannot hide a rejection) and runs it. Then
    ref    = fp64 attention of the dequantised inputs (fp8 value x descale, exactly), cuda_verify.py's reference
    naive  = a plain fp8 attention of the same inputs (docs/DESIGN.md, "Tolerances"): P = exp(s - row max) rounded
             to E4M3 before P.V, products and sums in fp32, the row sum from the unrounded P, O rounded to out dtype
    err(x) = ||x - ref|| / ||ref||  (Frobenius; NaN anywhere = inf)
    pass:    err(ours) <= 2 err(naive) + 1e-4 and err(ours) <= 5e-2; the forced path ran; LSE (when asked for): rows
             without keys exactly +inf, the others |lse - ref| <= 2^-11 sqrt(d) scale max_j sum_x |q_x| |k_jx|
             + 1e-5 (1 + |ref|) (q: the row's, k_j: every key of its sequence and kv head; dequantised values)
The LSE bound: no fp8 rounding reaches the LSE (flashattn.h: the row sum uses the unrounded P), but the scores do
not come out exact. Hopper's fp8 wgmma keeps about 14 bits, not fp32's 23, when it adds its products: each product is
aligned to the largest magnitude in its group (the accumulator included) and cut ~2^-13 below it, and that magnitude
is at most sum_x |q_x| |k_x|; the d cuts add like a random walk. So a score s_j = scale q.k_j is off by about
eps sqrt(d) scale sum_x |q_x| |k_jx| with eps ~ 2^-13 at worst (an emulation of that accumulation, which gives the
H100's measured LSE deviations on the wide-range cases, reaches about 2^-13 over this grid; without the sqrt(d) outlier
channels would put the error at 2^-9.8 of scale sum |q||k|, above a flat 2^-11). The LSE is a soft maximum of the
scores (its gradient, the softmax weights, sums to 1), so |lse - ref| <= max_j |error of s_j|; softcap is 1-Lipschitz
and ALiBi exact, so they keep the bound. 2^-11 is 4x that worst eps; the maximum is taken over all keys of the
sequence (a superset of those the row sees: still a bound, and no mask logic repeated here); 1e-5 (1 + |ref|) is the
fp32 exp2, row sum and log. A k descale off by 2 moves the LSE by O(|s|): > 20x the bound on every case here.
Printed, not judged: err of ours against our bf16 forward (the dispatcher's path) on the same real-valued inputs, i.e.
what fp8 costs against running in bf16. A case the forced path refuses (UNSUPPORTED, the reason naming the path) is
listed as skipped with its reason. Bad input (a descale of NaN, 0 or < 0; an fp8 o; an fp8 backward) must get its
documented status, not a crash.

--bench: hdim 128 and 256, seqlen 4k / 8k / 16k (batch x seqlen = 16k tokens, hidden 2048), causal 0/1: ours fp8
(the forced path) and ours bf16 (the dispatcher's choice) timed by fa_bench (L2 flushed, median), TFLOP/s
(4 b h s^2 d, halved when causal). Each fp8 shape is first checked with the rule above on two blocks of 64 query rows
(the middle and the last: the fp64 reference of every row of a 16k problem is too slow); a shape that fails is not
timed. Also probes whether this PyTorch has any fp8 attention (SDPA unforced and under each backend; every aten
_scaled_dot_product_* forward op called directly) and, when SDPA takes fp8, checks and times it as a baseline.

--kernel cuda-decode --filter decode: the decode-shaped cases on the decode path (fp8 K / V converted to fp16 in shared
memory; any sm_80+ GPU), with the same rule.

--device cpu (with --kernel '' and FLASHATTN_LIB=build/libflashattn_cpu.so): the same grid against the CPU backend,
whose fp8 forward has the same semantics — checks this script without a GPU.

Usage: python3 scripts/check/cuda_fp8.py [--quick] [--kernel NAME] [--filter SUBSTR] [--json out.json]
       python3 scripts/check/cuda_fp8.py --bench [--iters 20] [--json out.json] [--md out.md]
Exit status 1 when any case fails, 2 on a usage error, 3 when the library or the GPU cannot be used; the last lines
are a table.
"""
import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "perf"))
from cuda_ffi import cuda_library, make_params  # noqa: E402
from cuda_verify import forced_refusal, ref_attention, rel_err  # noqa: E402
from fa_ctypes import DIR_BWD, DIR_FWD, ERR_INVALID_ARGUMENT, ERR_UNSUPPORTED, FlashAttnError  # noqa: E402

FORMATS = {"e4m3": (torch.float8_e4m3fn, 448.0), "e5m2": (torch.float8_e5m2, 57344.0)}
OUT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_KERNEL = "cuda-wgmma-fp8-sm90"
# |lse - ref| <= SCORE_EPS sqrt(d) scale max_j sum_x |q_x| |k_jx| + LSE_FP32 (1 + |ref|): see the docstring (SCORE_EPS
# is 4x the worst relative error of Hopper's ~14-bit fp8 accumulation per sqrt(d) products, 2^-13)
SCORE_EPS = 2.0 ** -11
LSE_FP32 = 1e-5
# FlashAttention-3 (Shah et al., 2024), fp8 forward on an H100 SXM5 at seqlen 16k, as published (approximate).
FA3_FP8_PUBLISHED = ("FlashAttention-3 fp8 forward, H100 SXM5, published: ~1.0 PFLOP/s at hdim 128, ~1.2 PFLOP/s at "
                     "hdim 256 (16k)")


# ---- quantisation ------------------------------------------------------------------------------------------------

def sequence_lengths(cu):
    return (cu[1:] - cu[:-1]).long()


def per_element(factor, like, heads_kv, cu=None):
    """A descale-shaped factor (0-dim, or (batch, heads_kv)) broadcast against x of shape (B, S, H, D) or varlen
    (T, H, D): query head h takes the factor of its kv head h // (H / heads_kv) (flashattn.h, fa_descale)."""
    if factor.numel() == 1:
        return factor.reshape(())
    f = factor.repeat_interleave(like.shape[-2] // heads_kv, dim=1)  # (batch, H)
    if cu is None:
        return f[:, None, :, None]
    seq_of_token = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=cu.device), sequence_lengths(cu))
    return f[seq_of_token.to(f.device)][:, :, None]


def group_amax(x, heads_kv, cu=None):
    """max |x| per (sequence, kv head), the kv head's query heads together: (batch, heads_kv); 0 for an empty varlen
    sequence."""
    if cu is None:
        b, s, h, d = x.shape
        return x.abs().reshape(b, s, heads_kv, h // heads_kv, d).amax(dim=(1, 3, 4))
    rows = []
    for i in range(cu.numel() - 1):
        seg = x[int(cu[i]):int(cu[i + 1])]
        t, h, d = seg.shape
        rows.append(seg.abs().reshape(t, heads_kv, h // heads_kv, d).amax(dim=(0, 2, 3)) if t else
                    torch.zeros(heads_kv, device=x.device))
    return torch.stack(rows)


def quantise(x, fmt, mode, heads_kv, cu=None):
    """Real-valued fp32 x -> (fp8 tensor, descale). mode: 'tensor' (a 0-dim descale), 'tensor1' (shape (1,)), 'head'
    ((batch, heads_kv), contiguous), 'head-strided' (the same values in a transposed buffer: strides (1, batch)) or
    'none' (no descale: the values are cast as they are). scale = amax / the format's largest value (1 where amax is
    0, an empty sequence); descale = scale."""
    dtype, top = FORMATS[fmt]
    if mode == "none":
        return x.clamp(-top, top).to(dtype), None
    amax = group_amax(x, heads_kv, cu) if mode.startswith("head") else x.abs().amax().reshape(())
    scale = torch.where(amax > 0, amax / top, torch.ones_like(amax)).float()
    x8 = (x / per_element(scale, x, heads_kv, cu)).clamp(-top, top).to(dtype)
    if mode == "tensor1":
        scale = scale.reshape(1)
    elif mode == "head-strided":
        scale = scale.t().contiguous().t()
    return x8, scale


def dequantise(x8, descale, heads_kv, cu=None):
    """The real values the library sees: fp8 numbers times their factors, exactly, in fp64."""
    x = x8.double()
    return x if descale is None else x * per_element(descale.double(), x8, heads_kv, cu)


# ---- reference, naive fp8 and the rule -----------------------------------------------------------------------------

def probabilities(q, k, case, slopes=None):
    """P of the fp64 reference of a padded problem, shaped (B, Sq, H, Sk) (zero where masked). The reference attending
    to one-hot values (key j's value = e_j) returns P itself, so the masks, softcap, ALiBi and GQA rules are
    cuda_verify.py's, not a second copy. keys / head_dim times the reference's work, in chunks of keys that keep the
    one-hot values near 256 MiB."""
    keys, heads = k.shape[1], q.shape[-2]
    chunk = max(1, min(keys, (1 << 25) // max(1, keys * heads)))
    parts = []
    for j0 in range(0, keys, chunk):
        c = min(chunk, keys - j0)
        onehot = torch.zeros(*k.shape[:-1], c, dtype=torch.float64, device=k.device)
        idx = torch.arange(c, device=k.device)
        onehot[:, j0 + idx, :, idx] = 1.0
        parts.append(ref_attention(q, k, onehot, case, low_precision=False, slopes=slopes)[0])
    return torch.cat(parts, -1)


def naive_fp8(p, v, out_dtype):
    """The naive fp8 attention from the reference's P (probabilities()) and the dequantised v (fp64): the row's
    exp(s - max) is P / max P; rounded to E4M3 for P.V (fp32), the row sum from the unrounded values (fp32), O rounded
    to out_dtype. A row without keys gives 0, as the library's."""
    rowmax = p.amax(-1, keepdim=True)
    e = (p / torch.where(rowmax > 0, rowmax, torch.ones_like(rowmax))).float()
    e8 = e.to(torch.float8_e4m3fn).float()
    total = e.sum(-1, keepdim=True)
    v32 = v.float().repeat_interleave(p.shape[-2] // v.shape[-2], dim=-2)
    o = torch.einsum("...ihj,...jhd->...ihd", e8, v32)
    return torch.where(total > 0, o / total, torch.zeros_like(o)).to(out_dtype)  # (0 / 0 where not taken)


def lse_bound(q, k, lse_ref, scale):
    """The LSE bound of the docstring per row of a padded problem of dequantised fp64 inputs, in the LSE's layout
    (B, H, Sq): SCORE_EPS sqrt(d) scale max_j sum_x |q_x| |k_jx| (every key j of the sequence)
    + LSE_FP32 (1 + |ref|)."""
    k_abs = k.abs().repeat_interleave(q.shape[-2] // k.shape[-2], dim=-2)
    magnitude = torch.einsum("bihd,bjhd->bhij", q.abs(), k_abs).amax(-1)
    return SCORE_EPS * math.sqrt(q.shape[-1]) * scale * magnitude + LSE_FP32 * (1 + lse_ref.abs())


def lse_deviation(lse, ref, bound):
    """(ok, worst |lse - ref| / bound over the rows that see a key; <= 1 passes): rows without keys must be +inf
    exactly, NaN never passes."""
    if torch.isnan(lse).any():
        return False, math.inf
    finite = torch.isfinite(ref)
    empty_ok = bool((lse[~finite] == math.inf).all())
    worst = 0.0
    if finite.any():
        worst = ((lse[finite].double() - ref[finite]).abs() / bound[finite]).max().item()
    return empty_ok and worst <= 1, worst


def reference_and_naive(q, k, v, case, out_dtype, slopes=None):
    """(o_ref, lse_ref, the LSE's bound, o_naive) of a padded problem of dequantised fp64 inputs."""
    o_ref, lse_ref = ref_attention(q, k, v, case, low_precision=False, slopes=slopes)
    return (o_ref, lse_ref, lse_bound(q, k, lse_ref, case["scale"]),
            naive_fp8(probabilities(q, k, case, slopes), v, out_dtype))


def varlen_reference_and_naive(q, k, v, case, out_dtype, cu_q, cu_k, slopes=None):
    """The same for a varlen problem, one sequence at a time as a padded batch of one. cuda_verify.py's reference
    needs a key in every sequence, so a sequence without keys gets here what flash-attn 2.x defines for it: O = 0,
    LSE = +inf (and a bound of 0: such a row must be +inf exactly)."""
    outs, lses, bounds, naives = [], [], [], []
    for b in range(cu_q.numel() - 1):
        qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if ks.stop == ks.start:
            o = torch.zeros_like(q[qs])
            outs.append(o)
            naives.append(o.to(out_dtype))
            lses.append(torch.full(q[qs].shape[:2], math.inf, dtype=torch.float64, device=q.device).t())
            bounds.append(torch.zeros_like(lses[-1]))
            continue
        sl = None if slopes is None else slopes[b:b + 1] if slopes.dim() == 2 else slopes
        o, lse, bound, naive = reference_and_naive(q[qs][None], k[ks][None], v[ks][None], case, out_dtype, sl)
        outs.append(o[0])
        lses.append(lse[0])
        bounds.append(bound[0])
        naives.append(naive[0])
    return torch.cat(outs, 0), torch.cat(lses, 1), torch.cat(bounds, 1), torch.cat(naives, 0)


def judge(o, lse, q, k, v, case, out_dtype, cu_q=None, cu_k=None, slopes=None):
    """The rule of the docstring for one output (o in out_dtype, lse fp32 or None) of dequantised fp64 inputs."""
    if cu_q is None:
        o_ref, lse_ref, bound, o_naive = reference_and_naive(q, k, v, case, out_dtype, slopes)
    else:
        o_ref, lse_ref, bound, o_naive = varlen_reference_and_naive(q, k, v, case, out_dtype, cu_q, cu_k, slopes)
    ours, naive = rel_err(o, o_ref), rel_err(o_naive, o_ref)
    r = {"ours": ours, "naive": naive, "limit": min(2 * naive + 1e-4, 5e-2)}
    ok = ours <= r["limit"]
    if lse is not None:
        r["lse_ok"], r["lse_of_bound"] = lse_deviation(lse, lse_ref, bound)
        ok = ok and r["lse_ok"]
    r["ok"] = bool(ok)
    return r


# ---- one case ----------------------------------------------------------------------------------------------------

def cu_seqlens(lengths, dev):
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32, device=dev)


def real_inputs(case, dev):
    """Real-valued fp32 q, k, v (padded or varlen), cu_seqlens, ALiBi slopes. 'wide': per-row magnitudes spread over
    e^(+-4.5) and two outlier channels x30 (scores kept below 30); 'head' descales: the kv heads' magnitudes differ
    per (batch, head), so a factor read from the wrong place shows."""
    b, sq, sk, h, hk, d = case["batch"], case["sq"], case["sk"], case["h"], case["hk"], case["d"]
    cu_q = cu_k = None
    if case.get("varlen"):
        cu_q, cu_k = cu_seqlens(case["lens_q"], dev), cu_seqlens(case["lens_k"], dev)
        shapes = ((int(cu_q[-1]), h, d), (int(cu_k[-1]), hk, d), (int(cu_k[-1]), hk, d))
    else:
        shapes = ((b, sq, h, d), (b, sk, hk, d), (b, sk, hk, d))
    q, k, v = (torch.randn(*s, device=dev) for s in shapes)
    if case["dist"] == "wide":
        for t in (q, k, v):
            t.mul_(torch.exp(1.5 * torch.randn(*t.shape[:-1], 1, device=dev)))
            t[..., :2] *= 30.0
    if case["descale"].startswith("head"):
        bb, hh = torch.meshgrid(torch.arange(b, device=dev), torch.arange(hk, device=dev), indexing="ij")
        for t, cu, spread in ((q, cu_q, 3), (k, cu_k, 3), (v, cu_k, 5)):  # q, k: x{0.5, 1, 2}; v: x{0.25 .. 4}
            factor = (2.0 ** ((bb + 2 * hh + 1) % spread - spread // 2)).float()
            t.mul_(per_element(factor, t, hk, cu))
    if case["dist"] == "wide":
        # q shrinks until the largest score is 100 (its fp8 numbers stay the same: the scale follows the amax). The
        # range inside each tensor is what fp8 must hold; scores of 10^5, as these inputs give, would make a row whose
        # top keys nearly tie depend on the tensor cores' ~14-bit fp8 accumulation, which the naive yardstick (exact
        # scores) does not model. At 100 that accumulation moves a score by ~0.01, a 1% change of P (rounding P to
        # E4M3: up to 6%).
        q.mul_(100.0 / largest_score(q, k, case["scale"]))
    slopes = None
    if case.get("alibi"):
        slopes = torch.rand(*((b, h) if case["alibi"] == "batch" else (h,)), device=dev) * 0.5
    return q, k, v, cu_q, cu_k, slopes


def largest_score(q, k, scale):
    """max |scale q.k| over every query, key and head (varlen: across sequences too, an upper bound)."""
    k = k.repeat_interleave(q.shape[-2] // k.shape[-2], dim=-2)
    if q.dim() == 3:
        q, k = q[None], k[None]
    return torch.einsum("bihd,bjhd->bhij", q, k).abs().max().item() * scale


def pack_qkv(q8, k8, v8):
    """q, k, v as views of one packed (B, S, 3, H, D) fp8 buffer (row stride 3 H D elements, k and v H D elements
    after q: 16-byte aligned for D a multiple of 16)."""
    qkv = torch.empty(*q8.shape[:2], 3, *q8.shape[2:], dtype=torch.uint8, device=q8.device)
    for i, t in enumerate((q8, k8, v8)):
        qkv[:, :, i] = t.view(torch.uint8)
    return tuple(qkv[:, :, i].view(q8.dtype) for i in range(3))


def misalign(x8):
    """x8's values in a view whose base and rows are 8 bytes off a 16-byte boundary."""
    buf = torch.empty(*x8.shape[:-1], x8.shape[-1] + 8, dtype=torch.uint8, device=x8.device)
    buf[..., 8:] = x8.view(torch.uint8)
    return buf[..., 8:].view(x8.dtype)


def bf16_forward(lib, q, k, v, common):
    """Our bf16 forward (the dispatcher's path) of the real-valued inputs."""
    qb, kb, vb = (t.to(torch.bfloat16).contiguous() for t in (q, k, v))
    ob = torch.full_like(qb, float("nan"))
    lib.forward(make_params(qb, kb, vb, ob, **common))
    return ob


def run_case(lib, case, kernel, names):
    dev = case["dev"]
    torch.manual_seed(case["seed"])
    q, k, v, cu_q, cu_k, slopes = real_inputs(case, dev)
    hk, fmt, mode = case["hk"], case["fmt"], case["descale"]
    (q8, qs), (k8, ks), (v8, vs) = (quantise(t, fmt, mode, hk, cu) for t, cu in ((q, cu_q), (k, cu_k), (v, cu_k)))
    if case.get("packed"):
        q8, k8, v8 = pack_qkv(q8, k8, v8)
    if case.get("misaligned"):
        q8 = misalign(q8)
    out_dtype = OUT_DTYPES[case["out"]]
    varlen = cu_q is not None
    o = torch.full(q.shape, float("nan"), dtype=out_dtype, device=dev)
    lse = None
    if case["lse"]:
        lse = torch.full((case["h"], q.shape[0]) if varlen else (case["batch"], case["h"], case["sq"]), float("nan"),
                         device=dev)
    common = dict(causal=case["causal"], window=case["window"], softcap=case["softcap"], alibi=slopes,
                  alibi_per_batch=case.get("alibi") == "batch", cu_q=cu_q, cu_k=cu_k, max_q=case["sq"], max_k=case["sk"])
    p = make_params(q8, k8, v8, o, lse, num_splits=case["splits"], q_descale=qs, k_descale=ks, v_descale=vs, **common)
    if kernel:
        os.environ["FLASHATTN_KERNEL"] = kernel
    try:
        refusal = forced_refusal(lambda: lib.forward(p))
    finally:
        os.environ.pop("FLASHATTN_KERNEL", None)
    if refusal:
        return {"name": case["name"], "ok": True, "refused": refusal}
    synchronize(dev)
    result = {"name": case["name"], "kernel": names.get(p.out_kernel, p.out_kernel), "splits": p.out_num_splits}
    qd, kd, vd = dequantise(q8, qs, hk, cu_q), dequantise(k8, ks, hk, cu_k), dequantise(v8, vs, hk, cu_k)
    result.update(judge(o, lse, qd, kd, vd, case, out_dtype, cu_q, cu_k, None if slopes is None else slopes.double()))
    if kernel and result["kernel"] != kernel:
        result["ok"], result["error"] = False, f"ran {result['kernel']}, not the forced {kernel}"
    elif kernel and case["splits"] and result["splits"] != case["splits"]:  # else the case tests no split
        result["ok"], result["error"] = False, f"asked for {case['splits']} splits, {kernel} used {result['splits']}"
    try:
        result["vs_bf16"] = rel_err(o, bf16_forward(lib, q, k, v, common))
    except FlashAttnError as e:
        result["vs_bf16_error"] = e.message
    return result


# ---- bad input ---------------------------------------------------------------------------------------------------

def bad_input_checks(lib, kernel, dev):
    """Each request is wrong in one way and must get its documented status (no crash, no hang): descale factors
    must be finite and positive (invalid argument), o of an fp8 forward is fp16 or bf16 (invalid argument), fp8 has
    no backward (unsupported)."""
    b, s, h, hk, d = 2, 64, 4, 2, 128
    q8, k8, v8 = (torch.randn(b, s, n, d, device=dev).to(torch.float8_e4m3fn) for n in (h, hk, hk))
    o = torch.empty(b, s, h, d, dtype=torch.bfloat16, device=dev)
    one = torch.ones((), device=dev)
    per_head_bad = torch.ones(b, hk, device=dev)
    per_head_bad[1, 1] = -1.0  # the last factor: every element must be read
    wrong = {
        "descale-nan": (dict(q_descale=torch.full((), float("nan"), device=dev), k_descale=one, v_descale=one),
                        DIR_FWD, ERR_INVALID_ARGUMENT),
        "descale-zero": (dict(q_descale=one, k_descale=torch.zeros((), device=dev), v_descale=one),
                         DIR_FWD, ERR_INVALID_ARGUMENT),
        "descale-negative-per-head": (dict(q_descale=one, k_descale=one, v_descale=per_head_bad), DIR_FWD,
                                      ERR_INVALID_ARGUMENT),
        "descale-inf": (dict(q_descale=one, k_descale=torch.full((), float("inf"), device=dev), v_descale=one),
                        DIR_FWD, ERR_INVALID_ARGUMENT),
        "out-fp8": (dict(o=torch.empty(b, s, h, d, dtype=torch.float8_e4m3fn, device=dev)), DIR_FWD,
                    ERR_INVALID_ARGUMENT),
        "backward": (dict(dout=torch.empty_like(q8), dq=torch.empty_like(q8), dk=torch.empty_like(k8),
                          dv=torch.empty_like(v8)), DIR_BWD, ERR_UNSUPPORTED),
    }
    results = []
    for name, (kw, direction, expected) in wrong.items():
        out = kw.pop("o", o)
        lse = torch.empty(b, h, s, device=dev)
        p = make_params(q8, k8, v8, out, lse, **kw)
        if kernel:
            os.environ["FLASHATTN_KERNEL"] = kernel
        try:
            (lib.forward if direction == DIR_FWD else lib.backward)(p)
            got, message = 0, "accepted"
        except FlashAttnError as e:
            got, message = e.status, e.message
        finally:
            os.environ.pop("FLASHATTN_KERNEL", None)
        synchronize(dev)
        results.append({"name": f"bad-{name}", "ok": got == expected, "status": got, "expected": expected,
                        "message": message})
    return results


# ---- the grid ----------------------------------------------------------------------------------------------------

def grid(quick, dev):
    cases = []

    def add(name, **kw):
        c = dict(name=name, dev=dev, batch=2, sq=113, sk=203, h=4, hk=2, d=128, fmt="e4m3", out="bf16", causal=False,
                 window=(-1, -1), softcap=0.0, descale="tensor", dist="randn", lse=True, splits=0, seed=len(cases) + 1)
        c.update(kw)
        c["scale"] = 1.0 / math.sqrt(c["d"])  # the library's default (scale 0), for the reference
        cases.append(c)

    for d in (64, 128, 192, 256):
        for fmt in ("e4m3", "e5m2"):
            for out in ("bf16", "fp16"):
                add(f"d{d}-{fmt}-{out}", d=d, fmt=fmt, out=out)
        add(f"d{d}-causal", d=d, causal=True)
    for (sq, sk) in ((113, 203), (203, 113), (1000, 1000), (1, 3001)):
        for causal in (False, True):
            if quick and max(sq, sk) > 1000:
                continue
            add(f"sq{sq}-sk{sk}{'-causal' if causal else ''}", sq=sq, sk=sk, causal=causal, h=4, hk=4)
    add("window-64-0", window=(64, 0), sq=500, sk=700)
    add("window-10-2", window=(10, 2), fmt="e5m2", out="fp16")
    add("softcap-30", softcap=30.0)
    add("softcap-causal-e5m2", softcap=30.0, causal=True, fmt="e5m2", d=256)
    add("alibi-head", alibi="head", causal=True)
    add("alibi-batch", alibi="batch", d=64)
    add("gqa-8-2", h=8, hk=2, causal=True)
    add("mqa-8-1", h=8, hk=1, causal=True, d=256)
    # sequence 1 has no keys; then no queries, and rows before the causal diagonal (113 queries, 80 keys)
    add("varlen-empty-keys", varlen=True, batch=3, sq=113, sk=203, lens_q=[113, 40, 1], lens_k=[203, 0, 77])
    add("varlen-causal-per-head", varlen=True, batch=3, sq=113, sk=203, lens_q=[0, 60, 113], lens_k=[50, 203, 80],
        causal=True, descale="head", h=8, hk=2)
    add("no-lse", lse=False, causal=True)
    add("splits-3", batch=1, sq=128, sk=3000, splits=3, causal=True)
    add("splits-3-decode", batch=2, sq=1, sk=3001, h=8, hk=2, splits=3)
    add("descale-tensor-1-element", descale="tensor1")
    add("descale-per-head", descale="head", h=8, hk=4)
    add("descale-per-head-strided", descale="head-strided", h=8, hk=4, causal=True, fmt="e5m2")
    add("descale-none", descale="none")
    add("packed-qkv", packed=True, sq=257, sk=257, h=4, hk=4, causal=True)
    add("wide-range-e4m3", dist="wide")
    add("wide-range-e5m2-per-head", dist="wide", fmt="e5m2", descale="head", causal=True)
    # long rows, one split: O accumulated over 128 key blocks by fp8 products that keep ~14 mantissa bits
    if not quick:
        add("long-row-16k-d128", batch=1, sq=130, sk=16384, h=2, hk=2, splits=1)
        add("long-row-16k-d256-causal", batch=1, sq=130, sk=16384, h=2, hk=1, d=256, splits=1, causal=True)
    add("long-e5m2-fp16-d256", sq=1000, sk=1000, d=256, fmt="e5m2", out="fp16", causal=True, h=4, hk=1)
    # decode-shaped (at most 64 query rows per kv head: sq x h / hk), the dispatcher's choice being cuda-decode (fp8
    # converted to fp16 in shared memory, any sm_80+): python3 scripts/check/cuda_fp8.py --kernel cuda-decode --filter decode
    add("decode-d64-e5m2-fp16-gqa-32-8", sq=1, sk=4097, h=32, hk=8, d=64, fmt="e5m2", out="fp16")
    add("decode-d128-sq4-causal-per-head", sq=4, sk=2000, h=32, hk=8, causal=True, descale="head")
    add("decode-d128-64-rows-window", sq=8, sk=1500, h=16, hk=2, window=(100, 0))
    add("decode-d256-mqa-8-1", sq=1, sk=3000, h=8, hk=1, d=256, descale="head")
    add("decode-d96-padded-softcap-alibi", sq=2, sk=1000, h=8, hk=2, d=96, softcap=30.0, alibi="head")
    add("decode-wide-range-e4m3", sq=1, sk=2048, h=8, hk=2, dist="wide")
    add("decode-splits-5-e5m2", batch=1, sq=1, sk=5000, h=8, hk=2, splits=5, fmt="e5m2")
    add("d72-not-a-multiple-of-16", d=72)  # refused by the fp8 path (head_dim a multiple of 16)
    add("misaligned-q", misaligned=True)   # refused by the fp8 path (rows 16-byte aligned)
    return cases


# ---- timing ------------------------------------------------------------------------------------------------------

def first_line(e):
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:240] if text else ''}"


def call_with_required(op, q):
    """op(q, q, q, ...) with its other required arguments at neutral values (None, False, 0) from its schema."""
    args = [q, q, q]
    for a in op.default._schema.arguments[3:]:
        if a.has_default_value() or a.kwarg_only:
            break
        t = str(a.type)
        args.append(None if t.startswith("Optional") else False if t == "bool" else 0.0 if t == "float" else 0)
    return op(*args)


def sdpa_backend(backend):
    """The context that forces an SDPBackend, or none for backend None (PyTorch's own choice)."""
    from torch.nn.attention import sdpa_kernel
    return contextlib.nullcontext() if backend is None else sdpa_kernel(backend)


def probe_sdpa(dev="cuda"):
    """What this PyTorch's SDPA does with fp8 (float8_e4m3fn) inputs, unforced and under each SDPBackend: (one line
    per attempt with its outcome's first line, the first (name, backend) that works or None)."""
    from torch.nn.attention import SDPBackend
    q = torch.randn(1, 2, 256, 128, device=dev).to(torch.float8_e4m3fn)
    lines, working = [], None
    attempts = [("F.scaled_dot_product_attention (no backend forced)", None)]
    attempts += [(f"F.scaled_dot_product_attention under SDPBackend.{name}", b)
                 for name, b in SDPBackend.__members__.items() if name != "ERROR"]
    for name, backend in attempts:
        try:
            with sdpa_backend(backend):
                F.scaled_dot_product_attention(q, q, q)
            synchronize(dev)
            lines.append(f"{name}: works")
            working = working or (name, backend)
        except Exception as e:  # the probe reports whatever PyTorch says
            lines.append(f"{name}: {first_line(e)}")
    return lines, working


def probe_aten_ops(dev="cuda"):
    """Every forward torch.ops.aten._scaled_dot_product_* op (but the CPU and MPS variants) called directly with fp8
    inputs: one line each. One that works is reported, not timed (SDPA under its backend reaches the same kernel with
    known semantics). Run after the timings: a direct call skips SDPA's own input checks."""
    q = torch.randn(1, 2, 256, 128, device=dev).to(torch.float8_e4m3fn)
    lines = []
    ops = sorted(n for n in dir(torch.ops.aten) if n.startswith("_scaled_dot_product_") and not n.endswith("_backward")
                 and "_for_cpu" not in n and "_for_mps" not in n)
    for n in ops:
        try:
            call_with_required(getattr(torch.ops.aten, n), q)
            synchronize(dev)
            lines.append(f"torch.ops.aten.{n}: works (reported, not timed)")
        except Exception as e:
            lines.append(f"torch.ops.aten.{n}: {first_line(e)}")
    return lines


def row_block(q8, k8, v8, qs, ks, vs, causal, rows):
    """Query rows [a, a + n) of every sequence and head of a padded problem without window or ALiBi, dequantised, as a
    problem of their own: with bottom-right causal masking they see keys [0, a + n + sk - sq) only. Returns (q, k, v,
    case) for ref_attention / judge."""
    a, n = rows
    sq, sk, hk = q8.shape[1], k8.shape[1], k8.shape[2]
    keys = min(sk, a + n + sk - sq) if causal else sk
    case = dict(scale=1.0 / math.sqrt(q8.shape[-1]), causal=causal, window=(-1, -1), softcap=0.0)
    return (dequantise(q8[:, a:a + n], qs, hk), dequantise(k8[:, :keys], ks, hk), dequantise(v8[:, :keys], vs, hk),
            case)


def bench_shape(lib, args, names, d, s, causal, flush, working, row, dev="cuda"):
    """Fills row with one shape's check and times (see the docstring); raises when the fp8 check fails."""
    from cuda_bench import flops, time_torch
    b, h = row["batch"], row["heads"]
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, s, h, d, device=dev) for _ in range(3))
    (q8, qs), (k8, ks), (v8, vs) = (quantise(t, "e4m3", "tensor", h) for t in (q, k, v))
    blocks = ((s // 2 - 32, 64), (s - 64, 64))
    o = torch.full(q.shape, float("nan"), dtype=torch.bfloat16, device=dev)
    lse = torch.full((b, h, s), float("nan"), device=dev)
    p = make_params(q8, k8, v8, o, lse, causal=causal, q_descale=qs, k_descale=ks, v_descale=vs)
    if args.kernel:
        os.environ["FLASHATTN_KERNEL"] = args.kernel
    try:
        lib.forward(p)
        synchronize(dev)
        row["fp8_kernel"] = names.get(p.out_kernel, p.out_kernel)
        checks = [judge(o[:, a:a + n], lse[:, :, a:a + n], *row_block(q8, k8, v8, qs, ks, vs, causal, (a, n)),
                        torch.bfloat16) for a, n in blocks]
        row["check"] = {"ours": max(c["ours"] for c in checks), "naive": max(c["naive"] for c in checks),
                        "lse_of_bound": max(c["lse_of_bound"] for c in checks),
                        "ok": all(c["ok"] for c in checks) and row["fp8_kernel"] == (args.kernel or row["fp8_kernel"])}
        if not row["check"]["ok"]:
            raise RuntimeError(f"the fp8 check failed (kernel {row['fp8_kernel']}, {row['check']}): not timed")
        row["fp8_ms"] = statistics.median(lib.bench(p, DIR_FWD, args.warmup, args.iters))
    finally:
        os.environ.pop("FLASHATTN_KERNEL", None)
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    ob = torch.empty_like(qb)
    pb = make_params(qb, kb, vb, ob, causal=causal)
    lib.forward(pb)
    row["bf16_kernel"] = names.get(pb.out_kernel, pb.out_kernel)
    row["bf16_ms"] = statistics.median(lib.bench(pb, DIR_FWD, args.warmup, args.iters))
    if working:
        torch_fp8(row, working, q8, k8, v8, qs, ks, vs, causal, blocks, flush, args, time_torch)
    for key in [k_ for k_ in row if k_.endswith("_ms")]:
        row[key.replace("_ms", "_tflops")] = flops(b, h, s, d, causal, "fwd") / row[key] / 1e9
    row["ratio"] = row["bf16_ms"] / row["fp8_ms"]


def torch_fp8(row, working, q8, k8, v8, qs, ks, vs, causal, blocks, flush, args, time_torch):
    """The PyTorch fp8 attention the probe found, on BHSD views of the same fp8 tensors (the descales folded into its
    scale and output): checked on the same row blocks (err <= 5e-2 against fp64, no naive rule: its rounding is its
    own), then timed; the row says which."""
    name, backend = working
    qt, kt, vt = (t.transpose(1, 2) for t in (q8, k8, v8))
    scale = float(qs) * float(ks) / math.sqrt(q8.shape[-1])

    def call():
        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale)
    try:
        with sdpa_backend(backend):
            out = call().transpose(1, 2).double() * float(vs)
        errs = []
        for a, n in blocks:
            qd, kd, vd, case = row_block(q8, k8, v8, qs, ks, vs, causal, (a, n))
            errs.append(rel_err(out[:, a:a + n], ref_attention(qd, kd, vd, case, low_precision=False)[0]))
        row["torch_fp8"] = {"call": name, "err": max(errs)}
        if max(errs) > 5e-2:
            row["torch_fp8"]["skipped"] = "error above 5e-2 against fp64: not timed"
            return
        with sdpa_backend(backend):
            row["torch_fp8_ms"] = time_torch(call, flush, args.warmup, args.iters)
    except Exception as e:  # the baseline is a reference, not a gate
        row["torch_fp8"] = {"call": name, "error": f"{type(e).__name__}: {e}"}


def bench(lib, args, names):
    probe, working = probe_sdpa()
    for line in probe:
        print(f"torch fp8: {line}", flush=True)
    flush = torch.empty(2 * torch.cuda.get_device_properties(0).L2_cache_size, dtype=torch.uint8, device="cuda")
    rows, failed = [], 0
    for d in (128, 256):
        for s in map(int, args.seqlens.split(",")):
            for causal in (False, True):
                row = {"hdim": d, "seqlen": s, "batch": max(1, 16384 // s), "heads": 2048 // d, "causal": causal}
                try:
                    bench_shape(lib, args, names, d, s, causal, flush, working, row)
                except Exception as e:  # one failing shape must not hide the others
                    row["error"] = f"{type(e).__name__}: {e}"
                    failed += 1
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                torch.cuda.empty_cache()
    for line in probe_aten_ops():
        print(f"torch fp8: {line}", flush=True)
        probe.append(line)
    return rows, probe, failed


def bench_table(rows, probe, kernel, iters):
    lines = [f"Device: {torch.cuda.get_device_name()}; fp8 e4m3 in (per-tensor descale), bf16 out; TFLOP/s = "
             f"4 b h s^2 d / time (halved when causal), median of {iters} fa_bench runs, L2 flushed; "
             "ratio = fp8 / bf16 TFLOP/s", "",
             f"Reference: {FA3_FP8_PUBLISHED}", "",
             f"fp8 = {kernel} (forced, checked first on query rows [s/2-32, s/2+32) and [s-64, s) against fp64); "
             f"bf16 = {next((r['bf16_kernel'] for r in rows if 'bf16_kernel' in r), '-')} (the dispatcher's choice)", "",
             "PyTorch fp8 attention (probe):", *(f"- {line}" for line in probe), "",
             "| hdim | seqlen | batch x heads | causal | fp8 TFLOP/s | bf16 TFLOP/s | ratio | torch fp8 TFLOP/s | "
             "fp8 err / naive |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['hdim']} | {r['seqlen']} | {r['batch']} x {r['heads']} | {int(r['causal'])} |"
        if "error" in r:
            lines.append(f"{head} error: {r['error'][:160]} |")
            continue
        torch_col = f"{r['torch_fp8_tflops']:.0f}" if "torch_fp8_tflops" in r else "-"
        lines.append(f"{head} {r['fp8_tflops']:.0f} | {r['bf16_tflops']:.0f} | {r['ratio']:.2f} | {torch_col} | "
                     f"{r['check']['ours']:.2e} / {r['check']['naive']:.2e} |")
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------------------------------

def synchronize(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def run_grid(lib, args, names):
    results, failed = [], 0
    for case in grid(args.quick, args.device):
        if args.filter and args.filter not in case["name"]:
            continue
        try:
            r = run_case(lib, case, args.kernel, names)
        except FlashAttnError as e:
            r = {"name": case["name"], "ok": False, "error": e.message}
        except Exception as e:  # a crash in one case must not hide the others
            r = {"name": case["name"], "ok": False, "error": f"{type(e).__name__}: {e}"}
        results.append(r)
        failed += not r["ok"]
        verdict = "skip" if "refused" in r else "ok  " if r["ok"] else "FAIL"
        errs = f"err={r['ours']:.2e} naive={r['naive']:.2e} limit={r['limit']:.2e}" if "ours" in r else ""
        extra = f" lse/bound={r['lse_of_bound']:.2e}" if "lse_of_bound" in r else ""
        extra += f" vs_bf16={r['vs_bf16']:.2e}" if "vs_bf16" in r else ""
        print(f"{verdict} {r['name']:<32} {r.get('kernel', '-')!s:<20} splits={r.get('splits', '-')} {errs}{extra} "
              f"{r.get('error', '')}{r.get('refused', '')[-200:]}", flush=True)
    if not args.filter or "bad" in args.filter:
        for r in bad_input_checks(lib, args.kernel, args.device):
            results.append(r)
            failed += not r["ok"]
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['name']:<32} status {r['status']} (expected {r['expected']}): "
                  f"{r['message'][:200]}", flush=True)
    return results, failed


def grid_table(results):
    lines = ["| case | kernel | ours vs fp64 | naive fp8 | limit | LSE error / bound | ours vs bf16 | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "ours" not in r:
            why = "skipped: refused" if "refused" in r else ("ok" if r["ok"] else "FAIL")
            lines.append(f"| {r['name']} | - | - | - | - | - | - | {why} |")
            continue
        lse = f"{r['lse_of_bound']:.2e}" if "lse_of_bound" in r else "-"
        bf = f"{r['vs_bf16']:.2e}" if "vs_bf16" in r else "-"
        lines.append(f"| {r['name']} | {r['kernel']} | {r['ours']:.2e} | {r['naive']:.2e} | {r['limit']:.2e} | {lse} | "
                     f"{bf} | {'ok' if r['ok'] else 'FAIL'} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", default=DEFAULT_KERNEL, help="FLASHATTN_KERNEL to force ('' = the dispatcher's choice)")
    ap.add_argument("--quick", action="store_true", help="skip the sequences past 1000 tokens (for compute-sanitizer)")
    ap.add_argument("--filter", default="", help="run only cases whose name contains this ('bad' for the bad input)")
    ap.add_argument("--bench", action="store_true", help="time ours fp8 vs ours bf16 instead of the grid")
    ap.add_argument("--seqlens", default="4096,8192,16384", help="--bench sequence lengths")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: check this script against libflashattn_cpu ($FLASHATTN_LIB, with --kernel '')")
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--md", help="--bench: write the table here")
    args = ap.parse_args()
    if args.device == "cpu" and (args.kernel or args.bench):
        ap.error("--device cpu checks the grid against libflashattn_cpu: give --kernel '' and no --bench")
    if args.iters < 1 or args.warmup < 0:
        ap.error("--iters must be at least 1 and --warmup at least 0")
    if args.bench and not all(s.isdigit() and int(s) >= 128 for s in args.seqlens.split(",")):
        ap.error(f"--seqlens takes lengths of at least 128 (two blocks of 64 rows are checked), got {args.seqlens!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("cuda_fp8.py: PyTorch sees no CUDA device", file=sys.stderr)
        return 3
    try:
        lib = cuda_library()
    except OSError as e:
        print(f"cuda_fp8.py: cannot load the library: {e}", file=sys.stderr)
        return 3
    torch.backends.cuda.matmul.allow_tf32 = False  # the naive's fp32 products are fp32, not TF32
    names = lib.kernel_names()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    t0 = time.time()
    if args.bench:
        rows, probe, failed = bench(lib, args, names)
        table = bench_table(rows, probe, args.kernel, args.iters)
        print(table)
        if args.md:
            with open(args.md, "w") as f:
                f.write(table + "\n")
        report = {"device": device_name, "kernel": args.kernel, "torch": torch.__version__, "probe": probe, "rows": rows}
    else:
        results, failed = run_grid(lib, args, names)
        refused = sum("refused" in r for r in results)
        print(f"\n{len(results) - failed - refused}/{len(results) - refused} passed ({refused} refused by the forced "
              f"path) in {time.time() - t0:.0f} s on {device_name}, path {args.kernel or 'chosen by the dispatcher'}")
        print(grid_table(results))
        report = {"device": device_name, "kernel": args.kernel, "results": results}
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
