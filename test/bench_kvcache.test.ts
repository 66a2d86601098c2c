// bench --preset decode's KV-cache cases: the sweep they expand to, the cache each lays out (a shuffled block table,
// the append slot, the rotary rows), the bytes each is judged by, the ratios against the reference row computed from
// given times, the table / CSV / chart that show them, and — on the real CPU library — the reference check before
// timing (a kernel whose output is corrupted after the real call is not timed) and a short run end to end.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { Backend, openBackend } from "../lib/backend.ts";
import { openLibrary } from "../ffi/loader.ts";
import { faSymbols } from "../ffi/symbols.ts";
import { zeroingOutput } from "./support/broken_library.ts";
import { attentionFlops, decodeBytes, kvBytes } from "../bench/flops.ts";
import {
  isKvCacheCase,
  type KvCacheCase,
  kvcacheBufferBytes,
  kvcacheProblem,
  kvcacheShapes,
  shuffledBlockTable,
} from "../bench/kvcache.ts";
import { BENCH_SCHEMA, type BenchReport, entryComparisons, type Measurement } from "../bench/results.ts";
import { findBackends, runBench } from "../bench/run.ts";
import { summarize } from "../bench/stats.ts";
import {
  applyOverrides,
  baselineEquivalent,
  baselineProblem,
  type BenchCase,
  caseId,
  expandSweep,
  presets,
} from "../bench/sweep.ts";
import { KernelChecks } from "../bench/verify.ts";
import { renderCsv } from "../bench/report/csv.ts";
import { panelsOf, renderSvg } from "../bench/report/svg.ts";
import { comparisonCell, renderTable } from "../bench/report/table.ts";
import { parseXml } from "./bench_report.test.ts";

const k = 1024;
const decode = expandSweep(presets.decode, { gpu: true });
const find = (predicate: (c: BenchCase) => boolean) => decode.filter(predicate);
const at32k = (c: BenchCase) => c.seqlenK === 32 * k;

describe("the decode preset's KV-cache cases", () => {
  test("every plain decode case has a KV-cache twin at the same shape, right after it", () => {
    const plain = find((c) => !c.kvcache);
    for (const c of plain) {
      const twin = decode[decode.indexOf(c) + 1];
      expect(twin.kvcache).toEqual({ append: 0, rotary: false });
      const { id: _a, kvcache: _b, ...shape } = twin;
      const { id: _c, ...plainShape } = c;
      expect(shape).toEqual(plainShape);
    }
    // 12 of the sweep (4k..128k, b1 and b8) plus 14 variants at 32k (speculative, MQA, head dims) through both.
    expect(plain.length).toBe(12 + 4 * 2 + 2 + 2 * 2);
    expect(find((c) => c.kvcache !== undefined && !c.kvcache.pageSize && !c.kvcache.append).length).toBe(plain.length);
    expect(new Set(decode.map((c) => c.id)).size).toBe(decode.length);
    expect(decode.length).toBe(2 * plain.length + 6 + 2);
  });

  test("paged 16, 64, 256 and append 1 + rotary at 32k keys, b1 and b8, with the contiguous twin there too", () => {
    const paged = find((c) => !!c.kvcache?.pageSize);
    expect(paged.map((c) => [c.kvcache!.pageSize, c.batch])).toEqual([[16, 1], [16, 8], [64, 1], [64, 8], [256, 1], [256, 8]]);
    const append = find((c) => (c.kvcache?.append ?? 0) > 0);
    expect(append.map((c) => [c.batch, c.kvcache])).toEqual([[1, { append: 1, rotary: true }], [8, { append: 1, rotary: true }]]);
    for (const c of [...paged, ...append]) {
      expect(at32k(c)).toBe(true);
      expect([c.seqlenQ, c.headsQ, c.headsKv, c.headDim, c.causal, c.dtype]).toEqual([1, 32, 8, 128, false, "bf16"]);
      const twin = caseId({ ...c, kvcache: { append: 0, rotary: false } });
      expect(decode.some((x) => x.id === twin)).toBe(true);
    }
  });

  test("speculative decoding (2..16 query tokens, causal), MQA 32/1 and head dims 64 / 256 at 32k", () => {
    const speculative = find((c) => c.seqlenQ > 1);
    expect(speculative.every((c) => c.causal && at32k(c))).toBe(true);
    expect([...new Set(speculative.map((c) => c.seqlenQ))]).toEqual([2, 4, 8, 16]);
    expect(find((c) => c.headsKv === 1).map((c) => [c.batch, c.headsQ, !!c.kvcache])).toEqual(
      [[1, 32, false], [1, 32, true], [8, 32, false], [8, 32, true]],
    );
    expect([...new Set(find((c) => c.headDim !== 128).map((c) => c.headDim))]).toEqual([64, 256]);
  });

  test("the variants follow --seqlen and --batch; the other presets have no KV-cache case", () => {
    const small = expandSweep(applyOverrides(presets.decode, { seqlen: "1k,4k", batch: "2" }), { gpu: false });
    const variants = small.filter((c) => c.kvcache?.pageSize || c.seqlenQ > 1);
    expect(variants.length).toBeGreaterThan(0);
    expect(variants.every((c) => c.seqlenK === 4 * k && c.batch === 2)).toBe(true); // 4k is nearest to 32k
    expect(small.every((c) => c.dtype === "bf16")).toBe(true);
    for (const preset of [presets.fa, presets.quick]) {
      expect(expandSweep(preset, { gpu: true }).some((c) => c.kvcache)).toBe(false);
    }
    // Backward has no KV-cache entry: a decode sweep asked for bwd gets no KV-cache case.
    expect(expandSweep(applyOverrides(presets.decode, { direction: "bwd" }), { gpu: true }).some((c) => c.kvcache))
      .toBe(false);
  });
});

