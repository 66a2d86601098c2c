// The plain fp64 reference of docs/DESIGN.md's semantics: no tiling, no online softmax, every score computed directly.
// Used by the tests, `run --check` and doctor's self-test. Also the "naive same-precision" variant the tolerance rule
// compares against (scores, probabilities and output rounded to the input dtype, as a framework would compute
// softmax(QKᵀ)V in fp16/bf16), and its fp8 counterpart (naiveFp8Forward). fp8 inputs enter every variant dequantised:
// their fp8 numbers times their descale factors, exactly (in fp64).
import { type AttentionSemantics, describeProblem, type Problem } from "./problem.ts";
import { type DType, roundTo, type Tensor, toFloat32 } from "./tensor.ts";
import { isFp8 } from "./vocabulary.ts";

export interface ReferenceOutput {
  /** Same layout as q: (batch, seqlen_q, heads_q, d) or (total_q, heads_q, d). */
  out: Float64Array;
  /** (batch, heads_q, seqlen_q) or, varlen, (heads_q, total_q); natural log; +inf for a row with no key (flash-attn 2.x). */
  lse: Float64Array;
}

export interface ReferenceGradients {
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
}

/** Visits every (sequence, query head, query row) with its allowed keys' scores. */
interface RowContext {
  b: number;
  h: number;
  kvh: number;
  i: number;
  /** Token index of this query row in q/o. */
  qt: number;
  /** Allowed key positions (within the sequence) and their scores, after softcap and ALiBi. */
  keys: number[];
  scores: number[];
  /** For softcap: d(score)/d(scale·q·k) per allowed key (1 without softcap). */
  capGrad: number[];
}

function forEachRow(
  p: Problem,
  qf: ArrayLike<number>,
  kf: ArrayLike<number>,
  opts: AttentionSemantics,
  visit: (row: RowContext) => void,
  round?: DType,
): void {
  const { headsQ, headsKv, headDim: d, scale, softcap } = p;
  const group = headsQ / headsKv;
  const slopes = opts.alibiSlopes;
  // Causal bounds the window's right side at the diagonal (flash-attn 2.x: window_size right = 0 when causal).
  const [left, right] = [p.window[0], p.causal ? 0 : p.window[1]];
  for (let b = 0; b < p.sequences.length; b++) {
    const { q0, k0, sq, sk } = p.sequences[b];
    const diag = sk - sq;
    for (let h = 0; h < headsQ; h++) {
      const kvh = Math.floor(h / group);
      const slope = slopes ? slopes[opts.alibiPerBatch ? b * headsQ + h : h] : 0;
      for (let i = 0; i < sq; i++) {
        const lo = left >= 0 ? Math.max(0, i + diag - left) : 0;
        const hi = right >= 0 ? Math.min(sk - 1, i + diag + right) : sk - 1;
        const qt = q0 + i;
        const qBase = (qt * headsQ + h) * d;
        const keys: number[] = [], scores: number[] = [], capGrad: number[] = [];
        for (let j = lo; j <= hi; j++) {
          const kBase = ((k0 + j) * headsKv + kvh) * d;
          let dot = 0;
          for (let x = 0; x < d; x++) dot += qf[qBase + x] * kf[kBase + x];
          let s = scale * dot;
          if (round) s = roundTo(round, s);
          let g = 1;
          if (softcap > 0) {
            const t = Math.tanh(s / softcap);
            s = softcap * t;
            g = 1 - t * t;
          }
          if (slopes) s -= slope * Math.abs(i + diag - j);
          keys.push(j);
          scores.push(s);
          capGrad.push(g);
        }
        visit({ b, h, kvh, i, qt, keys, scores, capGrad });
      }
    }
  }
}

function lseIndex(p: Problem, row: RowContext): number {
  return p.varlen ? row.h * p.totalQ + row.qt : (row.b * p.headsQ + row.h) * p.seqlenQ + row.i;
}

function softmaxRow(scores: number[]): { probs: number[]; lse: number } {
  if (scores.length === 0) return { probs: [], lse: Infinity }; // flash-attn 2.x: a row with no key has LSE +inf
  let m = -Infinity;
  for (const s of scores) m = Math.max(m, s);
  let sum = 0;
  const e = scores.map((s) => {
    const v = Math.exp(s - m);
    sum += v;
    return v;
  });
  return { probs: e.map((v) => v / sum), lse: m + Math.log(sum) };
}

