// The backend decision: which of our libraries serves a request, and why every other one does not. `run`, `bench`
// and `doctor` all call chooseBackend, so what doctor explains is what the other commands do.
import process from "node:process";
import { type AttnParams, defaultParams, type DescaleView, noDescale, type TensorView } from "../ffi/layout.ts";
import { type Backend, type Direction, type LoadAttempt, openBackend } from "./backend.ts";
import { FlashAttnError } from "./errors.ts";
import type { Problem } from "./problem.ts";
import { type BackendName, backendNames } from "./vocabulary.ts";
import { assignVerdicts, type BackendChoice, notLoadedReason, userDisabledReason, type Verdict } from "./verdicts.ts";

export type { BackendChoice };


/** What is asked: the problem's shapes and features, which pass, and which algorithm. */
export interface AttnRequest {
  problem: Problem;
  direction: Direction;
  algorithm?: "flash" | "naive";
  alibi?: "none" | "per-head" | "per-batch-head";
  numSplits?: number;
  deterministic?: boolean;
}

export interface BackendDecision {
  backend: BackendName;
  verdict: Verdict;
  reasons: string[];
  kernel?: string;
  library?: string;
  attempts: LoadAttempt[];
}

export interface SelectOptions {
  backend?: BackendChoice;
  libPath?: string;
  env?: Record<string, string | undefined>;
}

/** The device tensors of one call; any may be absent when only planning. */
export interface DeviceTensors {
  q: bigint;
  k: bigint;
  v: bigint;
  o: bigint;
  lse: bigint;
  dout?: bigint;
  dq?: bigint;
  dk?: bigint;
  dv?: bigint;
  alibiSlopes?: bigint;
  cuSeqlensQ?: bigint;
  cuSeqlensK?: bigint;
  qDescale?: DescaleView;
  kDescale?: DescaleView;
  vDescale?: DescaleView;
}

/** Contiguous BSHD (or packed THD) views, in elements. */
export function contiguous(data: bigint, rowsPerBatch: number, heads: number, d: number): TensorView {
  return { data, batchStride: rowsPerBatch * heads * d, rowStride: heads * d, headStride: d };
}

/**
 * The fa_descale view of factors uploaded to `data`: one factor broadcasts (strides 0); batch × heads_kv factors are a
 * contiguous (batch, heads_kv) array (lib/problem.ts Descale).
 */
export function descaleView(data: bigint, factors: Float32Array, headsKv: number): DescaleView {
  const scalar = factors.length === 1;
  return { data, batchStride: scalar ? 0 : headsKv, headStride: scalar ? 0 : 1 };
}

/** fa_attn_params for a request over contiguous device tensors (causal and the window passed as given). */
export function paramsFor(request: AttnRequest, t: DeviceTensors): AttnParams {
  const p = request.problem;
  const rowsQ = p.varlen ? 0 : p.seqlenQ, rowsK = p.varlen ? 0 : p.seqlenK;
  const qView = (addr: bigint | undefined) => contiguous(addr ?? 0n, rowsQ, p.headsQ, p.headDim);
  const kView = (addr: bigint | undefined) => contiguous(addr ?? 0n, rowsK, p.headsKv, p.headDim);
  return {
    ...defaultParams(),
    dtype: p.dtype, batch: p.batch, seqlenQ: p.seqlenQ, seqlenK: p.seqlenK, headsQ: p.headsQ, headsKv: p.headsKv,
    headDim: p.headDim, causal: p.causal, windowLeft: p.window[0], windowRight: p.window[1],
    scale: p.scale, softcap: p.softcap, alibiMode: request.alibi ?? "none", numSplits: request.numSplits ?? 0,
    deterministic: request.deterministic ?? false, totalQ: p.totalQ, totalK: p.totalK,
    algorithm: request.algorithm ?? "flash", alibiSlopes: t.alibiSlopes ?? 0n, cuSeqlensQ: t.cuSeqlensQ ?? 0n,
    cuSeqlensK: t.cuSeqlensK ?? 0n,
    q: qView(t.q), k: kView(t.k), v: kView(t.v), o: qView(t.o), lse: t.lse,
    dout: qView(t.dout), dq: qView(t.dq), dk: kView(t.dk), dv: kView(t.dv),
    outDtype: p.outDtype, qDescale: t.qDescale ?? noDescale, kDescale: t.kDescale ?? noDescale,
    vDescale: t.vDescale ?? noDescale,
  };
}

// Planning never dereferences pointers (flashattn.h), so any aligned non-NULL placeholder does.
const PLACEHOLDER = 0x100000n;
function placeholders(request: AttnRequest): DeviceTensors {
  const bwd = request.direction !== "fwd";
  return {
    q: PLACEHOLDER, k: PLACEHOLDER, v: PLACEHOLDER, o: PLACEHOLDER, lse: PLACEHOLDER,
    dout: bwd ? PLACEHOLDER : undefined, dq: bwd ? PLACEHOLDER : undefined,
    dk: bwd ? PLACEHOLDER : undefined, dv: bwd ? PLACEHOLDER : undefined,
    alibiSlopes: request.alibi && request.alibi !== "none" ? PLACEHOLDER : undefined,
    cuSeqlensQ: request.problem.varlen ? PLACEHOLDER : undefined,
    cuSeqlensK: request.problem.varlen ? PLACEHOLDER : undefined,
  };
}

