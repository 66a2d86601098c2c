// The same CLI under Deno (deno.json maps the npm packages; node_modules is used as is, offline): a checked run on
// the CPU library, a run on .npy files, and a usage error, each with the exit code and JSON document Bun gives.
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import path from "node:path";

const root = path.resolve(import.meta.dir, "..");
const deno = path.join(root, "node_modules", ".bin", "deno");
const fixture = (name: string) => path.join(root, "test", "fixtures", "formats", name);

function denoCli(args: string[]) {
  const r = spawnSync(deno, ["run", "--allow-ffi", "--allow-read", "--allow-write", "--allow-env", "cli.ts", ...args], {
    cwd: root,
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? "/tmp",
      NO_COLOR: "1",
      DENO_NO_UPDATE_CHECK: "1",
    },
    encoding: "utf8",
    timeout: 180_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("Deno", () => {
  test("run --json on the CPU backend: a checked random problem", () => {
    const r = denoCli(["run", "--json", "--backend", "cpu", "--shape", "2,77,64,4,2,32", "--causal", "--check"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc).toMatchObject({
      ok: true,
      backend: "cpu",
      dtype: "fp32",
      shape: { batch: 2, seqlenQ: 77, seqlenK: 64, headsQ: 4, headsKv: 2, headDim: 32 },
    });
    expect(doc.check.pass).toBe(true);
    expect(doc.check.relativeError).toBeLessThanOrEqual(1e-5);
  }, 180_000);

  test("run on .npy files reads them through node:fs under Deno too", () => {
    const r = denoCli([
      "run",
      "--json",
      "--backend",
      "cpu",
      "--q",
      fixture("q.npy"),
      "--k",
      fixture("k.npy"),
      "--v",
      fixture("v.npy"),
      "--check",
    ]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, shape: { seqlenQ: 5, seqlenK: 9, headsQ: 4, headsKv: 2 } });
  }, 180_000);

  test("a usage error: exit 2, the JSON error document, one line on stderr", () => {
    const r = denoCli(["run", "--json", "--dtype", "fp8"]);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout).error).toMatchObject({
      code: "USAGE",
      message: "unknown dtype 'fp8' (choose fp32, fp16, bf16, fp8_e4m3 or fp8_e5m2)",
    });
    expect(r.stderr.split("\n")[0]).toBe("flashattn: unknown dtype 'fp8' (choose fp32, fp16, bf16, fp8_e4m3 or fp8_e5m2)");
  }, 180_000);
});