/**
 * The real values of q, k or v: fp8 numbers times the descale factor of their (sequence, kv head), in fp64; other
 * dtypes as stored. `which` says whose rows (q: query tokens and heads; k, v: key tokens and kv heads).
 */
export function inputValues(t: Tensor, p: Problem, which: "q" | "k" | "v", opts: AttentionSemantics): ArrayLike<number> {
  const stored = toFloat32(t);
  const factors = opts.descale?.[which];
  if (!isFp8(t.dtype) || !factors) return stored;
  const heads = which === "q" ? p.headsQ : p.headsKv, group = which === "q" ? p.headsQ / p.headsKv : 1;
  const out = new Float64Array(stored.length);
  p.sequences.forEach((s, b) => {
    const [first, count] = which === "q" ? [s.q0, s.sq] : [s.k0, s.sk];
    for (let token = first; token < first + count; token++) {
      for (let h = 0; h < heads; h++) {
        const factor = factors.length === 1 ? factors[0] : factors[b * p.headsKv + Math.floor(h / group)];
        const base = (token * heads + h) * p.headDim;
        for (let x = 0; x < p.headDim; x++) out[base + x] = stored[base + x] * factor;
      }
    }
  });
  return out;
}

/**
 * How a variant rounds: "exact" not at all; "same-precision" scores, probabilities and output to the input dtype;
 * "fp8" as a straightforward fp8 kernel must: P = exp(s - row max) rounded to E4M3 for the P·V product (both of its
 * operands fp8), the products and sums in fp32, O = (P·V) / Σ exp(s - row max) rounded to the output dtype.
 */
type Rounding = "exact" | "same-precision" | "fp8";

function forward(q: Tensor, k: Tensor, v: Tensor, opts: AttentionSemantics, rounding: Rounding = "exact"): ReferenceOutput {
  const p = describeProblem(q, k, v, opts);
  const qf = inputValues(q, p, "q", opts), kf = inputValues(k, p, "k", opts), vf = inputValues(v, p, "v", opts);
  const d = p.headDim;
  const round = rounding === "same-precision" ? p.dtype : undefined;
  const out = new Float64Array(qf.length);
  const lse = new Float64Array(p.headsQ * (p.varlen ? p.totalQ : p.batch * p.seqlenQ));
  forEachRow(p, qf, kf, opts, (row) => {
    const { probs, lse: l } = softmaxRow(row.scores);
    lse[lseIndex(p, row)] = l;
    const oBase = (row.qt * p.headsQ + row.h) * d;
    if (rounding === "fp8") {
      fp8Row(p, row, vf, out, oBase);
      return;
    }
    for (let n = 0; n < row.keys.length; n++) {
      const pr = round ? roundTo(round, probs[n]) : probs[n];
      const vBase = ((p.sequences[row.b].k0 + row.keys[n]) * p.headsKv + row.kvh) * d;
      for (let x = 0; x < d; x++) out[oBase + x] += pr * vf[vBase + x];
    }
    if (round) for (let x = 0; x < d; x++) out[oBase + x] = roundTo(round, out[oBase + x]);
  }, round);
  return { out, lse };
}

/** One output row of the naive fp8 variant (see Rounding), written at out[oBase..]. */
function fp8Row(p: Problem, row: RowContext, vf: ArrayLike<number>, out: Float64Array, oBase: number): void {
  const d = p.headDim;
  let m = -Infinity;
  for (const s of row.scores) m = Math.max(m, s);
  const acc = new Float32Array(d);
  let sum = 0;
  for (let n = 0; n < row.keys.length; n++) {
    const e = Math.exp(row.scores[n] - m);
    sum = Math.fround(sum + e);
    const pr = roundTo("fp8_e4m3", e);
    const vBase = ((p.sequences[row.b].k0 + row.keys[n]) * p.headsKv + row.kvh) * d;
    for (let x = 0; x < d; x++) acc[x] += Math.fround(pr * vf[vBase + x]);
  }
  for (let x = 0; x < d; x++) out[oBase + x] = sum > 0 ? roundTo(p.outDtype, acc[x] / sum) : 0;
}

