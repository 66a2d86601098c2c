// Issue #14, the run path: hostile flag values, outputs that must survive a failing run, inputs that are not regular
// files, signals during a write, permissions and symlinks of outputs, and bench output folders. Each test reproduces
// the original failure through a public surface: the CLI in a child process, or the Bun API.
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { attention } from "../lib/attention.ts";
import { openBackend } from "../lib/backend.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { describeProblem } from "../lib/problem.ts";
import { paramsFor } from "../lib/select.ts";
import { randomTensor } from "../lib/tensor.ts";
import { bun, cli as runCli, root } from "./support/cli.ts";

const fixture = (name: string) => path.join(root, "test", "fixtures", "formats", name);
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-hostile-"));
const tmp = (name: string) => path.join(scratch, name);
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));
const cpu = openBackend("cpu", { env: {} }).backend;

/** The CLI in a child process, run from the scratch folder; a hang ends at the timeout with status null, which fails every exit-code check. */
function cli(args: string[], env: Record<string, string> = {}) {
  return runCli(args, { NO_COLOR: "1", ...env }, { cwd: scratch, timeoutMs: 60_000 });
}

function expectOneLineError(r: ReturnType<typeof cli>, code: number, message: string) {
  expect(r.code).toBe(code);
  const lines = r.stderr.trimEnd().split("\n");
  expect(lines[0]).toStartWith("flashattn: ");
  expect(lines[0]).toContain(message);
  expect(lines.length).toBeLessThanOrEqual(2);
}

/** Files in the scratch folder that a write left behind (temporary or backup copies). */
const leftovers = (dir = scratch) => fs.readdirSync(dir).filter((n) => n.endsWith(".tmp") || n.endsWith(".old"));

const qkv = ["--q", fixture("q.npy"), "--k", fixture("k.npy"), "--v", fixture("v.npy")];
const small = ["--shape", "1,64,64,2,2,16", "--backend", "cpu"];

describe("item 1 and 11: a flag value that does not fit its ABI field is a usage error, exit 2", () => {
  const cases: Array<[string[], string]> = [
    [["--window", "4294967296,0"], "--window bound 4294967296 does not fit an int32"],
    [["--window", "4294967297,0"], "--window bound 4294967297 does not fit an int32"],
    [["--window", "2147483648,0"], "--window bound 2147483648 does not fit an int32"],
    [["--window", "0,2147483648"], "--window bound 2147483648 does not fit an int32"],
    [["--scale", "1e-50"], "--scale 1e-50 is outside float32's range (it would become 0)"],
    [["--scale", "1e39"], "--scale 1e39 is outside float32's range (it would overflow)"],
    [["--softcap", "1e-50"], "--softcap 1e-50 is outside float32's range (it would become 0)"],
    [["--softcap", "1e39"], "--softcap 1e39 is outside float32's range (it would overflow)"],
    // In float32's range, but scaled scores could overflow it: the softmax of infinite scores was silently wrong
    // (the fuzzer: --scale 1e38 --check missed by 0.5).
    [["--scale", "1e38"], "scale 1e+38 is above 2^64"],
    [["--scale", "3.4028235e38"], "is above 2^64"],
  ];
  for (const [flags, message] of cases) {
    test(`${flags.join(" ")}`, () => {
      const out = tmp(`fit-${flags.join("_")}.npy`);
      expectOneLineError(cli(["run", ...small, ...flags, "--out", out]), 2, message);
      expect(fs.existsSync(out)).toBe(false);
    });
  }

  // Found by the fuzzer (test/fuzz): a flag value holding CR / LF was echoed raw, so the "one line" was three.
  for (const flags of [["--seed", "q\r\nk"], ["--window", "8\n"], ["--shape", "1,2\u001b]52;c;eA==\u0007"]]) {
    test(`${JSON.stringify(flags)}: the echoed value is escaped, the error stays one line`, () => {
      const r = cli(["run", ...small, ...flags]);
      expectOneLineError(r, 2, flags[0]);
      expect(r.stderr).not.toMatch(/[\r\x1b\x07]/);
      // The --json document carries the same one-line message (a consumer prints it as it is).
      const doc = JSON.parse(cli(["run", "--json", ...small, ...flags]).stdout);
      expect(doc.error.message).toContain(flags[0]);
      expect(doc.error.message).not.toMatch(/[\r\n\x1b\x07]/);
      expect(doc.error.message).toMatch(/\\x(0d|0a|1b)/);
    });
  }

  test("the library API refuses the same values (BAD_INPUT), never computing another problem", async () => {
    const q = randomTensor("fp32", [1, 8, 2, 16], 1);
    for (
      const [opts, message] of [
        [{ window: [2 ** 32, 0] }, "window bound 4294967296 does not fit an int32"],
        [{ scale: 1e-50 }, "scale 1e-50 is outside float32's range"],
        [{ softcap: 1e39 }, "softcap 1e+39 is outside float32's range"],
      ] as const
    ) {
      const error = await attention(q, q, q, { ...opts, backend: "cpu" } as never).catch((e) => e);
      expect(error).toBeInstanceOf(FlashAttnError);
      expect((error as FlashAttnError).code).toBe("BAD_INPUT");
      expect((error as FlashAttnError).message).toContain(message);
    }
  });

  test.skipIf(!cpu)("the fa_attn_params writer refuses a value that would not round-trip (INVALID_ARGUMENT)", () => {
    const t = randomTensor("fp32", [1, 8, 2, 16], 1);
    const params = paramsFor({ problem: describeProblem(t, t, t), direction: "fwd" }, {
      q: 0x100000n, k: 0x100000n, v: 0x100000n, o: 0x100000n, lse: 0x100000n,
    });
    for (
      const [change, message] of [
        [{ windowLeft: 2 ** 32 }, "fa_attn_params.window_left cannot hold 4294967296 (int32)"],
        [{ windowRight: 2 ** 31 }, "fa_attn_params.window_right cannot hold 2147483648 (int32)"],
        [{ scale: 1e-50 }, "fa_attn_params.scale cannot hold 1e-50 (float32)"],
        [{ softcap: 1e39 }, "fa_attn_params.softcap cannot hold 1e+39 (float32)"],
        [{ seqlenK: 2 ** 31 + 5 }, "fa_attn_params.seqlen_k cannot hold 2147483653 (int32)"],
      ] as const
    ) {
      expect(() => cpu!.plan({ ...params, ...change }, "fwd")).toThrow(message);
    }
  });
});

