// FP8 forward on the GPUs: the Hopper path cuda-wgmma-fp8-sm90 (sm_90 only, forward only) against the fp64 reference
// of the dequantised inputs under docs/DESIGN.md's fp8 rule (no worse than twice a naive fp8 attention, LSE as for
// every forward), over the features it serves: both fp8 formats, fp16 and bf16 output, head dims 32-256 (80 and 96
// padded), odd lengths, causal, window, softcap, ALiBi, GQA/MQA, varlen, split-KV, decode, descale per tensor and per
// (sequence, kv head). Each case runs on the dispatcher's choice, then with the path forced through FLASHATTN_KERNEL.
// On an sm_90 device with the path listed in fa_info every case must run there; elsewhere (another GPU, HIP) a
// refusal must say why, never compute garbage. Decode-shaped requests (at most 64 query rows per KV head) go to
// cuda-decode instead, on any sm_80+ GPU (fp8 converted to fp16 in shared memory): its own cases run on the
// dispatcher's choice, which must be that path, and forced. Then bad input through the library itself: non-finite,
// zero or subnormal descale factors (INVALID_ARGUMENT, one sentence, o not written) and an fp8 backward (refused).
//
// The same case list and the library's refusals also run on the CPU backend, whose fp8 forward the GPU path must
// match, so the cases are known to be sound here; test/fp8.test.ts holds the CPU's own fp8 tests. Without a GPU the
// GPU parts are skipped, and the skip says why. On a GPU machine: scripts/ci/test.sh test/gpu_fp8.test.ts
import { describe, expect, test } from "bun:test";
import { attention, type AttentionOptions, planAttention } from "../lib/attention.ts";
import { type Backend, type DeviceBuffer, openBackend } from "../lib/backend.ts";
import { checkAgainstReference } from "../lib/check.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { standardAlibiSlopes } from "../lib/problem.ts";
import { paramsFor } from "../lib/select.ts";
import { checkFp8Case, type Fp8Case, fp8Inputs, quantised } from "./support/fp8.ts";
import { freshSeed } from "./support/grid.ts";
import { gpuBackend } from "./support/gpu.ts";
import { parseArch } from "../doctor/rules/common.ts";
import { setNativeEnv } from "./support/native-env.ts";

/** The Hopper fp8 forward path (kernels/cuda): wgmma with fp8 operands, sm_90 only. */
const FP8_PATH = "cuda-wgmma-fp8-sm90";

