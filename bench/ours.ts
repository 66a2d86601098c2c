// Measures one case on one of our backends (the flash kernels, or the library's naive materialised-scores
// algorithm): plan, check the memory it needs, allocate and fill, record the peak memory of one call, then time
// natively through fa_bench (CUDA/HIP events or a monotonic clock, last-level cache flushed before each run).
import os from "node:os";
import type { Backend, DeviceBuffer } from "../lib/backend.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { type AttentionSemantics, describeProblem, type Problem, standardAlibiSlopes } from "../lib/problem.ts";
import { type AttnRequest, paramsFor } from "../lib/select.ts";
import { fromFloat32, rng } from "../lib/tensor.ts";
import { dtypeBytes } from "../lib/vocabulary.ts";
import { attentionFlops, naiveScoreBytes, tensorBytes } from "./flops.ts";
import type { Measurement, RowStatus } from "./results.ts";
import { summarize } from "./stats.ts";
import { hostFact } from "./machine.ts";
import { baselineEquivalent, baselineProblem, type BenchCase } from "./sweep.ts";
import {
  isKvCacheCase,
  type KvCacheCase,
  kvcacheBufferBytes,
  kvcacheProblem,
  prepareKvcache,
} from "./kvcache.ts";

export type Algorithm = "flash" | "naive";

export interface TimingPlan {
  warmup: number;
  iters: number;
  /** Fewest timed runs for a slow case (the median of fewer says little). */
  minIters: number;
  /** Kernel time one case may spend timed; slow cases get fewer runs, down to minIters. */
  caseBudgetMs: number;
}

/**
 * Milliseconds per FLOP learnt from the cases already timed, per implementation and direction. It predicts a case
 * before it runs, so that a slow implementation (our CPU library in a GPU sweep) skips the shapes it would spend
 * minutes on instead of holding up the sweep.
 */
export class SpeedMemory {
  readonly #msPerFlop = new Map<string, number>();
  learn(key: string, flops: number, ms: number): void {
    if (flops > 0 && ms > 0) this.#msPerFlop.set(key, ms / flops);
  }
  predictMs(key: string, flops: number): number | undefined {
    const rate = this.#msPerFlop.get(key);
    return rate === undefined ? undefined : rate * flops;
  }
  /**
   * Why `key` should not attempt a case of `flops`: one run predicted over four times the per-case budget (a case
   * costs about four runs even when timed once: the check, the memory figure, the estimate and the run itself).
   */
  skipReason(key: string, flops: number, plan: TimingPlan): string | undefined {
    const predicted = this.predictMs(key, flops);
    if (predicted === undefined || predicted <= 4 * plan.caseBudgetMs) return undefined;
    return `one run would take about ${(predicted / 1000).toFixed(1)} s, over four times the per-case budget of ${
      (plan.caseBudgetMs / 1000).toFixed(1)
    } s`;
  }
}

/**
 * The runs a case gets once one warm run took `estimateMs`: none more when that run is over half the budget (the
 * estimate is the figure, with a note); else a warm-up that takes at most a quarter of the budget and as many
 * timed runs as fit the budget, between minIters and iters. The Python workers apply the same rule.
 */
export function runsFor(estimateMs: number, plan: TimingPlan): { warmup: number; iters: number } | null {
  if (estimateMs > plan.caseBudgetMs / 2) return null;
  const per = Math.max(estimateMs, 1e-3);
  return {
    warmup: Math.max(1, Math.min(plan.warmup, Math.floor(plan.caseBudgetMs / 4 / per))),
    iters: Math.max(plan.minIters, Math.min(plan.iters, Math.floor(plan.caseBudgetMs / per))),
  };
}

/** The library's view of a bench case (padded batch, no window, default scale), described like any other problem. */
/** The semantics of a case: causal, and a model's window, softcap and standard ALiBi slopes (bench --model). */
export function caseSemantics(c: BenchCase): AttentionSemantics {
  return {
    causal: c.causal,
    ...(c.window ? { window: c.window } : {}),
    ...(c.softcap ? { softcap: c.softcap } : {}),
    ...(c.alibi ? { alibiSlopes: standardAlibiSlopes(c.headsQ) } : {}),
  };
}

