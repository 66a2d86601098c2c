#!/usr/bin/env python3
"""cuda_verify.py — correctness of libflashattn_cuda on a real GPU against an fp64 reference (and SDPA).

For every case: fresh random inputs, outputs poisoned with NaN first (every element must be written), the kernel
path forced with FLASHATTN_KERNEL (default cuda-mma-sm80, so a silent fallback cannot hide a rejection; a case the
forced path refuses, with its reason, is listed as skipped), then
    err = ||ours - ref64|| / ||ref64||   must be <= 1e-2 and <= 2 * err(naive) + 1e-4
(the 1e-4 floor covers gradients that are exactly zero in exact maths — one visible key per row — where the naive
error is 0 and ours is bf16 rounding noise of O in dsum = rowsum(dO * O))
where naive is the same maths in the input precision (bf16/fp16 matmuls, fp32 softmax) — flash-attention's rule.
NaN never passes. LSE must match the reference (rows without keys: the library writes +inf, as flash-attn 2.x).

Usage: python3 scripts/check/cuda_verify.py [--quick] [--kernel NAME] [--json out.json] [--filter SUBSTR]
Exit status 1 when any case fails; the last lines are a table.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_ffi import cuda_library, make_params  # noqa: E402
from fa_ctypes import DIR_FWD, ERR_UNSUPPORTED, FlashAttnError  # noqa: E402

DEV = "cuda"


# ---- reference semantics (docs/DESIGN.md), one sequence at a time ----------------------------------------------------

def ref_sequence(q, k, v, *, scale, causal, window, softcap, slopes, low_precision):
    """q (sq, H, D), k/v (sk, Hk, D) -> o (sq, H, D), lse (H, sq). fp64 unless low_precision (naive baseline)."""
    sq, h, _ = q.shape
    sk, hk, _ = k.shape
    group = h // hk
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    s = torch.einsum("ihd,jhd->hij", q, k)
    s = s.float() if low_precision else s
    s = s * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq, device=q.device).view(sq, 1)
    j = torch.arange(sk, device=q.device).view(1, sk)
    diag = sk - sq
    if slopes is not None:
        s = s - slopes.to(s.dtype).view(h, 1, 1) * (i + diag - j).abs().to(s.dtype)
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    allowed = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if right >= 0:
        allowed &= j <= i + diag + right
    if left >= 0:
        allowed &= j >= i + diag - left
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    e = torch.exp(s - m)
    l = e.sum(-1, keepdim=True)
    p = e / torch.where(l == 0, torch.ones_like(l), l)
    lse = (torch.log(l) + m).squeeze(-1)
    o = torch.einsum("hij,jhd->ihd", p.to(v.dtype), v)
    return o, lse


def ref_attention(q, k, v, case, *, low_precision, cu_q=None, cu_k=None, slopes=None):
    """Batched reference over padded (B, S, H, D) or varlen (T, H, D) inputs; lse in the library's layout."""
    kw = dict(scale=case["scale"], causal=case["causal"], window=case["window"], softcap=case["softcap"],
              low_precision=low_precision)
    outs, lses = [], []
    batch = cu_q.numel() - 1 if cu_q is not None else q.shape[0]
    for b in range(batch):
        sl = None if slopes is None else (slopes[b] if slopes.dim() == 2 else slopes)
        if cu_q is not None:
            qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
            o, lse = ref_sequence(q[qs], k[ks], v[ks], slopes=sl, **kw)
        else:
            o, lse = ref_sequence(q[b], k[b], v[b], slopes=sl, **kw)
        outs.append(o)
        lses.append(lse)
    if cu_q is not None:
        return torch.cat(outs, 0), torch.cat(lses, 1)
    return torch.stack(outs, 0), torch.stack(lses, 0)


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    if torch.isnan(x).any():
        return math.inf
    denom = ref.norm().item()
    diff = (x - ref).norm().item()
    return diff / denom if denom > 0 else diff