describe("the cache a KV-cache case lays out", () => {
  const kvCase = (kvcache: KvCacheCase["kvcache"], over: Partial<BenchCase> = {}): KvCacheCase => {
    const c = { batch: 3, seqlenQ: 1, seqlenK: 100, headsQ: 4, headsKv: 2, headDim: 16, causal: false, dtype: "bf16" as const,
      direction: "fwd" as const, kind: "decode" as const, kvcache, ...over };
    return { id: caseId(c), ...c };
  };

  test("a shuffled block table is a permutation of every page, never the identity", () => {
    for (const pages of [2, 3, 17, 2048]) {
      const table = shuffledBlockTable(pages, 7);
      expect([...table].sort((a, b) => a - b)).toEqual([...Array(pages).keys()]);
      expect(table.some((page, i) => page !== i)).toBe(true);
      expect(table).toEqual(shuffledBlockTable(pages, 7));
    }
    expect([...shuffledBlockTable(2, 1)]).toEqual([1, 0]);
    expect([...shuffledBlockTable(1, 1)]).toEqual([0]);
  });

  test("paged: ceil(keys / page) pages per sequence, the table over all of them; cache_seqlens = keys", () => {
    const t = kvcacheShapes(kvCase({ pageSize: 16, append: 0, rotary: false }));
    expect(t.cache).toEqual([3 * 7, 16, 2, 16]);
    expect(t.blockTable!.length).toBe(21);
    expect([...t.cacheSeqlens]).toEqual([100, 100, 100]);
    expect(t.kNew).toBeUndefined();
    expect(t.rotary).toBeUndefined();
    const p = kvcacheProblem(kvCase({ pageSize: 16, append: 0, rotary: false }));
    expect([p.paged, p.cacheBatch, p.cacheRows, p.maxBlocks, p.seqlenNew]).toEqual([true, 21, 16, 7, 0]);
  });

  test("append + rotary: the cache holds exactly the keys attended, the append lands in the last slot every call", () => {
    const c = kvCase({ append: 1, rotary: true }, { seqlenQ: 4, causal: true });
    const t = kvcacheShapes(c);
    expect(t.cache).toEqual([3, 100, 2, 16]);
    expect([...t.cacheSeqlens]).toEqual([99, 99, 99]);
    expect(t.kNew).toEqual([3, 1, 2, 16]);
    // q rows rotate to 99..102 (causal): 103 table rows of head_dim / 2.
    expect(t.rotary).toEqual([103, 8]);
    const p = kvcacheProblem(c);
    expect([p.seqlenNew, p.rotaryDim, p.seqlenRotary, p.causal, p.paged]).toEqual([1, 16, 103, true, false]);
    const e = 2;
    expect(kvcacheBufferBytes(c)).toBe(
      e * (2 * 3 * 4 * 4 * 16 + 2 * 3 * 100 * 2 * 16 + 2 * 3 * 1 * 2 * 16 + 2 * 103 * 8) + 4 * 3 * 4 * 4 + 4 * 3,
    );
  });

  test("baselines time the contiguous equivalent under the case's id, and say which", () => {
    const paged = kvCase({ pageSize: 64, append: 0, rotary: false });
    expect(baselineProblem(paged).kvcache).toBeUndefined();
    expect(baselineProblem(paged).id).toBe(paged.id);
    expect(baselineEquivalent(paged)).toBe("contiguous equivalent");
    expect(baselineEquivalent(kvCase({ append: 1, rotary: true }))).toContain("plain contiguous decode");
    const plain = baselineProblem(paged);
    expect(baselineEquivalent(plain)).toBeUndefined();
    expect(isKvCacheCase(plain)).toBe(false);
  });
});

