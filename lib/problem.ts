// The attention problem a set of host tensors and options describes: shapes checked against each other, varlen
// sequences resolved, every value checked against the rules of the semantics and of the C ABI. Shared by the
// reference, attention(), the backend decision and the CLI's flag parsing, so that all of them read a request the
// same way and each rule is written once.
//
// Causal and the window are kept as given: `causal` says "no key after the diagonal", `window` is the user's
// [left, right] (-1 = unbounded). The two combine in one place per implementation: the fp64 reference's mask
// (lib/reference.ts) and, for the kernels, effective_window_right in kernels/common/fa_common.hpp.
import { fitsFloat32, fitsInt32, INT32_MAX } from "../ffi/layout.ts";
import { type ErrorCode, FlashAttnError } from "./errors.ts";
import type { Tensor } from "./tensor.ts";
import { defaultOutDtype, type DType, isFp8, type ProblemShape } from "./vocabulary.ts";

/**
 * fp8 descale factors (flashattn.h, fa_descale): per tensor, one value (a per-tensor scale) or batch × heads_kv values
 * in row-major (batch, heads_kv) order, as FlashAttention-3 takes them. A tensor's real values are its fp8 numbers
 * times its factors; query head h uses the factor of its kv head. Absent = 1.
 */
export interface Descale {
  q?: Float32Array;
  k?: Float32Array;
  v?: Float32Array;
}

/** The semantics of docs/DESIGN.md (flash-attn 2.x). */
export interface AttentionSemantics {
  causal?: boolean;
  /** [left, right]; -1 = unbounded. */
  window?: [number, number];
  softcap?: number;
  /** Default 1/sqrt(head_dim). */
  scale?: number;
  /** fp32 slopes, [heads_q] or (alibiPerBatch) [batch, heads_q]. */
  alibiSlopes?: Float32Array;
  alibiPerBatch?: boolean;
  /** Varlen: q (total_q, heads_q, d), k/v (total_k, heads_kv, d) and int32 cumulative lengths of length batch+1. */
  cuSeqlensQ?: Int32Array;
  cuSeqlensK?: Int32Array;
  /** fp8 inputs only. */
  descale?: Descale;
  /** The dtype of o: fp16 or bf16 (the default) for fp8 inputs; for the others the input dtype, the default. */
  outDtype?: DType;
}

/** The head_dim range of flash-attn 2.x, which every backend implements (the limits in kernels/{cpu,gpu}/api.cpp). */
export const MAX_HEAD_DIM = 256;

/**
 * The rules a problem's sizes obey whatever the backend: every size fits the ABI's int32 fields, GQA/MQA needs
 * heads_q to be a multiple of heads_kv, head_dim is 1..256. Throws `code` (BAD_INPUT for tensors, USAGE for flags).
 */
export function checkShape(shape: ProblemShape, code: ErrorCode = "BAD_INPUT"): void {
  const fail = (message: string, fix?: string) => new FlashAttnError(code, message, fix);
  const names: Array<[keyof ProblemShape, string]> = [
    ["batch", "batch"], ["seqlenQ", "seqlen_q"], ["seqlenK", "seqlen_k"], ["headsQ", "heads_q"],
    ["headsKv", "heads_kv"], ["headDim", "head_dim"],
  ];
  for (const [key, name] of names) {
    if (!fitsInt32(shape[key])) throw fail(`${name} ${shape[key]} does not fit the library's int32 sizes (at most ${INT32_MAX})`);
  }
  const { headsQ, headsKv, headDim } = shape;
  if (headsQ % headsKv !== 0) {
    throw fail(`heads_q (${headsQ}) must be a multiple of heads_kv (${headsKv}) for GQA/MQA`,
      "use a kv head count that divides the query head count");
  }
  if (headDim > MAX_HEAD_DIM) {
    throw fail(`head_dim ${headDim} is out of range (1..${MAX_HEAD_DIM})`, "FlashAttention kernels support head dims up to 256");
  }
}

/**
 * The largest softmax scale taken (the C library's kMaxScale). The kernels keep scaled scores in float32: past 2^64
 * even fp16 inputs (|q·k| ≤ 256 · 65504² ≈ 1.1e12) could overflow them, and the softmax of infinite scores is wrong
 * without a word. No real model comes near: 1/sqrt(head_dim) is below 1.
 */
export const MAX_SCALE = 2 ** 64;

/**
 * Why `value` cannot reach its C ABI field unchanged, or undefined when it can: the window bounds are int32, scale
 * and softcap float32 (ffi/layout.ts refuses the same values again when it writes the struct).
 */
export function abiFault(kind: "int32" | "float32", value: number): string | undefined {
  if (kind === "int32") return fitsInt32(value) ? undefined : `does not fit an int32 (at most ${INT32_MAX})`;
  if (fitsFloat32(value)) return undefined;
  return `is outside float32's range (${Number.isFinite(Math.fround(value)) ? "it would become 0" : "it would overflow"})`;
}