/** The backend the user asked for (flag first, then FLASHATTN_BACKEND), and where that wish came from. */
export function requestedBackend(opts: SelectOptions): { choice: BackendChoice; source?: string } {
  const env = opts.env ?? process.env;
  if (opts.backend && opts.backend !== "auto") return { choice: opts.backend, source: `--backend ${opts.backend}` };
  const fromEnv = env.FLASHATTN_BACKEND?.trim();
  if (fromEnv && fromEnv !== "auto") {
    if (!(backendNames as string[]).includes(fromEnv)) {
      throw new FlashAttnError("USAGE", `FLASHATTN_BACKEND=${fromEnv} is not one of auto, cpu, cuda, hip`,
        "unset FLASHATTN_BACKEND or set it to auto, cpu, cuda or hip");
    }
    return { choice: fromEnv as BackendName, source: `FLASHATTN_BACKEND=${fromEnv}` };
  }
  return { choice: "auto" };
}

/**
 * Whether a loaded backend with a device can serve a call: the reasons it cannot (none when it can) and the kernel it
 * would run. An attention request is judged by fa_plan; a KV-cache call (no fa_plan) brings its own (lib/kvcache.ts).
 */
export type KernelJudge = (backend: Backend) => { reasons: string[]; kernel?: string };

function planJudge(request: AttnRequest): KernelJudge {
  return (backend) => {
    const plan = backend.plan(paramsFor(request, placeholders(request)), request.direction);
    if (!plan.ok) return { reasons: plan.reasons.length ? plan.reasons : ["no kernel accepts this request"] };
    return { reasons: [], kernel: plan.kernel.name };
  };
}

/** Checks one loaded backend: a device, then the judge's verdict on its kernels. */
function evaluate(backend: Backend, judge: KernelJudge): { reasons: string[]; kernel?: string } {
  let count: number;
  try {
    count = backend.deviceCount();
  } catch (e) {
    return { reasons: [(e as Error).message.replace(/^\w+: /, "")] };
  }
  if (count < 1) return { reasons: ["no device found"] };
  return judge(backend);
}

/**
 * Decides which backend serves `request`: preference cuda, hip, cpu; a backend the user named (--backend,
 * FLASHATTN_BACKEND) is the only candidate and the others are reported "disabled"; an explicit library
 * (--lib, FLASHATTN_LIB) is the only library considered. Every backend gets a verdict with its reasons. `request`: an
 * attention request (fa_plan judges it), or the judge of another kind of call.
 */
export function chooseBackend(request: AttnRequest | KernelJudge, opts: SelectOptions = {}): {
  chosen?: Backend;
  decisions: BackendDecision[];
  usable: Map<BackendName, Backend>;
} {
  const env = opts.env ?? process.env;
  const { choice, source } = requestedBackend(opts);
  const explicitLib = opts.libPath ?? env.FLASHATTN_LIB;
  const offers: (Omit<BackendDecision, "verdict"> & { disabled?: string })[] = [];
  const usable = new Map<BackendName, Backend>();
  const judge = typeof request === "function" ? request : planJudge(request);

  if (explicitLib) {
    const { backend, attempts } = openBackend("cpu", { libPath: opts.libPath, env });
    if (!backend) {
      const via = opts.libPath ? `--lib ${opts.libPath}` : `FLASHATTN_LIB=${env.FLASHATTN_LIB}`;
      throw new FlashAttnError("LIBRARY_NOT_FOUND", `${via} could not be loaded: ${attempts[0]?.error ?? "unknown error"}`,
        "point it at a libflashattn_<backend>.so built by `bun kernels/build.ts`, or unset it to search the usual places");
    }
    if (choice !== "auto" && backend.name !== choice) {
      throw new FlashAttnError("USAGE", `${source} asks for ${choice}, but the explicit library ${backend.path} is ${backend.name}`);
    }
    for (const name of backendNames) {
      if (name !== backend.name) {
        offers.push({ backend: name, disabled: `an explicit library was named (${explicitLib})`, reasons: [], attempts: [] });
        continue;
      }
      const { reasons, kernel } = evaluate(backend, judge);
      if (reasons.length === 0) usable.set(name, backend);
      offers.push({ backend: name, reasons, kernel, library: backend.path, attempts });
    }
  } else {
    for (const name of backendNames) {
      const disabled = userDisabledReason(name, choice, source);
      if (disabled) {
        offers.push({ backend: name, disabled, reasons: [], attempts: [] });
        continue;
      }
      const { backend, attempts } = openBackend(name, { env });
      if (!backend) {
        offers.push({ backend: name, reasons: [notLoadedReason(name, attempts)], attempts });
        continue;
      }
      const { reasons, kernel } = evaluate(backend, judge);
      if (reasons.length === 0) usable.set(name, backend);
      offers.push({ backend: name, reasons, kernel, library: backend.path, attempts });
    }
  }

  const decisions: BackendDecision[] = assignVerdicts(offers);
  const first = decisions.find((d) => d.verdict === "chosen");
  return { chosen: first ? usable.get(first.backend) : undefined, decisions, usable };
}

/** One sentence saying why nothing can serve the request, built from the decisions. */
export function noBackendError(decisions: BackendDecision[]): FlashAttnError {
  const parts = decisions.filter((d) => d.verdict !== "disabled" || decisions.every((x) => x.verdict === "disabled"))
    .map((d) => `${d.backend}: ${d.reasons[0] ?? d.verdict}`);
  const missing = decisions.every((d) => d.verdict === "disabled" || d.reasons[0]?.includes(" not found "));
  return new FlashAttnError(
    missing ? "LIBRARY_NOT_FOUND" : "NO_BACKEND",
    `no backend can run this: ${parts.join("; ")}`,
    missing ? "build the libraries with `bun kernels/build.ts` or point FLASHATTN_LIB at one" : "run `flashattn doctor` for details",
  );
}
