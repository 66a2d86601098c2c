// flashattn: exact tiled attention (FlashAttention) for Bun and Deno.
//
//   import { attention, randomTensor } from "flashattn";
//   const q = randomTensor("fp32", [1, 128, 8, 64], 1), k = randomTensor("fp32", [1, 128, 8, 64], 2);
//   const v = randomTensor("fp32", [1, 128, 8, 64], 3);
//   const { out, lse, backend, kernel } = await attention(q, k, v, { causal: true });
export { attention, attentionBackward, attentionFlops, planAttention } from "./lib/attention.ts";
export type { AttentionOptions, AttentionPlan, AttentionResult, BackwardResult, CallOptions } from "./lib/attention.ts";
export { attentionWithKvCache, describeKvCache, kvCacheParamsFor } from "./lib/kvcache.ts";
export type { KvCacheDeviceTensors, KvCacheOptions, KvCacheProblem, KvCacheResult, KvCacheSemantics } from "./lib/kvcache.ts";
export { referenceKvCache } from "./lib/kvcache_reference.ts";
export type { KvCacheReference } from "./lib/kvcache_reference.ts";
export { describeRingProblem, LocalRing, ringAttention, ringAttentionBackward, shardOf } from "./lib/ring.ts";
export type { RingBackwardShard, RingForwardShard, RingOptions, RingTimes, RingTransport, Shard, ShardChunk } from "./lib/ring.ts";
export { ringAttentionBackwardTensors, ringAttentionTensors } from "./lib/ring_tensors.ts";
export type { RingGradients, RingResult, RingSemantics } from "./lib/ring_tensors.ts";
export { Nccl, NcclRing, openNccl } from "./lib/nccl.ts";
export { checkAgainstReference } from "./lib/check.ts";
export type { CheckResult } from "./lib/check.ts";
export {
  naiveFp8Forward,
  naiveSamePrecisionForward,
  referenceBackward,
  referenceForward,
  relativeError,
  withinTolerance,
} from "./lib/reference.ts";
export type { ReferenceGradients, ReferenceOutput } from "./lib/reference.ts";
export { describeProblem, standardAlibiSlopes } from "./lib/problem.ts";
export type { AttentionSemantics, Descale, Problem } from "./lib/problem.ts";
export { floatToFp8, fp8ToFloat, fromFloat32, quantizeFp8, randomTensor, tensor, toFloat32 } from "./lib/tensor.ts";
export type { DType, Tensor } from "./lib/tensor.ts";
export { Backend, describeAttempts, openBackend } from "./lib/backend.ts";
export type { DeviceBuffer, DeviceInfo, Direction, LibraryInfo, LoadAttempt, PlanResult } from "./lib/backend.ts";
export { chooseBackend, paramsFor, requestedBackend } from "./lib/select.ts";
export type { AttnRequest, BackendChoice, BackendDecision } from "./lib/select.ts";
export { exitCodeFor, FlashAttnError } from "./lib/errors.ts";
export type { ErrorCode } from "./lib/errors.ts";
export type { BackendName, Fp8DType, ProblemShape } from "./lib/vocabulary.ts";
export { readNpy, writeNpy } from "./formats/npy.ts";
export { openSafetensors, readSafetensors, writeSafetensors } from "./formats/safetensors.ts";
