// The CLI as a user meets it: `bun cli.ts ...` in a child process, on the real CPU library. Exit codes 0/1/2/3,
// --json documents that parse (errors too), one error line on stderr, NO_COLOR, outputs that match the reference.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { readNpy, writeNpy } from "../formats/npy.ts";
import { readSafetensors } from "../formats/safetensors.ts";
import { referenceForward, relativeError } from "../lib/reference.ts";
import { fromFloat32, tensor, toFloat32 } from "../lib/tensor.ts";
import { unpackQkv } from "../formats/qkv.ts";
import { cli, root } from "./support/cli.ts";

const fixture = (name: string) => path.join(root, "test", "fixtures", "formats", name);
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-cli-"));
const tmp = (name: string) => path.join(scratch, name);
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** Asserts a usage/input/environment failure: the exit code, one error line (plus an optional fix line), no stdout. */
function expectOneLineError(r: ReturnType<typeof cli>, code: number, message: string) {
  expect(r.code).toBe(code);
  expect(r.stdout).toBe("");
  const lines = r.stderr.trimEnd().split("\n");
  expect(lines[0]).toStartWith("flashattn: ");
  expect(lines[0]).toContain(message);
  expect(lines.length).toBeLessThanOrEqual(2);
  if (lines.length === 2) expect(lines[1]).toStartWith("  fix: ");
}

const hasGpu = fs.existsSync("/dev/nvidiactl") || fs.existsSync("/dev/kfd");

