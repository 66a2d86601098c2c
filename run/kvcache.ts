// A KV-cache run (flash_attn_with_kvcache): the step from a .safetensors file that holds k_cache, or a random decode
// step (--decode --cache-len N [--page-size P] [--append N] [--rotary]); run, checked against the fp64 reference,
// and written as one .safetensors file of o, lse and (after an append) the updated k_cache / v_cache.
import { attentionFlops } from "../lib/attention.ts";
import { checkKvCacheAgainstReference } from "../lib/check.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { attentionWithKvCache, cachedTokens, describeKvCache, type KvCacheOptions, type KvCachePlan, planKvCache } from "../lib/kvcache.ts";
import { fromFloat32, randomTensor, rng, type Tensor, tensor, toFloat32 } from "../lib/tensor.ts";
import type { DType } from "../lib/vocabulary.ts";
import { writeFilesAtomic } from "../formats/atomic.ts";
import { isKvCacheFile, type KvCacheTensors, readKvCacheTensors } from "../formats/kvcache.ts";
import { encodeSafetensors, openSafetensors } from "../formats/safetensors.ts";
import packageJson from "../package.json" with { type: "json" };
import { ranResult, type RunResult } from "./result.ts";
import { semanticsFor } from "./inputs.ts";
import { checkRunLimits, type RunPlan } from "./plan.ts";

/** The step of a .safetensors --input that holds k_cache (floats converted to the requested dtype), else undefined. */
export function readKvCacheInput(plan: RunPlan): KvCacheTensors | undefined {
  if (plan.input.kind !== "safetensors") return undefined;
  const file = openSafetensors(plan.input.path);
  try {
    if (!isKvCacheFile(file)) return undefined;
    if (plan.input.names || plan.input.packed) {
      throw new FlashAttnError("USAGE", `${plan.input.path} is a KV-cache step (it holds k_cache), whose tensors have fixed names: drop --q-name/--k-name/--v-name/--qkv-name`);
    }
    const step = readKvCacheTensors(file);
    const convert = (t: Tensor | undefined) =>
      t && plan.dtype !== "auto" && t.dtype !== plan.dtype ? fromFloat32(plan.dtype, t.shape, toFloat32(t)) : t;
    return { ...step, q: convert(step.q)!, kCache: convert(step.kCache)!, vCache: convert(step.vCache)!, kNew: convert(step.kNew),
      vNew: convert(step.vNew), rotaryCos: convert(step.rotaryCos), rotarySin: convert(step.rotarySin) };
  } finally {
    file.close();
  }
}

/**
 * A random decode step: every sequence holds shape.seqlenK cached tokens and appends `append` more; paged caches get
 * a shuffled block table (pages in no particular order, as a serving cache has them); rotary covers head_dim.
 */
