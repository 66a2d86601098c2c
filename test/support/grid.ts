// The DESIGN.md correctness grid, shared by the CPU suite and the GPU suites: the cases, fresh random inputs, and
// the checks against the fp64 reference with its tolerance rule. Outputs are poisoned with NaN before each run.
import { expect } from "bun:test";
import { attention, type AttentionOptions, attentionBackward } from "../../lib/attention.ts";
import { naiveSamePrecisionForward, referenceBackward, referenceForward, relativeError, withinTolerance } from "../../lib/reference.ts";
import { standardAlibiSlopes } from "../../lib/problem.ts";
import { type DType, randomTensor, toFloat32 } from "../../lib/tensor.ts";

export interface Case {
  name: string;
  dtype?: DType;
  b: number;
  sq: number;
  sk: number;
  hq: number;
  hkv: number;
  d: number;
  opts?: AttentionOptions;
  /** Varlen: per-sequence (sq, sk); b, sq, sk are then ignored. */
  seqs?: Array<[number, number]>;
}

export const freshSeed = () => (Math.random() * 2 ** 31) >>> 0;

export function inputs(c: Case, seed: number) {
  const dtype = c.dtype ?? "fp32";
  if (c.seqs) {
    const cuQ = new Int32Array(c.seqs.length + 1), cuK = new Int32Array(c.seqs.length + 1);
    c.seqs.forEach(([sq, sk], i) => {
      cuQ[i + 1] = cuQ[i] + sq;
      cuK[i + 1] = cuK[i] + sk;
    });
    const tq = cuQ.at(-1)!, tk = cuK.at(-1)!;
    return {
      q: randomTensor(dtype, [tq, c.hq, c.d], seed), k: randomTensor(dtype, [tk, c.hkv, c.d], seed + 1),
      v: randomTensor(dtype, [tk, c.hkv, c.d], seed + 2), dout: randomTensor(dtype, [tq, c.hq, c.d], seed + 3),
      opts: { ...c.opts, cuSeqlensQ: cuQ, cuSeqlensK: cuK },
    };
  }
  return {
    q: randomTensor(dtype, [c.b, c.sq, c.hq, c.d], seed), k: randomTensor(dtype, [c.b, c.sk, c.hkv, c.d], seed + 1),
    v: randomTensor(dtype, [c.b, c.sk, c.hkv, c.d], seed + 2), dout: randomTensor(dtype, [c.b, c.sq, c.hq, c.d], seed + 3),
    opts: { ...c.opts },
  };
}

/** LSE: +inf exactly where the reference has no key (flash-attn 2.x), relative error ≤ 1e-5 elsewhere. */
export function checkLse(actual: Float32Array, expected: Float64Array, label: string) {
  expect(actual.length).toBe(expected.length);
  const finiteA: number[] = [], finiteE: number[] = [];
  for (let i = 0; i < expected.length; i++) {
    if (expected[i] === Infinity) {
      if (actual[i] !== Infinity) throw new Error(`${label}: LSE[${i}] should be +inf (no allowed key), got ${actual[i]}`);
    } else {
      finiteA.push(actual[i]);
      finiteE.push(expected[i]);
    }
  }
  expect(relativeError(finiteA, finiteE)).toBeLessThan(1e-5);
}


export const forwardCases: Case[] = [
  { name: "plain, sq 113 ≠ sk 203, MQA", b: 2, sq: 113, sk: 203, hq: 4, hkv: 1, d: 64 },
  { name: "seqlen 1 against 1", b: 3, sq: 1, sk: 1, hq: 2, hkv: 2, d: 32 },
  { name: "seqlen 3, head dim 8", b: 1, sq: 3, sk: 3, hq: 2, hkv: 1, d: 8 },
  { name: "causal, sq 203 > sk 113 (rows with no key)", b: 1, sq: 203, sk: 113, hq: 2, hkv: 2, d: 64, opts: { causal: true } },
  { name: "causal 1023 × 1023", b: 1, sq: 1023, sk: 1023, hq: 2, hkv: 1, d: 32, opts: { causal: true } },
  { name: "sliding window (32, 16), GQA 4, 799", b: 1, sq: 799, sk: 799, hq: 8, hkv: 2, d: 40, opts: { window: [32, 16] } },
  { name: "window (0, 0), sq < sk", b: 2, sq: 3, sk: 113, hq: 1, hkv: 1, d: 16, opts: { window: [0, 0] } },
  { name: "left-only window with causal", b: 1, sq: 203, sk: 203, hq: 3, hkv: 1, d: 24, opts: { causal: true, window: [7, -1] } },
  { name: "decode: sq 1, sk 1023, softcap + ALiBi, MQA, d 128", b: 2, sq: 1, sk: 1023, hq: 8, hkv: 1, d: 128, opts: { softcap: 30, alibiSlopes: standardAlibiSlopes(8) } },
  { name: "ALiBi per batch × head, causal", b: 2, sq: 113, sk: 113, hq: 4, hkv: 4, d: 48, opts: { causal: true, alibiSlopes: Float32Array.from({ length: 8 }, (_, i) => 0.05 * (i + 1)), alibiPerBatch: true } },
  { name: "custom scale and softcap", b: 1, sq: 203, sk: 113, hq: 2, hkv: 2, d: 96, opts: { scale: 0.3, softcap: 5 } },
  ...[8, 24, 72, 96, 160, 256].map((d) => ({ name: `head dim ${d}`, b: 1, sq: 3, sk: 113, hq: 2, hkv: 1, d })),
  ...[1, 2, 3, 4, 5, 6, 7, 8].map((r) => ({ name: `GQA ratio ${r}`, b: 1, sq: 37, sk: 53, hq: r * 2 > 8 ? r : r * 2, hkv: r * 2 > 8 ? 1 : 2, d: 32, opts: { causal: r % 2 === 0 } })),
  { name: "varlen with an empty key sequence, causal", b: 0, sq: 0, sk: 0, hq: 4, hkv: 2, d: 64, seqs: [[1, 3], [3, 0], [113, 113], [203, 117]], opts: { causal: true } },
  { name: "varlen, window + softcap", b: 0, sq: 0, sk: 0, hq: 2, hkv: 1, d: 32, seqs: [[17, 40], [64, 9]], opts: { window: [5, 3], softcap: 10 } },
  { name: "fp16 I/O", dtype: "fp16", b: 2, sq: 113, sk: 203, hq: 4, hkv: 2, d: 64 },
  { name: "bf16 I/O, causal", dtype: "bf16", b: 1, sq: 203, sk: 203, hq: 4, hkv: 1, d: 128, opts: { causal: true } },
  { name: "bf16 I/O, varlen + ALiBi", dtype: "bf16", b: 0, sq: 0, sk: 0, hq: 2, hkv: 2, d: 64, seqs: [[30, 50], [1, 7]], opts: { alibiSlopes: Float32Array.of(0.5, 0.25) } },
];

