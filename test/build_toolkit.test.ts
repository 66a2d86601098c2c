// kernels/build.ts picks the toolkit the user names: $CUDA_HOME/bin/nvcc before any nvcc on PATH (the doctor's fixes
// say "CUDA_HOME=<toolkit> bun kernels/build.ts cuda"), and a CUDA_HOME without nvcc is one clear line, not a silent
// fall back to another toolkit. Real directories and executables stand in for toolkits; nothing is compiled.
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { findCompiler } from "../kernels/build.ts";
import type { BuildTarget } from "../kernels/target.ts";
import cudaTarget from "../kernels/cuda/target.ts";
import { cudaBuildTargets } from "../doctor/rules/tables.ts";
import { probeNvcc } from "../doctor/probes/tools.ts";

const root = path.resolve(import.meta.dir, "..");
const bun = path.join(root, "node_modules", ".bin", "bun");
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-toolkit-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** A directory with bin/nvcc: a script that writes who it is to `log` and fails (so a build stops at once). */
function fakeToolkit(name: string): { home: string; log: string } {
  const home = path.join(scratch, name);
  const log = path.join(scratch, `${name}.log`);
  fs.mkdirSync(path.join(home, "bin"), { recursive: true });
  fs.writeFileSync(
    path.join(home, "bin", "nvcc"),
    `#!/bin/sh\necho "${name}" >> "${log}"\necho "${name} nvcc refuses to compile" >&2\nexit 3\n`,
    { mode: 0o755 },
  );
  return { home, log };
}

const target: BuildTarget = {
  backend: "cuda",
  compilers: ["nvcc"],
  compilerDirs: [],
  compileArgs: [],
  units: [],
  linkArgs: [],
  headerDirs: [],
};

describe("the CUDA toolkit a build uses", () => {
  const onPath = fakeToolkit("path-toolkit");
  const chosen = fakeToolkit("cuda-home-toolkit");

  test("CUDA_HOME/bin/nvcc comes before the nvcc on PATH", async () => {
    const env = { PATH: path.join(onPath.home, "bin"), CUDA_HOME: chosen.home };
    expect(await findCompiler(target, env)).toBe(path.join(chosen.home, "bin", "nvcc"));
  });
  test("without CUDA_HOME the nvcc on PATH is used", async () => {
    expect(await findCompiler(target, { PATH: path.join(onPath.home, "bin") })).toBe(
      path.join(onPath.home, "bin", "nvcc"),
    );
  });
  test("a CUDA_HOME without bin/nvcc is refused with one line, not replaced by the nvcc on PATH", async () => {
    const empty = path.join(scratch, "not-a-toolkit");
    fs.mkdirSync(empty, { recursive: true });
    const env = { PATH: path.join(onPath.home, "bin"), CUDA_HOME: empty };
    await expect(findCompiler(target, env)).rejects.toThrow(
      `CUDA_HOME=${empty} has no bin/nvcc: point CUDA_HOME at a toolkit`,
    );
  });
  test("`bun kernels/build.ts cuda` compiles with CUDA_HOME's nvcc, and says so", () => {
    const r = spawnSync(bun, ["kernels/build.ts", "cuda"], {
      cwd: root,
      env: { PATH: `${path.join(onPath.home, "bin")}:/usr/bin:/bin`, HOME: os.tmpdir(), CUDA_HOME: chosen.home },
      encoding: "utf8",
      timeout: 120_000,
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`build: cuda: using ${path.join(chosen.home, "bin", "nvcc")} (CUDA_HOME)`);
    expect(r.stderr).toContain("cuda-home-toolkit nvcc refuses to compile");
    expect(fs.existsSync(chosen.log)).toBe(true);
    expect(fs.existsSync(onPath.log)).toBe(false);
  });
  test("`bun kernels/build.ts cuda` with a CUDA_HOME that has no nvcc fails with that line", () => {
    const r = spawnSync(bun, ["kernels/build.ts", "cuda"], {
      cwd: root,
      env: {
        PATH: `${path.join(onPath.home, "bin")}:/usr/bin:/bin`,
        HOME: os.tmpdir(),
        CUDA_HOME: "/nonexistent/cuda",
      },
      encoding: "utf8",
      timeout: 120_000,
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("build: cuda: FAILED — CUDA_HOME=/nonexistent/cuda has no bin/nvcc");
    expect(fs.existsSync(onPath.log)).toBe(false);
  });
});

describe("the doctor looks where the build looks", () => {
  /** A toolkit whose nvcc answers --version as nvcc of that release does. */
  const versioned = (name: string, release: string) => {
    const home = path.join(scratch, name);
    fs.mkdirSync(path.join(home, "bin"), { recursive: true });
    fs.writeFileSync(
      path.join(home, "bin", "nvcc"),
      `#!/bin/sh\necho "Cuda compilation tools, release ${release}, V${release}.41"\n`,
      { mode: 0o755 },
    );
    return home;
  };
  test("the nvcc probe takes CUDA_HOME's nvcc before the one on PATH, and PATH's without CUDA_HOME", async () => {
    const cuda128 = versioned("cuda-12.8", "12.8"), cuda130 = versioned("cuda-13.0", "13.0");
    const withHome = await probeNvcc({ PATH: path.join(cuda130, "bin"), CUDA_HOME: cuda128 });
    expect(withHome).toMatchObject({ status: "ok", source: "CUDA_HOME", version: "12.8" });
    expect(withHome.path).toBe(path.join(cuda128, "bin", "nvcc"));
    expect(await probeNvcc({ PATH: path.join(cuda130, "bin") })).toMatchObject({ source: "PATH", version: "13.0" });
  });
});

describe("the doctor's list of what the CUDA build makes", () => {
  test("is the -gencode targets of kernels/cuda/target.ts (a fix may say rebuild only for these)", () => {
    const args = [...cudaTarget.compileArgs, ...cudaTarget.linkArgs, ...cudaTarget.units.flatMap((u) => u.args ?? [])];
    const made = new Set(args.flatMap((a) => [.../code=((?:sm|compute)_\w+)/g.exec(a) ?? []].slice(1)));
    expect([...made].sort()).toEqual([...cudaBuildTargets].sort());
  });
});
