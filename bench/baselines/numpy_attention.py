#!/usr/bin/env python3
"""NumPy baseline for `flashattn bench` on the CPU: attention with the scores materialised, in fp32.

The same line protocol as torch_sdpa.py (see bench/baselines/worker.ts): a {"hello"} or {"unavailable"} line first,
then one {"id", "results": [{"impl": "numpy", ...}]} line per {"op": "case"} request, until {"op": "quit"} or EOF.

What it computes, per batch and KV head group (GQA without copying K/V: the query heads of a group are one axis):
  S = scale · Q Kᵀ, masked bottom-right causal (key j visible from query i iff j <= i + sk - sq)
  P = softmax(S) (a fully masked row gives P = 0, O = 0), O = P V, LSE = rowmax + log(rowsum)
  backward from dO:  P recomputed from LSE, dV = Pᵀ dO, dP = dO Vᵀ, D = rowsum(dO ∘ O),
                     dS = P ∘ (dP − D), dQ = scale · dS K, dK = scale · dSᵀ Q   (dK, dV summed over the group)
Inputs are converted to fp32 (NumPy has no bf16), so its rows say dtype fp32.

Timing: time.perf_counter around each run after warm-up, the last-level cache flushed before each run (a write over
twice its size, outside the timed region), as fa_bench does on the CPU. Peak memory: tracemalloc's peak over one run
(NumPy reports its buffers to tracemalloc) plus the inputs. A case whose materialised scores would not fit in the
memory limit the caller passes is reported as OOM without being attempted.
"""
import math
import os
import sys
import time
import tracemalloc

from worker_protocol import emit, plain_attention_only, requests, runs_for


try:
    import numpy as np
except Exception as error:
    emit({"unavailable": f"numpy is not importable by {sys.executable}: {type(error).__name__}: {error}"})
    sys.exit(0)


def llc_bytes():
    """Size of the largest CPU cache (Linux sysfs); 32 MiB when it cannot be read."""
    best = 0
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        best = max(best, int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return best or (32 << 20)


flush = np.zeros(2 * llc_bytes() // 8, dtype=np.float64)
emit({"hello": {"numpy": np.__version__, "python": sys.version.split()[0], "llc_bytes": llc_bytes(),
                "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"),
                "impls": ["numpy"]}})


def grouped(x, heads_kv):
    """(b, s, h, d) -> (b, heads_kv, h / heads_kv, s, d), a view: query head h belongs to KV head h // group."""
    b, s, h, d = x.shape
    return x.reshape(b, s, heads_kv, h // heads_kv, d).transpose(0, 2, 3, 1, 4)


def kv_view(x):
    """(b, s, hkv, d) -> (b, hkv, 1, s, d), broadcasting over the query heads of each group."""
    return x.transpose(0, 2, 1, 3)[:, :, None]


def visible(sq, sk, causal):
    if not causal:
        return None
    return np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)


def forward(q, k, v, causal, scale):
    hkv = k.shape[2]
    s = np.matmul(grouped(q, hkv), kv_view(k).swapaxes(-1, -2)) * np.float32(scale)
    mask = visible(q.shape[1], k.shape[1], causal)
    if mask is not None:
        s = np.where(mask, s, np.float32(-np.inf))
    m = s.max(axis=-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, np.float32(0))
    p = np.exp(s - m_safe)
    l = p.sum(axis=-1, keepdims=True)
    o = np.matmul(p / np.where(l > 0, l, np.float32(1)), kv_view(v))
    lse = np.where(l > 0, m_safe + np.log(np.where(l > 0, l, np.float32(1))), np.float32(-np.inf))
    b, sq, hq, d = q.shape
    return o.transpose(0, 3, 1, 2, 4).reshape(b, sq, hq, d), lse


def backward(q, k, v, o, lse, dout, causal, scale):
    hkv = k.shape[2]
    qg, og, dog = grouped(q, hkv), grouped(o, hkv), grouped(dout, hkv)
    kt, vt = kv_view(k), kv_view(v)
    s = np.matmul(qg, kt.swapaxes(-1, -2)) * np.float32(scale)
    mask = visible(q.shape[1], k.shape[1], causal)
    lse_safe = np.where(np.isfinite(lse), lse, np.float32(np.inf))  # fully masked rows: P = 0
    p = np.exp(s - lse_safe)
    if mask is not None:
        p = np.where(mask, p, np.float32(0))
    dv = np.matmul(p.swapaxes(-1, -2), dog).sum(axis=2)
    dp = np.matmul(dog, vt.swapaxes(-1, -2))
    ds = p * (dp - (dog * og).sum(axis=-1, keepdims=True))
    dq = np.matmul(ds, kt) * np.float32(scale)
    dk = (np.matmul(ds.swapaxes(-1, -2), qg) * np.float32(scale)).sum(axis=2)
    b, sq, hq, d = q.shape
    return dq.transpose(0, 3, 1, 2, 4).reshape(b, sq, hq, d), dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)


