// attention() / attentionBackward(): host tensors in, host tensors out, on the backend chooseBackend picks.
// Inputs are copied to device memory owned by the library (host memory for the CPU backend), the call runs, the
// outputs come back, and every buffer is freed whatever happens.
//
// The decision is made once: planAttention() describes the problem and chooses the backend; attention() takes that
// plan (run and bench pass theirs in) or, given plain options, makes one itself.
import type { Backend, DeviceBuffer, Direction } from "./backend.ts";
import { FlashAttnError } from "./errors.ts";
import { type AttentionSemantics, describeProblem, type Problem, type TensorShape } from "./problem.ts";
import {
  type AttnRequest,
  type BackendChoice,
  type BackendDecision,
  chooseBackend,
  descaleView,
  type DeviceTensors,
  noBackendError,
  paramsFor,
} from "./select.ts";
import { type Tensor, tensor } from "./tensor.ts";
import { isFp8 } from "./vocabulary.ts";

export interface AttentionOptions extends AttentionSemantics {
  backend?: BackendChoice;
  libPath?: string;
  /** Split-KV count for the forward pass; 0 = the library's heuristic. */
  numSplits?: number;
  /** Backward without dependence on the order of atomic additions. */
  deterministic?: boolean;
  /** "naive" runs the materialised-scores baseline instead of FlashAttention (forward only). */
  algorithm?: "flash" | "naive";
  /** Fill the outputs with NaN before the call, so an element the kernel never wrote cannot pass a check. */
  poison?: boolean;
  env?: Record<string, string | undefined>;
}

/** The decision for one call: the problem described and the backend chosen, with every backend's verdict. */
export interface AttentionPlan {
  problem: Problem;
  /** The options the plan was made from (the call uploads their ALiBi slopes and cu_seqlens). */
  options: AttentionOptions;
  request: AttnRequest;
  backend: Backend;
  decisions: BackendDecision[];
}

/** How a call runs: plain options (a plan is made), or a plan made before (used as it is). */
export type CallOptions = AttentionOptions | { plan: AttentionPlan; poison?: boolean };

function alibiMode(opts: AttentionSemantics): AttnRequest["alibi"] {
  if (!opts.alibiSlopes) return "none";
  return opts.alibiPerBatch ? "per-batch-head" : "per-head";
}

/**
 * Describes the problem of q, k, v (their shapes suffice: no data is read) and chooses the backend that serves it,
 * once. Throws the usage error of an inconsistent request, or the environment error of "no backend can run this".
 * `chosen`: a backend chosen before (bench measures each usable backend in turn), taken as it is; a kernel that
 * cannot serve the problem then answers UNSUPPORTED when the call runs.
 */
export function planAttention(
  q: TensorShape,
  k: TensorShape,
  v: TensorShape,
  options: AttentionOptions = {},
  direction: Direction = "fwd",
  chosen?: Backend,
): AttentionPlan {
  const problem = describeProblem(q, k, v, options);
  if (isFp8(problem.dtype) && direction !== "fwd") {
    throw new FlashAttnError("UNSUPPORTED", `${problem.dtype} attention is forward only: there is no fp8 backward pass`,
      "train (or take gradients) in fp16 or bf16");
  }
  const request = requestFor(problem, options, direction);
  if (chosen) return { problem, options, request, backend: chosen, decisions: [] };
  const decision = chooseBackend(request, { backend: options.backend, libPath: options.libPath, env: options.env });
  if (!decision.chosen) throw noBackendError(decision.decisions);
  return { problem, options, request, backend: decision.chosen, decisions: decision.decisions };
}

function requestFor(problem: Problem, options: AttentionOptions, direction: Direction): AttnRequest {
  const alibi = alibiMode(options);
  return direction === "fwd"
    ? { problem, direction, alibi, algorithm: options.algorithm, numSplits: options.numSplits }
    : { problem, direction, alibi, deterministic: options.deterministic };
}

/** The plan a call runs: the one passed in (its tensors must be the problem's), or a new one. */
function planOf(q: Tensor, k: Tensor, v: Tensor, opts: CallOptions, direction: Direction): AttentionPlan {
  if (!("plan" in opts)) return planAttention(q, k, v, opts, direction);
  const { plan } = opts;
  if (plan.request.direction !== direction) {
    throw new FlashAttnError("INTERNAL", `a ${plan.request.direction} plan was passed to a ${direction} call`);
  }
  const p = plan.problem;
  const rows = (batch: number, seqlen: number) => (p.varlen ? [batch] : [p.batch, seqlen]);
  const wants: Array<[string, Tensor, number[]]> = [
    ["q", q, [...rows(p.totalQ, p.seqlenQ), p.headsQ, p.headDim]],
    ["k", k, [...rows(p.totalK, p.seqlenK), p.headsKv, p.headDim]],
    ["v", v, [...rows(p.totalK, p.seqlenK), p.headsKv, p.headDim]],
  ];
  for (const [name, t, shape] of wants) {
    if (t.dtype !== p.dtype || t.shape.join() !== shape.join()) {
      throw new FlashAttnError("BAD_INPUT", `${name} is ${t.dtype} (${t.shape.join(", ")}) but the plan is for ${p.dtype} (${shape.join(", ")})`);
    }
  }
  return plan;
}

export interface AttentionResult {
  out: Tensor;
  /** (batch, heads_q, seqlen_q) or, varlen, (heads_q, total_q). */
  lse: Float32Array;
  backend: string;
  kernel: string;
  numSplits: number;
  /** Wall time of the native call including synchronisation, in ms (use bench for kernel timings). */
  ms: number;
}

export interface BackwardResult {
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
  backend: string;
  kernel: string;
  ms: number;
}

