#!/usr/bin/env python3
"""cuda_tile_cost.py — the forward's cost per tile, split into a fixed part and a part per key block.

Fixed queries (batch x sq x heads x hdim), non-causal, key lengths that give every tile n = sk / BN key blocks; the
time of one SM's share of the tiles (time x SMs / tiles, in us) is fitted as fixed + per_block x n by least squares.
That separates what a tile costs to start and finish (Q, first products, epilogue, tail of the grid) from the steady
loop, which a whole-run TFLOP/s figure cannot. Causal runs at the same queries are printed beside it, with the n the
fit predicts for them (their mean key blocks per tile) and the time that predicts.

Usage: python3 scripts/perf/cuda_tile_cost.py [--hdim 64] [--sq 2048] [--batch 8] [--heads 32] [--bm 128] [--bn 128]
       [--sks 128,256,...] (FLASHATTN_LIB picks the library, FLASHATTN_KERNEL the path, as elsewhere)
"""
import argparse
import statistics
import sys
import os

import torch

# The ctypes binding and the checks live beside the correctness scripts.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "check"))
from cuda_ffi import cuda_library, make_params  # noqa: E402
from fa_ctypes import DIR_FWD  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hdim", type=int, default=64)
    ap.add_argument("--sq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--bm", type=int, default=128, help="query rows per tile of the kernel measured")
    ap.add_argument("--bn", type=int, default=128, help="keys per block of the kernel measured")
    ap.add_argument("--sks", default="128,256,512,1024,2048,4096")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    lib = cuda_library()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    b, h, d, sq = args.batch, args.heads, args.hdim, args.sq
    tiles = -(-sq // args.bm) * b * h
    q = torch.randn(b, sq, h, d, device="cuda", dtype=torch.bfloat16)
    o = torch.empty_like(q)
    lse = torch.empty(b, h, sq, device="cuda", dtype=torch.float32)

    def tile_us(sk, causal):
        k, v = (torch.randn(b, sk, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        p = make_params(q, k, v, o, lse, causal=causal)
        ms = statistics.median(lib.bench(p, DIR_FWD, 5, args.iters))
        return ms, ms * 1e3 * sms / tiles

    points = []
    print(f"{torch.cuda.get_device_name()}: hdim {d}, {b} x {sq} queries x {h} heads, {tiles} tiles of {args.bm} rows "
          f"on {sms} SMs; us = one SM's time per tile")
    print("| keys | causal | blocks per tile | ms | us per tile |")
    print("|---|---|---|---|---|")
    for sk in map(int, args.sks.split(",")):
        n = -(-sk // args.bn)
        ms, us = tile_us(sk, False)
        points.append((n, us))
        print(f"| {sk} | 0 | {n} | {ms:.3f} | {us:.2f} |")
    mean_n = statistics.mean(n for n, _ in points)
    mean_us = statistics.mean(us for _, us in points)
    per_block = sum((n - mean_n) * (us - mean_us) for n, us in points) / sum((n - mean_n) ** 2 for n, _ in points)
    fixed = mean_us - per_block * mean_n
    # causal, bottom-right aligned with sk = sq: row block x of M sees x + 1 key blocks (BM = BN), mean (M + 1) / 2
    m = -(-sq // args.bm)
    causal_n = sum(min(m, -(-((x + 1) * args.bm) // args.bn)) for x in range(m)) / m
    ms, us = tile_us(sq, True)
    print(f"| {sq} | 1 | {causal_n:.1f} (mean) | {ms:.3f} | {us:.2f} |")
    print(f"fit (non-causal): {fixed:.2f} us fixed + {per_block:.3f} us per key block per tile; "
          f"causal predicted {fixed + per_block * causal_n:.2f} us per tile, measured {us:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