export const backwardCases: Case[] = [
  { name: "plain, sq ≠ sk", b: 2, sq: 37, sk: 53, hq: 2, hkv: 2, d: 32 },
  { name: "causal GQA 4, rows with no key", b: 1, sq: 113, sk: 64, hq: 8, hkv: 2, d: 64, opts: { causal: true } },
  { name: "window + softcap + ALiBi", b: 1, sq: 97, sk: 97, hq: 2, hkv: 1, d: 48, opts: { window: [9, 4], softcap: 3, alibiSlopes: Float32Array.of(0.3, 0.1) } },
  { name: "varlen causal with an empty key sequence", b: 0, sq: 0, sk: 0, hq: 4, hkv: 1, d: 32, seqs: [[5, 9], [7, 0], [40, 33]], opts: { causal: true } },
  { name: "head dim 256", b: 1, sq: 17, sk: 29, hq: 2, hkv: 1, d: 256 },
  { name: "head dim 8, seqlen 1", b: 3, sq: 1, sk: 1, hq: 1, hkv: 1, d: 8 },
  { name: "fp16 I/O", dtype: "fp16", b: 1, sq: 64, sk: 80, hq: 4, hkv: 2, d: 64 },
  { name: "bf16 I/O, causal", dtype: "bf16", b: 1, sq: 80, sk: 64, hq: 2, hkv: 1, d: 128, opts: { causal: true } },
];


/** Runs one forward case on `backend` and checks O and LSE against the reference. Returns the kernel that ran. */
export async function checkForward(c: Case, run: AttentionOptions): Promise<string> {
  const seed = freshSeed();
  const { q, k, v, opts } = inputs(c, seed);
  const result = await attention(q, k, v, { poison: true, ...run, ...opts });
  if (run.backend && run.backend !== "auto") expect(result.backend).toBe(run.backend);
  const ref = referenceForward(q, k, v, opts);
  const err = relativeError(toFloat32(result.out), ref.out);
  const naive = q.dtype === "fp32" ? undefined : relativeError(naiveSamePrecisionForward(q, k, v, opts), ref.out);
  const verdict = withinTolerance(q.dtype, err, naive);
  if (!verdict.ok) {
    throw new Error(`${c.name} (seed ${seed}, ${result.kernel}): error ${err.toExponential(2)} exceeds ${verdict.limit.toExponential(2)}`);
  }
  checkLse(result.lse, ref.lse, `${c.name} (seed ${seed})`);
  return result.kernel;
}

/** Runs one backward case and checks dQ, dK, dV against the reference (fp32 ≤ 1e-5, fp16/bf16 ≤ 1e-2). Returns the
 * backward kernel that ran. */
export async function checkBackward(c: Case, run: AttentionOptions): Promise<string> {
  const seed = freshSeed();
  const { q, k, v, dout, opts } = inputs(c, seed);
  const fwd = await attention(q, k, v, { poison: true, ...run, ...opts });
  const grads = await attentionBackward(dout, q, k, v, fwd.out, fwd.lse, { poison: true, ...run, ...opts });
  const ref = referenceBackward(dout, q, k, v, opts);
  const limit = q.dtype === "fp32" ? 1e-5 : 1e-2;
  for (const [name, got, want] of [["dq", grads.dq, ref.dq], ["dk", grads.dk, ref.dk], ["dv", grads.dv, ref.dv]] as const) {
    const err = relativeError(toFloat32(got), want);
    if (!(err <= limit)) throw new Error(`${c.name} (seed ${seed}, ${grads.kernel}): ${name} error ${err.toExponential(2)} exceeds ${limit}`);
  }
  return grads.kernel;
}

/** The same case in a GPU dtype (fp32 cases alternate between bf16 and fp16). */
export function inGpuDtype(c: Case, index: number): Case {
  if (c.dtype && c.dtype !== "fp32") return c;
  return { ...c, dtype: index % 2 ? "fp16" : "bf16" };
}