/** O and LSE in fp64 from the exact values of the inputs (fp16/bf16 as stored, fp8 dequantised). */
export function referenceForward(q: Tensor, k: Tensor, v: Tensor, opts: AttentionSemantics = {}): ReferenceOutput {
  return forward(q, k, v, opts);
}

/**
 * What a framework computing softmax(scale·QKᵀ)V in the input dtype gets: scores, probabilities and the output
 * rounded to that dtype. docs/DESIGN.md's fp16/bf16 tolerance allows at most twice its error.
 */
export function naiveSamePrecisionForward(q: Tensor, k: Tensor, v: Tensor, opts: AttentionSemantics = {}): Float64Array {
  return forward(q, k, v, opts, "same-precision").out;
}

/**
 * What a straightforward fp8 attention gets from the same fp8 inputs: P rounded to E4M3 before P·V, fp32
 * accumulation, O rounded to the output dtype (see Rounding). docs/DESIGN.md's fp8 tolerance allows at most twice its
 * error.
 */
export function naiveFp8Forward(q: Tensor, k: Tensor, v: Tensor, opts: AttentionSemantics = {}): Float64Array {
  return forward(q, k, v, opts, "fp8").out;
}

/** dQ, dK, dV in fp64 (P recomputed exactly); dK/dV summed over each GQA group. */
export function referenceBackward(
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionSemantics = {},
): ReferenceGradients {
  const p = describeProblem(q, k, v, opts);
  const qf = toFloat32(q), kf = toFloat32(k), vf = toFloat32(v), dof = toFloat32(dout);
  const d = p.headDim;
  const dq = new Float64Array(qf.length), dk = new Float64Array(kf.length), dv = new Float64Array(vf.length);
  forEachRow(p, qf, kf, opts, (row) => {
    const { probs } = softmaxRow(row.scores);
    const qBase = (row.qt * p.headsQ + row.h) * d;
    const k0 = p.sequences[row.b].k0;
    // dP_j = dO_i · V_j;  D_i = Σ_j P_ij dP_ij;  dS_ij = P_ij (dP_ij − D_i)
    const dP = row.keys.map((j) => {
      const vBase = ((k0 + j) * p.headsKv + row.kvh) * d;
      let s = 0;
      for (let x = 0; x < d; x++) s += dof[qBase + x] * vf[vBase + x];
      return s;
    });
    let D = 0;
    for (let n = 0; n < probs.length; n++) D += probs[n] * dP[n];
    for (let n = 0; n < row.keys.length; n++) {
      const kvBase = ((k0 + row.keys[n]) * p.headsKv + row.kvh) * d;
      const dS = probs[n] * (dP[n] - D) * row.capGrad[n] * p.scale; // through softcap and the scale
      for (let x = 0; x < d; x++) {
        dq[qBase + x] += dS * kf[kvBase + x];
        dk[kvBase + x] += dS * qf[qBase + x];
        dv[kvBase + x] += probs[n] * dof[qBase + x];
      }
    }
  });
  return { dq, dk, dv };
}

/** ‖actual − expected‖ / ‖expected‖ (absolute norm when expected is all zeros); any NaN gives Infinity. */
export function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) return Infinity;
  let num = 0, den = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    if (Number.isNaN(a) || Number.isNaN(e)) return Infinity;
    if (a !== e) num += (a - e) * (a - e);
    den += e * e;
  }
  if (!Number.isFinite(num)) return Infinity;
  return den > 0 ? Math.sqrt(num / den) : Math.sqrt(num);
}

/**
 * docs/DESIGN.md tolerances: fp32 ≤ 1e-5; fp16/bf16 ≤ 1e-2 and no worse than twice the naive same-precision error;
 * fp8 no worse than twice the naive fp8 error (which it needs).
 */
export function withinTolerance(dtype: DType, error: number, naiveError?: number): { ok: boolean; limit: number } {
  if (dtype === "fp32") return { ok: error <= 1e-5, limit: 1e-5 };
  if (isFp8(dtype)) {
    if (naiveError === undefined) throw new Error("the fp8 tolerance is relative to the naive fp8 error, which is missing");
    return { ok: error <= 2 * naiveError, limit: 2 * naiveError };
  }
  const limit = naiveError === undefined ? 1e-2 : Math.min(1e-2, 2 * naiveError);
  return { ok: error <= limit, limit };
}
