#!/usr/bin/env python3
"""cuda_bench.py — TFLOP/s of libflashattn_cuda vs PyTorch SDPA (flash and cuDNN backends), docs/DESIGN.md sweep.

bf16, batch x seqlen = 16k tokens, hidden 2048 (heads = 2048 / head_dim), seqlen 512..16k, causal on/off.
Ours is timed natively by fa_bench (CUDA events per run, L2 flushed by a 2x-L2 memset before each run); SDPA the
same way from Python (same flush, events around the call only). Median of the timed runs after warm-up.
FLOPs: forward 4 * b * h * s * s * d (halved when causal), backward 2.5 x forward.

Usage: python3 scripts/perf/cuda_bench.py [--hdims 64,128] [--seqlens 512,...] [--iters 20] [--json f] [--md f]
                                         [--directions fwd] [--no-sdpa]  (an A/B of builds: one run each, FLASHATTN_LIB)
                                         [--deterministic]  (ours with the deterministic backward)
Exit status 1 when a run fails.
"""
import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# The ctypes binding and the checks live beside the correctness scripts.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "check"))
from cuda_ffi import cuda_library, make_params  # noqa: E402
from fa_ctypes import DIR_BWD, DIR_FWD, FlashAttnError  # noqa: E402


def flops(b, h, s, d, causal, direction):
    f = 4.0 * b * h * s * s * d / (2 if causal else 1)
    return f * (2.5 if direction == "bwd" else 1.0)