export function problemFor(c: BenchCase): Problem {
  const kv = { dtype: c.dtype, shape: [c.batch, c.seqlenK, c.headsKv, c.headDim] };
  return describeProblem({ dtype: c.dtype, shape: [c.batch, c.seqlenQ, c.headsQ, c.headDim] }, kv, kv, caseSemantics(c));
}

export const implName = (algorithm: Algorithm, backend: string) =>
  `${algorithm === "flash" ? "flashattn" : "naive"}-${backend}`;

// A 1 MiB block of standard-normal values per dtype, tiled over every input: random enough that the GPU does not
// run the cooler, faster path it takes on constant data, and cheap to make for multi-GiB KV caches.
const RANDOM_BLOCK_ELEMENTS = 1 << 19;
const randomBlocks = new Map<string, ArrayBufferView>();
function randomBlock(dtype: BenchCase["dtype"]): ArrayBufferView {
  let block = randomBlocks.get(dtype);
  if (!block) {
    const next = rng(0x5eed);
    const values = new Float32Array(dtype === "fp32" ? RANDOM_BLOCK_ELEMENTS / 2 : RANDOM_BLOCK_ELEMENTS);
    for (let i = 0; i < values.length; i++) {
      values[i] = Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
    }
    block = fromFloat32(dtype, [values.length], values).data;
    randomBlocks.set(dtype, block);
  }
  return block;
}

const offsetView = (b: DeviceBuffer, offset: number): DeviceBuffer => ({
  address: b.address + BigInt(offset),
  bytes: b.bytes - offset,
});

/** Fills `dst` with the tiled random block: one upload, then device copies doubling the filled prefix. */
function fillRandom(backend: Backend, dst: DeviceBuffer, source: DeviceBuffer): void {
  const first = Math.min(dst.bytes, source.bytes);
  backend.copy(dst, source, first);
  for (let done = first; done < dst.bytes;) {
    const n = Math.min(done, dst.bytes - done);
    backend.copy(offsetView(dst, done), dst, n);
    done += n;
  }
}

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;

/**
 * Bytes one case may take on this backend's device: most of a GPU's memory; half of the host's free memory, or a
 * quarter of its total where the runtime will not say what is free (Deno without --allow-sys). Never unbounded: a
 * sweep's sizes must not drive allocations nobody checked.
 */
export function memoryLimit(backend: Backend): number {
  const total = Number(backend.deviceInfo(0).memory_bytes ?? 0);
  if (backend.name === "cpu") return hostFact(() => os.freemem() / 2) ?? (total > 0 ? total / 4 : 1 << 30);
  return total > 0 ? total * 0.92 : 1 << 30;
}

function statusOf(error: unknown): { status: RowStatus; reason: string } {
  const reason = (error as Error).message.split("\n")[0];
  if (error instanceof FlashAttnError) {
    if (error.code === "OUT_OF_MEMORY") return { status: "oom", reason };
    if (error.code === "UNSUPPORTED" || error.code === "INVALID_ARGUMENT") return { status: "unsupported", reason };
  }
  return { status: "error", reason };
}

export interface OursContext {
  plan: TimingPlan;
  memoryLimitBytes: number;
  speeds: SpeedMemory;
}

/**
 * What measuring one case needs from the entry it times: the bytes it will allocate, and, given an allocator, the
 * call ready to run once (returning the kernel's name) and to be timed.
 */
interface Runner {
  needBytes: number;
  /** `own` takes each buffer the call allocates (measureOurs frees them all, whatever happens). */
  prepare(own: (b: DeviceBuffer) => DeviceBuffer, filler: RandomFiller): PreparedCall;
}

