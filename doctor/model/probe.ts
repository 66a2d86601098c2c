// The live facts `doctor --model` adds to the machine's: what the model's files say (doctor/model/read.ts), what the
// installed transformers says about the model's classes (doctor/model/transformers_probe.py, in its own process
// group with a deadline, no weights), and flashattn's backend decision for the model's attention (in the probe
// worker, doctor/model/kernels.ts). Never throws for the machine's sake: a probe that fails says why.
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import type { ProbeResult } from "../facts.ts";
import { findExecutable } from "../probes/exec.ts";
import { runPythonScript } from "../probes/python.ts";
import { runNativeProbe } from "../probes/native.ts";
import { diskPath } from "../../lib/standalone.ts";
import { jsonReplacer } from "../../lib/json.ts";
import { validateFactsPart } from "../schema.ts";
import type { BackendChoice } from "../../lib/select.ts";
import { type ModelKernelFacts, type ModelKernelOptions, modelProblems } from "./kernels.ts";
import type { ModelSource } from "./read.ts";

export interface TransformersClassFacts {
  /** whether the installed transformers has a class of this name (a remote-code class is not one) */
  found: boolean;
  flash_attn_2?: boolean;
  sdpa?: boolean;
  flex?: boolean;
  error?: string;
}

export interface TransformersFacts extends ProbeResult {
  executable?: string;
  version?: string;
  /** whether this transformers knows the config's model_type (a native implementation exists) */
  model_type_known?: boolean;
  flash_attn_2_available?: boolean;
  classes?: Record<string, TransformersClassFacts>;
}

/** Everything `doctor --model` knows about the model; the rules (doctor/model/advice.ts) read only this and the machine's facts. */
export interface ModelFacts extends ModelSource {
  transformers: TransformersFacts;
  kernels: ModelKernelFacts;
}

const script = path.join(path.dirname(fileURLToPath(import.meta.url)), "transformers_probe.py");
/** Importing transformers and a modeling module (which imports torch) cold can take a while; a wedged one must not. */
const TRANSFORMERS_TIMEOUT_MS = 60_000;
const KERNELS_TIMEOUT_MS = 30_000;

export async function probeTransformers(
  source: ModelSource,
  env: Record<string, string | undefined> = process.env,
): Promise<TransformersFacts> {
  const python = env.FLASHATTN_PYTHON || findExecutable("python3", [], env);
  if (!python) return { status: "absent", error: "python3 not found on PATH, so transformers cannot be asked" };
  const request = JSON.stringify({ classes: source.needs.architectures, model_type: source.needs.model_type });
  const facts = await runPythonScript<TransformersFacts>(python, [diskPath(script), request], TRANSFORMERS_TIMEOUT_MS,
    { ...env, NO_COLOR: "1", PYTHONDONTWRITEBYTECODE: "1", TRANSFORMERS_OFFLINE: "1", HF_HUB_OFFLINE: "1" });
  return { ...facts, executable: python };
}

export async function collectModelFacts(
  source: ModelSource,
  opts: { backend?: BackendChoice; libPath?: string; noPython?: boolean; env?: Record<string, string | undefined> } = {},
): Promise<ModelFacts> {
  const env = opts.env ?? process.env;
  const kernelOptions: ModelKernelOptions = { problems: modelProblems(source.needs), backend: opts.backend, libPath: opts.libPath };
  const [transformers, kernels] = await Promise.all([
    opts.noPython
      ? Promise.resolve<TransformersFacts>({ status: "absent", error: "transformers was not asked (--no-python)" })
      : probeTransformers(source, env),
    runNativeProbe<ModelKernelFacts>("model", { timeoutMs: KERNELS_TIMEOUT_MS, env, options: kernelOptions }),
  ]);
  return admitted({ ...source, transformers, kernels: { ...kernels, parts: kernels.parts ?? [] } });
}

/**
 * The model's facts as the report will hold them: what a probe printed (any python3 on PATH may answer) is held to
 * the report schema, and a probe part that does not fit becomes a probe error saying why, so every report the
 * doctor writes replays with --facts and the rules never read a shape they do not expect.
 */
function admitted(facts: ModelFacts): ModelFacts {
  const asJson = JSON.parse(JSON.stringify(facts, jsonReplacer)) as ModelFacts;
  for (const part of ["transformers", "kernels"] as const) {
    const problems = validateFactsPart(asJson, "model").filter((p) => p.startsWith(`facts.model.${part}`));
    if (!problems.length) continue;
    const error = `the ${part} probe's result does not fit the report schema (${problems[0].slice(0, 200)}); it was left out`;
    if (part === "transformers") asJson.transformers = { status: "error", error };
    else asJson.kernels = { status: "error", error, parts: [] };
  }
  return asJson;
}
