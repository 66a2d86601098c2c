#!/usr/bin/env python3
"""cuda_decode_bench.py — GB/s of the decode path of libflashattn_cuda vs PyTorch SDPA (flash and cuDNN), for tuning.

A few query rows over a long KV sequence, bf16: K + V bytes read once per KV head over the median time (L2 flushed
before every run; ours timed by fa_bench, SDPA with CUDA events around the call, as cuda_bench.py does). Each shape
also runs ours with the split counts of --splits, so the heuristic's choice can be judged against its neighbours,
and the device-to-device copy bandwidth of the same run is printed first. The product benchmark is
`flashattn bench --preset decode`; this script is the kernel engineer's loop.

Usage: python3 scripts/perf/cuda_decode_bench.py [--shapes b1:32768,b8:32768] [--heads 32/8] [--hdim 128] [--sq 1]
                                                [--splits 0,16,33,66] [--iters 30]
"""
import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "check"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_bench import time_torch  # noqa: E402
from cuda_ffi import cuda_library, make_params  # noqa: E402
from fa_ctypes import DIR_FWD  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="b1:4096,b1:32768,b1:131072,b8:32768,b8:131072", help="bB:KEYS list")
    ap.add_argument("--heads", default="32/8")
    ap.add_argument("--hdim", type=int, default=128)
    ap.add_argument("--sq", type=int, default=1)
    ap.add_argument("--splits", default="0", help="split counts to time (0 = the heuristic)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--no-sdpa", action="store_true")
    args = ap.parse_args()
    lib = cuda_library()
    names = lib.kernel_names()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    flush = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
    h, hk = map(int, args.heads.split("/"))
    d = args.hdim

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = time_torch(lambda: dst.copy_(src), flush, 3, 10)
    print(f"{torch.cuda.get_device_name()}: copy {2 * src.numel() / copy_ms / 1e6:.0f} GB/s (read + write)", flush=True)
    del src, dst

    for shape in args.shapes.split(","):
        b, sk = (int(x) for x in shape.lstrip("b").split(":"))
        torch.manual_seed(0)
        q = torch.randn(b, args.sq, h, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, sk, hk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        o = torch.empty_like(q)
        lse = torch.empty(b, h, args.sq, device="cuda", dtype=torch.float32)
        gbytes = 2 * b * sk * hk * d * 2 / 1e9
        causal = args.sq > 1
        line = [f"b{b} sq{args.sq} kv{sk} h{h}/{hk} d{d}:"]
        for splits in map(int, args.splits.split(",")):
            p = make_params(q, k, v, o, lse, causal=causal, num_splits=splits)
            ms = statistics.median(lib.bench(p, DIR_FWD, args.warmup, args.iters))
            lib.forward(p)
            line.append(f"{names.get(p.out_kernel)}[{'auto ' if splits == 0 else ''}s={p.out_num_splits}] {gbytes / ms * 1e3:.0f}")
        if not args.no_sdpa:
            qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
            for label, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                try:
                    with sdpa_kernel(backend), torch.no_grad():
                        ms = time_torch(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=h != hk),
                                        flush, args.warmup, args.iters)
                    line.append(f"{label} {gbytes / ms * 1e3:.0f}")
                except RuntimeError as e:
                    line.append(f"{label} n/a ({str(e)[:40]})")
        print("  ".join(line), flush=True)
        del q, k, v, o, lse
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