// Lengths are odd (never a whole tile) and head dims multiples of 16, as the path takes them; sizes stay small
// enough for the fp64 reference in TypeScript.
const cases: Fp8Case[] = [
  { name: "e4m3, d 64, sq 77 ≠ sk 203, bf16 out", b: 2, sq: 77, sk: 203, hq: 4, hkv: 4, d: 64 },
  { name: "e5m2, d 128, GQA 2:1, fp16 out", format: "fp8_e5m2", b: 1, sq: 130, sk: 257, hq: 4, hkv: 2, d: 128, opts: { outDtype: "fp16" } },
  { name: "e4m3, d 256, causal", b: 1, sq: 200, sk: 200, hq: 2, hkv: 1, d: 256, opts: { causal: true } },
  { name: "e4m3, d 80 (padded), fp16 out", b: 1, sq: 99, sk: 150, hq: 2, hkv: 2, d: 80, opts: { outDtype: "fp16" } },
  { name: "e5m2, d 96 (padded), causal sq 150 > sk 100 (rows without keys)", format: "fp8_e5m2", b: 1, sq: 150, sk: 100, hq: 2, hkv: 1, d: 96, opts: { causal: true } },
  { name: "e4m3, d 32, seqlen 1 against 1", b: 3, sq: 1, sk: 1, hq: 2, hkv: 2, d: 32 },
  { name: "e4m3, sliding window (32, 8), d 128", b: 1, sq: 190, sk: 300, hq: 2, hkv: 1, d: 128, opts: { window: [32, 8] } },
  { name: "e4m3, left-only window with causal", b: 1, sq: 203, sk: 203, hq: 2, hkv: 2, d: 64, opts: { causal: true, window: [7, -1] } },
  { name: "e5m2, softcap 30, fp16 out", format: "fp8_e5m2", b: 2, sq: 65, sk: 129, hq: 2, hkv: 2, d: 64, opts: { softcap: 30, outDtype: "fp16" } },
  { name: "e4m3, ALiBi per head, causal, GQA 2:1", b: 2, sq: 113, sk: 113, hq: 4, hkv: 2, d: 128, opts: { causal: true, alibiSlopes: standardAlibiSlopes(4) } },
  { name: "e4m3, ALiBi per batch × head", b: 2, sq: 33, sk: 97, hq: 2, hkv: 1, d: 64, opts: { alibiSlopes: Float32Array.of(0.3, 0.1, 0.05, 0.2), alibiPerBatch: true } },
  { name: "e4m3, MQA 8:1, d 128", b: 1, sq: 64, sk: 333, hq: 8, hkv: 1, d: 128 },
  { name: "e4m3, decode sq 1 against 777, GQA 4:1, softcap + ALiBi", b: 2, sq: 1, sk: 777, hq: 8, hkv: 2, d: 128, opts: { softcap: 20, alibiSlopes: standardAlibiSlopes(8) } },
  { name: "e4m3, varlen causal with an empty key sequence", b: 4, sq: 0, sk: 0, hq: 4, hkv: 2, d: 64, varlen: { q: [1, 3, 113, 70], k: [3, 0, 113, 200] }, opts: { causal: true } },
  { name: "e5m2, varlen, window + softcap, fp16 out", format: "fp8_e5m2", b: 2, sq: 0, sk: 0, hq: 2, hkv: 1, d: 128, varlen: { q: [17, 64], k: [40, 9] }, opts: { window: [5, 3], softcap: 10, outDtype: "fp16" } },
  { name: "e4m3, split-KV forced (3), sq 16 against 1000", b: 1, sq: 16, sk: 1000, hq: 4, hkv: 1, d: 128, opts: { numSplits: 3 } },
  { name: "e4m3, split-KV forced (3), causal, per-(batch, kv head) descale", b: 2, sq: 40, sk: 700, hq: 4, hkv: 2, d: 64, perHead: true, opts: { numSplits: 3, causal: true } },
  { name: "e4m3, per-(batch, kv head) descale, d 256", b: 3, sq: 33, sk: 120, hq: 4, hkv: 2, d: 256, perHead: true },
  { name: "e5m2, per-(batch, kv head) descale, MQA, bf16 out", format: "fp8_e5m2", b: 2, sq: 50, sk: 90, hq: 4, hkv: 1, d: 64, perHead: true },
];

/** The decode path (kernels/cuda/decode.cuh): fp8 K / V converted to fp16 in shared memory, on any sm_80+ GPU. */
const DECODE_PATH = "cuda-decode";
/**
 * Decode-shaped requests (at most 64 query rows per KV head, seqlen_q x heads_q / heads_kv, padded batches), which the
 * dispatcher gives cuda-decode ahead of any prefill path: its fp8 head dims 64 / 128 / 256 and the padded ones, the
 * 32- and 64-row tiles, split-KV (auto and forced), masks and the score transform, both output dtypes.
 */
const decodeCases: Fp8Case[] = [
  { name: "decode: e4m3, sq 1 against 2000, GQA 4:1, d 128, split auto", b: 2, sq: 1, sk: 2000, hq: 8, hkv: 2, d: 128, perHead: true },
  { name: "decode: e5m2, sq 1 against 777, MQA 8:1, d 64, fp16 out", format: "fp8_e5m2", b: 1, sq: 1, sk: 777, hq: 8, hkv: 1, d: 64, opts: { outDtype: "fp16" } },
  { name: "decode: e4m3, sq 4 against 1000, GQA 8:1 (32 rows), causal, d 256", b: 1, sq: 4, sk: 1000, hq: 8, hkv: 1, d: 256, opts: { causal: true } },
  { name: "decode: e4m3, sq 8 against 300, GQA 8:1 (64 rows), window (20, 0), d 128, forced 3 splits", b: 2, sq: 8, sk: 300, hq: 16, hkv: 2, d: 128, opts: { window: [20, 0], numSplits: 3 } },
  { name: "decode: e5m2, sq 2 against 513, d 96 (runs padded to 128), softcap + ALiBi, per-head descale", format: "fp8_e5m2", b: 2, sq: 2, sk: 513, hq: 4, hkv: 2, d: 96, perHead: true, opts: { softcap: 15, alibiSlopes: standardAlibiSlopes(4) } },
  { name: "decode: e4m3, sq 1 against 5, d 32 (runs padded to 64), bf16 out", b: 3, sq: 1, sk: 5, hq: 2, hkv: 2, d: 32 },
];

