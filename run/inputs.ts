// Loading what a run computes on: q, k, v from .npy files or a .safetensors file (formats/ reads them), or seeded
// random tensors of a shape; and the semantics, with ALiBi slopes from a file when asked.
import { FlashAttnError } from "../lib/errors.ts";
import { type AttentionSemantics, standardAlibiSlopes, type TensorShape } from "../lib/problem.ts";
import { fromFloat32, randomTensor, type Tensor, toFloat32 } from "../lib/tensor.ts";
import type { DType, ProblemShape } from "../lib/vocabulary.ts";
import { describeShape } from "../formats/input.ts";
import { readNpy } from "../formats/npy.ts";
import { type QkvTensors, readQkvSafetensors } from "../formats/qkv.ts";
import type { RunPlan } from "./plan.ts";

/** Converts a file tensor to the requested dtype (no copy when it already matches). */
function convert(t: Tensor, dtype: DType | "auto"): Tensor {
  return dtype === "auto" || dtype === t.dtype ? t : fromFloat32(dtype, t.shape, toFloat32(t));
}

/** q, k, v from the plan's files, converted to the requested dtype. */
export function loadFiles(plan: RunPlan): QkvTensors {
  const input = plan.input;
  if (input.kind === "npy") {
    const read = (path: string) => convert(readNpy(path, { bf16: plan.dtype === "bf16" }), plan.dtype);
    return { q: read(input.q), k: read(input.k), v: read(input.v) };
  }
  if (input.kind === "safetensors") {
    const { q, k, v } = readQkvSafetensors(input.path, { names: input.names, packed: input.packed });
    return { q: convert(q, plan.dtype), k: convert(k, plan.dtype), v: convert(v, plan.dtype) };
  }
  throw new FlashAttnError("INTERNAL", "loadFiles called for a random problem");
}

/** The dtypes and shapes of a random problem's q, k, v: enough to describe it before any data exists. */
export function randomShapes(shape: ProblemShape, dtype: DType): { q: TensorShape; k: TensorShape; v: TensorShape } {
  const { batch, seqlenQ, seqlenK, headsQ, headsKv, headDim } = shape;
  const kv = { dtype, shape: [batch, seqlenK, headsKv, headDim] };
  return { q: { dtype, shape: [batch, seqlenQ, headsQ, headDim] }, k: kv, v: kv };
}

/** Seeded random q, k, v for a shape (k and v use the next seeds so the three differ). */
export function randomInputs(shape: ProblemShape, dtype: DType, seed: number): QkvTensors {
  const s = randomShapes(shape, dtype);
  return {
    q: randomTensor(dtype, s.q.shape, seed),
    k: randomTensor(dtype, s.k.shape, seed + 1),
    v: randomTensor(dtype, s.v.shape, seed + 2),
  };
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
  if (plan.alibi.kind === "standard") semantics.alibiSlopes = standardAlibiSlopes(headsQ);
  if (plan.alibi.kind === "file") Object.assign(semantics, slopesFromFile(plan.alibi.path, batch, headsQ));
  return semantics;
}