describe("help and version", () => {
  test("--help lists the commands and the exit codes", () => {
    const r = cli(["--help"]);
    expect(r.code).toBe(0);
    for (const word of ["run", "bench", "doctor", "--json", "Exit codes:"]) expect(r.stdout).toContain(word);
  });

  test("run --help has examples", () => {
    const r = cli(["run", "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("Examples:");
    expect(r.stdout).toContain("$ flashattn run --q q.npy --k k.npy --v v.npy");
  });

  test("bin/flashattn launches the same CLI", () => {
    const r = cli(["--version"], {}, { command: [path.join(root, "bin", "flashattn")] });
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")).version);
  });
});

describe("run on the CPU library", () => {
  test("no arguments (CPU): the default problem, fp32, checked, exit 0", () => {
    const r = cli(["run", "--backend", "cpu", "--json"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc).toMatchObject({
      ok: true,
      command: "run",
      backend: "cpu",
      dtype: "fp32",
      causal: true,
      defaultProblem: true,
      shape: { batch: 1, seqlenQ: 1024, seqlenK: 1024, headsQ: 8, headsKv: 8, headDim: 64 },
    });
    expect(doc.check.pass).toBe(true);
    expect(doc.check.relativeError).toBeLessThanOrEqual(1e-5);
    expect(doc.gflops).toBeGreaterThan(0);
    expect(typeof doc.kernel).toBe("string");
  }, 120_000);

  test(".npy inputs (GQA, sq ≠ sk), causal, written O and LSE match the fp64 reference", () => {
    const out = tmp("o.npy");
    const r = cli([
      "run",
      "--backend",
      "cpu",
      "--q",
      fixture("q.npy"),
      "--k",
      fixture("k.npy"),
      "--v",
      fixture("v.npy"),
      "--causal",
      "--check",
      "--out",
      out,
      "--lse",
    ], { NO_COLOR: "1" });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("PASS");
    expect(r.stdout).toContain("batch 1, seqlen 5×9, heads 4/2 (GQA), head_dim 16, fp32, causal");
    const [q, k, v] = ["q", "k", "v"].map((n) => readNpy(fixture(`${n}.npy`)));
    const reference = referenceForward(q, k, v, { causal: true });
    const o = readNpy(out), lse = readNpy(tmp("o.lse.npy"));
    expect(o.shape).toEqual([1, 5, 4, 16]);
    expect(lse.shape).toEqual([1, 4, 5]);
    expect(relativeError(toFloat32(o), reference.out)).toBeLessThanOrEqual(1e-5);
    expect(relativeError(toFloat32(lse), reference.lse)).toBeLessThanOrEqual(1e-5);
  }, 60_000);

  test("packed bf16 qkv from .safetensors, O and LSE into one .safetensors", () => {
    const out = tmp("o.safetensors");
    const r = cli([
      "run",
      "--backend",
      "cpu",
      "--input",
      fixture("packed.safetensors"),
      "--window",
      "2,1",
      "--check",
      "--out",
      out,
      "--lse",
      "--json",
    ]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc).toMatchObject({ ok: true, dtype: "bf16", window: [2, 1], outputs: [out] });
    const { tensors, metadata } = readSafetensors(out);
    expect(metadata.backend).toBe("cpu");
    expect(tensors.get("out")!.dtype).toBe("bf16");
    expect(tensors.get("lse")!.shape).toEqual([2, 2, 6]);
    const packed = readSafetensors(fixture("packed.safetensors")).tensors.get("qkv")!;
    const { q, k, v } = unpackQkv("packed", "qkv", packed);
    const reference = referenceForward(q, k, v, { window: [2, 1] });
    expect(relativeError(toFloat32(tensors.get("out")!), reference.out)).toBeLessThanOrEqual(1e-2);
  }, 60_000);

  test("--alibi-slopes from a file, --scale, fp32 files converted with --dtype fp16, LSE to a named path", () => {
    const slopes = Float32Array.from([0.5, 0.25, 0.125, 0.0625]);
    writeNpy(tmp("slopes.npy"), tensor("fp32", [4], slopes));
    const lsePath = tmp("named-lse.npy");
    const r = cli([
      "run",
      "--backend",
      "cpu",
      "--q",
      fixture("q.npy"),
      "--k",
      fixture("k.npy"),
      "--v",
      fixture("v.npy"),
      "--dtype",
      "fp16",
      "--alibi-slopes",
      tmp("slopes.npy"),
      "--scale",
      "0.3",
      "--check",
      "--json",
      "--out",
      tmp("o16.npy"),
      "--lse",
      lsePath,
    ]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, dtype: "fp16", alibi: "file", scale: 0.3 });
    const [q, k, v] = ["q", "k", "v"].map((n) => {
      const t = readNpy(fixture(`${n}.npy`));
      return fromFloat32("fp16", t.shape, toFloat32(t));
    });
    const reference = referenceForward(q, k, v, { alibiSlopes: slopes, scale: 0.3 });
    expect(readNpy(tmp("o16.npy")).dtype).toBe("fp16");
    expect(relativeError(toFloat32(readNpy(tmp("o16.npy"))), reference.out)).toBeLessThanOrEqual(1e-2);
    expect(relativeError(toFloat32(readNpy(lsePath)), reference.lse)).toBeLessThanOrEqual(1e-5);

    writeNpy(tmp("slopes3.npy"), tensor("fp32", [3]));
    const wrong = cli([
      "run",
      "--backend",
      "cpu",
      "--q",
      fixture("q.npy"),
      "--k",
      fixture("k.npy"),
      "--v",
      fixture("v.npy"),
      "--alibi-slopes",
      tmp("slopes3.npy"),
    ], { NO_COLOR: "1" });
    expectOneLineError(wrong, 2, "ALiBi slopes must have shape (4,) or (1, 4), got (3,)");
  }, 60_000);

  test("a random problem with ALiBi and softcap, fp16 on the CPU, passes the same-precision rule", () => {
    const r = cli([
      "run",
      "--backend",
      "cpu",
      "--shape",
      "2,33,47,6,3,40",
      "--dtype",
      "fp16",
      "--alibi",
      "--softcap",
      "5",
      "--check",
      "--json",
    ]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.check.pass).toBe(true);
    expect(doc.check.naiveError).toBeGreaterThan(0);
    expect(doc.check.relativeError).toBeLessThanOrEqual(doc.check.limit);
  }, 60_000);

  test("a NaN in the input fails --check: exit 1, one line; with --json ok: false and CHECK_FAILED", () => {
    const args = [
      "run",
      "--backend",
      "cpu",
      "--q",
      fixture("q_nan.npy"),
      "--k",
      fixture("k.npy"),
      "--v",
      fixture("v.npy"),
      "--check",
    ];
    const human = cli(args, { NO_COLOR: "1" });
    expect(human.code).toBe(1);
    expect(human.stdout).toContain("FAIL");
    expect(human.stderr.split("\n")[0]).toBe(
      "flashattn: check failed: relative error Infinity exceeds the limit 1.00e-5",
    );
    const json = cli([...args, "--json"]);
    expect(json.code).toBe(1);
    const doc = JSON.parse(json.stdout);
    expect(doc.ok).toBe(false);
    expect(doc.error.code).toBe("CHECK_FAILED");
    expect(doc.check.relativeError).toBe("Infinity");
  }, 60_000);
});

describe("usage and input errors exit 2 with one line", () => {
  fs.writeFileSync(tmp("truncated.npy"), fs.readFileSync(fixture("q.npy")).subarray(0, 100));
  const huge = new Uint8Array(fs.readFileSync(fixture("f4.npy")).subarray(0, 128));
  new TextEncoder().encodeInto(
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }",
    huge.subarray(10),
  );
  fs.writeFileSync(tmp("huge.npy"), huge);
  const badJson = new TextEncoder().encode("{not json}");
  const badSafetensors = new Uint8Array(8 + badJson.length);
  new DataView(badSafetensors.buffer).setBigUint64(0, BigInt(badJson.length), true);
  badSafetensors.set(badJson, 8);
  fs.writeFileSync(tmp("bad.safetensors"), badSafetensors);

  const q = fixture("q.npy"), k = fixture("k.npy"), v = fixture("v.npy");
  const cases: Array<[string, string[], string]> = [
    ["unknown dtype", ["run", "--dtype", "fp8"], "unknown dtype 'fp8' (choose fp32, fp16, bf16, fp8_e4m3 or fp8_e5m2)"],
    ["unknown flag", ["run", "--bogus"], "unknown option '--bogus'"],
    ["unknown command", ["frobnicate"], "unknown command 'frobnicate'"],
    ["shapes that disagree", ["run", "--backend", "cpu", "--q", q, "--k", k, "--v", q], "k and v shapes differ"],
    ["heads not divisible", ["run", "--shape", "1,16,16,6,4,64"], "heads_q (6) must be a multiple of heads_kv (4)"],
    ["head_dim out of range", ["run", "--shape", "1,16,16,4,4,300"], "head_dim 300 is out of range"],
    ["impossible window", ["run", "--window", "-3,0"], "--window bounds must be a whole number ≥ -1"],
    ["impossible softcap", ["run", "--softcap", "-2"], "--softcap must be a finite number ≥ 0"],
    ["impossible scale", ["run", "--scale", "0"], "--scale must be a finite number > 0"],
    ["missing file", ["run", "--q", tmp("nope.npy"), "--k", k, "--v", v], `${tmp("nope.npy")}: no such file`],
    ["truncated file", ["run", "--q", tmp("truncated.npy"), "--k", k, "--v", v], "is truncated"],
    [
      "giant shape in a tiny file",
      ["run", "--q", tmp("huge.npy"), "--k", k, "--v", v],
      "needs 4000000000000 data bytes but the file has 0",
    ],
    ["Fortran order", ["run", "--q", fixture("fortran.npy"), "--k", k, "--v", v], "Fortran (column-major) order"],
    ["unsupported dtype", ["run", "--q", fixture("f8.npy"), "--k", k, "--v", v], "has dtype '<f8'"],
    ["malformed safetensors", ["run", "--input", tmp("bad.safetensors")], "has a header that is not valid JSON"],
    ["output over an input", ["run", "--q", q, "--k", k, "--v", v, "--out", q], "it is also an input"],
  ];
  for (const [name, args, message] of cases) {
    test(name, () => expectOneLineError(cli(args, { NO_COLOR: "1" }), 2, message));
  }

  test("--json error documents parse and carry code and message", () => {
    const r = cli(["run", "--json", "--dtype", "fp8"]);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout)).toEqual({
      ok: false,
      error: { code: "USAGE", message: "unknown dtype 'fp8' (choose fp32, fp16, bf16, fp8_e4m3 or fp8_e5m2)", fix: "e.g. --dtype bf16" },
    });
    const unknown = cli(["run", "--json", "--bogus"]);
    expect(unknown.code).toBe(2);
    expect(JSON.parse(unknown.stdout).error.code).toBe("USAGE");
  });
});

