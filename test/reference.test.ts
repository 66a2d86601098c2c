// The fp64 reference is what every backend is judged by, so it is checked on its own: its backward against finite
// differences of its forward, and its forward against cases with a known answer.
import { describe, expect, test } from "bun:test";
import {
  naiveSamePrecisionForward,
  referenceBackward,
  referenceForward,
  relativeError,
  withinTolerance,
} from "../lib/reference.ts";
import { type AttentionSemantics, describeProblem, standardAlibiSlopes } from "../lib/problem.ts";
import {
  bf16ToFloat,
  floatToBf16,
  floatToFp16,
  fp16ToFloat,
  randomTensor,
  type Tensor,
  tensor,
  toFloat32,
} from "../lib/tensor.ts";

function lossAndGrads(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, opts: AttentionSemantics) {
  const g = toFloat32(dout);
  const loss = (qq: Tensor, kk: Tensor, vv: Tensor) => {
    const { out } = referenceForward(qq, kk, vv, opts);
    let s = 0;
    for (let i = 0; i < out.length; i++) s += out[i] * g[i];
    return s;
  };
  return { loss, grads: referenceBackward(dout, q, k, v, opts) };
}

/** Central differences of L = Σ O·dO with respect to every element of one input. */
function finiteDifference(target: Tensor, evaluate: () => number, eps = 2 ** -10): Float64Array {
  const data = target.data as Float32Array;
  const out = new Float64Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const keep = data[i];
    data[i] = keep + eps;
    const plus = evaluate();
    data[i] = keep - eps;
    const minus = evaluate();
    data[i] = keep;
    out[i] = (plus - minus) / (2 * eps);
  }
  return out;
}

const fdCases: Array<{ name: string; b: number; sq: number; sk: number; hq: number; hkv: number; d: number; opts: AttentionSemantics }> = [
  { name: "plain", b: 1, sq: 3, sk: 4, hq: 2, hkv: 2, d: 4, opts: {} },
  { name: "causal sq<sk GQA", b: 2, sq: 3, sk: 5, hq: 4, hkv: 2, d: 4, opts: { causal: true } },
  { name: "window + softcap", b: 1, sq: 5, sk: 5, hq: 2, hkv: 1, d: 4, opts: { window: [1, 1], softcap: 2 } },
  { name: "alibi per batch", b: 2, sq: 4, sk: 3, hq: 2, hkv: 1, d: 3, opts: { alibiSlopes: Float32Array.of(0.5, 0.25, 0.125, 1), alibiPerBatch: true } },
  { name: "causal sq>sk (rows with no key)", b: 1, sq: 5, sk: 3, hq: 1, hkv: 1, d: 4, opts: { causal: true } },
];

describe("reference backward matches finite differences of the reference forward", () => {
  for (const c of fdCases) {
    test(c.name, () => {
      const seed = 1000 + c.sq * 31 + c.sk;
      const q = randomTensor("fp32", [c.b, c.sq, c.hq, c.d], seed);
      const k = randomTensor("fp32", [c.b, c.sk, c.hkv, c.d], seed + 1);
      const v = randomTensor("fp32", [c.b, c.sk, c.hkv, c.d], seed + 2);
      const dout = randomTensor("fp32", [c.b, c.sq, c.hq, c.d], seed + 3);
      const { loss, grads } = lossAndGrads(q, k, v, dout, c.opts);
      const evaluate = () => loss(q, k, v);
      expect(relativeError(grads.dq, finiteDifference(q, evaluate))).toBeLessThan(1e-4);
      expect(relativeError(grads.dk, finiteDifference(k, evaluate))).toBeLessThan(1e-4);
      expect(relativeError(grads.dv, finiteDifference(v, evaluate))).toBeLessThan(1e-4);
    });
  }

  test("varlen", () => {
    const cuQ = Int32Array.of(0, 2, 5), cuK = Int32Array.of(0, 3, 4);
    const q = randomTensor("fp32", [5, 2, 4], 7), k = randomTensor("fp32", [4, 1, 4], 8), v = randomTensor("fp32", [4, 1, 4], 9);
    const dout = randomTensor("fp32", [5, 2, 4], 10);
    const opts = { cuSeqlensQ: cuQ, cuSeqlensK: cuK, causal: true };
    const { loss, grads } = lossAndGrads(q, k, v, dout, opts);
    const evaluate = () => loss(q, k, v);
    expect(relativeError(grads.dq, finiteDifference(q, evaluate))).toBeLessThan(1e-4);
    expect(relativeError(grads.dk, finiteDifference(k, evaluate))).toBeLessThan(1e-4);
    expect(relativeError(grads.dv, finiteDifference(v, evaluate))).toBeLessThan(1e-4);
  });
});

