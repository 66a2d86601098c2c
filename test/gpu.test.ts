// The GPU backends against the fp64 reference over the same docs/DESIGN.md grid as the CPU suite, in fp16/bf16, with
// the tolerance rule (≤ 1e-2 and ≤ 2× a naive same-precision implementation). Every kernel path of the CUDA library
// is exercised: the dispatcher's own choice, then each path forced through FLASHATTN_KERNEL where it can serve the
// case. On a machine without a GPU every test here is skipped, and the skip says why.
//
// Run only these on a GPU machine: scripts/ci/test.sh test/gpu.test.ts. The library's own limits (sizes it refuses,
// nonsense parameter values, rows of 2^25+ keys, LSE of rows without keys) run on every backend present, GPUs included,
// in test/native-limits.test.ts.
import { describe, expect, test } from "bun:test";
import { type Backend, openBackend } from "../lib/backend.ts";
import type { AttentionOptions } from "../lib/attention.ts";
import type { BackendName } from "../lib/vocabulary.ts";
import { backwardCases, type Case, checkBackward, checkForward, forwardCases, inGpuDtype } from "./support/grid.ts";
import { setNativeEnv } from "./support/native-env.ts";

/** A usable GPU backend, or the sentence that explains why there is none. */
function gpuBackend(name: BackendName): { backend?: Backend; why?: string } {
  const { backend, attempts } = openBackend(name);
  if (!backend) return { why: `libflashattn_${name}.so is not built or not loadable (${attempts.find((a) => a.source === "build")?.error ?? "not found"})` };
  try {
    const n = backend.deviceCount();
    return n > 0 ? { backend } : { why: `${name}: no device` };
  } catch (e) {
    return { why: (e as Error).message };
  }
}

for (const name of ["cuda", "hip"] as const) {
  const { backend, why } = gpuBackend(name);
  if (!backend) {
    // One skipped entry that says why, instead of the whole grid repeating it.
    test.skip(`${name} GPU suite — skipped: ${why}`, () => {});
    continue;
  }
  describe(`${name} on ${backend.deviceInfo(0).name}`, () => {
    const run: AttentionOptions = { backend: name };
    const gpuForward = forwardCases.map(inGpuDtype);
    const gpuBackward = backwardCases.map(inGpuDtype);

    describe("forward, dispatcher's choice", () => {
      for (const c of gpuForward) test(`${c.name} [${c.dtype}]`, () => checkForward(c, run).then(() => {}));
    });
    describe("backward, dispatcher's choice", () => {
      for (const c of gpuBackward) test(`${c.name} [${c.dtype}]`, () => checkBackward(c, run).then(() => {}));
    });

    // Each kernel path forced: a path that cannot serve a case must say why (plan), never compute garbage.
    const paths = backend.info().kernels;
    for (const kernel of paths) {
      const dirs = kernel.directions ?? ["fwd"];
      describe(`path ${kernel.name}`, () => {
        const cases: Array<[Case, "fwd" | "bwd"]> = [
          ...(dirs.includes("fwd") ? gpuForward.map((c) => [c, "fwd"] as [Case, "fwd"]) : []),
          ...(dirs.includes("bwd") ? gpuBackward.map((c) => [c, "bwd"] as [Case, "bwd"]) : []),
        ];
        for (const [c, dir] of cases) {
          test(`${dir} ${c.name} [${c.dtype}]`, async () => {
            setNativeEnv("FLASHATTN_KERNEL", kernel.name);
            try {
              const ran = dir === "fwd" ? await checkForward(c, run) : await checkBackward(c, run);
              expect(ran).toBe(kernel.name); // the forced path, not the dispatcher's own choice
            } catch (e) {
              // A refusal is fine (the path does not cover this case: the plan says why); wrong numbers are not.
              const message = (e as Error).message;
              // The plan names the refusing path first: "no backend can run this: cuda: portable: <why>".
              if (!message.startsWith(`no backend can run this: ${name}: ${kernel.name}: `)) throw e;
            } finally {
              setNativeEnv("FLASHATTN_KERNEL", undefined);
            }
          });
        }
      });
    }
  });
}