# ---- one case ----------------------------------------------------------------------------------------------------

def make_inputs(case, dtype):
    b, sq, sk, h, hk, d = case["batch"], case["sq"], case["sk"], case["h"], case["hk"], case["d"]
    cu_q = cu_k = None
    if case.get("varlen"):
        gen = torch.Generator().manual_seed(case["seed"])
        lq = torch.randint(0, sq + 1, (b,), generator=gen)
        lq[0] = sq  # the maxima are reached
        lk = torch.randint(0, sk + 1, (b,), generator=gen) if case.get("empty_keys") else lq + (sk - sq)
        lk = lk.clamp(min=0)
        lk[0] = sk
        cu_q = torch.cat([torch.zeros(1, dtype=torch.int32), lq.cumsum(0).int()]).to(DEV)
        cu_k = torch.cat([torch.zeros(1, dtype=torch.int32), lk.cumsum(0).int()]).to(DEV)
        q = torch.randn(int(cu_q[-1]), h, d, device=DEV, dtype=dtype)
        k = torch.randn(int(cu_k[-1]), hk, d, device=DEV, dtype=dtype)
        v = torch.randn(int(cu_k[-1]), hk, d, device=DEV, dtype=dtype)
    elif case.get("packed"):
        qkv = torch.randn(b, sq, 3, h, d, device=DEV, dtype=dtype)
        q, k, v = qkv.unbind(2)
    else:
        q = torch.randn(b, sq, h, d, device=DEV, dtype=dtype)
        k = torch.randn(b, sk, hk, d, device=DEV, dtype=dtype)
        v = torch.randn(b, sk, hk, d, device=DEV, dtype=dtype)
    slopes = None
    if case.get("alibi"):
        shape = (b, h) if case["alibi"] == "batch" else (h,)
        slopes = torch.rand(*shape, device=DEV, dtype=torch.float32) * 0.5
    return q, k, v, cu_q, cu_k, slopes


def forced_refusal(call):
    """Runs call(); the reason when the path forced by FLASHATTN_KERNEL refuses the request (not a failure: the plan
    says why, and the dispatcher would pick another path), else None. Any other error propagates."""
    try:
        call()
    except FlashAttnError as e:
        if e.status == ERR_UNSUPPORTED and "forces this path" in e.message:
            return e.message
        raise
    return None


