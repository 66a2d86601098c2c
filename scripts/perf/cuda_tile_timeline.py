#!/usr/bin/env python3
"""cuda_tile_timeline.py — EXPERIMENT (with the instrumented fwd_sm90.cuh of the same commit): where a forward tile's
time goes. Runs one forward with FA_TIMELINE set, reads the per-CTA cycle stamps and prints medians (SM cycles) of
each phase: kernel entry -> consumer start -> Q landed -> S_0 landed -> S_1 landed -> last P V landed -> epilogue done,
the steady cycles per key block, and the gap between a CTA's end and the next CTA's entry on the same SM.

Usage: python3 scripts/perf/cuda_tile_timeline.py --hdim 128 --sq 2048 --sks 1024,2048,8192 [--batch 8] [--heads 16]
"""
import argparse
import os
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "check"))
from cuda_ffi import cuda_library, make_params  # noqa: E402
from fa_ctypes import DIR_FWD  # noqa: E402


def med(x):
    return statistics.median(x) if len(x) else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hdim", type=int, default=128)
    ap.add_argument("--sq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--sks", default="1024,2048,8192")
    ap.add_argument("--causal", type=int, default=0)
    args = ap.parse_args()
    lib = cuda_library()
    b, h, d, sq = args.batch, args.heads, args.hdim, args.sq
    q = torch.randn(b, sq, h, d, device="cuda", dtype=torch.bfloat16)
    o = torch.empty_like(q)
    lse = torch.empty(b, h, sq, device="cuda", dtype=torch.float32)
    path = "/tmp/fa_timeline.bin"
    print(f"{torch.cuda.get_device_name()}: hdim {d}, {b} x {sq} queries x {h} heads, causal {args.causal}")
    print("| keys | CTAs | blocks | ms | entry->start | entry->Q issued | Q issued->Q landed | Q->S0 | S0->S1 | per block | c0 loop end->c1 loop end | c1 loop end->barrier | barrier->staged | staged->stored | CTA total | gap to next CTA | fixed (blocks) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for sk in map(int, args.sks.split(",")):
        k, v = (torch.randn(b, sk, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        p = make_params(q, k, v, o, lse, causal=bool(args.causal))
        ms = statistics.median(lib.bench(p, DIR_FWD, 3, 10))
        os.environ["FA_TIMELINE"] = path
        lib.forward(p)
        torch.cuda.synchronize()
        del os.environ["FA_TIMELINE"]
        t = np.fromfile(path, dtype=np.uint64).reshape(-1, 32).astype(np.int64)
        smid, entry, pdone, n, qiss = t[:, 0], t[:, 1], t[:, 2], t[:, 3], t[:, 4]
        c = [t[:, 8 + 12 * cw: 20 + 12 * cw] for cw in range(2)]
        start = np.minimum(c[0][:, 0], c[1][:, 0])
        qland = np.minimum(c[0][:, 1], c[1][:, 1])
        s0, s1, lend0, lend1 = c[0][:, 2], c[0][:, 3], c[0][:, 4], c[1][:, 4]
        barrier = np.maximum(c[0][:, 5], c[1][:, 5])
        staged = np.maximum(c[0][:, 6], c[1][:, 6])
        stored = np.maximum(c[0][:, 7], c[1][:, 7])
        endt = np.maximum(stored, pdone)
        per_block = (lend0 - s1) / np.maximum(n - 1, 1)
        gaps = []
        for sm in np.unique(smid):
            idx = np.where(smid == sm)[0]
            idx = idx[np.argsort(entry[idx])]
            for a_, b_ in zip(idx[:-1], idx[1:]):
                gaps.append(entry[b_] - endt[a_])
        total = endt - entry
        nb = med(list(n))
        pb = med(list(per_block[n > 1]))
        gap = med(gaps)
        fixed = med(list(total)) + gap - nb * pb
        m = lambda x: f"{med(list(x)):.0f}"
        print(f"| {sk} | {len(t)} | {nb:.0f} | {ms:.3f} | {m(start - entry)} | {m(qiss - entry)} | {m(qland - qiss)} | "
              f"{m(s0 - qland)} | {m(s1 - s0)} | {pb:.0f} | {m(lend1 - lend0)} | {m(barrier - np.maximum(lend0, lend1))} | "
              f"{m(staged - barrier)} | {m(stored - staged)} | {m(total)} | {gap:.0f} | {fixed:.0f} ({fixed / pb:.2f}) |")


if __name__ == "__main__":
    main()