interface PreparedCall {
  /** One call (forward, then backward for those directions); the kernel(s) that ran. */
  once(): string;
  /** Per-run milliseconds after `warmup` untimed runs. */
  time(warmup: number, iters: number): number[];
}

/** Fills device buffers with the tiled random block, uploaded once per case. */
interface RandomFiller {
  fill(dst: DeviceBuffer): void;
}

/** What a plain case asks of fa_forward / fa_backward (problemFor throws on a shape the library cannot take). */
export function requestFor(c: BenchCase, algorithm: Algorithm): AttnRequest {
  return {
    problem: problemFor(c),
    direction: c.direction,
    algorithm,
    alibi: c.alibi ? "per-head" : "none",
    deterministic: c.deterministic,
  };
}

/** The plain forward (or backward) through fa_forward / fa_backward, timed inside the library by fa_bench. */
function forwardRunner(backend: Backend, c: BenchCase, algorithm: Algorithm): Runner | { unsupported: string } {
  let request: AttnRequest;
  try {
    request = requestFor(c, algorithm);
  } catch (error) {
    return { unsupported: (error as Error).message };
  }
  const placeholder = 0x100000n;
  const plan = backend.plan(
    paramsFor(request, {
      q: placeholder,
      k: placeholder,
      v: placeholder,
      o: placeholder,
      lse: placeholder,
      dout: placeholder,
      dq: placeholder,
      dk: placeholder,
      dv: placeholder,
      alibiSlopes: c.alibi ? placeholder : undefined,
    }),
    c.direction,
  );
  if (!plan.ok) return { unsupported: plan.reasons.join("; ") || "no kernel accepts this case" };
  return {
    needBytes: tensorBytes(c, c.direction) + (algorithm === "naive" ? naiveScoreBytes(c) : 0),
    prepare(own, filler) {
      const alloc = (bytes: number) => own(backend.alloc(bytes));
      const e = dtypeBytes[c.dtype];
      const qBytes = c.batch * c.seqlenQ * c.headsQ * c.headDim * e;
      const kBytes = c.batch * c.seqlenK * c.headsKv * c.headDim * e;
      const backwardToo = c.direction !== "fwd";
      // o is in the output dtype: bf16 for fp8 inputs
      const oBytes = (qBytes / e) * dtypeBytes[request.problem.outDtype];
      const [q, k, v, o] = [alloc(qBytes), alloc(kBytes), alloc(kBytes), alloc(oBytes)];
      const lse = alloc(c.batch * c.headsQ * c.seqlenQ * 4);
      const grads = backwardToo
        ? { dout: alloc(qBytes), dq: alloc(qBytes), dk: alloc(kBytes), dv: alloc(kBytes) }
        : undefined;
      const slopes = c.alibi ? own(backend.upload(standardAlibiSlopes(c.headsQ))) : undefined;
      for (const b of [q, k, v, ...(grads ? [grads.dout] : [])]) filler.fill(b);
      const params = paramsFor(request, {
        q: q.address,
        k: k.address,
        v: v.address,
        o: o.address,
        lse: lse.address,
        dout: grads?.dout.address,
        dq: grads?.dq.address,
        dk: grads?.dk.address,
        dv: grads?.dv.address,
        alibiSlopes: slopes?.address,
      });
      return {
        // The first forward checks the case runs at all and gives O and LSE to backward; for bwd alone the memory
        // figure is that of the backward call.
        once() {
          let kernel = backend.kernelName(backend.forward(params).kernelId);
          backend.synchronize();
          if (backwardToo) {
            if (c.direction === "bwd") backend.resetPeakMemory();
            kernel = `${kernel} + ${backend.kernelName(backend.backward(params).kernelId)}`;
            backend.synchronize();
          }
          return kernel;
        },
        time: (warmup, iters) => Array.from(backend.bench(params, c.direction, warmup, iters)),
      };
    },
  };
}