describe("reference forward, known answers", () => {
  test("causal with sq = sk: the first row sees only the first key, so O[0] = V[0] and LSE[0] = score", () => {
    const q = randomTensor("fp32", [1, 4, 1, 8], 1), k = randomTensor("fp32", [1, 4, 1, 8], 2), v = randomTensor("fp32", [1, 4, 1, 8], 3);
    const { out, lse } = referenceForward(q, k, v, { causal: true });
    const vf = toFloat32(v), qf = toFloat32(q), kf = toFloat32(k);
    for (let x = 0; x < 8; x++) expect(out[x]).toBeCloseTo(vf[x], 12);
    let dot = 0;
    for (let x = 0; x < 8; x++) dot += qf[x] * kf[x];
    expect(lse[0]).toBeCloseTo(dot / Math.sqrt(8), 12);
  });

  test("bottom-right causal with sq > sk: rows before the diagonal have no key: O = 0, LSE = +inf (flash-attn 2.x)", () => {
    const q = randomTensor("fp32", [1, 5, 1, 4], 4), k = randomTensor("fp32", [1, 2, 1, 4], 5), v = randomTensor("fp32", [1, 2, 1, 4], 6);
    const { out, lse } = referenceForward(q, k, v, { causal: true });
    // d = sk - sq = -3: row i sees keys j <= i - 3, so rows 0..2 see nothing and row 3 sees key 0 only.
    for (let i = 0; i < 3; i++) {
      expect(lse[i]).toBe(Infinity);
      for (let x = 0; x < 4; x++) expect(out[i * 4 + x]).toBe(0);
    }
    expect(Number.isFinite(lse[3])).toBe(true);
    const vf = toFloat32(v);
    for (let x = 0; x < 4; x++) expect(out[3 * 4 + x]).toBeCloseTo(vf[x], 12);
  });

  test("equal keys give the mean of the values, whatever the scale and softcap", () => {
    const k = tensor("fp32", [1, 3, 1, 2], Float32Array.of(1, 2, 1, 2, 1, 2));
    const v = tensor("fp32", [1, 3, 1, 2], Float32Array.of(1, 0, 2, 0, 6, 3));
    const q = tensor("fp32", [1, 1, 1, 2], Float32Array.of(0.3, -0.7));
    const { out, lse } = referenceForward(q, k, v, { scale: 3, softcap: 1.5 });
    expect(out[0]).toBeCloseTo(3, 12);
    expect(out[1]).toBeCloseTo(1, 12);
    const s = 1.5 * Math.tanh((3 * (Math.fround(0.3) * 1 - Math.fround(0.7) * 2)) / 1.5); // q is stored in fp32
    expect(lse[0]).toBeCloseTo(s + Math.log(3), 12);
  });

  test("ALiBi shifts scores by -slope·distance", () => {
    const q = tensor("fp32", [1, 1, 1, 1], Float32Array.of(0));
    const k = tensor("fp32", [1, 3, 1, 1], Float32Array.of(0, 0, 0));
    const v = tensor("fp32", [1, 3, 1, 1], Float32Array.of(1, 10, 100));
    // sq = 1, sk = 3: the query sits at key position 2; distances 2, 1, 0.
    const { out } = referenceForward(q, k, v, { alibiSlopes: Float32Array.of(Math.LN2) });
    const w = [0.25, 0.5, 1];
    expect(out[0]).toBeCloseTo((w[0] * 1 + w[1] * 10 + w[2] * 100) / 1.75, 6);
  });

  test("GQA: query head h uses kv head h / (hq / hkv)", () => {
    const q = randomTensor("fp32", [1, 2, 4, 4], 11), k = randomTensor("fp32", [1, 3, 2, 4], 12), v = randomTensor("fp32", [1, 3, 2, 4], 13);
    const full = referenceForward(q, k, v);
    // Expand kv heads by hand and compare with plain MHA.
    const expand = (t: Tensor) => {
      const src = t.data as Float32Array, dst = new Float32Array(3 * 4 * 4);
      for (let s = 0; s < 3; s++) for (let h = 0; h < 4; h++) for (let x = 0; x < 4; x++) dst[(s * 4 + h) * 4 + x] = src[(s * 2 + (h >> 1)) * 4 + x];
      return tensor("fp32", [1, 3, 4, 4], dst);
    };
    const mha = referenceForward(q, expand(k), expand(v));
    expect(relativeError(full.out, mha.out)).toBe(0);
  });

  test("the naive same-precision forward is worse than fp64 but close", () => {
    const q = randomTensor("bf16", [1, 64, 2, 32], 21), k = randomTensor("bf16", [1, 64, 2, 32], 22), v = randomTensor("bf16", [1, 64, 2, 32], 23);
    const exact = referenceForward(q, k, v).out;
    const err = relativeError(naiveSamePrecisionForward(q, k, v), exact);
    expect(err).toBeGreaterThan(1e-4);
    expect(err).toBeLessThan(2e-2);
  });
});

