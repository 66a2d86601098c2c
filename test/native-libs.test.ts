// Every native library this machine built: it exports the whole C ABI (scripts/ci/check_exports.ts, as .ci/run uses it),
// describes itself, and a GPU library on a machine without that GPU answers with a reason instead of crashing.
import { afterAll, describe, expect, test } from "bun:test";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { openBackend } from "../lib/backend.ts";
import { FlashAttnError } from "../lib/errors.ts";

const root = path.resolve(import.meta.dir, "..");
const built = ["cpu", "cuda", "hip"].filter((b) => fs.existsSync(path.join(root, "build", `libflashattn_${b}.so`)));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-exports-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function checkExports(lib: string) {
  const r = spawnSync(process.execPath, ["scripts/ci/check_exports.ts", lib], { cwd: root, encoding: "utf8", timeout: 60_000 });
  return { status: r.status, out: r.stdout + r.stderr };
}

describe("exports of the C ABI", () => {
  test("the CPU library is always built", () => expect(built).toContain("cpu"));
  for (const b of built) {
    test(`libflashattn_${b}.so exports every FA_API function of flashattn.h`, () => {
      const { status, out } = checkExports(path.join(root, "build", `libflashattn_${b}.so`));
      expect(out).toContain("exports all 25 FA_API functions");
      expect(status).toBe(0);
    });
  }
  test("a library missing symbols is named symbol by symbol and fails", () => {
    const src = path.join(tmp, "partial.c"), lib = path.join(tmp, "libpartial.so");
    fs.writeFileSync(src, "int fa_abi_version(void) { return 1; }\nint fa_forward(void* p) { (void)p; return 0; }\n");
    execFileSync("cc", ["-shared", "-fPIC", "-o", lib, src]);
    const { status, out } = checkExports(lib);
    expect(status).toBe(1);
    expect(out).toContain("missing: fa_backward");
    expect(out).toContain("missing: fa_bench");
    expect(out).toContain("missing: fa_forward_kvcache");
    expect(out.split("\n")).not.toContain("missing: fa_forward"); // whole lines: fa_forward_kvcache is another symbol
  });
});

describe.skipIf(!built.includes("hip"))("the HIP library without an AMD GPU", () => {
  test("loads, describes its gfx90a build, and says why there is no device", () => {
    const { backend } = openBackend("hip", { env: {} });
    expect(backend).toBeDefined();
    const info = backend!.info();
    expect(info.backend).toBe("hip");
    expect(info.archs).toContain("gfx90a");
    expect(info.kernels.map((k) => k.name)).toEqual(expect.arrayContaining(["hip-mfma-fwd", "portable"]));
    // fa_forward_kvcache's paths say so in their directions: the portable path serves it, the MFMA forward does not.
    const directions = (name: string) => info.kernels.find((k) => k.name === name)?.directions;
    expect(directions("portable")).toEqual(["fwd", "bwd", "kvcache"]);
    expect(directions("hip-mfma-fwd")).not.toContain("kvcache");
    if (fs.existsSync("/dev/kfd")) return; // a machine with an AMD GPU: the GPU suite covers it
    let error: unknown;
    try {
      backend!.deviceCount();
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(FlashAttnError);
    expect((error as FlashAttnError).code).toBe("NO_DEVICE");
    expect((error as FlashAttnError).message).toContain("no AMD GPU / ROCm runtime found");
    expect(() => backend!.alloc(16)).toThrow("no AMD GPU");
  });
});

describe.skipIf(!built.includes("cuda"))("the CUDA library", () => {
  test("needs only the driver at run time: the CUDA runtime is linked statically", () => {
    const ldd = execFileSync("ldd", [path.join(root, "build", "libflashattn_cuda.so")], { encoding: "utf8" });
    expect(ldd).not.toMatch(/libcudart/);
    expect(ldd).not.toMatch(/libcuda\.so/); // loaded lazily by the static runtime, never a link dependency
  });
  test("describes the architectures it carries code for", () => {
    const info = openBackend("cuda", { env: {} }).backend!.info();
    expect(info.archs).toEqual(expect.arrayContaining(["sm_80", "sm_90", "sm_90a", "compute_90"]));
    expect(info.kernels.map((k) => k.name)).toContain("portable");
    expect(info.kernels.find((k) => k.name === "portable")?.directions).toEqual(["fwd", "bwd", "kvcache"]);
  });
  test("lists its kernel paths in the dispatcher's order: decode, Hopper fp8, Hopper wgmma, mma.sync, then portable", () => {
    const kernels = openBackend("cuda", { env: {} }).backend!.info().kernels;
    expect(kernels.slice(0, 5).map((k) => k.name)).toEqual(["cuda-decode", "cuda-wgmma-fp8-sm90", "cuda-wgmma-sm90", "cuda-mma-sm80", "portable"]);
    // the decode path serves KV-cache calls and the forward, never the backward
    expect(kernels[0].directions).toEqual(["fwd", "kvcache"]);
    // the fp8 path is a forward of the fp8 dtypes only
    expect(kernels[1].directions).toEqual(["fwd"]);
    expect(kernels[1].dtypes).toEqual(["fp8_e4m3", "fp8_e5m2"]);
  });
  test.skipIf(fs.existsSync("/dev/nvidiactl"))("without an NVIDIA driver, device calls say so instead of crashing", () => {
    const backend = openBackend("cuda", { env: {} }).backend!;
    expect(() => backend.deviceCount()).toThrow(/NVIDIA driver|no CUDA device|libcuda/);
  });
});
