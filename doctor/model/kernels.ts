// flashattn's own kernels for a model: the model's attention as problems (one per part: the text model, the vision
// tower), decided by lib/select.ts chooseBackend exactly as `run` decides, in the probe worker (a library that
// hangs or crashes ends the worker, not the doctor). modelProblems is pure; probeModelKernels loads libraries.
import process from "node:process";
import { describeProblem } from "../../lib/problem.ts";
import { type BackendChoice, chooseBackend } from "../../lib/select.ts";
import type { DType } from "../../lib/vocabulary.ts";
import type { BackendDecisionFacts, BackendName, ProbeResult } from "../facts.ts";
import type { AttentionNeeds, ModelNeeds } from "./needs.ts";

/** The attention call one part of a model makes, as flashattn's problem vocabulary states it. */
export interface ModelProblem {
  part: "text" | "vision";
  dtype: DType;
  seqlen: number;
  headsQ: number;
  headsKv: number;
  /** the larger of the Q/K and V head dims: one head_dim serves both when V is padded (DeepSeek-V2's MLA) */
  headDim: number;
  causal: boolean;
  /** [left, right], -1 = unbounded */
  window: [number, number];
  softcap: number;
  alibi: boolean;
}

/** The sequence length decided for: the model's own limit up to 4k (the kernels chosen do not change beyond). */
const DECISION_SEQLEN = 4096;
/** A vision tower's tokens when the config does not say (CLIP ViT-L/14 at 336 px: 24² + 1). */
const DEFAULT_VISION_TOKENS = 577;

function problemOf(n: AttentionNeeds, dtype: DType): ModelProblem {
  const seqlen = n.part === "vision" ? n.tokens ?? DEFAULT_VISION_TOKENS : Math.min(n.max_positions ?? DECISION_SEQLEN, DECISION_SEQLEN);
  return {
    part: n.part,
    dtype,
    seqlen,
    headsQ: n.heads,
    headsKv: n.kv_heads,
    headDim: Math.max(n.head_dim_qk, n.head_dim_v),
    causal: n.causal,
    // A window of W tokens: the query and the W-1 before it (transformers passes the same to flash_attn).
    window: n.sliding_window ? [n.sliding_window - 1, n.causal ? 0 : n.sliding_window - 1] : [-1, -1],
    softcap: n.softcap ?? 0,
    alibi: n.alibi,
  };
}

/** The problems a model's attention poses, in the half precision it runs flash attention in (fp16 if stored so). */
export function modelProblems(needs: ModelNeeds): ModelProblem[] {
  const dtype: DType = needs.dtype === "fp16" ? "fp16" : "bf16";
  return [needs.text, ...(needs.vision ? [needs.vision] : [])].map((n) => problemOf(n, dtype));
}

/** "bf16, seqlen 4096, heads 32/8, head_dim 128, causal, window (4095, 0), softcap 50, ALiBi" */
export function problemText(p: ModelProblem): string {
  const parts = [`${p.dtype} forward`, `seqlen ${p.seqlen}`, `heads ${p.headsQ}/${p.headsKv}`, `head_dim ${p.headDim}`];
  if (p.causal) parts.push("causal");
  if (p.window[0] >= 0 || p.window[1] >= 0) parts.push(`window (${p.window[0]}, ${p.window[1]})`);
  if (p.softcap) parts.push(`softcap ${p.softcap}`);
  if (p.alibi) parts.push("ALiBi");
  return parts.join(", ");
}

export interface ModelKernelPart {
  part: "text" | "vision";
  problem: string;
  decisions: BackendDecisionFacts[];
  chosen?: BackendName;
  /** why the problem itself is outside what flashattn takes (head_dim above 256, ...) */
  error?: string;
}

export interface ModelKernelFacts extends ProbeResult {
  parts: ModelKernelPart[];
}

export interface ModelKernelOptions {
  problems: ModelProblem[];
  backend?: BackendChoice;
  libPath?: string;
}

/** The backend decision for each problem, made by chooseBackend as `run` makes it. */
export function probeModelKernels(opts: ModelKernelOptions): ModelKernelFacts {
  const started = performance.now();
  const parts = (opts.problems ?? []).map((p): ModelKernelPart => {
    const part: ModelKernelPart = { part: p.part, problem: problemText(p), decisions: [] };
    try {
      // Shapes only: describing a problem reads no data, and the model's sizes must not drive an allocation.
      const q = { dtype: p.dtype, shape: [1, p.seqlen, p.headsQ, p.headDim] };
      const kv = { dtype: p.dtype, shape: [1, p.seqlen, p.headsKv, p.headDim] };
      const problem = describeProblem(q, kv, kv, { causal: p.causal, window: p.window, softcap: p.softcap });
      const { decisions } = chooseBackend(
        { problem, direction: "fwd", alibi: p.alibi ? "per-head" : "none" },
        { backend: opts.backend, libPath: opts.libPath, env: process.env },
      );
      part.decisions = decisions.map(({ backend, verdict, reasons, kernel, library }) => ({ backend, verdict, reasons, kernel, library }));
      part.chosen = decisions.find((d) => d.verdict === "chosen")?.backend;
    } catch (e) {
      part.error = (e as Error).message.split("\n")[0];
    }
    return part;
  });
  return { status: "ok", parts, ms: Math.round(performance.now() - started) };
}
