// The counts everybody quotes, so our TFLOP/s and GB/s compare one to one with flash-attention's figures and
// PyTorch's (docs/DESIGN.md "Benchmark method", flash-attention benchmarks/benchmark_flash_attention.py):
//   forward  = 4 · batch · heads_q · seqlen_q · seqlen_k · head_dim   (two matmuls, QKᵀ and PV, 2 flops per MAC)
//   causal   = half of that (the field's convention, also for seqlen_q ≠ seqlen_k)
//   backward = 2.5 × forward (five matmuls instead of two), fwd+bwd = 3.5 × forward
// Decode is memory bound, so it is judged by the bytes it must move (decodeBytes), against the device's copy bandwidth.
import { attentionFlops } from "../lib/attention.ts";
import type { Direction } from "../lib/backend.ts";
import { defaultOutDtype, type DType, dtypeBytes, type ProblemShape } from "../lib/vocabulary.ts";

export type { Direction };
export const directions: readonly Direction[] = ["fwd", "bwd", "fwd+bwd"];

/** What a FLOP or byte count needs to know about a problem: its shape, causal and dtype. */
export interface ProblemSize extends ProblemShape {
  causal: boolean;
  dtype: DType;
}

/** Floating-point operations of one call in `direction`, by the standard formula (the library's one definition). */
export { attentionFlops };

/** Bytes of K and V one forward call must read at least once: 2 · batch · seqlen_k · heads_kv · head_dim · sizeof. */
export function kvBytes(p: ProblemSize): number {
  return 2 * p.batch * p.seqlenK * p.headsKv * p.headDim * dtypeBytes[p.dtype];
}

/**
 * Bytes a decode call must move at least once, whichever entry runs it: K and V of the attended keys once per KV
 * head (GQA packing reads a KV head once for its whole query group; a paged cache reads the same bytes from
 * scattered pages), q read and O written, and for an append the K and V rows written into the cache (their reads are
 * among the attended keys). The LSE and the rotary rows (a few KiB) are left out.
 */
export function decodeBytes(p: ProblemSize & { kvcache?: { append: number } }): number {
  const e = dtypeBytes[p.dtype];
  const qAndO = p.batch * p.seqlenQ * p.headsQ * p.headDim * (e + dtypeBytes[defaultOutDtype(p.dtype)]);
  const appended = 2 * p.batch * (p.kvcache?.append ?? 0) * p.headsKv * p.headDim * e;
  return kvBytes(p) + qAndO + appended;
}

/** Bytes of the tensors a call in `direction` holds: q, k, v, o, fp32 LSE, and dO, dQ, dK, dV for backward. */
export function tensorBytes(p: ProblemSize, direction: Direction): number {
  const e = dtypeBytes[p.dtype];
  const qLike = p.batch * p.seqlenQ * p.headsQ * p.headDim * e;
  const kvLike = p.batch * p.seqlenK * p.headsKv * p.headDim * e;
  const lse = p.batch * p.headsQ * p.seqlenQ * 4;
  const o = (qLike / e) * dtypeBytes[defaultOutDtype(p.dtype)];
  const forward = qLike + o + 2 * kvLike + lse; // q, o, k, v, lse
  return direction === "fwd" ? forward : forward + 2 * qLike + 2 * kvLike; // + dO, dQ, dK, dV
}

/** Bytes of the materialised fp32 scores S and probabilities P the naive algorithm needs on top of its tensors. */
export function naiveScoreBytes(p: ProblemSize): number {
  return 2 * p.batch * p.headsQ * p.seqlenQ * p.seqlenK * 4;
}

/** TFLOP/s for `flops` done in `ms` milliseconds. */
export const tflopsPerSecond = (flops: number, ms: number) => flops / (ms * 1e-3) / 1e12;

/** GB/s (1e9 bytes) for `bytes` moved in `ms` milliseconds. */
export const gigabytesPerSecond = (bytes: number, ms: number) => bytes / (ms * 1e-3) / 1e9;
