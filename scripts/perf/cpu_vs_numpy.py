#!/usr/bin/env python3
"""CPU forward of libflashattn_cpu against NumPy (OpenBLAS), measured in the same run.

Three timings, interleaved round by round so that load from other processes hits all of them alike:
  sgemm   NumPy float32 matmul n x n x n (2 n^3 FLOPs): this machine's OpenBLAS ceiling
  numpy   attention as matmul -> softmax -> matmul on (batch, heads, seqlen, head_dim), float32, written the usual
          way (a new array per step, as bench/baselines/numpy_attention.py does)
  numpy-inplace  the same with the elementwise steps in place (no temporaries): the strictest NumPy baseline
  ours    fa_forward (FA_ALGO_FLASH) through the C ABI with ctypes, same inputs (BSHD views)
Attention FLOPs: 4 * batch * heads * seqlen^2 * head_dim (halved when causal). Ours is checked against a float64
reference (relative error <= 1e-5). Prints a table, the two ratios (ours vs NumPy, ours vs sgemm) and the load.

Usage: python3 scripts/perf/cpu_vs_numpy.py [--seqlen 2048 --heads 8 --head-dim 64 --batch 1 --rounds 7 --causal --json]
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

# The ctypes binding and the checks live beside the correctness scripts.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "check"))
from cpu_check import reference_sequence, rel_err, view  # noqa: E402
from fa_ctypes import F32, Library, new_params  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def numpy_attention(q, k, v, scale, causal):
    """Standard attention as usually written in NumPy (each step a new array, like bench/baselines/numpy_attention.py):
    q/k/v (batch, seqlen, heads, dim) float32 -> same layout."""
    qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    s = np.matmul(qh, kh.transpose(0, 1, 3, 2)) * np.float32(scale)
    if causal:
        s = np.where(causal_mask(s.shape[-2:]), s, np.float32(-np.inf))
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return np.matmul(p / p.sum(axis=-1, keepdims=True), vh).transpose(0, 2, 1, 3)


def numpy_attention_inplace(q, k, v, scale, causal):
    """The same with every elementwise step in place on the one score array: the fastest NumPy form we know."""
    qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    s = np.matmul(qh, kh.transpose(0, 1, 3, 2))
    s *= np.float32(scale)
    if causal:
        s[..., ~causal_mask(s.shape[-2:])] = -np.inf
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return np.matmul(s, vh).transpose(0, 2, 1, 3)


def causal_mask(shape):
    sq, sk = shape
    return np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)


def timed(fn):
    # OpenBLAS worker threads keep spinning for a while after a call returns; starting each timed run on a quiet
    # machine keeps one implementation's leftovers out of the next one's time.
    time.sleep(0.3)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description="libflashattn_cpu forward vs NumPy/OpenBLAS")
    ap.add_argument("--lib", default=os.path.join(ROOT, "build", "libflashattn_cpu.so"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--gemm-n", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = ap.parse_args()

    lib = Library(args.lib)
    load_before = os.getloadavg()
    b, h, s, d = args.batch, args.heads, args.seqlen, args.head_dim
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((b, s, h, d)).astype(np.float32) for _ in range(3))
    o = np.full_like(q, np.nan)
    lse = np.full((b, h, s), np.nan, np.float32)
    scale = 1 / math.sqrt(d)

    p = new_params()
    p.dtype = F32
    p.batch, p.seqlen_q, p.seqlen_k, p.heads_q, p.heads_kv, p.head_dim = b, s, s, h, h, d
    p.is_causal, p.window_left, p.window_right = int(args.causal), -1, -1
    p.q, p.k, p.v, p.o = view(q, False), view(k, False), view(v, False), view(o, False)
    p.lse = lse.ctypes.data

    n = args.gemm_n
    ga, gb = rng.standard_normal((n, n)).astype(np.float32), rng.standard_normal((n, n)).astype(np.float32)
    sgemm = lambda: np.matmul(ga, gb)
    runs = {"sgemm": sgemm, "numpy": lambda: numpy_attention(q, k, v, scale, args.causal),
            "numpy-inplace": lambda: numpy_attention_inplace(q, k, v, scale, args.causal),
            "ours": lambda: lib.forward(p)}
    for fn in runs.values():  # warm-up: page faults, thread pools, OpenBLAS buffers
        fn()
    times = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, fn in runs.items():
            times[key].append(timed(fn))
    med = {key: statistics.median(t) for key, t in times.items()}

    # correctness of the timed output (float64 reference, one sequence at a time)
    errors = []
    for bi in range(b):
        ref_o, ref_lse, _ = reference_sequence(q[bi].astype(np.float64), k[bi].astype(np.float64), v[bi].astype(np.float64),
                                               None, scale, args.causal, (-1, -1), 0.0, None)
        errors.append(rel_err(o[bi], ref_o))
        errors.append(rel_err(lse[bi].T, ref_lse.T))
    error = max(errors)
    reference = np.concatenate([reference_sequence(q[bi].astype(np.float64), k[bi].astype(np.float64),
                                                   v[bi].astype(np.float64), None, scale, args.causal, (-1, -1), 0.0,
                                                   None)[0][None] for bi in range(b)])
    numpy_errors = {key: rel_err(runs[key](), reference) for key in ("numpy", "numpy-inplace")}

    attn_flops = 4 * b * h * s * s * d / (2 if args.causal else 1)
    gflops = {key: (2 * n ** 3 if key == "sgemm" else attn_flops) / t / 1e9 for key, t in med.items()}
    result = {
        "shape": {"batch": b, "heads": h, "seqlen": s, "head_dim": d, "causal": args.causal, "dtype": "fp32"},
        "attention_gflop": attn_flops / 1e9,
        "median_ms": {key: 1e3 * t for key, t in med.items()},
        "gflops": gflops,
        "speedup_vs_numpy": med["numpy"] / med["ours"],
        "speedup_vs_numpy_inplace": med["numpy-inplace"] / med["ours"],
        "fraction_of_sgemm": gflops["ours"] / gflops["sgemm"],
        "rel_error": {"ours": error, **numpy_errors},
        "kernel": p.out_kernel,
        "threads": lib.info()["threads"],
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "rounds": args.rounds,
    }
    ok = error <= 1e-5
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if ok else 1
    print(f"shape b={b} h={h} s={s} d={d} fp32 {'causal' if args.causal else 'non-causal'}: "
          f"{attn_flops / 1e9:.2f} GFLOP per attention; sgemm {n}^3; median of {args.rounds} rounds; "
          f"{result['threads']} threads")
    print(f"{'':14s} {'ms':>9s} {'GFLOP/s':>9s}  rel.err")
    for key in runs:
        err = {"ours": error, **numpy_errors}.get(key)
        print(f"{key:14s} {1e3 * med[key]:9.2f} {gflops[key]:9.1f}  {'' if err is None else f'{err:.1e}'}")
    print(f"ours vs numpy: {result['speedup_vs_numpy']:.2f}x faster, vs numpy-inplace: "
          f"{result['speedup_vs_numpy_inplace']:.2f}x   ours / sgemm: {100 * result['fraction_of_sgemm']:.0f}%")
    print(f"load average before {load_before[0]:.2f}, after {result['loadavg_after'][0]:.2f} (1 min)")
    if not ok:
        print(f"FAIL: relative error {error:.2e} > 1e-5", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