/** The fa_info entry of the kernel that ran (each must list the dtype it just computed). */
const kernelInfo = (backend: Backend, name: string) => backend.info().kernels.find((k) => k.name === name);

/** Runs `body` with FLASHATTN_KERNEL set to `kernel` where the native library reads it. */
async function withKernel<T>(kernel: string, body: () => Promise<T>): Promise<T> {
  setNativeEnv("FLASHATTN_KERNEL", kernel);
  try {
    return await body();
  } finally {
    setNativeEnv("FLASHATTN_KERNEL", undefined);
  }
}

/**
 * One case on the dispatcher's choice of `name`: it runs and passes the rule on a kernel that lists the dtype, or,
 * where `mustRun` is false, a refusal that names the dtype or the arch fp8 needs is accepted (no kernel of this
 * library computes fp8 on this device).
 */
async function dispatcherCase(backend: Backend, c: Fp8Case, mustRun: boolean): Promise<void> {
  const format = c.format ?? "fp8_e4m3";
  try {
    const { result } = await checkFp8Case(c, { backend: backend.name });
    expect(result.backend).toBe(backend.name);
    expect(kernelInfo(backend, result.kernel)?.dtypes ?? []).toContain(format);
  } catch (e) {
    const refusal = e instanceof FlashAttnError && e.message.startsWith("no backend can run this: ") &&
      (e.message.includes(format) || e.message.includes("sm_90"));
    if (mustRun || !refusal) throw e;
  }
}

// ---- bad input through the library itself (the TypeScript checks bypassed): any backend -----------------------------

/** Small fp8 tensors on `backend`, a forward's params for them, and o / lse filled with a known byte. */
function deviceCall(backend: Backend) {
  const p = quantised("fp8_e4m3", [2, 32, 4, 64], [2, 48, 2, 64], freshSeed());
  const plan = planAttention(p.q, p.k, p.v, {}, "fwd", backend);
  const buffers: DeviceBuffer[] = [];
  const own = (b: DeviceBuffer) => {
    buffers.push(b);
    return b;
  };
  const [q, k, v] = [p.q, p.k, p.v].map((t) => own(backend.upload(t.data)));
  const o = own(backend.alloc(p.q.data.length * 2)), lse = own(backend.alloc(2 * 4 * 32 * 4));
  const grads = [q, k, v].map((t) => own(backend.alloc(t.bytes * 2)));
  const MARK = 0x5a;
  for (const b of [o, lse, ...grads]) backend.fill(b, MARK);
  const addresses = { q: q.address, k: k.address, v: v.address, o: o.address, lse: lse.address };
  /** Whether every byte of `b` still holds the mark (the call wrote nothing there). */
  const untouched = (b: DeviceBuffer) => {
    const host = new Uint8Array(b.bytes);
    backend.download(b, host);
    return host.every((x) => x === MARK);
  };
  return {
    plan, own, o, lse, grads, untouched,
    params: (extra: Partial<Parameters<typeof paramsFor>[1]> = {}) => paramsFor(plan.request, { ...addresses, ...extra }),
    release: () => buffers.forEach((b) => backend.free(b)),
  };
}