describe("bytes a decode case moves", () => {
  const base = { batch: 8, seqlenQ: 1, seqlenK: 32 * k, headsQ: 32, headsKv: 8, headDim: 128, causal: false,
    dtype: "bf16" as const };
  test("K+V of the attended keys once per KV head, q and o, and the appended rows written", () => {
    const kv = 2 * 8 * 32 * k * 8 * 128 * 2, qo = 2 * 8 * 1 * 32 * 128 * 2;
    expect(decodeBytes(base)).toBe(kv + qo);
    expect(decodeBytes({ ...base, kvcache: { append: 0 } })).toBe(kv + qo);
    // A paged cache reads the same bytes; an append writes its K and V rows once more.
    expect(decodeBytes({ ...base, kvcache: { pageSize: 16, append: 0 } } as never)).toBe(kv + qo);
    expect(decodeBytes({ ...base, kvcache: { append: 1 } })).toBe(kv + qo + 2 * 8 * 1 * 8 * 128 * 2);
    // MQA reads one KV head for all 32 query heads; speculative decoding adds its query rows only.
    expect(decodeBytes({ ...base, headsKv: 1 })).toBe(kv / 8 + qo);
    expect(decodeBytes({ ...base, seqlenQ: 16 })).toBe(kv + 16 * qo);
    expect(kvBytes(base)).toBe(kv);
  });
});

// A report built from chosen times: a plain row, its KV-cache twin, two paged rows and an append row.
const shape = { batch: 8, seqlenQ: 1, seqlenK: 32 * k, headsQ: 32, headsKv: 8, headDim: 128, causal: false,
  dtype: "bf16" as const, direction: "fwd" as const, kind: "decode" as const };
const withId = (c: Omit<BenchCase, "id">): BenchCase => ({ id: caseId(c), ...c });
const plainCase = withId(shape);
const twinCase = withId({ ...shape, kvcache: { append: 0, rotary: false } });
const paged16 = withId({ ...shape, kvcache: { pageSize: 16, append: 0, rotary: false } });
const paged256 = withId({ ...shape, kvcache: { pageSize: 256, append: 0, rotary: false } });
const appendCase = withId({ ...shape, kvcache: { append: 1, rotary: true } });