export interface Sequence {
  /** First token of this sequence in the packed (or padded) q and k/v. */
  q0: number;
  k0: number;
  sq: number;
  sk: number;
}

/** A checked problem: the shape (padded: the sequence lengths; varlen: the longest) and the semantics resolved. */
export interface Problem extends ProblemShape {
  dtype: DType;
  /** The dtype o is written in (opts.outDtype resolved). */
  outDtype: DType;
  varlen: boolean;
  totalQ: number;
  totalK: number;
  sequences: Sequence[];
  scale: number;
  /** The window as given, [left, right], -1 = unbounded ([-1, -1]: none); causal is not folded in. */
  window: [number, number];
  softcap: number;
  causal: boolean;
}

const bad = (message: string, fix?: string) => new FlashAttnError("BAD_INPUT", message, fix);

function checkCuSeqlens(name: string, cu: Int32Array, batch: number, total: number): void {
  if (cu.length !== batch + 1) throw bad(`${name} has ${cu.length} entries but needs batch + 1 = ${batch + 1}`);
  if (cu[0] !== 0) throw bad(`${name}[0] must be 0, got ${cu[0]}`);
  for (let i = 0; i < batch; i++) {
    if (cu[i + 1] < cu[i]) throw bad(`${name} must be non-decreasing, but ${name}[${i}] = ${cu[i]} > ${name}[${i + 1}] = ${cu[i + 1]}`);
  }
  if (cu[batch] !== total) throw bad(`${name}[${batch}] = ${cu[batch]} must equal the ${total} packed tokens`);
}

/** What describing a problem reads of a tensor: its dtype and shape (so a problem can be described before its data exists). */
export type TensorShape = Pick<Tensor, "dtype" | "shape">;

/** Reads the problem from tensors (or their shapes) and options, refusing inconsistent input with one sentence. */
export function describeProblem(q: TensorShape, k: TensorShape, v: TensorShape, opts: AttentionSemantics = {}): Problem {
  if (q.dtype !== k.dtype || q.dtype !== v.dtype) {
    throw bad(`q, k and v must share a dtype, got ${q.dtype}, ${k.dtype} and ${v.dtype}`);
  }
  const varlen = opts.cuSeqlensQ !== undefined || opts.cuSeqlensK !== undefined;
  const rank = varlen ? 3 : 4;
  for (const [name, t] of [["q", q], ["k", k], ["v", v]] as const) {
    if (t.shape.length !== rank) {
      throw bad(varlen
        ? `${name} must be (total_tokens, heads, head_dim) for varlen, got shape (${t.shape.join(", ")})`
        : `${name} must be (batch, seqlen, heads, head_dim), got shape (${t.shape.join(", ")})`);
    }
  }
  if (k.shape.join() !== v.shape.join()) throw bad(`k and v shapes differ: (${k.shape.join(", ")}) vs (${v.shape.join(", ")})`);
  const d = q.shape[rank - 1];
  const headsQ = q.shape[rank - 2];
  const headsKv = k.shape[rank - 2];
  if (k.shape[rank - 1] !== d) throw bad(`q has head_dim ${d} but k and v have ${k.shape[rank - 1]}`);
  if (d < 1) throw bad(`head_dim must be at least 1, got ${d}`);
  if (headsQ < 1 || headsKv < 1) throw bad(`head counts must be at least 1, got ${headsQ} and ${headsKv}`);

  let batch: number, seqlenQ: number, seqlenK: number, totalQ = 0, totalK = 0;
  const sequences: Sequence[] = [];
  if (varlen) {
    const cq = opts.cuSeqlensQ, ck = opts.cuSeqlensK;
    if (!cq || !ck) throw bad("varlen needs both cu_seqlens_q and cu_seqlens_k");
    batch = cq.length - 1;
    if (batch < 1) throw bad("cu_seqlens_q must have at least 2 entries (batch + 1)");
    totalQ = q.shape[0];
    totalK = k.shape[0];
    checkCuSeqlens("cu_seqlens_q", cq, batch, totalQ);
    checkCuSeqlens("cu_seqlens_k", ck, batch, totalK);
    seqlenQ = 0;
    seqlenK = 0;
    for (let b = 0; b < batch; b++) {
      const s = { q0: cq[b], k0: ck[b], sq: cq[b + 1] - cq[b], sk: ck[b + 1] - ck[b] };
      seqlenQ = Math.max(seqlenQ, s.sq);
      seqlenK = Math.max(seqlenK, s.sk);
      sequences.push(s);
    }
    if (seqlenQ < 1) throw bad("varlen input has no query tokens");
  } else {
    [batch, seqlenQ] = q.shape;
    seqlenK = k.shape[1];
    if (k.shape[0] !== batch) throw bad(`q has batch ${batch} but k and v have ${k.shape[0]}`);
    if (batch < 1 || seqlenQ < 1) throw bad(`batch and seqlen_q must be at least 1, got q shape (${q.shape.join(", ")})`);
  }

  checkShape({ batch, seqlenQ, seqlenK, headsQ, headsKv, headDim: d });
  if (!varlen) for (let b = 0; b < batch; b++) sequences.push({ q0: b * seqlenQ, k0: b * seqlenK, sq: seqlenQ, sk: seqlenK });
  if (varlen) for (const [name, total] of [["total_q", totalQ], ["total_k", totalK]] as const) {
    if (!fitsInt32(total)) throw bad(`${name} ${total} does not fit the library's int32 sizes (at most ${INT32_MAX})`);
  }

  const scale = opts.scale ?? 1 / Math.sqrt(d);
  if (!Number.isFinite(scale) || scale <= 0) throw bad(`scale must be a finite positive number, got ${opts.scale}`);
  if (scale > MAX_SCALE) throw bad(`scale ${scale} is above 2^64 (${MAX_SCALE.toPrecision(3)}): scaled scores would overflow float32`);
  const softcap = opts.softcap ?? 0;
  if (!Number.isFinite(softcap) || softcap < 0) throw bad(`softcap must be a finite number ≥ 0 (0 = off), got ${opts.softcap}`);
  for (const [name, value] of [["scale", scale], ["softcap", softcap]] as const) {
    const fault = abiFault("float32", value);
    if (fault) throw bad(`${name} ${value} ${fault}`);
  }
  const [left, right] = opts.window ?? [-1, -1];
  for (const w of [left, right]) {
    if (!Number.isInteger(w) || w < -1) throw bad(`window bounds must be whole numbers ≥ -1 (-1 = unbounded), got (${left}, ${right})`);
    const fault = abiFault("int32", w);
    if (fault) throw bad(`window bound ${w} ${fault}`);
  }
  const causal = !!opts.causal;
  if (opts.alibiSlopes) {
    const want = opts.alibiPerBatch ? batch * headsQ : headsQ;
    if (opts.alibiSlopes.length !== want) {
      throw bad(`ALiBi needs ${want} slopes (${opts.alibiPerBatch ? "batch × heads_q" : "one per query head"}), got ${opts.alibiSlopes.length}`);
    }
    if (!opts.alibiSlopes.every(Number.isFinite)) throw bad("ALiBi slopes must be finite numbers");
  }
  const outDtype = checkFp8(q.dtype, batch, headsKv, opts);
  return {
    dtype: q.dtype, outDtype, batch, seqlenQ, seqlenK, headsQ, headsKv, headDim: d, varlen, totalQ, totalK, sequences, scale,
    window: [left, right], softcap, causal,
  };
}

