// Summaries of per-iteration times. The median is the figure (robust to the odd preempted run on a shared
// machine); the spread is the interquartile range relative to the median, so "±" reads the same for 0.1 ms and
// 100 ms kernels.

export interface TimingSummary {
  iters: number;
  medianMs: number;
  minMs: number;
  maxMs: number;
  p25Ms: number;
  p75Ms: number;
  /** (p75 − p25) / median: 0.02 means the middle half of the runs lies within 2 % of the median's size. */
  spread: number;
}

/** Linear-interpolated quantile q in [0, 1] of an ascending array. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const pos = (n - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(n - 1, lo + 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** Summary of positive, finite times; anything else in the input is a measurement bug and throws. */
export function summarize(timesMs: ArrayLike<number>): TimingSummary {
  const sorted = Float64Array.from(timesMs).sort();
  if (sorted.length === 0) throw new Error("no timed iterations to summarize");
  for (const t of sorted) if (!Number.isFinite(t) || t < 0) throw new Error(`invalid iteration time ${t} ms`);
  const median = quantile(sorted, 0.5);
  const p25 = quantile(sorted, 0.25);
  const p75 = quantile(sorted, 0.75);
  return {
    iters: sorted.length,
    medianMs: median,
    minMs: sorted[0],
    maxMs: sorted[sorted.length - 1],
    p25Ms: p25,
    p75Ms: p75,
    spread: median > 0 ? (p75 - p25) / median : 0,
  };
}

/** Geometric mean of positive ratios (the fair average of speed-ups); NaN for none. */
export function geometricMean(values: number[]): number {
  const usable = values.filter((v) => Number.isFinite(v) && v > 0);
  if (usable.length === 0) return NaN;
  return Math.exp(usable.reduce((s, v) => s + Math.log(v), 0) / usable.length);
}
