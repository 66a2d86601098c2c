#!/usr/bin/env python3
"""Runs the index logic of kernels/hip/mfma_fwd.cu on an emulated 64-lane wavefront and checks it against fp64.

hip-mfma-fwd has never run on an AMD GPU. This emulator executes, lane by lane (vectorised over the 64 lanes with
NumPy), the same operand gathers, MFMA calls, xor-shuffle reductions, P staging and output indexing as the kernel,
with the 16x16x16 MFMA modelled by its documented register layout:
    A[m][k] in lane m + 16 * (k // 4), element k % 4;   B[k][n] in lane n + 16 * (k // 4), element k % 4;
    D[m][n] in lane n + 16 * (m // 4), element m % 4.
It checks the kernel's data flow (indices, masking, online softmax, rescaling) against that model, not the
hardware: a wrong layout model would make both wrong the same way. --model transposed runs the same kernel
logic against a deliberately wrong model (D transposed) and must FAIL, which shows the check can catch a
layout mismatch. Exit code 0 when every case is within the fp16 tolerance, 1 otherwise.

Usage: python3 scripts/check/portable_mfma_emulate.py [--model documented|transposed]
"""
import argparse
import math
import sys

import numpy as np

LANES = np.arange(64)
COL, QUAD = LANES % 16, LANES // 16          # the kernel's col = lane % 16, quad = lane / 16
X4 = np.arange(4)
WAVES, ROWS_PER_WAVE, BM, BN = 4, 16, 64, 32  # kWaves, kRowsPerWave, kBM, kBN of mfma_fwd.cu


