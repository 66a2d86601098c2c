// Context-parallel (ring) attention on the CPU backend: the real algorithm on the real kernels, the ranks in one
// process passing their blocks by device-to-device copies (LocalRing). Every result is held against the fp64
// reference with docs/DESIGN.md's tolerance rule and against the single-device call, forward and backward, for rings
// of 1 to 4 ranks over odd sequence lengths (chunks of unequal sizes, and empty ones when seqlen < 2N), causal and
// not, GQA, softcap. Plus the pieces: the split, the block masks, fa_merge_partial and fa_convert against host maths.
import { describe, expect, test } from "bun:test";
import { attention, attentionBackward } from "../lib/attention.ts";
import { openBackend } from "../lib/backend.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { referenceBackward, referenceForward, relativeError, withinTolerance } from "../lib/reference.ts";
import { describeProblem } from "../lib/problem.ts";
import { describeRingProblem, LocalRing, ringAttention, shardOf, visibleRows } from "../lib/ring.ts";
import { gatherShard, ringAttentionBackwardTensors, ringAttentionTensors, scatterShard } from "../lib/ring_tensors.ts";
import { type DType, fromFloat32, randomTensor, toFloat32 } from "../lib/tensor.ts";

const cpu = openBackend("cpu").backend!;
const seed = (Date.now() % 100000) | 0;

interface RingCase {
  ranks: number;
  b: number;
  s: number;
  hq: number;
  hkv: number;
  d: number;
  causal: boolean;
  dtype: DType;
  softcap?: number;
}

function inputsOf(c: RingCase, base: number) {
  const shape = (h: number) => [c.b, c.s, h, c.d];
  return {
    q: randomTensor(c.dtype, shape(c.hq), base), k: randomTensor(c.dtype, shape(c.hkv), base + 1),
    v: randomTensor(c.dtype, shape(c.hkv), base + 2), dout: randomTensor(c.dtype, shape(c.hq), base + 3),
  };
}

const cases: RingCase[] = [
  { ranks: 1, b: 1, s: 37, hq: 2, hkv: 2, d: 16, causal: true, dtype: "fp32" },
  { ranks: 2, b: 2, s: 53, hq: 4, hkv: 2, d: 16, causal: true, dtype: "fp32" },
  { ranks: 2, b: 1, s: 41, hq: 2, hkv: 1, d: 32, causal: false, dtype: "fp32" },
  { ranks: 3, b: 1, s: 67, hq: 6, hkv: 2, d: 16, causal: true, dtype: "fp32", softcap: 5 },
  { ranks: 3, b: 2, s: 29, hq: 3, hkv: 3, d: 8, causal: false, dtype: "bf16" },
  { ranks: 4, b: 1, s: 101, hq: 4, hkv: 1, d: 64, causal: true, dtype: "bf16" },
  { ranks: 4, b: 1, s: 7, hq: 2, hkv: 2, d: 16, causal: true, dtype: "fp16" }, // seqlen < 2N: one empty chunk
  { ranks: 4, b: 2, s: 45, hq: 2, hkv: 2, d: 16, causal: false, dtype: "fp16" },
];

describe("ring attention on the CPU backend equals single-device attention", () => {
  for (const c of cases) {
    const name = `${c.ranks} rank${c.ranks > 1 ? "s" : ""}, b${c.b} s${c.s} hq${c.hq}/hkv${c.hkv} d${c.d} ${c.dtype}${c.causal ? " causal" : ""}${c.softcap ? ` softcap ${c.softcap}` : ""}`;
    for (const overlap of [true, false]) {
      test(`${name}${overlap ? "" : ", no overlap"}: forward and backward`, async () => {
        const base = seed + c.ranks * 1000 + c.s;
        const { q, k, v, dout } = inputsOf(c, base);
        const sem = { causal: c.causal, softcap: c.softcap };
        const ring = new LocalRing(cpu, c.ranks);
        const fwd = ringAttentionTensors(ring, q, k, v, { ...sem, overlap });
        const single = await attention(q, k, v, { ...sem, backend: "cpu" });
        const ref = referenceForward(q, k, v, sem);
        const tolerance = (error: number) => withinTolerance(c.dtype, error).ok;
        const where = `(seed ${base})`;
        const outError = relativeError(toFloat32(fwd.out), ref.out);
        expect(tolerance(outError), `out error ${outError} ${where}`).toBe(true);
        expect(relativeError(fwd.lse, ref.lse), `lse ${where}`).toBeLessThan(1e-5);
        // Against the single-device call: the same kernels, so the results agree far inside the rule.
        expect(relativeError(toFloat32(fwd.out), toFloat32(single.out)), `vs single device ${where}`).toBeLessThan(c.dtype === "fp32" ? 1e-5 : 1e-2);

        const bwd = ringAttentionBackwardTensors(ring, dout, q, k, v, fwd.out, fwd.lse, { ...sem, overlap });
        const refGrads = referenceBackward(dout, q, k, v, sem);
        const singleGrads = await attentionBackward(dout, q, k, v, single.out, single.lse, { ...sem, backend: "cpu" });
        for (const g of ["dq", "dk", "dv"] as const) {
          const error = relativeError(toFloat32(bwd[g]), refGrads[g]);
          expect(tolerance(error), `${g} error ${error} ${where}`).toBe(true);
          expect(relativeError(toFloat32(bwd[g]), toFloat32(singleGrads[g])), `${g} vs single device ${where}`).toBeLessThan(c.dtype === "fp32" ? 1e-5 : 1e-2);
        }
        expect(cpu.memoryStats().current, "every ring buffer is freed").toBe(0);
      });
    }
  }
});

