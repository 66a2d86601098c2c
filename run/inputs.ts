// Loading what a run computes on: q, k, v from .npy files or a .safetensors file (formats/ reads them), or seeded
// random tensors of a shape; and the semantics, with ALiBi slopes from a file when asked.
//
// fp8: files may hold fp8 bit patterns (.npy '|u1' read with --dtype fp8_*, .safetensors F8_E4M3 / F8_E5M2), with
// their descale factors as tensors q_descale, k_descale, v_descale in the --input or in a --descale file; or real
// values (float files, random problems) that are quantised here with a per-tensor scale, whose descale is that scale.
// Then the real values are kept too, for the comparison with a bf16 run of the same problem.
import fs from "node:fs";
import { FlashAttnError } from "../lib/errors.ts";
import { type AttentionSemantics, type Descale, standardAlibiSlopes, type TensorShape } from "../lib/problem.ts";
import { fromFloat32, quantizeFp8, randomValues, type Tensor, toFloat32 } from "../lib/tensor.ts";
import { type DType, isFp8, type ProblemShape } from "../lib/vocabulary.ts";
import { badFile, describeShape, openInput } from "../formats/input.ts";
import { readNpy } from "../formats/npy.ts";
import { type QkvTensors, readQkvSafetensors } from "../formats/qkv.ts";
import { openSafetensors } from "../formats/safetensors.ts";
import type { RunPlan } from "./plan.ts";

/** What a run computes on: q, k, v, their fp8 descale factors, and the real values fp8 inputs were quantised from. */
export interface RunInputs extends QkvTensors {
  descale?: Descale;
  real?: QkvTensors;
}

const descaleNames = ["q", "k", "v"] as const;

/**
 * The requested dtype of q, k, v (no copy when they already have it): float values converted, or quantised per
 * tensor for an fp8 dtype. fp8 inputs are not converted back: their values need their descale factors.
 */
function convert(qkv: QkvTensors, dtype: DType | "auto", source: string): RunInputs {
  const tensors = [qkv.q, qkv.k, qkv.v];
  const dtypes = [...new Set(tensors.map((t) => t.dtype))];
  if (dtypes.length > 1 && dtypes.some(isFp8)) {
    throw new FlashAttnError("BAD_INPUT", `${source}: q, k and v must share one dtype, got ${tensors.map((t) => t.dtype).join(", ")}`,
      "save all three in the same fp8 format, with their descale factors");
  }
  if (dtype === "auto" || dtypes.every((d) => d === dtype)) return qkv;
  if (dtypes.some(isFp8)) {
    throw new FlashAttnError("USAGE", `${source} holds ${dtypes[0]} tensors, which run as they are: --dtype ${dtype} cannot convert them`,
      `drop --dtype, or pass --dtype ${dtypes[0]}`);
  }
  if (!isFp8(dtype)) {
    const [q, k, v] = tensors.map((t) => fromFloat32(dtype, t.shape, toFloat32(t)));
    return { q, k, v };
  }
  const [q, k, v] = tensors.map((t) => quantizeFp8(dtype, t.shape, toFloat32(t)));
  return {
    q: q.tensor, k: k.tensor, v: v.tensor,
    descale: { q: Float32Array.of(q.scale), k: Float32Array.of(k.scale), v: Float32Array.of(v.scale) },
    real: qkv,
  };
}