function libraryRefusals(backend: Backend) {
  describe(`${backend.name}: bad fp8 input through the library: one sentence, nothing written`, () => {
    // Factors in device memory: scalar (strides 0, 0) or per (batch 2, heads_kv 2) (strides 2, 1).
    const refusals: Array<[string, "qDescale" | "kDescale" | "vDescale", number[], RegExp]> = [
      ["q_descale NaN (scalar)", "qDescale", [NaN], /q_descale\[0, 0\] is nan: descale factors must be finite positive normal floats/],
      ["k_descale 0 (scalar)", "kDescale", [0], /k_descale\[0, 0\] is 0: descale factors must be finite positive normal floats/],
      ["v_descale 0 at (batch 1, kv head 0)", "vDescale", [1, 1, 0, 1], /v_descale\[1, 0\] is 0: /],
      ["k_descale NaN at (batch 0, kv head 1)", "kDescale", [1, NaN, 1, 1], /k_descale\[0, 1\] is nan: /],
      ["q_descale subnormal at (batch 1, kv head 1)", "qDescale", [1, 1, 1, 1e-40], /q_descale\[1, 1\] is [0-9.e+-]+: descale factors must be finite positive normal floats/],
    ];
    for (const [what, field, values, sentence] of refusals) {
      test(what, () => {
        const call = deviceCall(backend);
        try {
          const factors = call.own(backend.upload(Float32Array.from(values)));
          const scalar = values.length === 1;
          const params = call.params({ [field]: { data: factors.address, batchStride: scalar ? 0 : 2, headStride: scalar ? 0 : 1 } });
          let error: unknown;
          try {
            backend.forward(params);
            backend.synchronize();
          } catch (e) {
            error = e;
          }
          expect(error).toBeInstanceOf(FlashAttnError);
          expect((error as FlashAttnError).code).toBe("INVALID_ARGUMENT");
          expect((error as Error).message).toMatch(sentence);
          expect((error as Error).message).not.toContain("\n");
          expect(call.untouched(call.o)).toBe(true);
          expect(call.untouched(call.lse)).toBe(true);
        } finally {
          call.release();
        }
      });
    }

    test("an fp8 backward is refused by fa_plan and fa_backward, and dq, dk, dv are not written", () => {
      const call = deviceCall(backend);
      try {
        const [dq, dk, dv] = call.grads;
        const params = call.params({ dout: call.o.address, dq: dq.address, dk: dk.address, dv: dv.address });
        const plan = backend.plan(params, "bwd");
        expect(plan.ok).toBe(false);
        expect(plan.ok ? "" : plan.reasons.join("; ")).toContain("fp8_e4m3 is forward only");
        expect(() => backend.backward(params)).toThrow(/fp8_e4m3 is forward only/);
        for (const g of call.grads) expect(call.untouched(g)).toBe(true);
      } finally {
        call.release();
      }
    });

    test("a valid call after the refusals runs", () => {
      const call = deviceCall(backend);
      try {
        const factors = call.own(backend.upload(Float32Array.of(0.5)));
        backend.forward(call.params({ vDescale: { data: factors.address, batchStride: 0, headStride: 0 } }));
        backend.synchronize();
        expect(call.untouched(call.o)).toBe(false);
      } finally {
        call.release();
      }
    });
  });
}

// ---- the CPU backend: the case list is sound, the refusals are the library's --------------------------------------

const { backend: cpu } = openBackend("cpu", { env: {} });
if (!cpu) {
  test.skip("cpu fp8 cases — skipped: libflashattn_cpu.so is not built (bun kernels/build.ts cpu)", () => {});
} else {
  describe("cpu: the GPU fp8 case list on the CPU backend's fp8 forward (the semantics the GPU path matches)", () => {
    for (const c of [...cases, ...decodeCases]) test(c.name, () => dispatcherCase(cpu, c, true));
  });
  libraryRefusals(cpu);
}

// ---- CUDA and HIP ------------------------------------------------------------------------------------------------------