describe("the split of the sequence", () => {
  test("every row is in exactly one shard, chunks r and 2N-1-r, sizes within one row", () => {
    for (const ranks of [1, 2, 3, 4, 8]) {
      for (const s of [1, 7, 8, 33, 1000]) {
        const owner = new Int32Array(s).fill(-1);
        const sizes: number[] = [];
        for (let r = 0; r < ranks; r++) {
          const shard = shardOf(s, ranks, r);
          expect(shard.chunks.map((c) => c.index)).toEqual([r, 2 * ranks - 1 - r]);
          expect(shard.chunks[1].offset).toBe(shard.chunks[0].rows);
          for (const c of shard.chunks) {
            sizes.push(c.rows);
            for (let i = c.start; i < c.start + c.rows; i++) {
              expect(owner[i]).toBe(-1);
              owner[i] = r;
            }
          }
        }
        expect(owner.includes(-1)).toBe(false);
        expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
      }
    }
  });

  test("the visible rows of each block are exactly the keys at or before the query chunk", () => {
    for (const ranks of [1, 2, 3, 5]) {
      const s = 4 * ranks + 3;
      for (let r = 0; r < ranks; r++) {
        for (let step = 0; step < ranks; step++) {
          const me = shardOf(s, ranks, r), held = shardOf(s, ranks, (r - step + ranks) % ranks);
          for (const q of me.chunks) {
            const seen = visibleRows(q, held, true, step === 0);
            // Brute force: a held row is visible to some row of q when its global position is not after q's last row.
            const heldRows = held.chunks.flatMap((c) => Array.from({ length: c.rows }, (_, i) => c.start + i));
            const expected = q.rows === 0 ? seen.rows : heldRows.filter((pos) => pos <= q.start + q.rows - 1).length;
            expect(seen.rows, `rank ${r} step ${step} chunk ${q.index}`).toBe(expected);
            expect(heldRows.slice(0, seen.rows).every((pos) => pos <= q.start + q.rows - 1)).toBe(true);
            expect(seen.causal).toBe(step === 0);
            expect(visibleRows(q, held, false, step === 0)).toEqual({ rows: held.rows, causal: false });
          }
        }
      }
    }
  });

  test("gatherShard and scatterShard are inverses", () => {
    const data = Float32Array.from({ length: 2 * 11 * 3 }, (_, i) => i);
    const back = new Float32Array(data.length);
    for (let r = 0; r < 3; r++) scatterShard(back, gatherShard(data, 2, 11, 3, shardOf(11, 3, r)), 2, 11, 3, shardOf(11, 3, r));
    expect(Array.from(back)).toEqual(Array.from(data));
  });
});

describe("the ring's refusals", () => {
  const t = (dtype: DType, shape: number[]) => ({ dtype, shape });
  test("seqlen_q != seqlen_k, fp8 and a ring of 0 ranks are refused with a sentence", () => {
    expect(() => describeRingProblem(t("bf16", [1, 8, 2, 16]), t("bf16", [1, 9, 2, 16]), t("bf16", [1, 9, 2, 16])))
      .toThrow(/seqlen_q \(8\) must equal seqlen_k \(9\)/);
    expect(() => describeRingProblem(t("fp8_e4m3", [1, 8, 2, 16]), t("fp8_e4m3", [1, 8, 2, 16]), t("fp8_e4m3", [1, 8, 2, 16])))
      .toThrow(FlashAttnError);
    expect(() => new LocalRing(cpu, 0)).toThrow(/at least one rank/);
  });
  test("a problem with a window, passed to the device API directly, is refused before any buffer is read", () => {
    const windowed = describeProblem(t("bf16", [1, 8, 2, 16]), t("bf16", [1, 8, 2, 16]), t("bf16", [1, 8, 2, 16]), { window: [2, 0] });
    expect(() => ringAttention(new LocalRing(cpu, 2), windowed, [])).toThrow(/sliding windows are not supported/);
    const plain = describeRingProblem(t("bf16", [1, 8, 2, 16]), t("bf16", [1, 8, 2, 16]), t("bf16", [1, 8, 2, 16]));
    expect(() => ringAttention(new LocalRing(cpu, 2), plain, [])).toThrow(/2 ranks but 0 shards/);
  });
});