function lseLength(p: Problem): number {
  return p.headsQ * (p.varlen ? p.totalQ : p.batch * p.seqlenQ);
}

/** Uploads and later frees device buffers for one call (on the device that was current when each was made). */
export class Scratch {
  readonly #backend: Backend;
  readonly #buffers: DeviceBuffer[] = [];
  constructor(backend: Backend) {
    this.#backend = backend;
  }
  upload(host: ArrayBufferView): bigint {
    const b = this.#backend.upload(host);
    this.#buffers.push(b);
    return b.address;
  }
  alloc(bytes: number): DeviceBuffer {
    const b = this.#backend.alloc(bytes);
    this.#buffers.push(b);
    return b;
  }
  release(): void {
    for (const b of this.#buffers.splice(0)) this.#backend.free(b);
  }
}

function uploadShared(scratch: Scratch, opts: AttentionSemantics, p: Problem): Partial<DeviceTensors> {
  const descale = (factors: Float32Array | undefined) => factors && descaleView(scratch.upload(factors), factors, p.headsKv);
  return {
    alibiSlopes: opts.alibiSlopes ? scratch.upload(opts.alibiSlopes) : undefined,
    cuSeqlensQ: p.varlen ? scratch.upload(opts.cuSeqlensQ!) : undefined,
    cuSeqlensK: p.varlen ? scratch.upload(opts.cuSeqlensK!) : undefined,
    qDescale: descale(opts.descale?.q),
    kDescale: descale(opts.descale?.k),
    vDescale: descale(opts.descale?.v),
  };
}

function newLike(t: Tensor): Tensor {
  return tensor(t.dtype, t.shape);
}

/** Exact attention O = softmax(scale·QKᵀ [+ masks, softcap, ALiBi]) V with its LSE. */
export async function attention(q: Tensor, k: Tensor, v: Tensor, opts: CallOptions = {}): Promise<AttentionResult> {
  const { problem, options, request, backend } = planOf(q, k, v, opts, "fwd");
  const scratch = new Scratch(backend);
  try {
    const out = tensor(problem.outDtype, q.shape);
    const lse = new Float32Array(lseLength(problem));
    const o = scratch.alloc(out.data.byteLength);
    const l = scratch.alloc(lse.byteLength);
    if (opts.poison) for (const b of [o, l]) backend.fill(b, 0xff);
    const params = paramsFor(request, {
      q: scratch.upload(q.data), k: scratch.upload(k.data), v: scratch.upload(v.data), o: o.address, lse: l.address,
      ...uploadShared(scratch, options, problem),
    });
    const t0 = performance.now();
    const { kernelId, numSplits } = backend.forward(params);
    backend.synchronize();
    const ms = performance.now() - t0;
    backend.download(o, out.data);
    backend.download(l, lse);
    return { out, lse, backend: backend.name, kernel: backend.kernelName(kernelId), numSplits, ms };
  } finally {
    scratch.release();
  }
}

/** dQ, dK, dV from dO and the forward's O and LSE (P recomputed); dK/dV summed over GQA groups. */
export async function attentionBackward(
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  lse: Float32Array,
  opts: CallOptions = {},
): Promise<BackwardResult> {
  const { problem, options, request, backend } = planOf(q, k, v, opts, "bwd");
  for (const [name, t] of [["dout", dout], ["out", out]] as const) {
    if (t.dtype !== q.dtype || t.shape.join() !== q.shape.join()) {
      throw new FlashAttnError("BAD_INPUT", `${name} must have q's dtype and shape (${q.dtype}, (${q.shape.join(", ")})), got ${t.dtype} (${t.shape.join(", ")})`);
    }
  }
  if (lse.length !== lseLength(problem)) {
    throw new FlashAttnError("BAD_INPUT", `lse has ${lse.length} values but this problem has ${lseLength(problem)}`);
  }
  const scratch = new Scratch(backend);
  try {
    const dq = newLike(q), dk = newLike(k), dv = newLike(v);
    const dqBuf = scratch.alloc(dq.data.byteLength);
    const dkBuf = scratch.alloc(dk.data.byteLength);
    const dvBuf = scratch.alloc(dv.data.byteLength);
    if (opts.poison) for (const b of [dqBuf, dkBuf, dvBuf]) backend.fill(b, 0xff);
    const params = paramsFor(request, {
      q: scratch.upload(q.data), k: scratch.upload(k.data), v: scratch.upload(v.data), o: scratch.upload(out.data),
      lse: scratch.upload(lse), dout: scratch.upload(dout.data), dq: dqBuf.address, dk: dkBuf.address,
      dv: dvBuf.address, ...uploadShared(scratch, options, problem),
    });
    const t0 = performance.now();
    const { kernelId } = backend.backward(params);
    backend.synchronize();
    const ms = performance.now() - t0;
    backend.download(dqBuf, dq.data);
    backend.download(dkBuf, dk.data);
    backend.download(dvBuf, dv.data);
    return { dq, dk, dv, backend: backend.name, kernel: backend.kernelName(kernelId), ms };
  } finally {
    scratch.release();
  }
}

/** FLOPs of one pass by the field's formula: forward 4·b·h·sq·sk·d (halved for causal), backward 2.5×. */
export function attentionFlops(p: Pick<Problem, "batch" | "headsQ" | "seqlenQ" | "seqlenK" | "headDim" | "causal">, direction: "fwd" | "bwd" | "fwd+bwd" = "fwd"): number {
  const fwd = (4 * p.batch * p.headsQ * p.seqlenQ * p.seqlenK * p.headDim) / (p.causal ? 2 : 1);
  return direction === "fwd" ? fwd : direction === "bwd" ? 2.5 * fwd : 3.5 * fwd;
}

