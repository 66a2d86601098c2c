// A benchmark never times a wrong kernel: before the first timing of a kernel path, the same path computes a small
// case of the same kind (dtype, head_dim, GQA ratio, causal, direction, algorithm) on random data, and its results
// are compared with the fp64 reference (lib/check.ts). A path that fails is not timed; its rows say why.
import { attention, attentionBackward, planAttention } from "../lib/attention.ts";
import type { Backend } from "../lib/backend.ts";
import { checkAgainstReference, checkGradientsAgainstReference } from "../lib/check.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { randomTensor } from "../lib/tensor.ts";
import { type Algorithm, caseSemantics } from "./ours.ts";
import type { KernelCheck } from "./results.ts";
import type { BenchCase } from "./sweep.ts";

/** The small case a path is checked on: batch 1, at most 2 KV heads, lengths cut to a few odd-sized tiles. */
export function smallCaseOf(c: BenchCase): BenchCase {
  const headsKv = Math.min(c.headsKv, 2);
  const seqlenK = Math.min(c.seqlenK, 257);
  const seqlenQ = c.seqlenQ === c.seqlenK ? seqlenK : Math.min(c.seqlenQ, 129);
  return { ...c, batch: 1, headsKv, headsQ: headsKv * (c.headsQ / c.headsKv), seqlenQ, seqlenK, id: `${c.id} (check)` };
}

/** The key of a kernel path: what selects a kernel, without the sizes. */
const pathKey = (backend: Backend, c: BenchCase, algorithm: Algorithm) =>
  [backend.name, algorithm, c.dtype, c.headDim, c.headsQ / c.headsKv, c.causal, c.window ?? "", c.softcap ?? 0, !!c.alibi,
    c.direction, c.kind].join(" ");

/** Checks each kernel path once per run (the first case of each kind), remembering the verdict. */
export class KernelChecks {
  readonly #verdicts = new Map<string, KernelCheck>();

  /** The verdict for the path `c` takes on `backend`; computed on the first call for that path. */
  async verify(backend: Backend, c: BenchCase, algorithm: Algorithm): Promise<KernelCheck> {
    const key = pathKey(backend, c, algorithm);
    let verdict = this.#verdicts.get(key);
    if (!verdict) {
      verdict = await checkPath(backend, smallCaseOf(c), algorithm);
      this.#verdicts.set(key, verdict);
    }
    return verdict;
  }
}

async function checkPath(backend: Backend, s: BenchCase, algorithm: Algorithm): Promise<KernelCheck> {
  const shape = `b${s.batch} q${s.seqlenQ} kv${s.seqlenK} h${s.headsQ}/${s.headsKv} d${s.headDim}`;
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
    // A path that cannot run the small case says so; the timed case meets the same refusal and reports it.
    const unsupported = error instanceof FlashAttnError && ["UNSUPPORTED", "INVALID_ARGUMENT"].includes(error.code);
    return { shape, pass: false, error: (error as Error).message, unsupported };
  }
}
