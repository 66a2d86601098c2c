#!/usr/bin/env bun
// Builds the native libraries into build/ (git-ignored):
//   build/libflashattn_cpu.so   always (a C++17 compiler is required)
//   build/libflashattn_cuda.so  when nvcc is found and an NVIDIA driver is present (or with --all / `cuda`)
//   build/libflashattn_hip.so   when hipcc is found and the amdgpu driver is present (or with --all / `hip`)
// By default only the libraries this machine can run are built: compiling CUDA and HIP code for a machine without
// their GPUs costs minutes and gives nothing it can use. --all (CI, releases) builds every library whose compiler
// is here; naming backends builds exactly those.
// Each backend describes itself in kernels/<backend>/target.ts (see kernels/target.ts). Only the units whose inputs
// changed (source, the headers they can see, the flags, the compiler) are recompiled; the link runs when any object
// changed. Says what it built, what it skipped and why.
//
// The CUDA toolkit is $CUDA_HOME/bin/nvcc where CUDA_HOME is set (a CUDA_HOME without it fails the cuda build with
// one line), else nvcc on PATH, else /usr/local/cuda/bin.
//
// Usage: bun kernels/build.ts [cpu|cuda|hip ... | --all] [--jobs N] [--force] [--verbose]
// Also a module: scripts/release/prebuilt.ts calls buildBackends() to build what it packs.
import { $, fs, path, which } from "zx";
import { createHash } from "node:crypto";
import os from "node:os";
import { fileURLToPath } from "node:url";
import type { BackendName, BuildTarget } from "./target.ts";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const buildDir = path.join(root, "build");
const allBackends: BackendName[] = ["cpu", "cuda", "hip"];

export interface Options {
  /** the backends to build; empty: those this machine can run (see machineBackends) */
  backends: BackendName[];
  all: boolean;
  jobs: number;
  force: boolean;
  verbose: boolean;
}

function parseArgs(argv: string[]): Options {
  const opts: Options = { backends: [], all: false, jobs: Math.max(1, os.availableParallelism?.() ?? os.cpus().length), force: false, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--force") opts.force = true;
    else if (a === "--all") opts.all = true;
    else if (a === "--verbose" || a === "-v") opts.verbose = true;
    else if (a === "--jobs" || a === "-j") {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1) throw new Error(`--jobs takes a positive whole number, got ${argv[i]}`);
      opts.jobs = n;
    } else if ((allBackends as string[]).includes(a)) opts.backends.push(a as BackendName);
    else throw new Error(`unknown argument ${a}: expected cpu, cuda, hip, --all, --jobs N, --force or --verbose`);
  }
  if (opts.all && opts.backends.length) throw new Error("--all builds every backend: name backends or give --all, not both");
  if (opts.all) opts.backends = [...allBackends];
  return opts;
}

/**
 * Why this machine cannot run a backend's library (so the default build skips it), or null when it can. The test
 * is the kernel driver the GPU runtime talks to, not a GPU library: a container given the GPU has the driver's
 * device files even before any user-space runtime is installed.
 */
export function cannotRunHere(backend: BackendName): string | null {
  if (backend === "cpu") return null;
  if (backend === "cuda") {
    return fs.existsSync("/proc/driver/nvidia/version") || fs.existsSync("/dev/nvidiactl")
      ? null
      : "no NVIDIA driver on this machine (neither /proc/driver/nvidia/version nor /dev/nvidiactl)";
  }
  return fs.existsSync("/dev/kfd") ? null : "no AMD GPU driver on this machine (/dev/kfd does not exist)";
}

class CompileError extends Error {}

const log = (line: string) => process.stderr.write(`build: ${line}\n`);

/**
 * The variable that names a backend's toolkit: when set, its bin/ holds the compiler the user wants, before any on
 * PATH (the doctor's fixes say "CUDA_HOME=<toolkit> bun kernels/build.ts cuda" and mean it).
 */
const toolkitHome: Partial<Record<BackendName, string>> = { cuda: "CUDA_HOME" };

/** The compiler for a target: $CUDA_HOME/bin first where set, then PATH, then the target's usual directories. */
export async function findCompiler(
  target: BuildTarget,
  env: Record<string, string | undefined> = process.env,
): Promise<string | null> {
  const variable = toolkitHome[target.backend];
  const home = variable ? env[variable] : undefined;
  if (variable && home) {
    for (const name of target.compilers) {
      const candidate = path.join(home, "bin", path.basename(name));
      if (await fs.pathExists(candidate)) {
        log(`${target.backend}: using ${candidate} (${variable})`);
        return candidate;
      }
    }
    throw new CompileError(
      `${variable}=${home} has no bin/${target.compilers.map((c) => path.basename(c)).join(" or bin/")}: point ${variable} at a toolkit (the directory that holds bin/${path.basename(target.compilers[0])}) or unset it to use the one on PATH`,
    );
  }
  for (const name of target.compilers) {
    if (path.isAbsolute(name)) {
      if (await fs.pathExists(name)) return name;
      continue;
    }
    const onPath = await which(name, { nothrow: true, path: env.PATH ?? "" });
    if (onPath) return onPath;
    for (const dir of target.compilerDirs ?? []) {
      const candidate = path.join(dir, name);
      if (await fs.pathExists(candidate)) return candidate;
    }
  }
  return null;
}

// Hash of every file under the given directories (sorted), so a header change rebuilds what can see it.
async function hashDirs(dirs: string[]): Promise<string> {
  const h = createHash("sha256");
  for (const dir of dirs) {
    const abs = path.join(root, dir);
    if (!(await fs.pathExists(abs))) continue;
    const files = (await fs.readdir(abs, { recursive: true }) as string[])
      .map((f) => path.join(abs, f))
      .filter((f) => /\.(h|hpp|cuh|inc)$/.test(f))
      .sort();
    for (const f of files) {
      h.update(path.relative(root, f));
      h.update(await fs.readFile(f));
    }
  }
  return h.digest("hex");
}