describe("fa_merge_partial and fa_convert", () => {
  test("the merge equals the log-sum-exp rule computed on the host, and a -inf pair stays unchanged", () => {
    const [batch, rows, heads, headDim] = [2, 3, 2, 4];
    const n = batch * rows * heads * headDim, m = batch * heads * rows;
    const acc = Float32Array.from({ length: n }, (_, i) => Math.sin(i));
    const part = Float32Array.from({ length: n }, (_, i) => Math.cos(i));
    const accLse = Float32Array.from({ length: m }, (_, i) => (i === 5 ? -Infinity : i * 0.3 - 1));
    const partLse = Float32Array.from({ length: m }, (_, i) => (i === 5 ? -Infinity : 2 - i * 0.2));
    const bufs = [acc, accLse, part, partLse].map((a) => cpu.upload(a));
    try {
      cpu.mergePartial("fp32", { batch, rows, heads, headDim }, bufs[0].address, bufs[1].address, bufs[2].address, bufs[3].address);
      const gotAcc = new Float32Array(n), gotLse = new Float32Array(m);
      cpu.download(bufs[0], gotAcc);
      cpu.download(bufs[1], gotLse);
      for (let b = 0; b < batch; b++) for (let h = 0; h < heads; h++) for (let i = 0; i < rows; i++) {
        const l = (b * heads + h) * rows + i;
        const a = accLse[l], p = partLse[l];
        const lse = l === 5 ? -Infinity : Math.log(Math.exp(a) + Math.exp(p));
        expect(gotLse[l]).toBeCloseTo(lse, 5);
        for (let d = 0; d < headDim; d++) {
          const x = ((b * rows + i) * heads + h) * headDim + d;
          const want = l === 5 ? acc[x] : acc[x] * Math.exp(a - lse) + part[x] * Math.exp(p - lse);
          expect(gotAcc[x]).toBeCloseTo(want, 5);
        }
      }
    } finally {
      for (const b of bufs) cpu.free(b);
    }
  });

  test("convert accumulates bf16 into fp32 and casts back with rounding to nearest even", () => {
    const src = randomTensor("bf16", [64], seed), acc = Float32Array.from({ length: 64 }, (_, i) => i / 7);
    const [s, a, out] = [cpu.upload(src.data), cpu.upload(acc), cpu.alloc(128)];
    try {
      cpu.convert("fp32", a.address, "bf16", s.address, 64, true);
      const sum = new Float32Array(64);
      cpu.download(a, sum);
      const srcValues = toFloat32(src);
      for (let i = 0; i < 64; i++) expect(sum[i]).toBe(Math.fround(acc[i] + srcValues[i]));
      cpu.convert("bf16", out.address, "fp32", a.address, 64, false);
      const bits = new Uint16Array(64);
      cpu.download(out, bits);
      expect(Array.from(toFloat32({ dtype: "bf16", shape: [64], data: bits }))).toEqual(Array.from(toFloat32(fromFloat32("bf16", [64], sum))));
    } finally {
      for (const b of [s, a, out]) cpu.free(b);
    }
  });

  test("nonsense arguments are refused with a status, never a crash", () => {
    const b = cpu.alloc(64);
    try {
      expect(() => cpu.convert("fp32", b.address, "bf16", b.address, 1 << 20, true)).toThrow(/not inside one fa_malloc block/);
      expect(() => cpu.convert("fp8_e4m3", b.address, "bf16", b.address, 4, true)).toThrow(/must be fp32, fp16 or bf16/);
      expect(() => cpu.mergePartial("bf16", { batch: -1, rows: 1, heads: 1, headDim: 1 }, b.address, b.address, b.address, b.address)).toThrow(/negative/);
      expect(() => cpu.mergePartial("fp32", { batch: 65536, rows: 65536, heads: 65536, headDim: 65536 }, b.address, b.address, b.address, b.address)).toThrow(/2\^40/);
      expect(() => cpu.mergePartial("fp32", { batch: 1, rows: 1, heads: 1, headDim: 1 }, 0n, b.address, b.address, b.address)).toThrow(/NULL/);
    } finally {
      cpu.free(b);
    }
  });
});
