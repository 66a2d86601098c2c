// `flashattn bench --preset context-parallel`: ring attention (lib/ring.ts) over every GPU through NCCL on long
// sequences (128k..1M tokens, causal and not, head dim 128, bf16), against one GPU running the same problem whole.
// Per case: the ring's time with the transfers overlapped (the real thing), the time without overlap and the part of
// it spent waiting for transfers (the communication share), the single-GPU time, and the scaling efficiency
// T1 / (N · TN). Times are host wall clock around the whole pass (every device synchronised), median of the timed
// runs; inputs are device memory filled with one small bf16 value (timing does not depend on the values).
import type { Backend, DeviceBuffer } from "../lib/backend.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { NcclRing, ncclMissingError, openNccl } from "../lib/nccl.ts";
import type { Problem } from "../lib/problem.ts";
import { describeRingProblem, type RingTransport, ringAttention, ringAttentionBackward, shardOf } from "../lib/ring.ts";
import { chooseBackend, paramsFor } from "../lib/select.ts";
import { dtypeBytes } from "../lib/vocabulary.ts";
import { summarize } from "./stats.ts";
import { parseCausal, parseSizeList } from "./sweep.ts";

export const CONTEXT_PARALLEL_PRESET = "context-parallel";

export interface ContextParallelSpec {
  seqlens: number[];
  causal: boolean[];
  directions: Array<"fwd" | "bwd">;
  heads: number;
  headsKv: number;
  headDim: number;
  warmup: number;
  iters: number;
}

const k = 1024;
export const contextParallelDefaults: ContextParallelSpec = {
  seqlens: [128 * k, 256 * k, 512 * k, 1024 * k], causal: [true, false], directions: ["fwd", "bwd"],
  heads: 16, headsKv: 16, headDim: 128, warmup: 1, iters: 3,
};

/** 0x3c in both bytes of a bf16: 0.0115, small enough that no softmax overflows. */
const FILL_BYTE = 0x3c;

export interface ContextParallelCase {
  seqlen: number;
  causal: boolean;
  direction: "fwd" | "bwd";
  ranks: number;
  /** The ring, transfers overlapped with compute. */
  ringMs: number;
  /** The ring with each transfer waited for before computing, and the time of those waits. */
  ringNoOverlapMs: number;
  communicationMs: number;
  /** communicationMs / ringNoOverlapMs */
  communicationShare: number;
  /** One GPU running the whole problem (null when it did not fit or failed: see singleError). */
  singleMs: number | null;
  singleError?: string;
  /** singleMs / (ranks · ringMs) */
  efficiency: number | null;
}

export interface ContextParallelReport {
  preset: typeof CONTEXT_PARALLEL_PRESET;
  transport: string;
  ranks: number;
  spec: ContextParallelSpec;
  cases: ContextParallelCase[];
}

/** Every rank's shard buffers for one problem, on its device, filled; freed by release(). */
function allocateShards(t: RingTransport, p: Problem) {
  const held: Array<{ rank: number; buffer: DeviceBuffer }> = [];
  const alloc = (rank: number, bytes: number, fill = true) => {
    t.use(rank);
    const buffer = t.backend.alloc(bytes);
    held.push({ rank, buffer });
    if (fill) t.backend.fill(buffer, FILL_BYTE);
    return buffer;
  };
  const elt = dtypeBytes[p.dtype];
  const shards = Array.from({ length: t.ranks }, (_, r) => {
    const rows = shardOf(p.seqlenQ, t.ranks, r).rows;
    const q = p.batch * rows * p.headsQ * p.headDim * elt, kv = p.batch * rows * p.headsKv * p.headDim * elt;
    return {
      q: alloc(r, q), k: alloc(r, kv), v: alloc(r, kv), o: alloc(r, q), lse: alloc(r, p.batch * p.headsQ * rows * 4, false),
      dout: alloc(r, q), dq: alloc(r, q, false), dk: alloc(r, kv, false), dv: alloc(r, kv, false),
    };
  });
  const release = () => {
    for (const { rank, buffer } of held.splice(0)) {
      t.use(rank);
      t.backend.free(buffer);
    }
  };
  return { shards, release };
}