/** The fp8 rules: the output dtype, and descale factors only for fp8, of a valid count, finite and positive. */
function checkFp8(dtype: DType, batch: number, headsKv: number, opts: AttentionSemantics): DType {
  const fp8 = isFp8(dtype);
  const outDtype = opts.outDtype ?? defaultOutDtype(dtype);
  if (fp8 && outDtype !== "fp16" && outDtype !== "bf16") {
    throw bad(`an ${dtype} forward writes its output in fp16 or bf16, not ${outDtype}`);
  }
  if (!fp8 && outDtype !== dtype) throw bad(`the output of ${dtype} inputs is ${dtype}; only fp8 inputs take another output dtype (${outDtype} asked)`);
  for (const which of ["q", "k", "v"] as const) {
    const factors = opts.descale?.[which];
    if (!factors) continue;
    const name = `${which}_descale`;
    if (!fp8) throw bad(`${name} is given but the inputs are ${dtype}: descale factors apply to fp8 inputs only`);
    if (factors.length !== 1 && factors.length !== batch * headsKv) {
      throw bad(`${name} has ${factors.length} values; it takes 1 (per tensor) or batch × heads_kv = ${batch * headsKv} (per sequence and kv head)`,
        "shape it (batch, heads_kv) as FlashAttention-3 does, or give one scalar");
    }
    const at = factors.findIndex((x) => !Number.isFinite(x) || x <= 0 || abiFault("float32", x) !== undefined);
    if (at >= 0) throw bad(`${name}[${at}] is ${factors[at]}: descale factors must be finite positive normal floats`);
  }
  return outDtype;
}

/** The standard ALiBi slopes for `heads` heads (geometric, as in the ALiBi paper and flash-attn's tests). */
export function standardAlibiSlopes(heads: number): Float32Array {
  const closestPow2 = 2 ** Math.floor(Math.log2(heads));
  const base = (n: number) => Array.from({ length: n }, (_, i) => 2 ** (-8 * (i + 1) / n));
  const slopes = base(closestPow2);
  if (closestPow2 < heads) slopes.push(...base(2 * closestPow2).filter((_, i) => i % 2 === 0).slice(0, heads - closestPow2));
  return Float32Array.from(slopes);
}