function row(c: BenchCase, impl: string, family: Measurement["family"], ms: number, extra: Partial<Measurement> = {}) {
  const m: Measurement = { caseId: c.id, impl, family, place: "cuda", status: "ok", timing: summarize([ms]),
    tflops: attentionFlops(c, "fwd") / (ms * 1e-3) / 1e12, gbps: decodeBytes(c) / (ms * 1e-3) / 1e9, ...extra };
  m.copyFraction = m.gbps! / 3000;
  return m;
}

function kvReport(): BenchReport {
  const cases = [plainCase, twinCase, paged16, paged256, appendCase];
  const measurements = [
    row(plainCase, "flashattn-cuda", "ours", 0.4),
    row(twinCase, "flashattn-cuda", "ours", 0.5),
    row(paged16, "flashattn-cuda", "ours", 0.525),
    row(paged256, "flashattn-cuda", "ours", 0.6),
    row(appendCase, "flashattn-cuda", "ours", 0.52),
    ...cases.map((c) => row(c, "sdpa-flash", "torch", 0.45, c.kvcache ? { equivalent: baselineEquivalent(c) } : {})),
    { caseId: paged16.id, impl: "naive-cuda", family: "naive" as const, place: "cuda" as const, status: "oom" as const,
      reason: "too big", equivalent: "contiguous equivalent" },
  ];
  return {
    ok: true, schema: BENCH_SCHEMA, createdAt: "2026-12-06T07:00:00.000Z",
    config: { preset: "decode", warmup: 5, iters: 50, minIters: 10, caseBudgetMs: 200, maxSeconds: 420 },
    machine: {},
    implementations: [
      { impl: "flashattn-cuda", family: "ours", place: "cuda", available: true },
      { impl: "naive-cuda", family: "naive", place: "cuda", available: true },
      { impl: "sdpa-flash", family: "torch", place: "cuda", available: true },
    ],
    copyBandwidth: [{ place: "cuda", device: "H100", bytes: 1 << 30, medianMs: 0.7, gbps: 3000, method: "test" }],
    cases, measurements, comparisons: entryComparisons(cases, measurements), elapsedSeconds: 9, timeLimited: false,
  };
}

describe("ratios against the reference row, from given times", () => {
  test("paged over contiguous (≤ 1.10), append over no append (≤ 1.05), KV-cache over fa_forward", () => {
    const r = kvReport();
    const by = new Map(r.comparisons!.map((x) => [x.caseId, x]));
    expect(r.comparisons!.length).toBe(4); // ours only; the plain row has no reference
    expect(by.get(twinCase.id)).toMatchObject({ referenceId: plainCase.id, against: "forward", impl: "flashattn-cuda" });
    expect(by.get(twinCase.id)!.ratio).toBeCloseTo(1.25, 12);
    expect(by.get(twinCase.id)!.target).toBeUndefined();
    expect(by.get(paged16.id)).toMatchObject({ referenceId: twinCase.id, against: "contiguous", target: 1.1 });
    expect(by.get(paged16.id)!.ratio).toBeCloseTo(1.05, 12);
    expect(by.get(paged256.id)!.ratio).toBeCloseTo(1.2, 12);
    expect(by.get(appendCase.id)).toMatchObject({ referenceId: twinCase.id, against: "no append", target: 1.05 });
    expect(by.get(appendCase.id)!.ratio).toBeCloseTo(1.04, 12);
  });

  test("no ratio where the reference row was not timed, or is another implementation's", () => {
    const r = kvReport();
    const measurements = r.measurements.map((m) => (m.caseId === twinCase.id && m.family === "ours"
      ? { ...m, status: "error" as const, timing: undefined } : m));
    const left = entryComparisons(r.cases, measurements);
    expect(left.map((x) => x.caseId)).toEqual([]);
    const withoutTwin = entryComparisons(r.cases.filter((c) => c.id !== twinCase.id), r.measurements);
    expect(withoutTwin.length).toBe(0);
  });

  test("the cell says the ratio, its reference and whether the bound is met", () => {
    const r = kvReport();
    const cell = (c: BenchCase) => comparisonCell(r.comparisons!.find((x) => x.caseId === c.id), false);
    expect(cell(paged16)).toBe("1.05× contiguous ✓");
    expect(cell(paged256)).toBe("1.20× contiguous ✗");
    expect(cell(appendCase)).toBe("1.04× no append ✓");
    expect(cell(twinCase)).toBe("1.25× fa_forward");
    expect(cell(plainCase)).toBe("");
  });
});

