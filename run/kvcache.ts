// A KV-cache run (flash_attn_with_kvcache): the step from a .safetensors file that holds k_cache, or a random decode
// step (--decode --cache-len N [--page-size P] [--append N] [--rotary]); run, checked against the fp64 reference,
// and written as one .safetensors file of o, lse and (after an append) the updated k_cache / v_cache (fp8: with the
// q_descale / k_descale / v_descale factors they are read with).
//
// fp8 (--dtype fp8_*): a file's F8_E4M3 / F8_E5M2 tensors run as they are, with the step's q_descale / k_descale /
// v_descale tensors; float values (a float file, a random step) are quantised here per tensor, k_cache with k_new and
// v_cache with v_new under one scale each (the new rows must be in the cache's scale), whose descale is that scale.
import { attentionFlops } from "../lib/attention.ts";
import { checkKvCacheAgainstReference } from "../lib/check.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { attentionWithKvCache, cachedTokens, describeKvCache, type KvCacheOptions, type KvCachePlan, planKvCache } from "../lib/kvcache.ts";
import type { Descale } from "../lib/problem.ts";
import { fromFloat32, quantizeFp8, randomTensor, rng, type Tensor, tensor, toFloat32 } from "../lib/tensor.ts";
import { type DType, type Fp8DType, isFp8 } from "../lib/vocabulary.ts";
import { writeFilesAtomic } from "../formats/atomic.ts";
import { isKvCacheFile, type KvCacheTensors, readKvCacheTensors } from "../formats/kvcache.ts";
import { encodeSafetensors, openSafetensors } from "../formats/safetensors.ts";
import packageJson from "../package.json" with { type: "json" };
import { ranResult, type RunResult } from "./result.ts";
import { readDescaleTensors, semanticsFor } from "./inputs.ts";
import { checkRunLimits, type RunPlan } from "./plan.ts";

/** A KV-cache step and, for fp8 tensors, their descale factors (from the file, or the scales of quantising here). */
export interface KvCacheStep extends KvCacheTensors {
  descale?: Descale;
}

/** Quantises float tensors to fp8 under one per-tensor scale for all of them (k_cache with k_new: one scale). */
function quantiseTogether(dtype: Fp8DType, tensors: Tensor[]): { tensors: Tensor[]; scale: number } {
  const values = new Float32Array(tensors.reduce((n, t) => n + t.data.length, 0));
  let at = 0;
  for (const t of tensors) {
    values.set(toFloat32(t), at);
    at += t.data.length;
  }
  const { tensor: all, scale } = quantizeFp8(dtype, [values.length], values);
  at = 0;
  return {
    tensors: tensors.map((t) => tensor(dtype, t.shape, (all.data as Uint8Array).slice(at, (at += t.data.length)))),
    scale,
  };
}

/** A float step quantised to fp8 (see the file comment); the rotary tables are rounded (fp8 refuses rotary anyway). */
function quantiseStep(step: KvCacheTensors, dtype: Fp8DType): KvCacheStep {
  const [q, k, v] = [[step.q], [step.kCache, step.kNew], [step.vCache, step.vNew]]
    .map((group) => quantiseTogether(dtype, group.filter((t): t is Tensor => t !== undefined)));
  const round = (t: Tensor | undefined) => t && fromFloat32(dtype, t.shape, toFloat32(t));
  return {
    ...step, q: q.tensors[0], kCache: k.tensors[0], vCache: v.tensors[0], kNew: k.tensors[1], vNew: v.tensors[1],
    rotaryCos: round(step.rotaryCos), rotarySin: round(step.rotarySin),
    descale: { q: Float32Array.of(q.scale), k: Float32Array.of(k.scale), v: Float32Array.of(v.scale) },
  };
}

/**
 * The step of a .safetensors --input that holds k_cache, else undefined: fp8 tensors as they are with the file's
 * descale tensors, float tensors converted to the requested dtype (quantised for fp8).
 */
