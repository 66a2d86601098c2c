// FP8 problems as the fp8 tests build them, and the check every fp8 forward must pass on every backend: O against
// the fp64 reference of the dequantised inputs, no worse than twice a naive fp8 attention (docs/DESIGN.md), and the
// LSE within the bound of fp8 tensor cores' score accumulation (fp8LseExcess; +inf exactly on rows without keys).
// Inputs are fresh random numbers on every run; the seed is in each failure message.
import { expect } from "bun:test";
import { attention, type AttentionOptions, type AttentionResult } from "../../lib/attention.ts";
import { checkAgainstReference, type CheckResult } from "../../lib/check.ts";
import { type AttentionSemantics, describeProblem } from "../../lib/problem.ts";
import { inputValues, referenceForward } from "../../lib/reference.ts";
import { fromFloat32, quantizeFp8, randomValues, type Tensor } from "../../lib/tensor.ts";
import type { DType, Fp8DType } from "../../lib/vocabulary.ts";
import { type Case, checkLse, freshSeed } from "./grid.ts";

/** A problem of real random values quantised per tensor (descale = the scale), and its bf16 twin. */
export function quantised(format: Fp8DType, qShape: number[], kShape: number[], seed: number) {
  const real = [randomValues(qShape, seed), randomValues(kShape, seed + 1), randomValues(kShape, seed + 2)];
  const [q, k, v] = real.map((values, i) => quantizeFp8(format, i === 0 ? qShape : kShape, values));
  return {
    q: q.tensor, k: k.tensor, v: v.tensor,
    descale: { q: Float32Array.of(q.scale), k: Float32Array.of(k.scale), v: Float32Array.of(v.scale) },
    bf16: real.map((values, i) => fromFloat32("bf16", i === 0 ? qShape : kShape, values)),
  };
}

/** A grid case's shape (b, sq, sk are ignored for varlen) in an fp8 format. */
export interface Fp8Case extends Pick<Case, "name" | "b" | "sq" | "sk" | "hq" | "hkv" | "d"> {
  /** fp8_e4m3 when absent */
  format?: Fp8DType;
  opts?: AttentionSemantics & { numSplits?: number; algorithm?: "naive" };
  /** Descale per (sequence, kv head) instead of per tensor. */
  perHead?: boolean;
  varlen?: { q: number[]; k: number[] };
}

/** The inputs of a case: fp8 q, k, v of fresh random values and the semantics with their descale factors. */
export function fp8Inputs(c: Fp8Case, seed: number) {
  const format = c.format ?? "fp8_e4m3";
  const total = (lengths: number[] | undefined) => lengths?.reduce((a, x) => a + x) ?? 0;
  const qShape = c.varlen ? [total(c.varlen.q), c.hq, c.d] : [c.b, c.sq, c.hq, c.d];
  const kShape = c.varlen ? [total(c.varlen.k), c.hkv, c.d] : [c.b, c.sk, c.hkv, c.d];
  const p = quantised(format, qShape, kShape, seed);
  const semantics: AttentionSemantics = { ...c.opts, descale: p.descale };
  if (c.perHead) {
    // distinct factors per (sequence, kv head): the tensor's scale times 1, 2, 0.5, ... (the values change with them)
    const spread = (s: Float32Array) => Float32Array.from({ length: c.b * c.hkv }, (_, i) => s[0] * 2 ** ((i % 3) - 1));
    semantics.descale = { q: spread(p.descale.q), k: spread(p.descale.k), v: spread(p.descale.v) };
  }
  if (c.varlen) {
    const cu = (lengths: number[]) => Int32Array.from([0, ...lengths.map((_, i) => lengths.slice(0, i + 1).reduce((a, x) => a + x))]);
    semantics.cuSeqlensQ = cu(c.varlen.q);
    semantics.cuSeqlensK = cu(c.varlen.k);
  }
  return { ...p, semantics };
}