/** q, k, v from the plan's files, converted to the requested dtype, with their descale factors. */
export function loadFiles(plan: RunPlan): RunInputs {
  const input = plan.input;
  let loaded: RunInputs;
  let fileDescale: Descale | undefined;
  if (input.kind === "npy") {
    const options = { bf16: plan.dtype === "bf16", fp8: plan.dtype !== "auto" && isFp8(plan.dtype) ? plan.dtype : undefined };
    const read = (path: string) => readNpy(path, options);
    loaded = convert({ q: read(input.q), k: read(input.k), v: read(input.v) }, plan.dtype, "the .npy inputs");
  } else if (input.kind === "safetensors") {
    loaded = convert(readQkvSafetensors(input.path, { names: input.names, packed: input.packed }), plan.dtype, input.path);
    fileDescale = readDescaleTensors(input.path, loaded.k, true);
  } else {
    throw new FlashAttnError("INTERNAL", "loadFiles called for a random problem");
  }
  const flagDescale = plan.descale === undefined ? undefined : readDescaleFile(plan.descale, loaded.k);
  if (fileDescale && flagDescale) {
    throw new FlashAttnError("USAGE", `the descale factors are given twice: in the --input and by --descale ${plan.descale}`,
      "keep one of them");
  }
  const given = fileDescale ?? flagDescale;
  if (given && (loaded.real || !isFp8(loaded.q.dtype))) {
    throw new FlashAttnError("USAGE", `descale factors apply to fp8 inputs, but q, k, v are ${loaded.real ? "real values quantised here per tensor" : loaded.q.dtype}`,
      loaded.real ? "drop the descale factors: the quantisation makes its own" : "pass fp8 tensors (or drop the descale factors)");
  }
  return given ? { ...loaded, descale: given } : loaded;
}

/**
 * Descale factors from tensors of a .safetensors file (q_descale, k_descale, v_descale: each a scalar, (1,) or
 * (batch, heads_kv), any float dtype); undefined when it holds none. `k`'s shape, (batch, seqlen, heads_kv, d) or
 * (tokens, heads_kv, d), gives batch and heads_kv (a KV-cache step passes one built from q's batch and the cache's
 * heads). `optional`: a file without them is fine (the --input); else (a --descale file) it must hold at least one.
 */
export function readDescaleTensors(path: string, k: Pick<Tensor, "shape">, optional: boolean): Descale | undefined {
  const file = openSafetensors(path);
  try {
    const found = descaleNames.filter((n) => file.entries.has(`${n}_descale`));
    if (found.length === 0) {
      if (optional) return undefined;
      throw badFile(path, "holds no q_descale, k_descale or v_descale tensor", "name the tensors q_descale, k_descale, v_descale");
    }
    return Object.fromEntries(found.map((n) => {
      const t = file.read(`${n}_descale`);
      return [n, descaleValues(path, `${n}_descale`, t.shape, toFloat32(t), k)];
    }));
  } finally {
    file.close();
  }
}

