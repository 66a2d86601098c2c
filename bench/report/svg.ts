// The chart of `--chart FILE.svg`, drawn like flash-attention's README figures: one panel per (direction, head dim,
// causal), sequence length along x, TFLOP/s up y (GB/s moved for decode), a bar per implementation with its value
// on top. A case an implementation could not run gets its status word (OOM, n/a, skipped) where the bar would be,
// so the naive algorithm's memory wall is visible. Plain SVG 1.1 with a <title> per bar (hover for the exact
// figure), readable in any browser; no scripts, no external fonts.
import type { BenchReport, Measurement } from "../results.ts";
import { type BenchCase, layoutText } from "../sweep.ts";
import { formatRate, measuredImpls } from "./table.ts";

// Colour-blind-safe palette (Okabe–Ito), ours first.
const palette = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000", "#999999"];

const escapeXml = (s: string) =>
  s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;");

// The tooltip's "exact figure": four significant digits whatever the magnitude, so a CPU's 0.0312 TFLOP/s or a
// 0.0042 ms decode call reads as itself, not as 0.0.
const exactFigure = (v: number) => String(Number(v.toPrecision(4)));

const seqLabel = (n: number) => (n >= 1024 && n % 1024 === 0 ? `${n / 1024}k` : String(n));

/** A round axis maximum (1, 2, 2.5 or 5 × 10^k) at or above `v`. */
export function niceCeiling(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

interface Panel {
  title: string;
  cases: BenchCase[];
}

/**
 * Cases grouped into panels: everything but the sequence length (and the batch that follows it) is fixed; a
 * KV-cache case's panel names its entry and cache ("kvcache paged16"), so the two entries never share a panel.
 */
export function panelsOf(cases: BenchCase[]): Panel[] {
  const panels = new Map<string, Panel>();
  for (const c of cases) {
    const heads = c.headsQ === c.headsKv ? `${c.headsQ} heads` : `${c.headsQ}/${c.headsKv} heads`;
    const title =
      `${c.direction} · head dim ${c.headDim} · ${c.causal ? "causal" : "non-causal"} · ${heads} · ${c.dtype}` +
      (c.kind === "decode" ? ` · ${c.seqlenQ} query token${c.seqlenQ > 1 ? "s" : ""}` : "") +
      (c.kvcache ? ` · ${layoutText(c.kvcache)}` : "");
    if (!panels.has(title)) panels.set(title, { title, cases: [] });
    panels.get(title)!.cases.push(c);
  }
  return [...panels.values()];
}

const metricOf = (c: BenchCase, m: Measurement | undefined) => (c.kind === "decode" ? m?.gbps : m?.tflops);
const statusLabel: Record<Measurement["status"], string> = {
  ok: "",
  oom: "OOM",
  unsupported: "n/a",
  skipped: "skip",
  error: "err",
};

export function renderSvg(report: BenchReport, opts: { title?: string } = {}): string {
  const impls = measuredImpls(report);
  const colour = new Map(impls.map((impl, i) => [impl, palette[i % palette.length]]));
  const rows = new Map<string, Measurement>();
  for (const m of report.measurements) rows.set(`${m.caseId}\u0000${m.impl}`, m);
  const panels = panelsOf(report.cases);

  // Bars are 9..14 px wide; a panel is at least wide enough for its title. Two panels a row (causal off | on).
  const groupGap = 14, plotH = 220, left = 60, top = 34, bottom = 46, panelGap = 24;
  // Wide enough for the longest panel title (bold 12 px: under 7.6 px a character) and at least 340 px.
  const minPlotW = Math.max(340, ...panels.map((p) => p.title.length * 7.6 - left + 16));
  const groupsMax = Math.max(1, ...panels.map((p) => p.cases.length));
  const plotW = Math.max(minPlotW, groupsMax * (impls.length * 9 + groupGap));
  const bar = Math.min(14, (plotW / groupsMax - groupGap) / Math.max(1, impls.length));
  const panelW = left + plotW + 16, panelH = top + plotH + bottom;
  const columns = panels.length > 1 ? 2 : 1;
  const width = columns * panelW + (columns - 1) * panelGap + 20;
  const legendPerRow = Math.max(1, Math.floor((width - 20) / 170));
  const legendH = 28 + 18 * Math.ceil(impls.length / legendPerRow);
  const height = legendH + Math.ceil(panels.length / columns) * (panelH + panelGap) + 10;

  const out: string[] = [];
  out.push(`<?xml version="1.0" encoding="UTF-8"?>`);
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif">`,
  );
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  // A report may mix prefill and decode cases: each bar's unit follows its case, the heading names both.
  const unitOf = (c: BenchCase) => (c.kind === "decode" ? "GB/s moved" : "TFLOP/s");
  const units = [...new Set(report.cases.map(unitOf))];
  const what = report.config.model ? `--model ${report.config.model}` : `--preset ${report.config.preset}`;
  const heading = opts.title ?? `flashattn bench ${what}: ${units.join("; ") || "TFLOP/s"}`;
  out.push(`<text x="10" y="18" font-size="14" font-weight="bold">${escapeXml(heading)}</text>`);
  impls.forEach((impl, i) => {
    const x = 10 + (i % legendPerRow) * 170, y = 30 + 18 * Math.floor(i / legendPerRow);
    out.push(`<rect x="${x}" y="${y}" width="12" height="12" fill="${colour.get(impl)}"/>`);
    out.push(`<text x="${x + 17}" y="${y + 10}" font-size="11">${escapeXml(impl)}</text>`);
  });

  panels.forEach((panel, p) => {
    const ox = 10 + (p % columns) * (panelW + panelGap);
    const oy = legendH + Math.floor(p / columns) * (panelH + panelGap);
    const values = panel.cases.flatMap((c) => impls.map((impl) => metricOf(c, rows.get(`${c.id}\u0000${impl}`)) ?? 0));
    // Decode panels carry the device's copy bandwidth (measured in the same run) as a dashed reference line.
    const copy = panel.cases[0].kind === "decode"
      ? report.copyBandwidth.find((x) => x.place !== "cpu") ?? report.copyBandwidth[0]
      : undefined;
    const yMax = niceCeiling(Math.max(...values, copy?.gbps ?? 0));
    const y = (v: number) => oy + top + plotH - (v / yMax) * plotH;
    out.push(`<g class="panel">`);
    out.push(
      `<text x="${ox + left}" y="${oy + 16}" font-size="12" font-weight="bold">${escapeXml(panel.title)}</text>`,
    );
    for (let t = 0; t <= 4; t++) {
      const v = (yMax * t) / 4;
      out.push(`<line x1="${ox + left}" x2="${ox + left + plotW}" y1="${y(v)}" y2="${y(v)}" stroke="#dddddd"/>`);
      out.push(
        `<text x="${ox + left - 4}" y="${y(v) + 3}" font-size="9" text-anchor="end">${Number(v.toPrecision(3))}</text>`,
      );
    }
    out.push(
      `<text transform="translate(${ox + 12},${
        oy + top + plotH / 2
      }) rotate(-90)" font-size="10" text-anchor="middle">${unitOf(panel.cases[0])}</text>`,
    );
    const seqCount = new Map<number, number>();
    for (const c of panel.cases) seqCount.set(c.seqlenK, (seqCount.get(c.seqlenK) ?? 0) + 1);
    panel.cases.forEach((c, g) => {
      const step = plotW / groupsMax;
      const gx = ox + left + g * step + (step - impls.length * bar) / 2;
      const label = (seqCount.get(c.seqlenK)! > 1 ? `b${c.batch} ` : "") + seqLabel(c.seqlenK);
      out.push(
        `<text x="${gx + (impls.length * bar) / 2}" y="${
          oy + top + plotH + 14
        }" font-size="10" text-anchor="middle">${label}</text>`,
      );
      impls.forEach((impl, i) => {
        const m = rows.get(`${c.id}\u0000${impl}`);
        const bx = gx + i * bar;
        const v = metricOf(c, m);
        if (m && m.status === "ok" && v !== undefined && Number.isFinite(v)) {
          const tip = `${impl}, ${c.id}: ${exactFigure(v)} ${unitOf(c)}, ${exactFigure(m.timing!.medianMs)} ms`;
          out.push(
            `<rect class="bar" data-impl="${escapeXml(impl)}" data-case="${
              escapeXml(c.id)
            }" data-value="${v}" x="${bx}" y="${y(v)}" width="${bar - 1}" height="${oy + top + plotH - y(v)}" fill="${
              colour.get(impl)
            }"><title>${escapeXml(tip)}</title></rect>`,
          );
          out.push(
            `<text transform="translate(${bx + bar / 2 + 3},${y(v) - 3}) rotate(-90)" font-size="8">${
              formatRate(v)
            }</text>`,
          );
        } else if (m && m.status !== "ok") {
          out.push(
            `<text transform="translate(${bx + bar / 2 + 3},${
              oy + top + plotH - 3
            }) rotate(-90)" font-size="8" fill="#b00000"><title>${
              escapeXml(`${impl}, ${c.id}: ${m.reason ?? m.status}`)
            }</title>${statusLabel[m.status]}</text>`,
          );
        }
      });
    });
    if (copy) {
      out.push(
        `<line class="copy" x1="${ox + left}" x2="${ox + left + plotW}" y1="${y(copy.gbps)}" y2="${
          y(copy.gbps)
        }" stroke="#555555" stroke-dasharray="5,3"/>`,
      );
      out.push(
        `<text x="${ox + left + 4}" y="${y(copy.gbps) - 4}" font-size="9" fill="#555555">copy bandwidth ${
          formatRate(copy.gbps)
        } GB/s (${escapeXml(copy.place)})</text>`,
      );
    }
    out.push(`<line x1="${ox + left}" x2="${ox + left + plotW}" y1="${y(0)}" y2="${y(0)}" stroke="#333333"/>`);
    out.push(
      `<text x="${ox + left + plotW / 2}" y="${oy + top + plotH + 32}" font-size="10" text-anchor="middle">${
        panel.cases[0].kind === "decode" ? "KV length" : "sequence length"
      }</text>`,
    );
    out.push(`</g>`);
  });
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}