/**
 * How far an fp8 forward's LSE is from the reference, as a fraction of what fp8 tensor cores allow (≤ 1 passes;
 * Infinity where a row without keys is not exactly +inf, or for a NaN). Per row (sequence b, query head h, query i):
 *   |lse − ref| ≤ 2^-11 · √d · scale · max_j Σ_x |q_ix| |k_jx| + 1e-5 (1 + |ref|)
 * over every key j of the sequence (a superset of the keys the row sees: still a bound, and no mask logic repeated
 * here), q and k dequantised. Why: no fp8 rounding reaches the LSE (the row sum uses the unrounded P), but Hopper's
 * fp8 wgmma keeps about 14 bits, not fp32's 23, when it adds its products: each is aligned to the largest magnitude
 * of its group (accumulator included, at most Σ_x |q_x| |k_x|) and cut ~2^-13 below it, and the d cuts add like a
 * random walk, so a score is off by about eps · √d · scale · Σ_x |q_x| |k_jx| with eps ≈ 2^-13 at worst
 * (scripts/check/cuda_fp8.py says how that was checked; without √d, outlier channels break a flat 2^-11). The LSE is
 * a soft maximum of the scores (its gradient, the softmax weights, sums to 1), so it moves by at most the largest
 * score error; softcap is 1-Lipschitz and ALiBi exact. 2^-11 is 4× that worst eps; 1e-5 (1 + |ref|) covers the fp32
 * exp, row sum and log.
 */
export function fp8LseExcess(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  semantics: AttentionSemantics,
  lse: Float32Array,
  ref: Float64Array = referenceForward(q, k, v, semantics).lse,
): number {
  const p = describeProblem(q, k, v, semantics);
  if (lse.length !== ref.length) return Infinity;
  const qf = inputValues(q, p, "q", semantics), kf = inputValues(k, p, "k", semantics);
  const { headsQ, headsKv, headDim: d } = p;
  let worst = 0;
  for (const [b, { q0, k0, sq, sk }] of p.sequences.entries()) {
    for (let h = 0; h < headsQ; h++) {
      const kvh = Math.floor(h / (headsQ / headsKv));
      for (let i = 0; i < sq; i++) {
        // the LSE's layout: (heads_q, total_q) varlen, (batch, heads_q, seqlen_q) padded (ReferenceOutput.lse)
        const row = p.varlen ? h * p.totalQ + q0 + i : (b * headsQ + h) * p.seqlenQ + i;
        if (ref[row] === Infinity) {
          if (lse[row] !== Infinity) return Infinity;
          continue;
        }
        const qBase = ((q0 + i) * headsQ + h) * d;
        let magnitude = 0;
        for (let j = 0; j < sk; j++) {
          const kBase = ((k0 + j) * headsKv + kvh) * d;
          let sum = 0;
          for (let x = 0; x < d; x++) sum += Math.abs(qf[qBase + x] * kf[kBase + x]);
          magnitude = Math.max(magnitude, sum);
        }
        const bound = 2 ** -11 * Math.sqrt(d) * p.scale * magnitude + 1e-5 * (1 + Math.abs(ref[row]));
        const excess = Math.abs(lse[row] - ref[row]) / bound;
        if (Number.isNaN(excess)) return Infinity;
        worst = Math.max(worst, excess);
      }
    }
  }
  return worst;
}

/**
 * Runs one case with `run` (backend, plan options; outputs poisoned with NaN first) and checks it: o in the case's
 * output dtype, O within twice the naive fp8 error, the LSE. Returns the result and the check for further asserts.
 */
export async function checkFp8Case(c: Fp8Case, run: AttentionOptions): Promise<{ result: AttentionResult; check: CheckResult }> {
  const seed = freshSeed();
  const { q, k, v, semantics } = fp8Inputs(c, seed);
  const result = await attention(q, k, v, { poison: true, ...run, ...semantics });
  const outDtype: DType = c.opts?.outDtype ?? "bf16";
  expect(result.out.dtype).toBe(outDtype);
  const check = checkAgainstReference(q, k, v, semantics, result.out, result.lse);
  const where = `${c.name} (seed ${seed}, ${result.kernel}): error ${check.relativeError}, naive ${check.naiveError}`;
  expect(check.naiveError, where).toBeGreaterThan(0);
  expect(check.relativeError, where).toBeLessThanOrEqual(2 * check.naiveError!);
  expect(check.pass, where).toBe(true);
  const reference = referenceForward(q, k, v, semantics).lse;
  expect(fp8LseExcess(q, k, v, semantics, result.lse, reference), `${where}: LSE error / its bound`).toBeLessThanOrEqual(1);
  // The CPU computes the scores in fp32 (fp8 × fp8 products are exact there), so its LSE also meets the tight rule of
  // every forward; only tensor cores need the bound above.
  if (result.backend === "cpu") checkLse(result.lse, reference, where);
  return { result, check };
}