describe("the report of KV-cache cases", () => {
  const r = kvReport();
  const text = renderTable(r, { color: false });
  const line = (c: BenchCase) => text.split("\n").find((l) => l.startsWith(`${c.id} `))!;

  test("the table names the entry, the ratio and what the baselines timed on each row", () => {
    expect(text).toMatch(/^case +entry +vs ref +baselines time +flashattn-cuda +naive-cuda +sdpa-flash$/m);
    expect(line(plainCase)).toMatch(/ fa_forward +\d/);
    expect(line(twinCase)).toContain(" fa_forward_kvcache ");
    expect(line(twinCase)).toContain("1.25× fa_forward  contiguous equiv.");
    expect(line(paged256)).toContain("1.20× contiguous ✗");
    expect(line(appendCase)).toContain("1.04× no append ✓       plain decode");
    // GB/s of the append row counts its written rows: bytes / time, and the share of the 3000 GB/s copy.
    const gbps = decodeBytes(appendCase) / 0.52e-3 / 1e9;
    expect(line(appendCase)).toContain(`${gbps.toFixed(0)} (${Math.round(gbps / 30)}%)`);
    expect(text).toContain("paged within 10% of contiguous: 1 of 2 rows (worst 1.20×)");
    expect(text).toContain("append+rotary within 5% of no append: 1 of 1 rows (worst 1.04×)");
    expect(text).toContain("they time the contiguous equivalent");
    expect(text).toContain("fa_forward_kvcache rows are timed inside the library by fa_bench_kvcache");
  });

  test("a report without KV-cache cases keeps its columns", () => {
    const plain = { ...r, cases: [plainCase], measurements: r.measurements.filter((m) => m.caseId === plainCase.id),
      comparisons: [] };
    const table = renderTable(plain, { color: false });
    expect(table).toMatch(/^case +flashattn-cuda +sdpa-flash$/m);
    expect(table).not.toContain("fa_forward");
  });

  test("CSV: the entry, cache layout, bytes, baseline equivalent and ratio on every row", () => {
    const lines = renderCsv(r).trim().split("\r\n");
    const header = lines[0].split(",");
    const cell = (id: string, impl: string, column: string) =>
      lines.find((l) => l.startsWith(`${id},`) && l.includes(`,${impl},`))!.split(",")[header.indexOf(column)];
    expect(cell(paged16.id, "flashattn-cuda", "entry")).toBe("kvcache");
    expect(cell(paged16.id, "flashattn-cuda", "page_size")).toBe("16");
    expect(cell(paged16.id, "flashattn-cuda", "reference_case")).toBe(twinCase.id);
    expect(Number(cell(paged16.id, "flashattn-cuda", "ratio_to_reference"))).toBeCloseTo(1.05, 12);
    expect(cell(appendCase.id, "flashattn-cuda", "rotary")).toBe("true");
    expect(Number(cell(appendCase.id, "flashattn-cuda", "bytes_moved"))).toBe(decodeBytes(appendCase));
    expect(cell(paged16.id, "sdpa-flash", "baseline_equivalent")).toBe("contiguous equivalent");
    // A baseline timed the plain decode of the append case: its bytes are that problem's, without the written rows.
    expect(Number(cell(appendCase.id, "sdpa-flash", "bytes_moved"))).toBe(decodeBytes(appendCase) - 2 * 8 * 8 * 128 * 2);
    expect(cell(plainCase.id, "sdpa-flash", "entry")).toBe("forward");
    expect(cell(plainCase.id, "sdpa-flash", "baseline_equivalent")).toBe("");
  });

  test("the chart is well-formed, with one panel per entry and cache", () => {
    const svg = renderSvg(r);
    parseXml(svg);
    const titles = panelsOf(r.cases).map((p) => p.title);
    expect(titles.length).toBe(5);
    expect(titles.filter((t) => t.endsWith("· kvcache paged16")).length).toBe(1);
    expect(titles.some((t) => t.endsWith("1 query token"))).toBe(true);
    const bars = svg.match(/<rect class="bar"/g) ?? [];
    expect(bars.length).toBe(r.measurements.filter((m) => m.status === "ok").length);
  });
});