export function readKvCacheInput(plan: RunPlan): KvCacheStep | undefined {
  if (plan.input.kind !== "safetensors") return undefined;
  const path = plan.input.path;
  const file = openSafetensors(path);
  let step: KvCacheTensors;
  try {
    if (!isKvCacheFile(file)) return undefined;
    if (plan.input.names || plan.input.packed) {
      throw new FlashAttnError("USAGE", `${path} is a KV-cache step (it holds k_cache), whose tensors have fixed names: drop --q-name/--k-name/--v-name/--qkv-name`);
    }
    step = readKvCacheTensors(file);
  } finally {
    file.close();
  }
  // The descale factors are (batch, heads_kv): batch of q, heads of the caches.
  const descale = readDescaleTensors(path, { shape: [step.q.shape[0], 1, step.kCache.shape[2], 1] }, true);
  const tensors = [step.q, step.kCache, step.vCache, step.kNew, step.vNew].filter((t): t is Tensor => t !== undefined);
  const fp8 = tensors.find((t) => isFp8(t.dtype));
  if (fp8) {
    // fp8 numbers mean nothing without their scale: they run as stored (describeKvCache refuses mixed dtypes).
    if (plan.dtype !== "auto" && plan.dtype !== fp8.dtype) {
      throw new FlashAttnError("USAGE", `${path} holds ${fp8.dtype} tensors, which run as they are: --dtype ${plan.dtype} cannot convert them`,
        `drop --dtype, or pass --dtype ${fp8.dtype}`);
    }
    return descale ? { ...step, descale } : step;
  }
  if (plan.dtype !== "auto" && isFp8(plan.dtype)) {
    if (descale) {
      throw new FlashAttnError("USAGE", `${path} holds descale factors, but its float tensors are quantised here per tensor`,
        "drop the descale tensors (the quantisation makes its own), or store fp8 tensors");
    }
    return quantiseStep(step, plan.dtype);
  }
  const convert = (t: Tensor | undefined) =>
    t && plan.dtype !== "auto" && t.dtype !== plan.dtype ? fromFloat32(plan.dtype, t.shape, toFloat32(t)) : t;
  return { ...step, descale, q: convert(step.q)!, kCache: convert(step.kCache)!, vCache: convert(step.vCache)!,
    kNew: convert(step.kNew), vNew: convert(step.vNew), rotaryCos: convert(step.rotaryCos), rotarySin: convert(step.rotarySin) };
}

/**
 * A random decode step: every sequence holds shape.seqlenK cached tokens and appends `append` more; paged caches get
 * a shuffled block table (pages in no particular order, as a serving cache has them); rotary covers head_dim. fp8:
 * standard normal values quantised per tensor (k_new with k_cache, v_new with v_cache).
 */
export function randomKvCacheStep(input: Extract<RunPlan["input"], { kind: "decode" }>, dtype: DType): KvCacheStep {
  if (isFp8(dtype)) return quantiseStep(randomKvCacheStep(input, "fp32"), dtype);
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
export function decodeStep(plan: RunPlan, input: Extract<RunPlan["input"], { kind: "decode" }>): { step: KvCacheStep; decided: KvCachePlan } {
  const decided = planKvCache({ dtype: plan.dtype === "auto" ? "bf16" : plan.dtype, headDim: input.shape.headDim }, plan);
  const dtype = plan.dtype !== "auto" ? plan.dtype : decided.backend.name === "cpu" ? "fp32" : "bf16";
  return { step: randomKvCacheStep(input, dtype), decided: { ...decided, dtype } };
}

/** Runs, checks and writes a KV-cache step as `plan` says, on the backend decided before (--decode) or decided here. */
export async function executeKvCacheRun(
  plan: RunPlan,
  step: KvCacheStep,
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
    // fp8 caches mean nothing without their scales (a random step's are made here): the factors go with them.
    if (problem.seqlenNew > 0 && step.descale) {
      for (const [n, factors] of Object.entries(step.descale)) {
        if (factors) written[`${n}_descale`] = tensor("fp32", factors.length === 1 ? [1] : [problem.batch, problem.headsKv], factors);
      }
    }
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