for (const name of ["cuda", "hip"] as const) {
  const { backend, why } = gpuBackend(name);
  if (!backend) {
    test.skip(`${name} fp8 GPU suite — skipped: ${why}`, () => {});
    continue;
  }
  const device = backend.deviceInfo(0);
  const listed = backend.info().kernels.some((k) => k.name === FP8_PATH);
  // Where the Hopper path can run, every case must run (on it when forced); elsewhere a refusal with the reason is right.
  const mustRun = name === "cuda" && device.arch === "sm_90" && listed;
  const run: AttentionOptions = { backend: name };

  describe(`${name} fp8 on ${device.name} (${device.arch})`, () => {
    if (name === "cuda") {
      test(`fa_info lists ${FP8_PATH}, forward only, with both fp8 formats`, () => {
        const info = kernelInfo(backend, FP8_PATH);
        expect(info?.directions ?? []).toEqual(["fwd"]);
        expect(info?.dtypes ?? []).toEqual(expect.arrayContaining(["fp8_e4m3", "fp8_e5m2"]));
      });
    }

    describe("dispatcher's choice", () => {
      for (const c of cases) test(c.name, () => dispatcherCase(backend, c, mustRun));
    });

    if (listed) {
      describe(`path ${FP8_PATH} forced`, () => {
        for (const c of cases) {
          test(c.name, () =>
            withKernel(FP8_PATH, async () => {
              try {
                const { result } = await checkFp8Case(c, run);
                expect(result.kernel).toBe(FP8_PATH); // the forced path, not the dispatcher's own choice
              } catch (e) {
                // Off sm_90 the path refuses, and the plan names it first: "no backend can run this: cuda: <path>: <why>".
                const refusal = (e as Error).message.startsWith(`no backend can run this: ${name}: ${FP8_PATH}: `);
                if (mustRun || !refusal) throw e;
              }
            }));
        }
      });
    }

    if (name === "cuda") {
      // Any sm_80+ GPU: the decode path converts fp8 to fp16, no fp8 tensor cores needed.
      const decodeRuns = (parseArch(device.arch)?.major ?? 0) >= 8 && (kernelInfo(backend, DECODE_PATH)?.dtypes ?? []).includes("fp8_e4m3");
      const skipped = decodeRuns ? "" : ` — skipped: ${DECODE_PATH} serves fp8 on sm_80+ GPUs, this is ${device.arch}`;
      describe(`${DECODE_PATH}: decode-shaped fp8 forwards`, () => {
        test(`fa_info: ${DECODE_PATH} takes both fp8 formats and descale factors`, () => {
          expect(kernelInfo(backend, DECODE_PATH)?.dtypes ?? []).toEqual(expect.arrayContaining(["fp8_e4m3", "fp8_e5m2"]));
          expect(kernelInfo(backend, DECODE_PATH)?.features ?? []).toContain("descale");
        });
        for (const c of decodeCases) {
          test.skipIf(!decodeRuns)(`dispatcher's choice is ${DECODE_PATH}: ${c.name}${skipped}`, async () => {
            expect((await checkFp8Case(c, run)).result.kernel).toBe(DECODE_PATH);
          });
          test.skipIf(!decodeRuns)(`forced: ${c.name}${skipped}`, () =>
            withKernel(DECODE_PATH, async () => expect((await checkFp8Case(c, run)).result.kernel).toBe(DECODE_PATH)));
        }
        test.skipIf(!decodeRuns)(`a ${DECODE_PATH} result computed without v_descale fails the rule${skipped}`, async () => {
          const seed = freshSeed();
          const { q, k, v, semantics } = fp8Inputs(decodeCases[0], seed);
          const right = await attention(q, k, v, { ...run, poison: true, ...semantics });
          const wrong = await attention(q, k, v, { ...run, poison: true, descale: { q: semantics.descale!.q, k: semantics.descale!.k } });
          expect([right.kernel, wrong.kernel]).toEqual([DECODE_PATH, DECODE_PATH]);
          expect(checkAgainstReference(q, k, v, semantics, right.out, right.lse).pass, `seed ${seed}`).toBe(true);
          expect(checkAgainstReference(q, k, v, semantics, wrong.out, wrong.lse).pass, `seed ${seed}`).toBe(false);
        });
        test.skipIf(!decodeRuns)(`forced on a prefill shape, ${DECODE_PATH} says why${skipped}`, async () => {
          const c: Fp8Case = { name: "prefill", b: 1, sq: 65, sk: 100, hq: 2, hkv: 2, d: 64 };
          const { q, k, v, semantics } = fp8Inputs(c, freshSeed());
          const said = await withKernel(DECODE_PATH, () => attention(q, k, v, { ...run, ...semantics }).then(() => "accepted", (e: Error) => e.message));
          expect(said).toContain(`${DECODE_PATH}: serves at most 64 query rows per KV head`);
        });
      });
    }

    test.skipIf(!mustRun)(`a GPU result computed without v_descale fails the rule${mustRun ? "" : ` — skipped: ${FP8_PATH} does not run on ${device.arch}`}`, async () => {
      // The check can fail: the same inputs with a forgotten v_descale are off by the factor everywhere.
      const seed = freshSeed();
      const { q, k, v, semantics } = fp8Inputs({ name: "no v_descale", b: 1, sq: 64, sk: 256, hq: 2, hkv: 2, d: 128 }, seed);
      const right = await attention(q, k, v, { ...run, poison: true, ...semantics });
      const wrong = await attention(q, k, v, { ...run, poison: true, descale: { q: semantics.descale!.q, k: semantics.descale!.k } });
      expect(checkAgainstReference(q, k, v, semantics, right.out, right.lse).pass, `seed ${seed}`).toBe(true);
      expect(checkAgainstReference(q, k, v, semantics, wrong.out, wrong.lse).pass, `seed ${seed}`).toBe(false);
    });
  });

  libraryRefusals(backend);
}