def score_bytes(c):
    """fp32 bytes of the largest live set of (b, h, sq, sk) arrays: S, P and a temporary (forward), dP, dS (backward)."""
    per = 4 * c["batch"] * c["headsQ"] * c["seqlenQ"] * c["seqlenK"]
    return per * (3 if c["direction"] == "fwd" else 5)


def measure(c, req):
    beyond = plain_attention_only(c)
    if beyond:
        return beyond
    need = score_bytes(c)
    if need > req["memory_limit_bytes"]:
        return {"status": "oom", "reason": "the materialised scores need %.1f GiB, over the %.1f GiB limit (half the free memory)"
                % (need / 2**30, req["memory_limit_bytes"] / 2**30)}
    rng = np.random.default_rng(0)
    b, sq, sk, hq, hkv, d = c["batch"], c["seqlenQ"], c["seqlenK"], c["headsQ"], c["headsKv"], c["headDim"]
    q = rng.standard_normal((b, sq, hq, d), dtype=np.float32)
    k = rng.standard_normal((b, sk, hkv, d), dtype=np.float32)
    v = rng.standard_normal((b, sk, hkv, d), dtype=np.float32)
    scale = 1.0 / math.sqrt(d)
    causal = c["causal"]
    inputs = q.nbytes + k.nbytes + v.nbytes
    if c["direction"] == "fwd":
        def run():
            forward(q, k, v, causal, scale)
    else:
        dout = rng.standard_normal(q.shape, dtype=np.float32)
        o, lse = forward(q, k, v, causal, scale)
        inputs += dout.nbytes + o.nbytes + lse.nbytes
        if c["direction"] == "bwd":
            def run():
                backward(q, k, v, o, lse, dout, causal, scale)
        else:
            def run():
                o2, lse2 = forward(q, k, v, causal, scale)
                backward(q, k, v, o2, lse2, dout, causal, scale)

    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1] + inputs
    tracemalloc.stop()

    def timed(count):
        times = []
        for _ in range(count):
            flush.fill(1.0)
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
        return times

    estimate = timed(1)
    runs = runs_for(estimate[0], req)
    if runs is None:
        return {"status": "ok", "times_ms": estimate, "peak_bytes": int(peak), "dtype": "fp32",
                "reason": f"one run only: it takes {estimate[0]:.0f} ms, over half the per-case budget"}
    timed(runs[0])
    return {"status": "ok", "times_ms": timed(runs[1]), "peak_bytes": int(peak), "dtype": "fp32"}


def main():
    for req in requests():
        c = req["case"]
        try:
            result = measure(c, req)
        except MemoryError:
            result = {"status": "oom", "reason": "NumPy ran out of memory"}
        except Exception as error:  # this row's failure, never the sweep's
            result = {"status": "error", "reason": f"{type(error).__name__}: {error}"}
        emit({"id": c["id"], "results": [{"impl": "numpy", **result}]})


if __name__ == "__main__":
    main()