def run_case(lib, case, kernel):
    torch.manual_seed(case["seed"])
    dtype = torch.bfloat16 if case["dtype"] == "bf16" else torch.float16
    q, k, v, cu_q, cu_k, slopes = make_inputs(case, dtype)
    case["scale"] = case.get("softmax_scale", 1.0 / math.sqrt(case["d"]))
    varlen = cu_q is not None
    lse_shape = (case["h"], q.shape[0]) if varlen else (case["batch"], case["h"], case["sq"])
    o = torch.full_like(q, float("nan"))
    lse = torch.full(lse_shape, float("nan"), device=DEV, dtype=torch.float32)
    common = dict(scale=case["scale"], causal=case["causal"], window=case["window"], softcap=case["softcap"], alibi=slopes,
                  alibi_per_batch=case.get("alibi") == "batch", cu_q=cu_q, cu_k=cu_k, max_q=case["sq"],
                  max_k=case["sk"], num_splits=case.get("splits", 0), deterministic=case.get("deterministic", False))
    if kernel:
        os.environ["FLASHATTN_KERNEL"] = kernel
    p = make_params(q, k, v, o, lse, **common)
    refusal = forced_refusal(lambda: lib.forward(p))
    if refusal:
        os.environ.pop("FLASHATTN_KERNEL", None)
        return {"name": case["name"], "ok": True, "refused": refusal}
    torch.cuda.synchronize()
    result = {"name": case["name"], "kernel": p.out_kernel, "splits": p.out_num_splits}

    q64, k64, v64 = (t.detach().double().requires_grad_(case["bwd"]) for t in (q, k, v))
    o_ref, lse_ref = ref_attention(q64, k64, v64, case, low_precision=False, cu_q=cu_q, cu_k=cu_k,
                                   slopes=None if slopes is None else slopes.double())
    qn, kn, vn = (t.detach().clone().requires_grad_(case["bwd"]) for t in (q, k, v))
    o_naive, _ = ref_attention(qn, kn, vn, case, low_precision=True, cu_q=cu_q, cu_k=cu_k, slopes=slopes)

    checks = {"o": (rel_err(o, o_ref), rel_err(o_naive.detach(), o_ref))}
    finite = torch.isfinite(lse_ref)
    lse_ok = (not torch.isnan(lse).any().item()) and bool((lse[~finite] == float("inf")).all().item()) and \
        (rel_err(lse[finite], lse_ref[finite].detach()) < 1e-3 if finite.any() else True)
    result["lse_ok"] = lse_ok

    if case.get("sdpa") and not varlen:
        with torch.no_grad():
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                o_sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                        is_causal=case["causal"], enable_gqa=case["h"] != case["hk"])
        result["sdpa_err"] = rel_err(o_sdpa.transpose(1, 2), o_ref)

    if case["bwd"]:
        dout = torch.randn_like(q)
        dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))
        pb = make_params(q, k, v, o, lse, dout=dout, dq=dq, dk=dk, dv=dv, **common)
        result["bwd_refused"] = forced_refusal(lambda: lib.backward(pb))
        case = {**case, "bwd": not result["bwd_refused"]}
    if case["bwd"]:
        torch.cuda.synchronize()
        result["bwd_kernel"] = pb.out_kernel
        o_ref.backward(dout.double())
        o_naive.backward(dout)
        for name, ours, ref, naive in (("dq", dq, q64.grad, qn.grad), ("dk", dk, k64.grad, kn.grad),
                                       ("dv", dv, v64.grad, vn.grad)):
            checks[name] = (rel_err(ours, ref), rel_err(naive, ref))
        if case.get("deterministic"):  # four more runs, each bitwise equal to the first
            same = True
            for _ in range(4):
                dq2 = torch.full_like(q, float("nan"))
                lib.backward(make_params(q, k, v, o, lse, dout=dout, dq=dq2, dk=dk, dv=dv, **common))
                torch.cuda.synchronize()
                same = same and bool(torch.equal(dq, dq2))
            result["deterministic_ok"] = same
    os.environ.pop("FLASHATTN_KERNEL", None)

    result["errors"] = {n: {"ours": e, "naive": nv} for n, (e, nv) in checks.items()}
    ok = lse_ok and result.get("deterministic_ok", True)
    for e, nv in checks.values():
        ok = ok and e <= 1e-2 and e <= 2 * nv + 1e-4
    result["ok"] = bool(ok)
    return result


# ---- the grid ----------------------------------------------------------------------------------------------------