export function randomKvCacheStep(input: Extract<RunPlan["input"], { kind: "decode" }>, dtype: DType): KvCacheTensors {
  const { shape, seed, pageSize, append } = input;
  const { batch, seqlenQ, seqlenK: cached, headsQ, headsKv, headDim } = shape;
  const capacity = cached + append;
  const step: KvCacheTensors = {
    q: randomTensor(dtype, [batch, seqlenQ, headsQ, headDim], seed),
    kCache: tensor(dtype, [0]), vCache: tensor(dtype, [0]),
    cacheSeqlens: new Int32Array(batch).fill(cached),
  };
  let cacheShape = [batch, capacity, headsKv, headDim];
  if (pageSize !== undefined) {
    const maxBlocks = Math.ceil(capacity / pageSize), pages = batch * maxBlocks;
    const order = Int32Array.from({ length: pages }, (_, i) => i);
    const next = rng(seed + 7);
    for (let i = pages - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    step.blockTable = order;
    cacheShape = [pages, pageSize, headsKv, headDim];
  }
  step.kCache = randomTensor(dtype, cacheShape, seed + 1);
  step.vCache = randomTensor(dtype, cacheShape, seed + 2);
  if (append > 0) {
    step.kNew = randomTensor(dtype, [batch, append, headsKv, headDim], seed + 3);
    step.vNew = randomTensor(dtype, [batch, append, headsKv, headDim], seed + 4);
  }
  if (input.rotary) {
    // The standard tables: angle = position * 10000^(-2i / head_dim), a row for every cache position.
    const rows = capacity + seqlenQ, half = Math.floor(headDim / 2);
    const cos = new Float32Array(rows * half), sin = new Float32Array(rows * half);
    for (let t = 0; t < rows; t++) {
      for (let i = 0; i < half; i++) {
        const angle = t * 10000 ** (-2 * i / (2 * half));
        cos[t * half + i] = Math.cos(angle);
        sin[t * half + i] = Math.sin(angle);
      }
    }
    step.rotaryCos = fromFloat32(dtype, [rows, half], cos);
    step.rotarySin = fromFloat32(dtype, [rows, half], sin);
  }
  return step;
}

/**
 * The random step of --decode and the backend that runs it. With dtype "auto" the backend is decided for bf16 (which
 * every backend reads), then the step is generated in fp32 where the CPU serves it, as for a plain random problem.
 */
export function decodeStep(plan: RunPlan, input: Extract<RunPlan["input"], { kind: "decode" }>): { step: KvCacheTensors; decided: KvCachePlan } {
  const decided = planKvCache({ dtype: plan.dtype === "auto" ? "bf16" : plan.dtype, headDim: input.shape.headDim }, plan);
  const dtype = plan.dtype !== "auto" ? plan.dtype : decided.backend.name === "cpu" ? "fp32" : "bf16";
  return { step: randomKvCacheStep(input, dtype), decided: { ...decided, dtype } };
}

/** Runs, checks and writes a KV-cache step as `plan` says, on the backend decided before (--decode) or decided here. */
export async function executeKvCacheRun(
  plan: RunPlan,
  step: KvCacheTensors,
  inputs: readonly string[],
  tell: (message: string) => void,
  decidedBefore?: KvCachePlan,
): Promise<RunResult> {
  if (plan.output && (plan.output.format !== "safetensors" || plan.output.lse.kind === "npy")) {
    throw new FlashAttnError("USAGE", "a KV-cache run writes o, lse and the updated caches to one .safetensors --out",
      "e.g. --out step_out.safetensors");
  }
  const { q, kCache, vCache, ...arrays } = step;
  const semantics: KvCacheOptions = { ...semanticsFor(plan, q.shape[0], q.shape[2]), ...arrays, rotaryInterleaved: plan.rotaryInterleaved };
  const problem = describeKvCache(q, kCache, vCache, semantics);
  const cached = cachedTokens(problem, step.cacheSeqlens);
  const keys = Math.max(...cached.map((n, b) => n + problem.seqlenNew - (step.cacheLeftpad?.[b] ?? 0)), 0);
  const shape = { batch: problem.batch, seqlenQ: problem.seqlenQ, seqlenK: keys, headsQ: problem.headsQ, headsKv: problem.headsKv, headDim: problem.headDim };
  checkRunLimits(shape, { check: plan.check, random: false });

  const decided = decidedBefore ?? planKvCache(problem, plan);
  const options: KvCacheOptions = { ...semantics, plan: decided };
  tell(`running the KV-cache step on ${decided.backend.name}…`);
  const result = await attentionWithKvCache(q, kCache, vCache, options);
  let check = null;
  if (plan.check) {
    tell("checking against the fp64 reference…");
    check = checkKvCacheAgainstReference(q, kCache, vCache, options, result);
  }
  let outputs: string[] = [];
  if (plan.output && check?.pass !== false) {
    const lse = tensor("fp32", [problem.batch, problem.headsQ, problem.seqlenQ], result.lse);
    const written: Record<string, Tensor> = { o: result.out, lse };
    if (problem.seqlenNew > 0) Object.assign(written, { k_cache: result.kCache, v_cache: result.vCache });
    const meta = { producer: `flashattn ${packageJson.version}`, backend: result.backend, kernel: result.kernel, dtype: q.dtype };
    await writeFilesAtomic([{ target: plan.output.path, bytes: encodeSafetensors(written, meta) }], { inputs });
    outputs = [plan.output.path];
  }
  return {
    ...ranResult(plan, { ...result, backend: result.backend as RunResult["backend"] }, {
      dtype: q.dtype, shape, causal: problem.causal, softcap: problem.softcap, scale: problem.scale,
    }, attentionFlops({ ...shape, causal: false })),
    check,
    outputs,
    defaultProblem: false,
    decisions: decided.decisions,
    kvcache: {
      cached,
      appended: problem.seqlenNew,
      pageSize: problem.paged ? problem.cacheRows : null,
      rotary: problem.rotaryDim === 0 ? "none" : problem.rotaryInterleaved ? "gpt-j" : "gpt-neox",
    },
  };
}