async function runPool<T>(items: T[], jobs: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const errors: unknown[] = [];
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++];
      try {
        await work(item);
      } catch (e) {
        errors.push(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(jobs, items.length) }, worker));
  if (errors.length) throw errors[0];
}

async function buildTarget(target: BuildTarget, opts: Options): Promise<"built" | "up to date" | string> {
  const compiler = await findCompiler(target);
  if (!compiler) return `skipped: no ${target.compilers.join(" / ")} found on PATH${target.compilerDirs?.length ? ` or in ${target.compilerDirs.join(", ")}` : ""}`;
  const reason = target.precheck ? await target.precheck(compiler) : null;
  if (reason) return `skipped: ${reason}`;

  const objDir = path.join(buildDir, "obj", target.backend);
  await fs.mkdirp(objDir);
  const headers = await hashDirs(target.headerDirs);
  const env = { ...process.env, ...(target.env ?? {}) };
  let changed = false;
  const objects: string[] = [];
  const started = Date.now();

  await runPool(target.units, opts.jobs, async (unit) => {
    const src = path.join(root, unit.source);
    const obj = path.join(objDir, unit.source.replace(/[\\/]/g, "__") + ".o");
    objects.push(obj);
    const args = [...target.compileArgs, ...(unit.args ?? [])];
    const stamp = createHash("sha256")
      .update(compiler).update("\0").update(args.join("\0")).update("\0").update(headers).update("\0")
      .update(await fs.readFile(src))
      .digest("hex");
    const stampFile = obj + ".stamp";
    if (!opts.force && (await fs.pathExists(obj)) && (await fs.readFile(stampFile, "utf8").catch(() => "")) === stamp) return;
    const t0 = Date.now();
    const result = await $({ env, nothrow: true, quiet: true })`${compiler} ${args} -c ${src} -o ${obj}`;
    if (result.exitCode !== 0) {
      throw new CompileError(`${unit.source} failed to compile with ${path.basename(compiler)}:\n${result.stderr.trim()}`);
    }
    const rejected = target.rejectedDiagnostics?.find((d) => d.pattern.test(result.stderr));
    if (rejected) {
      const line = result.stderr.split("\n").find((l) => rejected.pattern.test(l))?.trim();
      throw new CompileError(`${unit.source}: ${rejected.reason}:\n${line}`);
    }
    if (opts.verbose && result.stderr.trim()) process.stderr.write(result.stderr);
    await fs.writeFile(stampFile, stamp);
    changed = true;
    log(`  ${target.backend}: compiled ${unit.source} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  });

  const lib = path.join(buildDir, `libflashattn_${target.backend}.so`);
  if (!changed && !opts.force && (await fs.pathExists(lib))) return "up to date";
  objects.sort();
  const tmp = `${lib}.tmp`;
  const link = await $({ env, nothrow: true, quiet: true })`${compiler} ${objects} ${target.linkArgs} -o ${tmp}`;
  if (link.exitCode !== 0) throw new CompileError(`linking ${path.basename(lib)} failed:\n${link.stderr.trim()}`);
  await fs.rename(tmp, lib); // atomic: a loader never sees a half-written library
  return `built in ${((Date.now() - started) / 1000).toFixed(1)} s`;
}

async function loadTarget(backend: BackendName): Promise<BuildTarget | string> {
  const file = path.join(root, "kernels", backend, "target.ts");
  if (!(await fs.pathExists(file))) return `skipped: kernels/${backend}/target.ts does not exist yet`;
  const mod = await import(file);
  return mod.default as BuildTarget;
}

export type Outcome = { backend: BackendName; status: "built" | "up to date" | "skipped" | "failed"; detail: string };

/** Builds the backends of `opts` (or those this machine can run), logging each outcome on stderr. */
export async function buildBackends(opts: Options): Promise<Outcome[]> {
  await fs.mkdirp(buildDir);
  const outcomes: Outcome[] = [];
  const explicit = opts.backends.length > 0;
  for (const backend of explicit ? opts.backends : allBackends) {
    const outcome = await buildOne(backend, opts, explicit);
    outcomes.push(outcome);
    const built = outcome.status === "built" || outcome.status === "up to date";
    log(`${backend}: ${outcome.status === "failed" ? "FAILED — " : ""}${outcome.detail}${built ? ` -> build/libflashattn_${backend}.so` : ""}`);
  }
  return outcomes;
}

async function buildOne(backend: BackendName, opts: Options, explicit: boolean): Promise<Outcome> {
  const unusable = explicit ? null : cannotRunHere(backend);
  if (unusable) return { backend, status: "skipped", detail: `skipped: ${unusable}; \`bun kernels/build.ts --all\` builds it anyway` };
  const target = await loadTarget(backend);
  if (typeof target === "string") return { backend, status: "skipped", detail: target };
  try {
    const detail = await buildTarget(target, opts);
    const status = detail.startsWith("skipped") ? "skipped" : detail === "up to date" ? "up to date" : "built";
    return { backend, status, detail };
  } catch (e) {
    return { backend, status: "failed", detail: (e as Error).message };
  }
}

async function main(): Promise<number> {
  let opts: Options;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    log((e as Error).message);
    return 2;
  }
  const outcomes = await buildBackends(opts);
  return outcomes.some((o) => o.status === "failed") ? 1 : 0;
}

if (import.meta.main) process.exitCode = await main();