describe("environment errors exit 3", () => {
  test("--lib that does not exist", () => {
    expectOneLineError(cli(["run", "--lib", tmp("libflashattn_cpu.so")], { NO_COLOR: "1" }), 3, "could not be loaded");
  });

  test("--lib that is not our library (wrong ABI)", () => {
    const libm = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6"].find((
      p,
    ) => fs.existsSync(p));
    expect(libm).toBeDefined();
    const r = cli(["run", "--json", "--lib", libm!]);
    expect(r.code).toBe(3);
    expect(["LIBRARY_NOT_FOUND", "ABI_MISMATCH"]).toContain(JSON.parse(r.stdout).error.code);
  });

  test.skipIf(hasGpu)("--backend cuda on a machine without a GPU (skipped where a GPU is present)", () => {
    const r = cli(["run", "--backend", "cuda", "--json"]);
    expect(r.code).toBe(3);
    expect(JSON.parse(r.stdout).ok).toBe(false);
  });
});

describe("colour", () => {
  test("FORCE_COLOR colours the error line; NO_COLOR wins over it", () => {
    expect(cli(["run", "--dtype", "fp8"], { FORCE_COLOR: "1" }).stderr).toContain("\x1b[31mflashattn:\x1b[39m");
    expect(cli(["run", "--dtype", "fp8"], { FORCE_COLOR: "1", NO_COLOR: "1" }).stderr).not.toContain("\x1b[");
    expect(cli(["run", "--dtype", "fp8", "--no-color"], { FORCE_COLOR: "1" }).stderr).not.toContain("\x1b[");
  });
});