/** Median host time of `iters` runs of `pass` after `warmup` untimed ones; `pass` returns its time in ms. */
function timed(warmup: number, iters: number, pass: () => { totalMs: number; communicationMs: number }) {
  for (let i = 0; i < warmup; i++) pass();
  const runs = Array.from({ length: iters }, pass);
  const median = (values: number[]) => summarize(values).medianMs;
  return { ms: median(runs.map((r) => r.totalMs)), communicationMs: median(runs.map((r) => r.communicationMs)) };
}

/** One GPU running the whole problem through the ordinary forward / backward, timed the same way. */
function singleDevice(backend: Backend, p: Problem, direction: "fwd" | "bwd", warmup: number, iters: number): number {
  const elt = dtypeBytes[p.dtype];
  const q = p.batch * p.seqlenQ * p.headsQ * p.headDim * elt, kv = p.batch * p.seqlenK * p.headsKv * p.headDim * elt;
  const sizes = { q, k: kv, v: kv, o: q, lse: p.batch * p.headsQ * p.seqlenQ * 4, dout: q, dq: q, dk: kv, dv: kv };
  const buffers: DeviceBuffer[] = [];
  try {
    const b = Object.fromEntries(Object.entries(sizes).map(([name, bytes]) => {
      const buffer = backend.alloc(bytes);
      buffers.push(buffer);
      backend.fill(buffer, FILL_BYTE);
      return [name, buffer.address];
    })) as Record<keyof typeof sizes, bigint>;
    const request = { problem: p, direction } as const;
    const params = paramsFor(request, b);
    backend.forward(paramsFor({ problem: p, direction: "fwd" }, b)); // a real O and LSE for the backward
    const pass = () => {
      const t0 = performance.now();
      if (direction === "fwd") backend.forward(params);
      else backend.backward(params);
      backend.synchronize();
      return { totalMs: performance.now() - t0, communicationMs: 0 };
    };
    return timed(warmup, iters, pass).ms;
  } finally {
    for (const buffer of buffers) backend.free(buffer);
  }
}

/** Measures one case on a ring (and, when `single` is given, on that backend's current device alone). */
export function measureContextParallelCase(
  t: RingTransport, seqlen: number, causal: boolean, direction: "fwd" | "bwd", spec: ContextParallelSpec, single?: Backend,
): ContextParallelCase {
  const shape = (heads: number) => ({ dtype: "bf16" as const, shape: [1, seqlen, heads, spec.headDim] });
  const problem = describeRingProblem(shape(spec.heads), shape(spec.headsKv), shape(spec.headsKv), { causal });
  const { shards, release } = allocateShards(t, problem);
  let ring, serial;
  try {
    if (direction === "bwd") ringAttention(t, problem, shards); // the backward's O and LSE
    const pass = (overlap: boolean) => () =>
      direction === "fwd" ? ringAttention(t, problem, shards, { overlap }) : ringAttentionBackward(t, problem, shards, { overlap });
    ring = timed(spec.warmup, spec.iters, pass(true));
    serial = timed(spec.warmup, spec.iters, pass(false));
  } finally {
    release();
  }
  let singleMs: number | null = null, singleError: string | undefined;
  if (single) {
    try {
      t.use(0);
      singleMs = singleDevice(single, problem, direction, spec.warmup, spec.iters);
    } catch (e) {
      singleError = (e as Error).message;
    }
  }
  return {
    seqlen, causal, direction, ranks: t.ranks, ringMs: ring.ms, ringNoOverlapMs: serial.ms, communicationMs: serial.communicationMs,
    communicationShare: serial.ms > 0 ? serial.communicationMs / serial.ms : 0,
    singleMs, ...(singleError ? { singleError } : {}),
    efficiency: singleMs === null ? null : singleMs / (t.ranks * ring.ms),
  };
}

/** The flags this preset reads (the rest of bench's flags do not apply to it). */
export interface ContextParallelFlags {
  seqlen?: string;
  causal?: string;
  direction?: string;
  heads?: string;
  headsKv?: string;
  warmup?: string;
  iters?: string;
}

const usage = (message: string): never => {
  throw new FlashAttnError("USAGE", message);
};