describe("item 5: a failing run never replaces an existing output", () => {
  test("an unwritable --lse path is refused before anything is computed; --out keeps its old bytes", () => {
    const out = tmp("keep.npy");
    fs.writeFileSync(out, "old\n");
    const r = cli(["run", "--backend", "cpu", ...qkv, "--out", out, "--lse", tmp("nodir/keep.lse.npy")]);
    expectOneLineError(r, 2, "directory");
    expect(fs.readFileSync(out, "utf8")).toBe("old\n");
    expect(leftovers()).toEqual([]);
  });

  test("a failed --check (exit 1) writes nothing: --out and --lse keep their old bytes", () => {
    const out = tmp("checked.npy"), lse = tmp("checked.lse.npy");
    fs.writeFileSync(out, "old out\n");
    fs.writeFileSync(lse, "old lse\n");
    const r = cli(["run", "--backend", "cpu", "--q", fixture("q_nan.npy"), "--k", fixture("k.npy"), "--v",
      fixture("v.npy"), "--check", "--out", out, "--lse", lse, "--json"]);
    expect(r.code).toBe(1);
    const doc = JSON.parse(r.stdout);
    expect(doc.error.code).toBe("CHECK_FAILED");
    expect(doc.outputs).toEqual([]);
    expect(fs.readFileSync(out, "utf8")).toBe("old out\n");
    expect(fs.readFileSync(lse, "utf8")).toBe("old lse\n");
  });

  test("--lse that is --out by another name (a symlink) is refused before the run", () => {
    const out = tmp("same.npy");
    fs.rmSync(tmp("same.lse.npy"), { force: true });
    fs.writeFileSync(out, "old\n");
    fs.symlinkSync(out, tmp("same.lse.npy"));
    expectOneLineError(cli(["run", ...small, "--out", out, "--lse"]), 2, "it is the same file as");
    expect(fs.readFileSync(out, "utf8")).toBe("old\n");
  });
});