const cpu = openBackend("cpu", { env: {} }).backend;

// Small shapes (300 keys cross pages of 16, 64 and 256), one variant of each other kind: every path, few cases.
const tinySpec = {
  ...applyOverrides(presets.decode, { seqlen: "300", batch: "1", heads: "4", headsKv: "2", hdim: "32" }),
  kvcache: { ...presets.decode.kvcache!, seqlensQ: [4], hdims: [64] },
};
const timing = { warmup: 1, iters: 3, minIters: 1, caseBudgetMs: 50 };

describe.skipIf(!cpu)("KV-cache cases on the CPU library (skipped when build/libflashattn_cpu.so is not built)", () => {
  const broken = () => new Backend("cpu", zeroingOutput(openLibrary(cpu!.path, faSymbols), "fa_forward_kvcache"));
  const kvCases = expandSweep(tinySpec, { gpu: true }).filter(isKvCacheCase);

  test("each KV-cache path passes the fp64 reference check on its small case", async () => {
    const checks = new KernelChecks();
    for (const c of kvCases.filter((x) => x.kvcache.pageSize || x.kvcache.append || x.seqlenQ > 1)) {
      const check = await checks.verify(cpu!, c, "flash");
      expect(check.pass).toBe(true);
      expect(check.relativeError!).toBeLessThanOrEqual(check.limit!);
      expect(check.shape).toContain(c.kvcache.pageSize ? `paged${c.kvcache.pageSize}` : "kvcache");
    }
  }, 120_000);

  test("each query count of a decode case is checked on its own small case (seqlen_q picks the decode tiling)", async () => {
    const checks = new KernelChecks();
    const plain = (q: number) => ({ ...expandSweep(tinySpec, { gpu: true })[0], seqlenQ: q, causal: true });
    const two = await checks.verify(cpu!, plain(2), "flash");
    const four = await checks.verify(cpu!, plain(4), "flash");
    expect([two.pass, four.pass]).toEqual([true, true]);
    expect(two.shape).toContain("q2 ");
    expect(four.shape).toContain("q4 ");
  }, 120_000);

  test("a KV-cache kernel whose output is wrong fails the check; the plain forward of the same library passes", async () => {
    const paged = kvCases.find((c) => c.kvcache.pageSize === 16)!;
    const check = await new KernelChecks().verify(broken(), paged, "flash");
    expect(check.pass).toBe(false);
    expect(check.relativeError!).toBeGreaterThan(check.limit!);
    const plain = expandSweep(tinySpec, { gpu: true })[0];
    expect((await new KernelChecks().verify(broken(), plain, "flash")).pass).toBe(true);
  }, 120_000);

  test("a short decode run: every case timed and checked, KV-cache rows not timed when their kernel is wrong", async () => {
    const found = findBackends(tinySpec, { backend: "cpu", env: {} });
    const run = (backend: Backend) =>
      runBench({ preset: "decode", spec: tinySpec, backend: "cpu", baselines: ["naive"], timing, maxSeconds: 1e9,
        env: {}, backends: { ...found, usable: [backend] } });
    const report = await run(cpu!);
    const copy = report.copyBandwidth.find((x) => x.place === "cpu")!;
    expect(copy.gbps).toBeGreaterThan(0);
    for (const c of report.cases) {
      const ours = report.measurements.find((m) => m.caseId === c.id && m.impl === "flashattn-cpu")!;
      expect(ours.status).toBe("ok");
      expect(ours.check!.pass).toBe(true);
      expect(ours.gbps!).toBeCloseTo(decodeBytes(c) / (ours.timing!.medianMs * 1e-3) / 1e9, 6);
      expect(ours.copyFraction!).toBeCloseTo(ours.gbps! / copy.gbps, 9);
      const naive = report.measurements.find((m) => m.caseId === c.id && m.impl === "naive-cpu")!;
      expect(naive.equivalent).toBe(baselineEquivalent(c));
      if (naive.status === "ok") {
        expect(naive.gbps!).toBeCloseTo(decodeBytes(baselineProblem(c)) / (naive.timing!.medianMs * 1e-3) / 1e9, 6);
      }
    }
    // Every KV-cache case has its reference case in this sweep, so each gets its ratio.
    expect(report.comparisons!.map((x) => x.caseId).sort()).toEqual(report.cases.filter((c) => c.kvcache).map((c) => c.id).sort());
    const json = JSON.parse(JSON.stringify(report)) as BenchReport;
    expect(json.cases.find((c) => c.kvcache?.pageSize === 256)!.kvcache).toEqual({ pageSize: 256, append: 0, rotary: false });

    const wrong = await run(broken());
    for (const m of wrong.measurements.filter((x) => x.impl === "flashattn-cpu")) {
      const c = wrong.cases.find((x) => x.id === m.caseId)!;
      if (c.kvcache) {
        expect(m.status).toBe("error");
        expect(m.timing).toBeUndefined();
        expect(m.reason).toContain("not timed: the kernel failed the reference check");
      } else expect(m.status).toBe("ok");
    }
  }, 300_000);
});