describe("problem validation", () => {
  const q = randomTensor("fp32", [1, 4, 4, 8], 1);
  const k = randomTensor("fp32", [1, 5, 3, 8], 2);
  test("heads_q must be a multiple of heads_kv", () => {
    expect(() => describeProblem(q, k, k)).toThrow("heads_q (4) must be a multiple of heads_kv (3)");
  });
  test("head dims must agree", () => {
    const k2 = randomTensor("fp32", [1, 5, 2, 16], 2);
    expect(() => describeProblem(q, k2, k2)).toThrow("q has head_dim 8 but k and v have 16");
  });
  test("cu_seqlens must end at the token count", () => {
    const qv = randomTensor("fp32", [5, 1, 8], 1), kv = randomTensor("fp32", [5, 1, 8], 2);
    expect(() => describeProblem(qv, kv, kv, { cuSeqlensQ: Int32Array.of(0, 2, 4), cuSeqlensK: Int32Array.of(0, 2, 5) }))
      .toThrow("cu_seqlens_q[2] = 4 must equal the 5 packed tokens");
  });
  test("impossible scale, softcap and window are refused", () => {
    const k2 = randomTensor("fp32", [1, 5, 2, 8], 2);
    expect(() => describeProblem(q, k2, k2, { scale: NaN })).toThrow("scale must be a finite positive number");
    expect(() => describeProblem(q, k2, k2, { softcap: -1 })).toThrow("softcap must be a finite number");
    expect(() => describeProblem(q, k2, k2, { window: [-2, 0] })).toThrow("window bounds");
  });
  test("standard ALiBi slopes: powers of two heads are geometric from 2^-8/h", () => {
    expect(Array.from(standardAlibiSlopes(4))).toEqual([0.25, 0.0625, 0.015625, 0.00390625]);
    expect(standardAlibiSlopes(6).length).toBe(6);
  });
});

describe("tolerances and conversions", () => {
  test("relativeError treats NaN as infinitely wrong", () => {
    expect(relativeError([1, NaN], [1, 2])).toBe(Infinity);
    expect(relativeError([1, 2], [1, 2])).toBe(0);
  });
  test("the fp16/bf16 rule needs both ≤ 1e-2 and ≤ 2× naive", () => {
    expect(withinTolerance("bf16", 5e-3, 4e-3).ok).toBe(true);
    expect(withinTolerance("bf16", 9e-3, 4e-3).ok).toBe(false);
    expect(withinTolerance("fp32", 2e-5).ok).toBe(false);
  });
  test("fp16 and bf16 conversions round to nearest even and keep specials", () => {
    expect(floatToFp16(1)).toBe(0x3c00);
    expect(floatToFp16(65504)).toBe(0x7bff);
    expect(floatToFp16(65520)).toBe(0x7c00); // rounds up to infinity
    expect(floatToFp16(2 ** -24)).toBe(1); // smallest subnormal
    expect(floatToFp16(1 + 2 ** -11)).toBe(0x3c00); // tie to even
    expect(floatToFp16(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(fp16ToFloat(0xfc00)).toBe(-Infinity);
    expect(Number.isNaN(fp16ToFloat(floatToFp16(NaN)))).toBe(true);
    expect(floatToBf16(1)).toBe(0x3f80);
    expect(bf16ToFloat(floatToBf16(1 + 2 ** -8))).toBe(1); // tie to even
    expect(bf16ToFloat(floatToBf16(1 + 3 * 2 ** -8))).toBe(1 + 2 ** -6);
    expect(Number.isNaN(bf16ToFloat(floatToBf16(NaN)))).toBe(true);
    for (let i = 0; i < 0x7c00; i += 37) expect(floatToFp16(fp16ToFloat(i))).toBe(i);
  });
});