/** Descale factors from a --descale file: .safetensors tensors, or JSON {"q_descale": 0.5 or [[...]], ...}. */
function readDescaleFile(path: string, k: Pick<Tensor, "shape">): Descale {
  if (path.toLowerCase().endsWith(".safetensors")) return readDescaleTensors(path, k, false)!;
  const input = openInput(path, "descale");
  let doc: unknown;
  try {
    const text = fs.readFileSync(input.fd, "utf8");
    doc = JSON.parse(text);
  } catch (e) {
    throw badFile(path, `is not JSON: ${(e as Error).message}`, "write {\"q_descale\": 0.5, \"k_descale\": [[...]], ...}");
  } finally {
    input.close();
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw badFile(path, "must hold a JSON object of q_descale, k_descale, v_descale");
  const unknown = Object.keys(doc).filter((key) => !descaleNames.some((n) => key === `${n}_descale`));
  if (unknown.length) throw badFile(path, `has '${unknown[0]}', which is not q_descale, k_descale or v_descale`);
  const out: Descale = {};
  for (const n of descaleNames) {
    const value = (doc as Record<string, unknown>)[`${n}_descale`];
    if (value === undefined) continue;
    const rows = Array.isArray(value) ? value : [value];
    const nested = rows.some(Array.isArray);
    const flat = nested ? rows.flat() : rows;
    if (!flat.every((x) => typeof x === "number") || (nested && !rows.every(Array.isArray))) {
      throw badFile(path, `${n}_descale must be a number, a list or a (batch, heads_kv) list of lists of numbers`);
    }
    const shape = !Array.isArray(value) ? [] : nested ? [rows.length, (rows[0] as unknown[]).length] : [rows.length];
    if (nested && !rows.every((r) => (r as unknown[]).length === shape[1])) throw badFile(path, `${n}_descale has rows of different lengths`);
    out[n] = descaleValues(path, `${n}_descale`, shape, Float32Array.from(flat as number[]), k);
  }
  if (!out.q && !out.k && !out.v) throw badFile(path, "holds no q_descale, k_descale or v_descale");
  return out;
}

/** The factors of one descale tensor, whose shape must be a scalar, (1,) or (batch, heads_kv) of `k`'s problem. */
function descaleValues(path: string, name: string, shape: number[], values: Float32Array, k: Pick<Tensor, "shape">): Float32Array {
  const [batch, headsKv] = k.shape.length === 4 ? [k.shape[0], k.shape[2]] : [undefined, k.shape[1]];
  const scalar = values.length === 1 && shape.length <= 1;
  const perHead = shape.length === 2 && shape[0] === batch && shape[1] === headsKv;
  if (!scalar && !perHead) {
    throw badFile(path, `${name} has shape ${describeShape(shape)}; it takes a scalar or (batch, heads_kv) = (${batch ?? "batch"}, ${headsKv})`,
      "one factor per tensor, or one per sequence and kv head as FlashAttention-3 takes them");
  }
  const at = values.findIndex((x) => !Number.isFinite(x) || x <= 0);
  if (at >= 0) throw badFile(path, `${name} holds ${values[at]}: descale factors must be finite and positive`);
  return values;
}

/** The dtypes and shapes of a random problem's q, k, v: enough to describe it before any data exists. */
export function randomShapes(shape: ProblemShape, dtype: DType): { q: TensorShape; k: TensorShape; v: TensorShape } {
  const { batch, seqlenQ, seqlenK, headsQ, headsKv, headDim } = shape;
  const kv = { dtype, shape: [batch, seqlenK, headsKv, headDim] };
  return { q: { dtype, shape: [batch, seqlenQ, headsQ, headDim] }, k: kv, v: kv };
}

/**
 * Seeded random q, k, v for a shape (k and v use the next seeds so the three differ); for an fp8 dtype, standard normal
 * real values quantised per tensor (see convert).
 */
export function randomInputs(shape: ProblemShape, dtype: DType, seed: number): RunInputs {
  const s = randomShapes(shape, "fp32");
  const [q, k, v] = [s.q, s.k, s.v].map((t, i) => fromFloat32("fp32", t.shape, randomValues(t.shape, seed + i)));
  return dtype === "fp32" ? { q, k, v } : convert({ q, k, v }, dtype, "the random problem");
}

/** ALiBi slopes from a .npy of shape (heads_q,) or (batch, heads_q), any float dtype. */
function slopesFromFile(
  path: string,
  batch: number,
  headsQ: number,
): { alibiSlopes: Float32Array; alibiPerBatch: boolean } {
  const t = readNpy(path);
  const perHead = t.shape.length === 1 && t.shape[0] === headsQ;
  const perBatch = t.shape.length === 2 && t.shape[0] === batch && t.shape[1] === headsQ;
  if (!perHead && !perBatch) {
    throw new FlashAttnError(
      "BAD_INPUT",
      `${path}: ALiBi slopes must have shape (${headsQ},) or (${batch}, ${headsQ}), got ${describeShape(t.shape)}`,
      "one slope per query head, or per batch entry and query head",
    );
  }
  return { alibiSlopes: toFloat32(t), alibiPerBatch: perBatch };
}

/** The plan's semantics for a problem of `batch` sequences and `headsQ` query heads. */
export function semanticsFor(plan: RunPlan, batch: number, headsQ: number): AttentionSemantics {
  const semantics: AttentionSemantics = {
    causal: plan.causal,
    window: plan.window,
    softcap: plan.softcap,
    scale: plan.scale,
  };
  if (plan.outDtype !== undefined) semantics.outDtype = plan.outDtype;
  if (plan.alibi.kind === "standard") semantics.alibiSlopes = standardAlibiSlopes(headsQ);
  if (plan.alibi.kind === "file") Object.assign(semantics, slopesFromFile(plan.alibi.path, batch, headsQ));
  return semantics;
}
