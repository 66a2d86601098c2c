#!/usr/bin/env python3
"""PyTorch SDPA baseline for `flashattn bench`, run as a subprocess (bench/baselines/worker.ts).

Protocol (one JSON object per line):
  stdout, first line:  {"hello": {...versions and device...}}  or  {"unavailable": "<why>"} and exit 0
  stdin, per case:     {"op": "case", "case": {batch, seqlenQ, seqlenK, headsQ, headsKv, headDim, causal, dtype,
                        direction, id}, "warmup": n, "iters": n, "min_iters": n, "budget_ms": ms, "impls": [...]}
  stdout, per case:    {"id": ..., "results": [{"impl", "status": ok|oom|unsupported|error, "reason"?,
                        "times_ms"?: [...], "peak_bytes"?: n}]}
  stdin:               {"op": "quit"} (or EOF) ends the worker.

Timing, the same method as fa_bench: CUDA events around each run on the current stream, after warm-up, with the L2
cache flushed before every run (a write over a buffer of twice its size, outside the events), so no run finds its
inputs in cache. That flush replaces rotating inputs: it is stronger (nothing of the previous run survives) and
does not multiply the memory the peak figure reports. How many runs: runs_for, the rule of bench/ours.ts (one
timed warm run estimates; slow cases get fewer runs so one case stays near budget_ms).

Peak memory: torch.cuda.max_memory_allocated over one run, minus the flush buffer; it includes the inputs and
outputs, as our library's figure does.

FP8 cases (dtype fp8_e4m3 / fp8_e5m2, forward): q, k, v are torch.float8_e4m3fn / float8_e5m2 tensors (random
values cast from bf16), passed to F.scaled_dot_product_attention as they are under SDPA's flash and cuDNN backends,
the two that could hold an fp8 kernel. A refusal is the row's "unsupported" with the probe's first line; a success
is timed like any case and its note says the input and output dtypes. Never a bf16 run in an fp8 row: inputs are
never converted. The efficient and math backends are not probed (unsupported, saying so), nor a backward.
"""
import gc
import re
import sys
import warnings

from worker_protocol import emit, plain_attention_only, one_line, requests, runs_for


try:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
except Exception as error:  # absent or broken install: the bench names it and carries on without torch
    emit({"unavailable": f"torch is not importable by {sys.executable}: {type(error).__name__}: {one_line(error)}"})
    sys.exit(0)

if not torch.cuda.is_available():
    emit({"unavailable": f"torch {torch.__version__} sees no CUDA/ROCm device, and the SDPA baselines need one"})
    sys.exit(0)