def grid(quick):
    cases = []

    def add(name, **kw):
        c = dict(name=name, batch=2, sq=113, sk=203, h=4, hk=2, d=64, dtype="bf16", causal=False, window=(-1, -1),
                 softcap=0.0, bwd=True, seed=len(cases) + 1)
        c.update(kw)
        cases.append(c)

    for d in (32, 64, 96, 128, 192, 256, 8, 40, 72, 136, 248):
        for causal in (False, True):
            add(f"hdim{d}{'-causal' if causal else ''}", d=d, causal=causal)
    for dtype in ("fp16", "bf16"):
        for (sq, sk) in ((1, 1), (3, 3), (1, 1023), (113, 203), (203, 113), (799, 799), (1023, 1023), (64, 64)):
            for causal in (False, True):
                if quick and (sq, sk) in ((799, 799), (1023, 1023)):
                    continue
                add(f"{dtype}-sq{sq}-sk{sk}{'-causal' if causal else ''}", dtype=dtype, sq=sq, sk=sk, d=128,
                    causal=causal, sdpa=(sq == sk), h=4, hk=4)
    for ratio in (1, 2, 4, 8):
        add(f"gqa{ratio}", h=8, hk=8 // ratio, causal=True)
    add("window-32-16", window=(32, 16))
    add("window-0-0-sq>sk", sq=203, sk=113, window=(0, 0))  # early rows see no key: O = 0, LSE = +inf
    add("window-left-only", window=(50, -1), causal=True, d=128)
    add("window-huge-bounds", window=(2**31 - 1, 2**31 - 1))  # same as unbounded; no int overflow
    # a large softmax scale (logits of s.d. 11 instead of 1): a row's max rises past the reference max by more than its
    # slack in many blocks, and P reaches 2^8 between rescales
    add("scale-large", softmax_scale=1.0, d=128, sq=300, sk=2000, h=4, hk=2)
    add("scale-large-causal-hdim64", softmax_scale=1.0, d=64, sq=2000, sk=2000, h=4, hk=2, causal=True)
    # long rows, one split: the online softmax's O and row sums over 128 key blocks, at the forward's head dims
    for d in () if quick else (64, 128, 256):
        add(f"long-row-16k-hdim{d}", batch=1, sq=130, sk=16384, h=2, hk=1, d=d, splits=1, bwd=False)
    add("softcap-30", softcap=30.0, d=128)
    add("softcap-causal", softcap=5.0, causal=True)
    add("alibi-head", alibi="head", causal=True)
    add("alibi-batch", alibi="batch")
    add("alibi-softcap-window", alibi="head", softcap=20.0, window=(64, 8))
    add("varlen", varlen=True, sq=300, sk=300, batch=4, causal=True)
    add("varlen-sq!=sk", varlen=True, sq=177, sk=250, batch=3, d=128)
    add("varlen-empty-keys", varlen=True, sq=64, sk=90, batch=4, empty_keys=True)
    add("packed-qkv", packed=True, sq=257, sk=257, h=4, hk=4, causal=True, d=128)
    add("split-decode", sq=1, sk=4096, h=8, hk=1, splits=4, d=128, bwd=False)
    add("split-auto", batch=1, sq=64, sk=8192, h=2, hk=2, d=128, bwd=False)
    add("split-causal-window", batch=1, sq=200, sk=5000, h=2, hk=1, causal=True, window=(3000, 0), splits=7, bwd=False)
    add("deterministic", deterministic=True, sq=300, sk=600, d=128)
    add("deterministic-gqa-causal", deterministic=True, sq=512, sk=512, h=8, hk=2, causal=True)
    # more key blocks than the deterministic grid has CTAs per (batch, KV head): each CTA adds several blocks' dQ
    # into its slice, in order (on a 132-SM GPU: 4 CTAs per KV head, 4 or 5 key blocks each)
    for d in (64, 128):
        add(f"deterministic-blocks-per-cta-hdim{d}", deterministic=True, batch=4, sq=700, sk=2200, h=16, hk=16, d=d,
            causal=d == 64)
    # the deterministic backward where the key blocks that see a query block start late (window), with per-sequence
    # lengths (varlen) and with query blocks that no key block sees (causal, sq > sk)
    add("deterministic-window", deterministic=True, batch=2, sq=700, sk=2200, h=8, hk=4, d=128, window=(300, 40))
    add("deterministic-varlen", deterministic=True, varlen=True, batch=4, sq=600, sk=900, h=8, hk=8, d=64, causal=True)
    add("deterministic-causal-sq>sk", deterministic=True, batch=2, sq=1000, sk=300, h=8, hk=8, d=128, causal=True)
    # sequences of very different lengths (varlen, GQA: some with fewer key blocks than a (batch, KV head) has CTAs), and
    # more (batch, KV head) pairs than SMs with a window (several rounds of a persistent deterministic grid)
    add("deterministic-varlen-gqa", deterministic=True, varlen=True, batch=5, sq=600, sk=1900, h=8, hk=2, d=128, causal=True)
    add("deterministic-many-heads-window", deterministic=True, batch=3, sq=300, sk=1100, h=64, hk=32, d=128, window=(200, 100))
    add("fp16-hdim256-long", dtype="fp16", d=256, sq=700, sk=900, causal=True)
    # the Hopper backward at head dim 256 (192 and 248 pad to it): both warpgroups share a key block and split the
    # columns, so every feature that changes which scores count, several steps and key blocks, and the deterministic mode
    for name, kw in (("window", dict(window=(100, 30))), ("softcap", dict(softcap=30.0, causal=True)),
                     ("alibi", dict(alibi="head", causal=True)), ("gqa4", dict(h=8, hk=2, causal=True)),
                     ("varlen", dict(varlen=True, sq=300, sk=350, batch=3)), ("causal-sq>sk", dict(sq=400, sk=150, causal=True)),
                     ("deterministic", dict(deterministic=True, batch=2, sq=500, sk=1300, h=8, hk=8)),
                     ("long", dict(sq=1500, sk=1500, causal=True, h=2, hk=1)), ("hdim192-gqa", dict(d=192, h=8, hk=4, sq=600, sk=700)),
                     ("hdim192-deterministic", dict(d=192, deterministic=True, batch=2, sq=500, sk=900, h=4, hk=2)),
                     ("hdim192-window-softcap", dict(d=192, window=(80, 20), softcap=20.0)), ("hdim160", dict(d=160, causal=True))):
        add(f"splitd-{name}", **{"d": 256, **kw})
    # more tiles than SMs: the persistent hdim-64 forward (tile counter, Q ring, tiles that skip) on an H100 / H200
    add("persistent-small", batch=1, sq=128, sk=256, h=136, hk=8, causal=True)  # 136 tiles: racecheck-sized
    add("persistent-causal", batch=4, sq=1000, sk=1000, h=16, hk=4, causal=True)
    add("persistent-sq!=sk", batch=3, sq=900, sk=700, h=12, hk=12, dtype="fp16")
    add("persistent-varlen", varlen=True, sq=700, sk=700, batch=8, h=16, hk=8, causal=True)
    add("persistent-splits", batch=2, sq=600, sk=2000, h=32, hk=8, splits=3, bwd=False)
    # tiles with no key block (rows before the diagonal; empty key sequences) between tiles with some, and tiles of one
    # key block (whose Q is released by the round that finishes the previous tile)
    add("persistent-causal-sq>sk", batch=2, sq=1000, sk=300, h=16, hk=4, causal=True)
    add("persistent-varlen-empty-keys", varlen=True, sq=300, sk=300, batch=8, h=16, hk=8, empty_keys=True)
    add("persistent-one-key-block", batch=2, sq=1024, sk=100, h=16, hk=8)
    # decode-shaped requests (cuda-decode: a KV head's query heads packed into the rows, warps splitting the keys,
    # split-KV): GQA / MQA / MHA, a few query rows, padded head dims, every score feature with packed rows
    for (h, hk, sqs) in ((32, 8, (1, 4, 16)), (32, 1, (1, 2)), (8, 8, (1, 7))):
        for sq in sqs:
            add(f"decode-h{h}-kv{hk}-sq{sq}", batch=3, sq=sq, sk=5000, h=h, hk=hk, d=128, causal=sq > 1, bwd=False)
    add("decode-scale-large", batch=2, sq=1, sk=5000, h=32, hk=8, d=128, softmax_scale=1.0, bwd=False)
    for d in (32, 64, 72, 96, 192, 256):
        add(f"decode-hdim{d}", batch=2, sq=1, sk=3001, h=16, hk=4, d=d, bwd=False, dtype="fp16" if d == 72 else "bf16")
    add("decode-window-sq8", batch=2, sq=8, sk=3000, h=16, hk=4, d=128, causal=True, window=(700, 0), bwd=False)
    add("decode-alibi-packed", batch=2, sq=4, sk=2000, h=16, hk=2, d=128, alibi="batch", causal=True, bwd=False)
    add("decode-softcap", batch=2, sq=2, sk=2500, h=8, hk=2, d=64, softcap=30.0, bwd=False)
    add("decode-splits5", batch=1, sq=1, sk=9000, h=8, hk=2, d=128, splits=5, bwd=False)
    add("decode-short-keys", batch=4, sq=3, sk=5, h=8, hk=2, d=64, causal=True, bwd=False)
    add("decode-sq>sk-causal", batch=2, sq=9, sk=4, h=4, hk=2, d=64, causal=True, bwd=False)  # early rows see no key
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the long sequences (for compute-sanitizer)")
    ap.add_argument("--kernel", default="cuda-mma-sm80", help="FLASHATTN_KERNEL to force ('' = dispatcher's choice)")
    ap.add_argument("--filter", default="", help="run only cases whose name contains this")
    ap.add_argument("--json", help="write every result here")
    args = ap.parse_args()
    lib = cuda_library()
    names = lib.kernel_names()
    results, failed = [], 0
    t0 = time.time()
    for case in grid(args.quick):
        if args.filter and args.filter not in case["name"]:
            continue
        try:
            r = run_case(lib, case, args.kernel)
        except FlashAttnError as e:
            r = {"name": case["name"], "ok": False, "error": e.message}
        except Exception as e:  # a crash in one case must not hide the others
            r = {"name": case["name"], "ok": False, "error": f"{type(e).__name__}: {e}"}
        os.environ.pop("FLASHATTN_KERNEL", None)
        results.append(r)
        failed += not r["ok"]
        errs = " ".join(f"{n}={v['ours']:.2e}/{v['naive']:.2e}" for n, v in r.get("errors", {}).items())
        extra = f" sdpa={r['sdpa_err']:.2e}" if "sdpa_err" in r else ""
        if r.get("bwd_refused"):
            extra += f" (backward refused: {r['bwd_refused'][-120:]})"
        verdict = "skip" if "refused" in r else "ok  " if r["ok"] else "FAIL"
        print(f"{verdict} {r['name']:<34} {names.get(r.get('kernel'), '-'):<16} "
              f"splits={r.get('splits', '-')} {errs}{extra} {r.get('error', '')}{r.get('refused', '')[-160:]}", flush=True)

    # A misaligned view is refused by the tensor-core path with a reason (the portable path may take it).
    q = torch.randn(1, 64, 2, 65, device=DEV, dtype=torch.bfloat16)[..., 1:]
    k = torch.randn(1, 64, 2, 64, device=DEV, dtype=torch.bfloat16)
    o = torch.empty_like(k)
    os.environ["FLASHATTN_KERNEL"] = "cuda-mma-sm80"
    plan = lib.plan(make_params(q, k, k, o), DIR_FWD)
    os.environ.pop("FLASHATTN_KERNEL")
    misaligned_ok = (not plan["ok"]) and any("16-byte aligned" in r for r in plan["reasons"])
    print(f"{'ok  ' if misaligned_ok else 'FAIL'} misaligned-refused-with-reason  {plan}")
    failed += not misaligned_ok

    worst = {}
    for r in results:
        for n, v in r.get("errors", {}).items():
            worst[n] = max(worst.get(n, 0.0), v["ours"])
    refused = sum("refused" in r for r in results)
    print(f"\n{len(results) + 1 - failed - refused}/{len(results) + 1 - refused} passed ({refused} refused by the forced "
          f"path) in {time.time() - t0:.0f} s on {torch.cuda.get_device_name()}")
    print("| tensor | worst rel. error (ours vs fp64) |\n|---|---|")
    for n, w in worst.items():
        print(f"| {n} | {w:.2e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "results": results, "misaligned_plan": plan}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