describe("item 6: inputs that are not regular files are refused before reading, never waited on", () => {
  const fifo = (name: string) => {
    const p = tmp(name);
    if (!fs.existsSync(p)) expect(spawnSync("mkfifo", [p]).status).toBe(0);
    return p;
  };

  test("a FIFO as --q", () => {
    expectOneLineError(
      cli(["run", "--backend", "cpu", "--q", fifo("f.npy"), "--k", fixture("k.npy"), "--v", fixture("v.npy")]),
      2,
      `${tmp("f.npy")}: is not a regular file (it is a FIFO)`,
    );
  });

  test("a FIFO as --input and as --alibi-slopes", () => {
    expectOneLineError(cli(["run", "--input", fifo("f.safetensors")]), 2, "is not a regular file (it is a FIFO)");
    expectOneLineError(
      cli(["run", "--backend", "cpu", ...qkv, "--alibi-slopes", fifo("slopes.npy")]),
      2,
      "is not a regular file (it is a FIFO)",
    );
  });

  test("a device and a directory as --q", () => {
    const device = tmp("zero.npy"), dir = tmp("dir.npy");
    if (!fs.existsSync(device)) fs.symlinkSync("/dev/zero", device);
    fs.mkdirSync(dir, { recursive: true });
    expectOneLineError(cli(["run", "--backend", "cpu", "--q", device, "--k", qkv[3], "--v", qkv[5]]), 2,
      "is not a regular file (it is a device)");
    expectOneLineError(cli(["run", "--backend", "cpu", "--q", dir, "--k", qkv[3], "--v", qkv[5]]), 2,
      "is not a regular file (it is a directory)");
  });

  test("a FIFO as --lib and as FLASHATTN_LIB: the library cannot be loaded, exit 3", () => {
    const lib = fifo("libflashattn_cpu.so");
    expectOneLineError(cli(["run", "--lib", lib]), 3, "is not a regular file");
    expectOneLineError(cli(["run"], { FLASHATTN_LIB: lib }), 3, "is not a regular file");
  });
});

describe("item 7: SIGINT / SIGTERM during a write leave no temporary file", () => {
  // A real writer (formats/atomic.ts, what `run --out` uses) whose second chunk never comes: the signal arrives
  // while the temporary file is half written, deterministically.
  const script = (signal: string) => `
    import { writeFilesAtomic } from ${JSON.stringify(path.join(root, "formats", "atomic.ts"))};
    async function* chunks() {
      yield new Uint8Array(1 << 20).fill(7);
      process.kill(process.pid, ${JSON.stringify(signal)});
      await new Promise((resolve) => setTimeout(resolve, 30_000));
      yield new Uint8Array(1);
    }
    await writeFilesAtomic([{ target: process.argv[2], bytes: chunks() }]);
    process.exit(0);
  `;
  for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
    test(`${signal}: exit ${code}, the old output intact, no temporary file`, () => {
      const dir = tmp(`signal-${signal}`);
      fs.mkdirSync(dir, { recursive: true });
      const file = path.join(dir, "writer.ts");
      fs.writeFileSync(file, script(signal));
      const out = path.join(dir, "o.npy");
      fs.writeFileSync(out, "old\n");
      const r = spawnSync(bun, [file, out], { encoding: "utf8", timeout: 60_000 });
      expect(r.status).toBe(code);
      expect(fs.readdirSync(dir).sort()).toEqual(["o.npy", "writer.ts"]);
      expect(fs.readFileSync(out, "utf8")).toBe("old\n");
    });
  }
});

describe("item 12: output permissions, symlinks and missing folders", () => {
  test("--out over a 0600 file keeps mode 0600", () => {
    const out = tmp("private.npy");
    fs.writeFileSync(out, "old\n", { mode: 0o600 });
    fs.chmodSync(out, 0o600);
    const r = cli(["run", ...small, "--out", out]);
    expect(r.code).toBe(0);
    expect(fs.statSync(out).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(out).subarray(1, 6).toString()).toBe("NUMPY");
  });

  test("--out through a symlink writes the file it points at; the link stays a link", () => {
    const real = tmp("real-target.npy"), link = tmp("link.npy");
    fs.writeFileSync(real, "old\n");
    fs.symlinkSync(real, link);
    const r = cli(["run", ...small, "--out", link]);
    expect(r.code).toBe(0);
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readFileSync(real).subarray(1, 6).toString()).toBe("NUMPY");
    expect(leftovers()).toEqual([]);
  });

  test("--out through a dangling symlink is refused, exit 2", () => {
    const link = tmp("dangling.npy");
    fs.symlinkSync(tmp("nowhere/none.npy"), link);
    expectOneLineError(cli(["run", ...small, "--out", link]), 2, "a symbolic link to a file that does not exist");
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
  });

  test("bench --save and --csv into a missing folder: one line, exit 2, no folder created, nothing run", () => {
    for (const flag of ["--save", "--csv"]) {
      const missing = tmp(`missing-${flag.slice(2)}`);
      const r = cli(["bench", "--backend", "cpu", "--quiet", flag, path.join(missing, "report.out")]);
      expectOneLineError(r, 2, `directory ${missing} does not exist`);
      expect(fs.existsSync(missing)).toBe(false);
    }
  });
});