IMPLS = {
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa-math": SDPBackend.MATH,
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Our fp8 dtypes and torch's names for them (absent from torch builds that predate fp8).
FP8_DTYPES = {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
FP8_PROBED = ("sdpa-flash", "sdpa-cudnn")

device = torch.device("cuda")
props = torch.cuda.get_device_properties(device)
l2_bytes = int(getattr(props, "L2_cache_size", 0) or 0)
# Twice the L2 (at least 64 MiB) written before each run evicts everything the previous run left in cache.
flush = torch.empty(max(2 * l2_bytes, 64 << 20), dtype=torch.int8, device=device)
flush_bytes = torch.cuda.memory_allocated(device)

emit({"hello": {
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "hip": getattr(torch.version, "hip", None),
    "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    "device": torch.cuda.get_device_name(device),
    "capability": "sm_%d%d" % torch.cuda.get_device_capability(device),
    "memory_bytes": int(props.total_memory),
    "l2_bytes": l2_bytes,
    "python": sys.version.split()[0],
    "impls": list(IMPLS),
    "fp8_dtypes": [name for name in FP8_DTYPES.values() if hasattr(torch, name)],
}})


def fp8_refusal(c, impl):
    """The row of an fp8 case that is not probed (a backward, a backend without fp8 kernels, a torch without the
    dtype); None where the probe runs."""
    name = FP8_DTYPES.get(c["dtype"])
    if name is None:
        return None
    if c["direction"] != "fwd":
        return {"status": "unsupported", "reason": "fp8 is compared forward only (there is no fp8 backward of ours)"}
    if impl not in FP8_PROBED:
        return {"status": "unsupported",
                "reason": "not probed: fp8 inputs go to SDPA's flash and cuDNN backends only"}
    if not hasattr(torch, name):
        return {"status": "unsupported", "reason": f"torch {torch.__version__} has no torch.{name}"}
    return None


def make_inputs(c, requires_grad):
    """BSHD tensors (flash-attn's layout) viewed as BHSD for SDPA: the same memory our kernels read. fp8: random
    bf16 values cast to the fp8 dtype (torch.randn makes no fp8)."""
    fp8 = FP8_DTYPES.get(c["dtype"])
    dtype = getattr(torch, fp8) if fp8 else DTYPES[c["dtype"]]
    b, sq, sk, hq, hkv, d = c["batch"], c["seqlenQ"], c["seqlenK"], c["headsQ"], c["headsKv"], c["headDim"]
    def bshd(s, h):
        x = torch.randn(b, s, h, d, device=device, dtype=torch.bfloat16 if fp8 else dtype).to(dtype)
        return x.requires_grad_(requires_grad).transpose(1, 2)

    q, k, v = bshd(sq, hq), bshd(sk, hkv), bshd(sk, hkv)
    dout = torch.randn(b, sq, hq, d, device=device, dtype=dtype).transpose(1, 2) if requires_grad else None
    return q, k, v, dout


def sdpa(c, q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=c["causal"], enable_gqa=c["headsQ"] != c["headsKv"])


def runner(c, q, k, v, dout):
    """A closure running one pass in the case's direction."""
    def forward():
        return sdpa(c, q, k, v)

    if c["direction"] == "fwd":
        def run():
            with torch.no_grad():
                forward()
        return run
    if c["direction"] == "bwd":
        out = forward()  # the graph is kept (retain_graph) so each run is the backward pass alone

        def run():
            torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
        return run

    def run():
        torch.autograd.grad(forward(), (q, k, v), dout)
    return run


def time_runs(run, count):
    """Per-run milliseconds by CUDA events, L2 flushed before each run outside the events."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    for i in range(count):
        flush.zero_()
        starts[i].record()
        run()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def measure(c, impl, req):
    beyond = plain_attention_only(c)
    if beyond:
        return beyond
    if c["causal"] and c["seqlenQ"] != c["seqlenK"]:
        return {"status": "unsupported",
                "reason": "SDPA's is_causal is top-left aligned; flash-attn's causal is bottom-right when seqlen_q != seqlen_k"}
    refused = fp8_refusal(c, impl)
    if refused:
        return refused
    fp8 = FP8_DTYPES.get(c["dtype"])
    requires_grad = c["direction"] != "fwd"
    state = {}
    try:
        with sdpa_kernel([IMPLS[impl]]), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                state["inputs"] = make_inputs(c, requires_grad)
                note = {}
                if fp8:
                    # The probe: one call on the fp8 tensors as they are; what it returns is said in the row's note.
                    with torch.no_grad():
                        out = sdpa(c, *state["inputs"][:3])
                    note = {"reason": f"torch.{fp8} q, k, v through SDPA's {impl[5:]} backend, output {out.dtype}"}
                    del out
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
                run = runner(c, *state["inputs"])
                run()  # first call: compiles/plans, and its peak is the memory figure
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated(device) - flush_bytes
                estimate = time_runs(run, 1)
                runs = runs_for(estimate[0], req)
                if runs is None:
                    return {"status": "ok", "times_ms": estimate, "peak_bytes": int(peak),
                            "reason": "; ".join(filter(None, [note.get("reason"),
                                                              f"one run only: it takes {estimate[0]:.0f} ms, over half the per-case budget"]))}
                time_runs(run, runs[0])
                return {"status": "ok", "times_ms": time_runs(run, runs[1]), "peak_bytes": int(peak), **note}
            except (RuntimeError, NotImplementedError, TypeError, ValueError) as error:
                if isinstance(error, torch.cuda.OutOfMemoryError):
                    raise
                # SDPA says "No available kernel" and explains why in warnings ("... not used because:" headers,
                # then the conditions that failed): the conditions are the reason.
                # Torch's source location and the per-case tensor sizes are dropped so one reason reads the same on
                # every case (the notes group identical reasons).
                messages = [re.sub(r"\s*\(Triggered internally at [^)]*\)\.?|\s*Query\.sizes\(\).*? instead\.", "", str(w.message)).strip()
                            for w in caught]
                why = [m for m in messages if m and not m.endswith("because:")]
                if fp8:
                    # An fp8 probe that fails is an answer (this torch has no such fp8 attention), not a failure.
                    said = "; ".join(why) if why and "No available kernel" in str(error) else first_line(error)
                    return {"status": "unsupported", "reason": one_line(f"torch.{fp8}: {said}")}
                if "No available kernel" in str(error):
                    return {"status": "unsupported", "reason": one_line("; ".join(why) or str(error))}
                if not isinstance(error, RuntimeError):
                    raise
                return {"status": "error", "reason": one_line(str(error))}
    except torch.cuda.OutOfMemoryError as error:
        return {"status": "oom", "reason": one_line(str(error).split(".")[0])}
    except Exception as error:  # anything else is this row's failure, never the sweep's
        return {"status": "error", "reason": one_line(f"{type(error).__name__}: {error}")}
    finally:
        state.clear()


def first_line(error):
    """The first non-empty line of an exception's text, or its type where it has none."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


def main():
    for req in requests():
        c = req["case"]
        results = []
        for impl in req.get("impls", list(IMPLS)):
            if impl not in IMPLS:
                results.append({"impl": impl, "status": "error", "reason": f"unknown SDPA implementation {impl}"})
                continue
            results.append({"impl": impl, **measure(c, impl, req)})
            release()
        emit({"id": c["id"], "results": results})


def release():
    """Gives the cached blocks back to the device once nothing refers to them, so the next case (ours, in the
    other process) finds the memory free."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