export function parseContextParallelFlags(raw: ContextParallelFlags): ContextParallelSpec {
  const one = (flag: string, text: string | undefined, fallback: number, min: number) => {
    if (text === undefined) return fallback;
    const value = /^\d+$/.test(text.trim()) ? Number(text) : NaN;
    return Number.isSafeInteger(value) && value >= min && value <= 1 << 20 ? value : usage(`--${flag} must be a whole number ≥ ${min}, got '${text}'`);
  };
  const directions = raw.direction === undefined ? contextParallelDefaults.directions : raw.direction.split(",").map((d) => d.trim());
  for (const d of directions) if (d !== "fwd" && d !== "bwd") usage(`--direction for ${CONTEXT_PARALLEL_PRESET} takes fwd and bwd, not "${d}"`);
  const spec: ContextParallelSpec = {
    ...contextParallelDefaults,
    seqlens: raw.seqlen === undefined ? contextParallelDefaults.seqlens : parseSizeList("seqlen", raw.seqlen, 1 << 24),
    causal: raw.causal === undefined ? contextParallelDefaults.causal : parseCausal(raw.causal),
    directions: directions as Array<"fwd" | "bwd">,
    heads: one("heads", raw.heads, contextParallelDefaults.heads, 1),
    warmup: one("warmup", raw.warmup, contextParallelDefaults.warmup, 0),
    iters: one("iters", raw.iters, contextParallelDefaults.iters, 1),
  };
  spec.headsKv = one("heads-kv", raw.headsKv, spec.heads, 1);
  if (spec.heads % spec.headsKv !== 0) usage(`--heads (${spec.heads}) must be a multiple of --heads-kv (${spec.headsKv})`);
  return spec;
}

/** Runs the preset over every visible GPU (CUDA_VISIBLE_DEVICES chooses them). */
export function runContextParallelBench(spec: ContextParallelSpec, progress: (line: string) => void): ContextParallelReport {
  const probe = describeRingProblem({ dtype: "bf16", shape: [1, 1024, spec.heads, spec.headDim] }, { dtype: "bf16", shape: [1, 1024, spec.headsKv, spec.headDim] },
    { dtype: "bf16", shape: [1, 1024, spec.headsKv, spec.headDim] });
  const decision = chooseBackend({ problem: probe, direction: "fwd" }, { backend: "cuda" });
  const backend = decision.chosen;
  if (!backend) {
    throw new FlashAttnError("NO_BACKEND", `${CONTEXT_PARALLEL_PRESET} needs the cuda backend with a GPU: ${decision.decisions.find((d) => d.backend === "cuda")?.reasons[0] ?? "not usable"}`,
      "run it on a machine with NVIDIA GPUs and a built libflashattn_cuda.so");
  }
  const { nccl, attempts } = openNccl();
  if (!nccl) throw ncclMissingError(attempts);
  const gpus = backend.deviceCount();
  const ring = new NcclRing(backend, nccl, Array.from({ length: gpus }, (_, i) => i));
  try {
    if (gpus === 1) progress(`flashattn bench: one GPU: the ring of 1 against the plain call (scaling needs several GPUs)`);
    const cases: ContextParallelCase[] = [];
    for (const seqlen of spec.seqlens) {
      for (const causal of spec.causal) {
        for (const direction of spec.directions) {
          progress(`flashattn bench: ${direction} seqlen ${seqlen}${causal ? " causal" : ""} over ${gpus} GPU${gpus === 1 ? "" : "s"}…`);
          cases.push(measureContextParallelCase(ring, seqlen, causal, direction, spec, backend));
        }
      }
    }
    return { preset: CONTEXT_PARALLEL_PRESET, transport: ring.description, ranks: gpus, spec, cases };
  } finally {
    ring.close();
  }
}

const pct = (x: number | null) => (x === null ? "—" : `${(100 * x).toFixed(1)}%`);
const ms = (x: number | null) => (x === null ? "—" : x >= 100 ? x.toFixed(0) : x.toFixed(2));

/** The human table. */
export function renderContextParallel(r: ContextParallelReport): string {
  const header = ["seqlen", "mask", "dir", "ring ms", "no overlap ms", "comm share", "1 GPU ms", `efficiency (${r.ranks} GPUs)`];
  const rows = r.cases.map((c) => [
    String(c.seqlen), c.causal ? "causal" : "full", c.direction, ms(c.ringMs), ms(c.ringNoOverlapMs), pct(c.communicationShare),
    c.singleMs === null ? `— (${c.singleError?.slice(0, 40) ?? "not run"})` : ms(c.singleMs), pct(c.efficiency),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((cell, i) => cell.padStart(widths[i])).join("  ");
  return [`context parallelism over ${r.transport}`, line(header), ...rows.map(line)].join("\n") + "\n";
}
