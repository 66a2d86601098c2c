// The FFI adapter and library discovery against real shared libraries: our CPU build, and small stale/foreign
// builds compiled here from test/fixtures/abi/stale_library.c, which the loader must refuse before calling anything.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { openBackend } from "../lib/backend.ts";
import { chooseBackend, paramsFor } from "../lib/select.ts";
import { describeProblem } from "../lib/problem.ts";
import { randomTensor } from "../lib/tensor.ts";
import { compareLayout, expectedLayout } from "../ffi/layout.ts";
import { FlashAttnError } from "../lib/errors.ts";

const root = path.resolve(import.meta.dir, "..");
const cpuLib = path.join(root, "build", "libflashattn_cpu.so");
let tmp = "";

function buildStale(name: string, defines: string[]): string {
  const out = path.join(tmp, `${name}.so`);
  execFileSync("cc", ["-shared", "-fPIC", "-O1", ...defines, "-o", out, path.join(root, "test/fixtures/abi/stale_library.c")]);
  return out;
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-ffi-"));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const request = () => {
  const q = randomTensor("fp32", [1, 8, 2, 16], 1), k = randomTensor("fp32", [1, 8, 2, 16], 2);
  return { problem: describeProblem(q, k, k), direction: "fwd" as const };
};

describe("refusing libraries built for another ABI", () => {
  test("a different ABI version is refused with both numbers", () => {
    // A library built before fp8 KV caches (ABI 2) is refused before its smaller KV-cache struct is ever written.
    const lib = buildStale("abi2", ["-DSTALE_ABI=2"]);
    const { backend, attempts } = openBackend("cpu", { libPath: lib });
    expect(backend).toBeUndefined();
    expect(attempts).toHaveLength(1);
    expect(attempts[0]).toMatchObject({ path: lib, source: "flag", ok: false });
    expect(attempts[0].error).toContain("has ABI version 2 but this flashattn needs 3");
  });

  test("a params layout that drifted is refused, naming the first field that moved", () => {
    const lib = buildStale("shifted", ["-DSHIFT_FIELDS=8"]);
    const { backend, attempts } = openBackend("cpu", { libPath: lib });
    expect(backend).toBeUndefined();
    expect(attempts[0].error).toContain("parameter layout differs: sizeof(fa_attn_params) is at 448 in the library but at 440 here");
  });

  test("the layout comparison catches a single moved field", () => {
    const reported = expectedLayout();
    expect(compareLayout(reported)).toEqual([]);
    reported[3 + 24] += 8; // the offset of `q`
    expect(compareLayout(reported)).toEqual(["q is at 120 in the library but at 112 here"]);
  });

  test("an explicit library that is another backend than the one asked for is a usage error", () => {
    const lib = buildStale("looks-cuda", ['-DBACKEND="cuda"']);
    expect(() => chooseBackend(request(), { libPath: lib, backend: "cpu" })).toThrow(/asks for cpu, but the explicit library .* is cuda/);
  });

  test("an explicit path that does not exist is an error, never a fallback", () => {
    const missing = path.join(tmp, "nope", "libflashattn_cpu.so");
    const { backend, attempts } = openBackend("cpu", { libPath: missing });
    expect(backend).toBeUndefined();
    expect(attempts).toEqual([{ path: missing, source: "flag", ok: false, error: "no such file" }]);
    let error: unknown;
    try {
      chooseBackend(request(), { libPath: missing });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(FlashAttnError);
    expect((error as FlashAttnError).code).toBe("LIBRARY_NOT_FOUND");
    expect((error as FlashAttnError).message).toContain(`--lib ${missing} could not be loaded: no such file`);
  });

  test("FLASHATTN_LIB pointing at a file that is not a shared library carries the loader's own text", () => {
    const bogus = path.join(tmp, "libflashattn_cpu.so");
    fs.writeFileSync(bogus, "this is not an ELF file");
    const { attempts } = openBackend("cpu", { env: { FLASHATTN_LIB: bogus } });
    expect(attempts).toHaveLength(1);
    expect(attempts[0].source).toBe("env");
    expect(attempts[0].error).toMatch(/invalid ELF header|file too short|not a dynamic|Failed to open/i);
  });
});

describe("the CPU library through the adapter (always built: a missing one is a failure)", () => {
  test("found in the build folder, ABI and layout agree, and it says it is the cpu backend", () => {
    const { backend, attempts } = openBackend("cpu", { env: {} });
    expect(backend).toBeDefined();
    expect(attempts.at(-1)).toMatchObject({ path: cpuLib, source: "build", ok: true });
    const info = backend!.info();
    expect(info.backend).toBe("cpu");
    expect(info.abi).toBe(3);
    expect(info.kernels.length).toBeGreaterThan(0);
    expect(backend!.deviceCount()).toBe(1);
  });

  test("FLASHATTN_LIB names the library explicitly", () => {
    const { backend, attempts } = openBackend("cpu", { env: { FLASHATTN_LIB: cpuLib } });
    expect(backend?.name).toBe("cpu");
    expect(attempts).toEqual([{ path: cpuLib, source: "env", ok: true }]);
  });

  test("device memory round trip, memset poison and memory accounting", () => {
    const { backend } = openBackend("cpu", { env: {} });
    const b = backend!;
    const before = b.memoryStats().current;
    const host = Float32Array.from({ length: 1000 }, (_, i) => i * 0.5);
    const buf = b.upload(host);
    expect(b.memoryStats().current - before).toBeGreaterThanOrEqual(4000);
    const back = new Float32Array(1000);
    b.download(buf, back);
    expect(back).toEqual(host);
    b.fill(buf, 0xff);
    b.download(buf, back);
    expect(back.every(Number.isNaN)).toBe(true);
    b.free(buf);
    expect(b.memoryStats().current).toBe(before);
  });

  test("bad requests come back as reasons (plan) or a FlashAttnError with the library's sentence (run)", () => {
    const { backend } = openBackend("cpu", { env: {} });
    const r = request();
    const good = paramsFor(r, { q: 0x1000n, k: 0x1000n, v: 0x1000n, o: 0x1000n, lse: 0n });
    expect(backend!.plan(good, "fwd").ok).toBe(true);
    const gqa = backend!.plan({ ...good, headsQ: 3, headsKv: 2 }, "fwd");
    expect(gqa).toEqual({ ok: false, reasons: ["heads_q (3) must be a multiple of heads_kv (2) for GQA/MQA"] });
    let error: unknown;
    try {
      backend!.forward({ ...good, q: { ...good.q, data: 0n } });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(FlashAttnError);
    expect((error as FlashAttnError).code).toBe("INVALID_ARGUMENT");
    expect((error as FlashAttnError).message).toBe("cpu: tensor q is NULL");
  });
});
