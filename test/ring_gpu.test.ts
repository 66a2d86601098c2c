// Context-parallel attention on GPUs: the ring over NCCL (one process driving every GPU) and, on any one GPU, the
// ring of in-process ranks (LocalRing), whose merges and gradient sums run the GPU library's fa_merge_partial and
// fa_convert. Each result is held against the fp64 reference with docs/DESIGN.md's tolerance rule and against the
// single-device call. Without a CUDA GPU, without NCCL, or (for the multi-GPU ring) with fewer than two GPUs, the
// tests are skipped and the skip says why.
import { describe, expect, test } from "bun:test";
import { attention, attentionBackward } from "../lib/attention.ts";
import { type Backend, openBackend } from "../lib/backend.ts";
import { NcclRing, openNccl } from "../lib/nccl.ts";
import { referenceBackward, referenceForward, relativeError, withinTolerance } from "../lib/reference.ts";
import { LocalRing, type RingTransport } from "../lib/ring.ts";
import { ringAttentionBackwardTensors, ringAttentionTensors } from "../lib/ring_tensors.ts";
import { randomTensor, toFloat32 } from "../lib/tensor.ts";

function cudaBackend(): { backend?: Backend; devices: number; why?: string } {
  const { backend, attempts } = openBackend("cuda");
  if (!backend) return { devices: 0, why: `libflashattn_cuda.so is not built or not loadable (${attempts.find((a) => a.source === "build")?.error ?? "not found"})` };
  try {
    const devices = backend.deviceCount();
    return devices > 0 ? { backend, devices } : { devices: 0, why: "cuda: no device" };
  } catch (e) {
    return { devices: 0, why: (e as Error).message };
  }
}

const { backend: cuda, devices, why: noGpu } = cudaBackend();
const { nccl, attempts } = cuda ? openNccl() : { nccl: undefined, attempts: [] };
const noNccl = nccl ? undefined : `NCCL not found (${attempts.map((a) => `${a.path}: ${a.error}`).join("; ")})`;

/** bf16 GQA inputs of an odd length; the fp64 reference and the single-device results, computed once per mask. */
const [b, s, hq, hkv, d] = [1, 777, 4, 2, 128];
const q = randomTensor("bf16", [b, s, hq, d], 4242), k = randomTensor("bf16", [b, s, hkv, d], 4243);
const v = randomTensor("bf16", [b, s, hkv, d], 4244), dout = randomTensor("bf16", [b, s, hq, d], 4245);
const expected = new Map<boolean, Promise<{ ref: ReturnType<typeof referenceForward>; refGrads: ReturnType<typeof referenceBackward>; single: Awaited<ReturnType<typeof attention>>; singleGrads: Awaited<ReturnType<typeof attentionBackward>> }>>();
function expectedFor(causal: boolean) {
  if (!expected.has(causal)) {
    expected.set(causal, (async () => {
      const single = await attention(q, k, v, { causal, backend: "cuda" });
      return {
        ref: referenceForward(q, k, v, { causal }), refGrads: referenceBackward(dout, q, k, v, { causal }), single,
        singleGrads: await attentionBackward(dout, q, k, v, single.out, single.lse, { causal, backend: "cuda" }),
      };
    })());
  }
  return expected.get(causal)!;
}

/** Forward and backward through `ring` against the reference (the tolerance rule) and the single-device call. */
async function checkRing(ring: RingTransport, causal: boolean): Promise<void> {
  const { ref, refGrads, single, singleGrads } = await expectedFor(causal);
  const fwd = ringAttentionTensors(ring, q, k, v, { causal });
  const outError = relativeError(toFloat32(fwd.out), ref.out);
  expect(withinTolerance("bf16", outError).ok, `out error ${outError}`).toBe(true);
  expect(relativeError(fwd.lse, ref.lse)).toBeLessThan(1e-4);
  expect(relativeError(toFloat32(fwd.out), toFloat32(single.out))).toBeLessThan(1e-2);

  const grads = ringAttentionBackwardTensors(ring, dout, q, k, v, fwd.out, fwd.lse, { causal });
  for (const g of ["dq", "dk", "dv"] as const) {
    const error = relativeError(toFloat32(grads[g]), refGrads[g]);
    expect(withinTolerance("bf16", error).ok, `${g} error ${error}`).toBe(true);
    expect(relativeError(toFloat32(grads[g]), toFloat32(singleGrads[g])), `${g} vs single device`).toBeLessThan(1e-2);
  }
}

if (!cuda) {
  test.skip(`GPU ring attention — skipped: ${noGpu}`, () => {});
} else {
  describe("ring of in-process ranks on one GPU (the GPU's merge and gradient sums)", () => {
    for (const causal of [true, false]) {
      test(`3 ranks, ${causal ? "causal" : "not causal"}`, () => checkRing(new LocalRing(cuda, 3), causal), 300_000);
    }
  });

  if (!nccl) {
    test.skip(`NCCL ring — skipped: ${noNccl}`, () => {});
  } else {
    describe(`NCCL ${nccl.version()} (${nccl.path})`, () => {
      test("ring of 1 (a 1-rank communicator sending to itself) equals single-device attention", async () => {
        const ring = new NcclRing(cuda, nccl, [0]);
        try {
          for (const causal of [true, false]) await checkRing(ring, causal);
        } finally {
          ring.close();
        }
      }, 300_000);
      if (devices < 2) {
        test.skip(`ring over every GPU — skipped: this machine has ${devices} GPU (a multi-GPU machine is needed)`, () => {});
      } else {
        test(`ring of ${devices} GPUs equals single-device attention`, async () => {
          const ring = new NcclRing(cuda, nccl, Array.from({ length: devices }, (_, i) => i));
          try {
            for (const causal of [true, false]) await checkRing(ring, causal);
          } finally {
            ring.close();
          }
        }, 300_000);
      }
    });
  }
}
