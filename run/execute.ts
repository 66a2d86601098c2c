// Carrying out a RunPlan: check the outputs can be written, load the inputs (or describe the random problem from its
// shape), describe the problem and choose the backend once, run, check against the fp64 reference, write.
import { attention, attentionFlops, type AttentionPlan, planAttention } from "../lib/attention.ts";
import { checkAgainstReference, type CheckResult } from "../lib/check.ts";
import { FlashAttnError } from "../lib/errors.ts";
import type { DType } from "../lib/vocabulary.ts";
import type { AttentionSemantics } from "../lib/problem.ts";
import { fromFloat32, toFloat32 } from "../lib/tensor.ts";
import type { QkvTensors } from "../formats/qkv.ts";
import packageJson from "../package.json" with { type: "json" };
import { decodeStep, executeKvCacheRun, readKvCacheInput } from "./kvcache.ts";
import { loadFiles, randomInputs, randomShapes, semanticsFor } from "./inputs.ts";
import { checkOutputs, writeOutputs } from "./outputs.ts";
import { checkRunLimits, planInputs, type RunPlan } from "./plan.ts";
import { ranResult, type RunResult } from "./result.ts";
import { type RingRun, runRing } from "./ring.ts";

export type { CheckResult, RunResult };

/** The same decision for another (not fp8) dtype of the same problem (random inputs: fp32 where the CPU was chosen). */
function inDtype(plan: AttentionPlan, dtype: DType): AttentionPlan {
  if (plan.problem.dtype === dtype) return plan;
  const problem = { ...plan.problem, dtype, outDtype: dtype };
  return { ...plan, problem, request: { ...plan.request, problem } };
}

/** Our bf16 forward of the real values fp8 inputs were quantised from, on the backend the fp8 run used. */
async function bf16Twin(real: QkvTensors, semantics: AttentionSemantics, fp8: AttentionPlan, tell: (m: string) => void) {
  tell(`running the same real values in bf16 on ${fp8.backend.name}…`);
  const [q, k, v] = [real.q, real.k, real.v].map((t) => fromFloat32("bf16", t.shape, toFloat32(t)));
  const { descale: _descale, outDtype: _outDtype, ...plain } = semantics;
  const plan = planAttention(q, k, v, plain, "fwd", fp8.backend);
  return (await attention(q, k, v, { plan })).out;
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
  if (kvStep && plan.devices) throw new FlashAttnError("USAGE", "--devices splits one sequence (context parallelism); a KV-cache step cannot be split");
  if (kvStep) return executeKvCacheRun(plan, kvStep, inputs, tell);

  const random = plan.input.kind === "random" ? plan.input : undefined;
  // A random problem of a named dtype is generated first (fp8 needs its descale factors to plan); with dtype "auto" it
  // is decided in bf16 (which every backend reads), then generated in fp32 where the CPU serves it.
  const early = random && plan.dtype !== "auto" ? randomInputs(random.shape, plan.dtype, random.seed) : undefined;
  const files = random ? early : loadFiles(plan);
  const shapes = files ?? randomShapes(random!.shape, "bf16");
  const semantics = { ...semanticsFor(plan, shapes.q.shape[0], shapes.q.shape[2]), descale: files?.descale };
  let decided = planAttention(shapes.q, shapes.k, shapes.v, { ...semantics, backend: plan.backend, libPath: plan.libPath });
  const { problem } = decided;
  checkRunLimits(problem, { check: plan.check, random: !!random });

  let tensors = files;
  if (random && !tensors) {
    const dtype = decided.backend.name === "cpu" ? "fp32" : "bf16";
    decided = inDtype(decided, dtype);
    tell(`generating random ${dtype} inputs (seed ${random.seed})…`);
    tensors = randomInputs(random.shape, dtype, random.seed);
  }
  const { q, k, v, real } = tensors!;

  const result = plan.devices
    ? runRing(decided, plan.devices, q, k, v, semantics, tell)
    : (tell(`running on ${decided.backend.name}…`), await attention(q, k, v, { plan: decided }));
  let check: CheckResult | null = null;
  if (plan.check) {
    // fp8 inputs quantised from known real values: also run those values in bf16 on the same backend, to say what fp8
    // costs against bf16.
    const bf16 = real && await bf16Twin(real, semantics, decided, tell);
    tell("checking against the fp64 reference…");
    check = checkAgainstReference(q, k, v, semantics, result.out, result.lse, bf16);
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
    ...(plan.devices ? { ring: (result as RingRun).ring } : {}),
  };
}
