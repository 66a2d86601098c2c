// A kernel's results against the fp64 reference (lib/reference.ts), with the tolerances of docs/DESIGN.md: what
// `run --check` reports and what `bench` requires of each kernel path before it times it.
import type { KvCacheOptions } from "./kvcache.ts";
import { plainKvCacheProblem, referenceKvCache } from "./kvcache_reference.ts";
import type { AttentionSemantics } from "./problem.ts";
import {
  naiveFp8Forward,
  naiveSamePrecisionForward,
  referenceBackward,
  referenceForward,
  relativeError,
  withinTolerance,
} from "./reference.ts";
import { type Tensor, toFloat32 } from "./tensor.ts";
import { isFp8 } from "./vocabulary.ts";

export interface CheckResult {
  relativeError: number;
  /** fp16/bf16: the error of softmax(QKᵀ)V computed naively in the same precision; fp8: of a naive fp8 attention. */
  naiveError?: number;
  /**
   * fp8 inputs quantised from known real values: how far the fp8 result is from our bf16 forward on those real
   * values (what fp8 costs against running in bf16; informational).
   */
  bf16Error?: number;
  /** LSE against the reference over rows that have at least one key (informational). */
  lseError: number;
  limit: number;
  pass: boolean;
}

/** O (and, for information, the LSE) of a forward call against the reference. */
export function checkAgainstReference(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  semantics: AttentionSemantics,
  out: Tensor,
  lse: Float32Array,
  bf16Out?: Tensor,
): CheckResult {
  const reference = referenceForward(q, k, v, semantics);
  const ours = toFloat32(out);
  const error = relativeError(ours, reference.out);
  const naive = q.dtype === "fp32"
    ? undefined
    : isFp8(q.dtype)
    ? naiveFp8Forward(q, k, v, semantics)
    : naiveSamePrecisionForward(q, k, v, semantics);
  const naiveError = naive && relativeError(naive, reference.out);
  const rows = [...reference.lse.keys()].filter((i) => Number.isFinite(reference.lse[i]));
  const lseError = relativeError(rows.map((i) => lse[i]), rows.map((i) => reference.lse[i]));
  const { ok, limit } = withinTolerance(q.dtype, error, naiveError);
  const bf16Error = bf16Out && relativeError(ours, toFloat32(bf16Out));
  return { relativeError: error, naiveError, ...(bf16Error === undefined ? {} : { bf16Error }), lseError, limit, pass: ok };
}

/** dQ, dK, dV against the reference: the worst of the three, fp32 ≤ 1e-5, fp16/bf16 ≤ 1e-2. */
export function checkGradientsAgainstReference(
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  semantics: AttentionSemantics,
  grads: { dq: Tensor; dk: Tensor; dv: Tensor },
): { relativeError: number; limit: number; pass: boolean } {
  const reference = referenceBackward(dout, q, k, v, semantics);
  const error = Math.max(
    relativeError(toFloat32(grads.dq), reference.dq),
    relativeError(toFloat32(grads.dk), reference.dk),
    relativeError(toFloat32(grads.dv), reference.dv),
  );
  const limit = q.dtype === "fp32" ? 1e-5 : 1e-2;
  return { relativeError: error, limit, pass: error <= limit };
}

/**
 * A KV-cache call against its fp64 reference (lib/kvcache_reference.ts): the worst relative error of O and of the
 * updated caches (the append, rotated, must land where the reference puts it); the LSE is informational. fp8 caches
 * take the plain fp8 rule: no worse than twice a naive fp8 attention of the same (appended) inputs.
 */
export function checkKvCacheAgainstReference(
  q: Tensor,
  kCache: Tensor,
  vCache: Tensor,
  options: KvCacheOptions,
  result: { out: Tensor; lse: Float32Array; kCache: Tensor; vCache: Tensor },
): CheckResult {
  const reference = referenceKvCache(q, kCache, vCache, options);
  const error = Math.max(
    relativeError(toFloat32(result.out), reference.out),
    relativeError(toFloat32(result.kCache), toFloat32(reference.kCache)),
    relativeError(toFloat32(result.vCache), toFloat32(reference.vCache)),
  );
  const rows = [...reference.lse.keys()].filter((i) => Number.isFinite(reference.lse[i]));
  const lseError = relativeError(rows.map((i) => result.lse[i]), rows.map((i) => reference.lse[i]));
  let naiveError: number | undefined;
  if (isFp8(q.dtype)) {
    const plain = plainKvCacheProblem(q, reference.kCache, reference.vCache, options);
    naiveError = relativeError(naiveFp8Forward(plain.q, plain.k, plain.v, plain.semantics), reference.out);
  }
  const { ok, limit } = withinTolerance(q.dtype, error, naiveError);
  return { relativeError: error, ...(naiveError === undefined ? {} : { naiveError }), lseError, limit, pass: ok };
}