def mfma16(a, b, c, model):
    """One __builtin_amdgcn_mfma_f32_16x16x16f16: a, b (64, 4) fp16 lane operands, c (64, 4) fp32 accumulators."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 16))
    A[COL[:, None], 4 * QUAD[:, None] + X4] = a
    B[4 * QUAD[:, None] + X4, COL[:, None]] = b
    D = A @ B
    if model == "documented":
        return c + D[4 * QUAD[:, None] + X4, COL[:, None]]
    return c + D[COL[:, None], 4 * QUAD[:, None] + X4]  # wrong on purpose: D transposed


def xor_reduce(v, op):
    """lanes_max<16> / lanes_sum<16>: xor shuffles 1, 2, 4, 8 stay inside each 16-lane quad."""
    for mask in (1, 2, 4, 8):
        v = op(v, v[LANES ^ mask])
    return v


class ScoreMod:
    """portable::ScoreMod: bottom-right causal/window mask, scale, softcap, ALiBi."""

    def __init__(self, len_q, len_k, scale, softcap, slope, left, right):
        self.shift, self.len_k = len_k - len_q, len_k
        self.scale, self.softcap, self.slope, self.left, self.right = scale, softcap, slope, left, right

    def visible(self, i, j):
        c = i + self.shift
        ok = j < self.len_k
        if self.left >= 0:
            ok = ok & (j >= c - self.left)
        if self.right >= 0:
            ok = ok & (j <= c + self.right)
        return ok

    def apply(self, dot, i, j):
        s = dot * self.scale
        if self.softcap > 0:
            s = self.softcap * np.tanh(s / self.softcap)
        return s - self.slope * np.abs(i + self.shift - j)

    def key_range(self, i0, i1):
        lo = i0 + self.shift - self.left if self.left >= 0 else 0
        hi = i1 + self.shift + self.right + 1 if self.right >= 0 else self.len_k
        lo, hi = max(lo, 0), min(hi, self.len_k)
        return lo, max(hi, lo)


def kernel_block(q, k, v, m0, mod, D, model, out, lse):
    """One block of mfma_forward_kernel<half, D> for query rows m0 .. m0 + 63 of one (batch, head)."""
    len_q, head_dim = q.shape
    KC, NB, P_LDS = D // 16, BN // 16, BN + 8
    rows_q = min(BM, len_q - m0)
    n_begin, n_end = mod.key_range(m0, m0 + rows_q - 1)
    # The block's shared K/V tiles are the same for every wavefront, so each wavefront can be run to completion.
    for wave in range(WAVES):
        wave_row0 = m0 + wave * ROWS_PER_WAVE
        qa = np.zeros((KC, 64, 4), np.float16)
        i = wave_row0 + COL
        for kc in range(KC):
            d = kc * 16 + QUAD[:, None] * 4 + X4
            live = (i[:, None] < len_q) & (kc * 16 + QUAD[:, None] * 4 < head_dim)
            qa[kc] = np.where(live, q[np.minimum(i, len_q - 1)[:, None], np.minimum(d, head_dim - 1)], 0)
        o = np.zeros((KC, 64, 4))
        m_run, l_part = np.full((64, 4), -np.inf), np.zeros((64, 4))
        for n0 in range(n_begin, n_end, BN):
            rows_k = min(BN, n_end - n0)
            sK = np.zeros((BN, D), np.float16)
            sV = np.zeros((BN, D), np.float16)
            sK[:rows_k, :head_dim] = k[n0:n0 + rows_k]
            sV[:rows_k, :head_dim] = v[n0:n0 + rows_k]
            s = np.zeros((NB, 64, 4))
            for nb in range(NB):
                for kc in range(KC):
                    kb = sK[nb * 16 + COL[:, None], kc * 16 + QUAD[:, None] * 4 + X4]
                    s[nb] = mfma16(qa[kc], kb, s[nb], model)
            sP = np.zeros((ROWS_PER_WAVE, P_LDS), np.float16)
            for e in range(4):
                i = wave_row0 + QUAD * 4 + e
                sc = np.empty((NB, 64))
                for nb in range(NB):
                    j = n0 + nb * 16 + COL
                    sc[nb] = np.where(mod.visible(i, j), mod.apply(s[nb][:, e], i, j), -np.inf)
                tile_max = xor_reduce(sc.max(axis=0), np.maximum)
                m_new = np.maximum(m_run[:, e], tile_max)
                m_safe = np.where(m_new == -np.inf, 0.0, m_new)
                alpha = np.exp(m_run[:, e] - m_safe)
                m_run[:, e] = m_new
                p_sum = np.zeros(64)
                for nb in range(NB):
                    p = np.exp(sc[nb] - m_safe)
                    p_sum += p
                    sP[QUAD * 4 + e, nb * 16 + COL] = p.astype(np.float16)
                l_part[:, e] = l_part[:, e] * alpha + p_sum
                o[:, :, e] *= alpha
            for kb in range(NB):
                pa = sP[COL[:, None], kb * 16 + QUAD[:, None] * 4 + X4]
                for db in range(KC):
                    vb = sV[kb * 16 + QUAD[:, None] * 4 + X4, db * 16 + COL[:, None]]
                    o[db] = mfma16(pa, vb, o[db], model)
        for e in range(4):
            l = xor_reduce(l_part[:, e], np.add)
            i = wave_row0 + QUAD * 4 + e
            inv_l = np.where(l > 0, 1.0 / np.where(l > 0, l, 1.0), 0.0)
            for db in range(KC):
                d = db * 16 + COL
                w = (i < len_q) & (d < head_dim)
                out[i[w], d[w]] = (o[db][:, e] * inv_l)[w].astype(np.float16)
            w = (i < len_q) & (COL == 0)
            lse[i[w]] = np.where(l > 0, m_run[:, e] + np.log(np.where(l > 0, l, 1.0)), -np.inf)[w]


def reference(q, k, v, mod):
    qd, kd, vd = (x.astype(np.float64) for x in (q, k, v))
    i = np.arange(q.shape[0])[:, None]
    j = np.arange(k.shape[0])[None, :]
    s = np.where(mod.visible(i, j), mod.apply(qd @ kd.T, i, j), -np.inf)
    m = s.max(axis=1, keepdims=True) if k.shape[0] else np.full((q.shape[0], 1), -np.inf)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m_safe)
    l = p.sum(axis=1, keepdims=True)
    o = (p / np.where(l > 0, l, 1.0)) @ vd
    return o, np.where(l[:, 0] > 0, np.log(np.where(l[:, 0] > 0, l[:, 0], 1.0)) + m_safe[:, 0], -np.inf)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("documented", "transposed"), default="documented")
    args = ap.parse_args()
    rng = np.random.default_rng(5)
    # (len_q, len_k, head_dim, D bucket, causal/window (left, right), softcap, ALiBi slope)
    cases = [(113, 203, 64, 64, (-1, -1), 0.0, 0.0), (203, 113, 40, 64, (-1, 0), 0.0, 0.0),
             (70, 150, 128, 128, (16, 4), 20.0, 0.3), (3, 3, 96, 128, (-1, 0), 0.0, 0.0),
             (1, 203, 256, 256, (-1, -1), 0.0, 0.1), (65, 33, 200, 256, (8, -1), 10.0, 0.0)]
    failed = 0
    for len_q, len_k, head_dim, D, (left, right), softcap, slope in cases:
        q, k, v = (rng.standard_normal((n, head_dim)).astype(np.float16) for n in (len_q, len_k, len_k))
        mod = ScoreMod(len_q, len_k, 1 / math.sqrt(head_dim), softcap, slope, left, right)
        out = np.full((len_q, head_dim), np.nan, np.float16)
        lse = np.full(len_q, np.nan)
        for m0 in range(0, len_q, BM):
            kernel_block(q, k, v, m0, mod, D, args.model, out, lse)
        ref_o, ref_lse = reference(q, k, v, mod)
        err_o = np.linalg.norm(out - ref_o) / np.linalg.norm(ref_o)
        fin = np.isfinite(ref_lse)
        err_lse = math.inf if not np.array_equal(np.isfinite(lse), fin) else \
            np.linalg.norm(lse[fin] - ref_lse[fin]) / max(np.linalg.norm(ref_lse[fin]), 1e-30)
        ok = not np.isnan(out).any() and err_o <= 1e-2 and err_lse <= 1e-4
        failed += not ok
        print(f"q{len_q} k{len_k} d{head_dim} (bucket {D}) window ({left},{right}) cap {softcap:g} alibi {slope:g}: "
              f"O err {err_o:.1e}, LSE err {err_lse:.1e}  {'ok' if ok else 'FAIL'}")
    print(f"{len(cases) - failed}/{len(cases)} cases within tolerance with the {args.model} MFMA layout model")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
