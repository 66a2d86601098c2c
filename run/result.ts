// RunResult: what `flashattn run` reports (--json prints it as is), for a plain run and a KV-cache step alike.
import type { CheckResult } from "../lib/check.ts";
import type { BackendDecision } from "../lib/select.ts";
import type { BackendName, DType, ProblemShape } from "../lib/vocabulary.ts";
import type { RunPlan } from "./plan.ts";
import type { RingReport } from "./ring.ts";

export interface RunResult {
  backend: BackendName;
  kernel: string;
  numSplits: number;
  dtype: DType;
  shape: ProblemShape;
  causal: boolean;
  window: [number, number] | null;
  softcap: number;
  scale: number;
  alibi: "none" | "standard" | "file";
  ms: number;
  gflops: number;
  check: CheckResult | null;
  /** The files written; none when the check failed (an existing output is never replaced by a wrong result). */
  outputs: string[];
  defaultProblem: boolean;
  decisions: BackendDecision[];
  /** KV-cache runs only: tokens cached per sequence before the step, tokens appended, the paging and the rotary. */
  kvcache?: { cached: number[]; appended: number; pageSize: number | null; rotary: "none" | "gpt-neox" | "gpt-j" };
  /** --devices runs only: the ring's ranks, devices and transport. */
  ring?: RingReport;
}

/**
 * The RunResult fields that say what ran, shared by both kinds of run: the library's kernel and split count, the
 * problem's dtype, shape and semantics, the window and ALiBi as asked, and the time with the rate `flops` gives.
 */
export function ranResult(
  plan: RunPlan,
  ran: { backend: BackendName; kernel: string; numSplits: number; ms: number },
  problem: { dtype: DType; shape: ProblemShape; causal: boolean; softcap: number; scale: number },
  flops: number,
): Omit<RunResult, "check" | "outputs" | "defaultProblem" | "decisions" | "kvcache" | "ring"> {
  return {
    backend: ran.backend,
    kernel: ran.kernel,
    numSplits: ran.numSplits,
    dtype: problem.dtype,
    shape: problem.shape,
    causal: problem.causal,
    window: plan.window ?? null,
    softcap: problem.softcap,
    scale: problem.scale,
    alibi: plan.alibi.kind,
    ms: ran.ms,
    gflops: flops / (ran.ms * 1e6),
  };
}