describe.skipIf(!cpu)("flashattn bench --preset decode --json on the CPU (skipped without the CPU library)", () => {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-bench-kv-"));
  afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

  test("the JSON carries the KV-cache cases, their checks, bytes and ratios; the CSV and chart are written", () => {
    const root = path.join(import.meta.dir, "..");
    const [csv, chart] = [path.join(scratch, "d.csv"), path.join(scratch, "d.svg")];
    const run = spawnSync(path.join(root, "node_modules", ".bin", "bun"), [
      path.join(root, "cli.ts"), "bench", "--preset", "decode", "--backend", "cpu", "--seqlen", "256", "--batch", "1",
      "--heads", "4", "--heads-kv", "2", "--hdim", "32", "--baselines", "none", "--iters", "2", "--warmup", "0",
      "--min-iters", "1", "--json", "--quiet", "--csv", csv, "--chart", chart,
    ], { encoding: "utf8", timeout: 240_000, env: { ...process.env, FLASHATTN_BACKEND: undefined, NO_COLOR: "1" } });
    expect(run.status).toBe(0);
    const report = JSON.parse(run.stdout) as BenchReport;
    const kv = report.cases.filter((c) => c.kvcache);
    expect(kv.length).toBe(report.cases.length - report.cases.filter((c) => !c.kvcache).length);
    expect(kv.some((c) => c.kvcache!.pageSize === 64)).toBe(true);
    for (const c of kv) {
      const m = report.measurements.find((x) => x.caseId === c.id && x.impl === "flashattn-cpu")!;
      expect(m.check!.pass).toBe(true);
      expect(m.gbps).toBeGreaterThan(0);
    }
    expect(report.comparisons!.length).toBe(kv.length);
    expect(fs.readFileSync(csv, "utf8").split("\r\n")[0]).toContain("ratio_to_reference");
    parseXml(fs.readFileSync(chart, "utf8"));
  }, 300_000);
});