def time_torch(fn, flush, warmup, iters):
    """Runs are queued back to back (no host sync in between, as bench/baselines/torch_sdpa.py does), so PyTorch's
    launch overhead overlaps the previous run instead of landing between the events."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(warmup + iters)]
    stops = [torch.cuda.Event(enable_timing=True) for _ in range(warmup + iters)]
    for i in range(warmup + iters):
        flush.fill_(i & 0xFF)
        starts[i].record()
        fn()
        stops[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in list(zip(starts, stops))[warmup:])


def sdpa_times(q, k, v, causal, backend, flush, warmup, iters):
    """SDPA as bench/baselines/torch_sdpa.py times it: the forward under no_grad, the backward as autograd.grad of a
    kept graph (no accumulation into .grad, which would add three elementwise kernels to every timed backward)."""
    qt, kt, vt = (t.transpose(1, 2).detach().requires_grad_(True) for t in (q, k, v))
    with sdpa_kernel(backend):
        def forward():
            with torch.no_grad():
                F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
        fwd = time_torch(forward, flush, warmup, iters)
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
        dout = torch.randn_like(out)
        bwd = time_torch(lambda: torch.autograd.grad(out, (qt, kt, vt), dout, retain_graph=True), flush, warmup, iters)
    return fwd, bwd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hdims", default="64,128")
    ap.add_argument("--seqlens", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--causal", default="0,1")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-cudnn", action="store_true")
    ap.add_argument("--no-sdpa", action="store_true", help="time ours only (an A/B of two builds of ours)")
    ap.add_argument("--directions", default="fwd,bwd", help="fwd, bwd or both")
    ap.add_argument("--kernel", default="", help="FLASHATTN_KERNEL for ours ('' = the dispatcher's choice)")
    ap.add_argument("--also", default="", help="a second kernel path of ours to time in the same run (columns 'alt')")
    ap.add_argument("--deterministic", action="store_true", help="ours with the deterministic backward (dQ in per-CTA slices)")
    ap.add_argument("--json")
    ap.add_argument("--md")
    args = ap.parse_args()
    directions = set(args.directions.split(","))
    if not directions <= {"fwd", "bwd"}:
        ap.error(f"--directions: fwd, bwd or fwd,bwd, not {args.directions!r}")
    lib = cuda_library()
    names = lib.kernel_names()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    flush = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
    rows, failed = [], 0
    for d in map(int, args.hdims.split(",")):
        for s in map(int, args.seqlens.split(",")):
            for causal in (c == "1" for c in args.causal.split(",")):
                b, h = max(1, 16384 // s), 2048 // d
                torch.manual_seed(0)
                q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                o = torch.empty_like(q)
                lse = torch.empty(b, h, s, device="cuda", dtype=torch.float32)
                dout = torch.randn_like(q)
                dq, dk, dv = (torch.empty_like(q) for _ in range(3))
                row = {"hdim": d, "seqlen": s, "batch": b, "heads": h, "causal": causal}
                try:
                    p = make_params(q, k, v, o, lse, causal=causal, dout=dout, dq=dq, dk=dk, dv=dv, deterministic=args.deterministic)
                    for prefix, kernel in (("ours", args.kernel), ("alt", args.also)):
                        if prefix == "alt" and not kernel:
                            continue
                        if kernel:
                            os.environ["FLASHATTN_KERNEL"] = kernel
                        for direction, name, run in (("fwd", DIR_FWD, lib.forward), ("bwd", DIR_BWD, lib.backward)):
                            if direction not in directions:
                                continue
                            # A forced path may refuse one direction (the fp8 path has no backward): that cell
                            # says so and the row keeps the other direction.
                            try:
                                row[f"{prefix}_{direction}_ms"] = statistics.median(lib.bench(p, name, args.warmup, args.iters))
                                run(p)
                                row[f"{prefix}_{direction}_kernel"] = names.get(p.out_kernel)
                            except FlashAttnError as e:
                                row[f"{prefix}_{direction}_refused"] = str(e)
                        os.environ.pop("FLASHATTN_KERNEL", None)
                    if not args.no_sdpa:
                        row["flash_fwd_ms"], row["flash_bwd_ms"] = sdpa_times(q, k, v, causal, SDPBackend.FLASH_ATTENTION,
                                                                              flush, args.warmup, args.iters)
                        if not args.no_cudnn:
                            row["cudnn_fwd_ms"], row["cudnn_bwd_ms"] = sdpa_times(q, k, v, causal, SDPBackend.CUDNN_ATTENTION,
                                                                                  flush, args.warmup, args.iters)
                    for key in [k_ for k_ in row if k_.endswith("_ms")]:
                        direction = "bwd" if "bwd" in key else "fwd"
                        row[key.replace("_ms", "_tflops")] = flops(b, h, s, d, causal, direction) / row[key] / 1e9
                except Exception as e:
                    row["error"] = str(e)
                    failed += 1
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                del q, k, v, o, lse, dout, dq, dk, dv
                torch.cuda.empty_cache()

    lines = [f"Device: {torch.cuda.get_device_name()}; bf16; TFLOP/s (median of {args.iters}, L2 flushed); "
             "ratio = ours / SDPA-flash", "",
             f"ours = {rows[0].get('ours_fwd_kernel') if rows else '-'} / {rows[0].get('ours_bwd_kernel') if rows else '-'}"
             + (f"; alt = {args.also}" if args.also else "") + ("; deterministic backward" if args.deterministic else ""), "",
             "| hdim | seqlen | causal | ours fwd | alt fwd | flash fwd | cuDNN fwd | fwd ratio | ours bwd | alt bwd | flash bwd | "
             "cuDNN bwd | bwd ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['hdim']} | {r['seqlen']} | {int(r['causal'])} | error: {r['error'][:80]} |")
            continue
        g = lambda k_: f"{r[k_]:.0f}" if k_ in r else ("refused" if k_.replace("_tflops", "_refused") in r else "-")  # noqa: E731
        ratio = lambda d: f"{r[f'ours_{d}_tflops'] / r[f'flash_{d}_tflops']:.2f}" if f"ours_{d}_tflops" in r and f"flash_{d}_tflops" in r else "-"  # noqa: E731
        lines.append(f"| {r['hdim']} | {r['seqlen']} | {int(r['causal'])} | {g('ours_fwd_tflops')} | {g('alt_fwd_tflops')} | "
                     f"{g('flash_fwd_tflops')} | {g('cudnn_fwd_tflops')} | {ratio('fwd')} | "
                     f"{g('ours_bwd_tflops')} | {g('alt_bwd_tflops')} | {g('flash_bwd_tflops')} | {g('cudnn_bwd_tflops')} | "
                     f"{ratio('bwd')} |")
    table = "\n".join(lines)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
