// Carrying out a RunPlan: check the outputs can be written, load the inputs (or describe the random problem from its
// shape), describe the problem and choose the backend once, run, check against the fp64 reference, write.
import { attention, attentionFlops, type AttentionPlan, planAttention } from "../lib/attention.ts";
import { checkAgainstReference, type CheckResult } from "../lib/check.ts";
import type { DType } from "../lib/vocabulary.ts";
import packageJson from "../package.json" with { type: "json" };
import { decodeStep, executeKvCacheRun, readKvCacheInput } from "./kvcache.ts";
import { loadFiles, randomInputs, randomShapes, semanticsFor } from "./inputs.ts";
import { checkOutputs, writeOutputs } from "./outputs.ts";
import { checkRunLimits, planInputs, type RunPlan } from "./plan.ts";
import { ranResult, type RunResult } from "./result.ts";

export type { CheckResult, RunResult };

/** The same decision for another dtype of the same problem (random inputs: fp32 where the CPU was chosen). */
function inDtype(plan: AttentionPlan, dtype: DType): AttentionPlan {
  if (plan.problem.dtype === dtype) return plan;
  const problem = { ...plan.problem, dtype };
  return { ...plan, problem, request: { ...plan.request, problem } };
}

/** Loads, decides the backend, runs, checks and writes as `plan` says; `tell` receives progress lines. */
export async function executeRun(plan: RunPlan, tell: (message: string) => void = () => {}): Promise<RunResult> {
  const inputs = planInputs(plan);
  // Refuse an output that cannot be written before spending any time on the run.
  if (plan.output) checkOutputs(plan.output, inputs);

  if (plan.input.kind === "decode") {
    const { step, decided } = decodeStep(plan, plan.input);
    return executeKvCacheRun(plan, step, inputs, tell, decided);
  }
  const kvStep = readKvCacheInput(plan);
  if (kvStep) return executeKvCacheRun(plan, kvStep, inputs, tell);

  const random = plan.input.kind === "random" ? plan.input : undefined;
  const files = random ? undefined : loadFiles(plan);
  // A random problem with dtype "auto" is decided in bf16 (which every backend reads), then generated in fp32 where
  // the CPU serves it.
  const shapes = files ?? randomShapes(random!.shape, plan.dtype === "auto" ? "bf16" : plan.dtype);
  const semantics = semanticsFor(plan, shapes.q.shape[0], shapes.q.shape[2]);
  let decided = planAttention(shapes.q, shapes.k, shapes.v, { ...semantics, backend: plan.backend, libPath: plan.libPath });
  const { problem } = decided;
  checkRunLimits(problem, { check: plan.check, random: !!random });

  let tensors = files;
  if (random) {
    const dtype = plan.dtype !== "auto" ? plan.dtype : decided.backend.name === "cpu" ? "fp32" : "bf16";
    decided = inDtype(decided, dtype);
    tell(`generating random ${dtype} inputs (seed ${random.seed})…`);
    tensors = randomInputs(random.shape, dtype, random.seed);
  }
  const { q, k, v } = tensors!;

  tell(`running on ${decided.backend.name}…`);
  const result = await attention(q, k, v, { plan: decided });
  let check: CheckResult | null = null;
  if (plan.check) {
    tell("checking against the fp64 reference…");
    check = checkAgainstReference(q, k, v, semantics, result.out, result.lse);
  }
  let outputs: string[] = [];
  if (plan.output && check?.pass !== false) {
    const meta = {
      producer: `flashattn ${packageJson.version}`,
      backend: result.backend,
      kernel: result.kernel,
      dtype: q.dtype,
      causal: String(problem.causal),
    };
    outputs = await writeOutputs(plan.output, result.out, result.lse, problem, inputs, meta);
  }
  const { batch, seqlenQ, seqlenK, headsQ, headsKv, headDim, causal, softcap, scale } = problem;
  return {
    ...ranResult(plan, { ...result, backend: decided.backend.name }, {
      dtype: q.dtype, shape: { batch, seqlenQ, seqlenK, headsQ, headsKv, headDim }, causal, softcap, scale,
    }, attentionFlops(problem)),
    check,
    outputs,
    defaultProblem: plan.isDefault,
    decisions: decided.decisions,
  };
}