/** A KV-cache case through fa_forward_kvcache on device buffers (bench/kvcache.ts), timed by fa_bench_kvcache. */
function kvcacheRunner(backend: Backend, c: KvCacheCase): Runner | { unsupported: string } {
  try {
    kvcacheProblem(c);
  } catch (error) {
    return { unsupported: (error as Error).message };
  }
  return {
    needBytes: kvcacheBufferBytes(c),
    prepare(own, filler) {
      const call = prepareKvcache(backend, c, own, (_, shape) => {
        const b = own(backend.alloc(shape.reduce((x, y) => x * y, 1) * dtypeBytes[c.dtype]));
        filler.fill(b);
        return b;
      });
      return {
        once: () => backend.kernelName(backend.forwardKvcache(call.params).kernelId),
        time: (warmup, iters) => Array.from(backend.benchKvcache(call.params, warmup, iters)),
      };
    },
  };
}

/**
 * One row: the case on `backend` with `algorithm` (the naive algorithm, a baseline, times the plain equivalent of a
 * KV-cache case). Never throws for a problem of the case itself.
 */
export function measureOurs(backend: Backend, c: BenchCase, algorithm: Algorithm, ctx: OursContext): Measurement {
  const impl = implName(algorithm, backend.name);
  const equivalent = algorithm === "naive" ? baselineEquivalent(c) : undefined;
  const row = (status: RowStatus, extra: Partial<Measurement> = {}): Measurement => ({
    caseId: c.id,
    impl,
    family: algorithm === "flash" ? "ours" : "naive",
    place: backend.name,
    status,
    ...(equivalent ? { equivalent } : {}),
    ...extra,
  });
  const runner = isKvCacheCase(c) && algorithm === "flash"
    ? kvcacheRunner(backend, c)
    : forwardRunner(backend, baselineProblem(c), algorithm);
  if ("unsupported" in runner) return row("unsupported", { reason: runner.unsupported });

  if (runner.needBytes > ctx.memoryLimitBytes) {
    return row("oom", {
      reason: `needs ${gib(runner.needBytes)}, over the ${gib(ctx.memoryLimitBytes)} this device can give (not attempted)`,
    });
  }
  const flops = attentionFlops(c, c.direction);
  const speedKey = `${impl} ${c.direction}`;
  const tooSlow = ctx.speeds.skipReason(speedKey, flops, ctx.plan);
  if (tooSlow) return row("skipped", { reason: tooSlow });

  const buffers: DeviceBuffer[] = [];
  const own = (b: DeviceBuffer) => {
    buffers.push(b);
    return b;
  };
  try {
    const source = backend.upload(randomBlock(c.dtype));
    let call: PreparedCall;
    try {
      call = runner.prepare(own, { fill: (dst) => fillRandom(backend, dst, source) });
    } finally {
      backend.free(source);
    }
    // The memory figure is the peak of one call, counted from what the library held before this case's tensors.
    // Resetting first also releases the library's idle workspaces, so each case counts the ones it needs itself.
    backend.resetPeakMemory();
    const held = backend.memoryStats().current - buffers.reduce((s, b) => s + b.bytes, 0);
    const kernel = call.once();
    backend.synchronize();
    const peakBytes = backend.memoryStats().peak - held;

    // One timed run (already warm) estimates the cost; then as many runs as the budget allows.
    const estimate = call.time(0, 1)[0];
    const runs = runsFor(estimate, ctx.plan);
    const times = runs ? call.time(runs.warmup, runs.iters) : [estimate];
    const timing = summarize(times);
    ctx.speeds.learn(speedKey, flops, timing.medianMs);
    return row("ok", {
      timing,
      peakBytes,
      kernel,
      ...(runs ? {} : { reason: `one run only: it takes ${estimate.toFixed(0)} ms, over half the per-case budget` }),
    });
  } catch (error) {
    return row(statusOf(error).status, { reason: statusOf(error).reason });
  } finally {
    for (const b of buffers) {
      try {
        backend.free(b);
      } catch { /* a device that failed may refuse the free too; the row already says why */ }
    }
  }
}
