// A benchmark never times a wrong kernel: before the first timing of a kernel path, the same path computes a small
// case of the same kind (dtype, head_dim, GQA ratio, causal, direction, algorithm) on random data, and its results
// are compared with the fp64 reference (lib/check.ts). A path that fails is not timed; its rows say why. A KV-cache
// case is checked the same way through the KV-cache entry: the same cache layout (paged with a shuffled block table,
// append, rotary, causal) at the small size, O and the updated caches against lib/kvcache_reference.ts.
import { attention, attentionBackward, planAttention } from "../lib/attention.ts";
import type { Backend } from "../lib/backend.ts";
import { checkAgainstReference, checkGradientsAgainstReference, checkKvCacheAgainstReference } from "../lib/check.ts";
import { FlashAttnError } from "../lib/errors.ts";
import type { DeviceBuffer } from "../lib/backend.ts";
import { randomTensor, tensor } from "../lib/tensor.ts";
import { type Algorithm, caseSemantics } from "./ours.ts";
import { isKvCacheCase, type KvCacheCase, kvcacheHostInputs, prepareKvcache } from "./kvcache.ts";
import type { KernelCheck } from "./results.ts";
import { baselineProblem, type BenchCase, layoutText } from "./sweep.ts";

/**
 * The small case a path is checked on: batch 1, at most 2 KV heads, lengths cut to a few odd-sized tiles (a
 * KV-cache case keeps its page size, append and rotary: 257 keys span several shuffled pages of 16, 64 or 256).
 */
export function smallCaseOf(c: BenchCase): BenchCase {
  const headsKv = Math.min(c.headsKv, 2);
  const seqlenK = Math.min(c.seqlenK, 257);
  const seqlenQ = c.seqlenQ === c.seqlenK ? seqlenK : Math.min(c.seqlenQ, 129);
  return { ...c, batch: 1, headsKv, headsQ: headsKv * (c.headsQ / c.headsKv), seqlenQ, seqlenK, id: `${c.id} (check)` };
}

/**
 * The key of a kernel path: what selects a kernel, without the sizes — except a decode case's query count, which
 * picks the decode kernel's row tiling (and past 64 packed rows another path), so each seqlen_q gets its own check.
 */
const pathKey = (backend: Backend, c: BenchCase, algorithm: Algorithm) =>
  [backend.name, algorithm, c.dtype, c.headDim, c.headsQ / c.headsKv, c.causal, c.window ?? "", c.softcap ?? 0, !!c.alibi,
    c.direction, c.kind, c.kind === "decode" ? c.seqlenQ : "", c.kvcache?.pageSize ?? "", c.kvcache?.append ?? "",
    c.kvcache?.rotary ?? ""].join(" ");

/** Checks each kernel path once per run (the first case of each kind), remembering the verdict. */
export class KernelChecks {
  readonly #verdicts = new Map<string, KernelCheck>();

  /**
   * The verdict for the path `c` takes on `backend`; computed on the first call for that path. The naive algorithm
   * times a KV-cache case's plain equivalent (a baseline), so that is what it is checked on.
   */
  async verify(backend: Backend, c: BenchCase, algorithm: Algorithm): Promise<KernelCheck> {
    const timed = algorithm === "naive" ? baselineProblem(c) : c;
    const key = pathKey(backend, timed, algorithm);
    let verdict = this.#verdicts.get(key);
    if (!verdict) {
      const small = smallCaseOf(timed);
      verdict = isKvCacheCase(small) ? await checkKvcachePath(backend, small) : await checkPath(backend, small, algorithm);
      this.#verdicts.set(key, verdict);
    }
    return verdict;
  }
}

const shapeText = (s: BenchCase) =>
  `b${s.batch} q${s.seqlenQ} kv${s.seqlenK} h${s.headsQ}/${s.headsKv} d${s.headDim}`;

/** Why a path could not run its small case at all (the timed case meets the same refusal and reports it). */
function refusal(shape: string, error: unknown): KernelCheck {
  const unsupported = error instanceof FlashAttnError && ["UNSUPPORTED", "INVALID_ARGUMENT"].includes(error.code);
  return { shape, pass: false, error: (error as Error).message, unsupported };
}

/** A KV-cache case on random host data through Backend.forwardKvcache, against the fp64 KV-cache reference. */
async function checkKvcachePath(backend: Backend, s: KvCacheCase): Promise<KernelCheck> {
  const shape = `${shapeText(s)}${s.causal ? " causal" : ""} ${layoutText(s.kvcache)}`;
  const { q, kCache, vCache, options } = kvcacheHostInputs(s, (dims, seed) => randomTensor(s.dtype, dims, seed));
  const host = { q, kCache, vCache, ...options };
  const buffers: DeviceBuffer[] = [];
  const own = (b: DeviceBuffer) => {
    buffers.push(b);
    return b;
  };
  try {
    const call = prepareKvcache(backend, s, own, (name) => own(backend.upload(host[name]!.data)));
    backend.fill(call.o, 0xff); // poisoned: an output the kernel leaves unwritten reads NaN
    const { kernelId } = backend.forwardKvcache(call.params);
    backend.synchronize();
    const result = {
      out: tensor(call.params.outDtype ?? s.dtype, q.shape), // bf16 for fp8 caches
      lse: new Float32Array(s.batch * s.headsQ * s.seqlenQ),
      kCache: tensor(s.dtype, kCache.shape),
      vCache: tensor(s.dtype, vCache.shape),
    };
    backend.download(call.o, result.out.data);
    backend.download(call.lse, result.lse);
    backend.download(call.kCache, result.kCache.data);
    backend.download(call.vCache, result.vCache.data);
    const check = checkKvCacheAgainstReference(q, kCache, vCache, options, result);
    return {
      shape,
      kernel: backend.kernelName(kernelId),
      relativeError: check.relativeError,
      limit: check.limit,
      pass: check.pass,
    };
  } catch (error) {
    return refusal(shape, error);
  } finally {
    for (const b of buffers) backend.free(b);
  }
}

async function checkPath(backend: Backend, s: BenchCase, algorithm: Algorithm): Promise<KernelCheck> {
  const shape = shapeText(s);
  const q = randomTensor(s.dtype, [s.batch, s.seqlenQ, s.headsQ, s.headDim], 11);
  const k = randomTensor(s.dtype, [s.batch, s.seqlenK, s.headsKv, s.headDim], 12);
  const v = randomTensor(s.dtype, [s.batch, s.seqlenK, s.headsKv, s.headDim], 13);
  const semantics = caseSemantics(s);
  try {
    const forward = await attention(q, k, v, {
      plan: planAttention(q, k, v, { ...semantics, algorithm }, "fwd", backend),
      poison: true,
    });
    const fwd = checkAgainstReference(q, k, v, semantics, forward.out, forward.lse);
    if (!fwd.pass || s.direction === "fwd" || algorithm === "naive") {
      return { shape, kernel: forward.kernel, relativeError: fwd.relativeError, limit: fwd.limit, pass: fwd.pass };
    }
    const dout = randomTensor(s.dtype, q.shape, 14);
    const grads = await attentionBackward(dout, q, k, v, forward.out, forward.lse, {
      plan: planAttention(q, k, v, semantics, "bwd", backend),
      poison: true,
    });
    const bwd = checkGradientsAgainstReference(dout, q, k, v, semantics, grads);
    return {
      shape,
      kernel: `${forward.kernel} + ${grads.kernel}`,
      relativeError: bwd.relativeError,
      limit: bwd.limit,
      pass: bwd.pass,
    };
  } catch (error) {
    return refusal(shape, error);
  }
}
