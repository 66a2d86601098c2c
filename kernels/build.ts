#!/usr/bin/env bun
// Builds every native library this machine can build into build/ (git-ignored):
//   build/libflashattn_cpu.so   always (a C++17 compiler is required)
//   build/libflashattn_cuda.so  when nvcc is found
//   build/libflashattn_hip.so   when hipcc is found
// Each backend describes itself in kernels/<backend>/target.ts (see kernels/target.ts). Only the units whose inputs
// changed (source, the headers they can see, the flags, the compiler) are recompiled; the link runs when any object
// changed. Says what it built, what it skipped and why.
//
// Usage: bun kernels/build.ts [cpu|cuda|hip ...] [--jobs N] [--force] [--verbose]
import { $, fs, path, which } from "zx";
import { createHash } from "node:crypto";
import os from "node:os";
import { fileURLToPath } from "node:url";
import type { BackendName, BuildTarget } from "./target.ts";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const buildDir = path.join(root, "build");
const allBackends: BackendName[] = ["cpu", "cuda", "hip"];

interface Options {
  backends: BackendName[];
  jobs: number;
  force: boolean;
  verbose: boolean;
}

function parseArgs(argv: string[]): Options {
  const opts: Options = { backends: [], jobs: Math.max(1, os.availableParallelism?.() ?? os.cpus().length), force: false, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--force") opts.force = true;
    else if (a === "--verbose" || a === "-v") opts.verbose = true;
    else if (a === "--jobs" || a === "-j") {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1) throw new Error(`--jobs takes a positive whole number, got ${argv[i]}`);
      opts.jobs = n;
    } else if ((allBackends as string[]).includes(a)) opts.backends.push(a as BackendName);
    else throw new Error(`unknown argument ${a}: expected cpu, cuda, hip, --jobs N, --force or --verbose`);
  }
  if (opts.backends.length === 0) opts.backends = [...allBackends];
  return opts;
}

const log = (line: string) => process.stderr.write(`build: ${line}\n`);

async function findCompiler(target: BuildTarget): Promise<string | null> {
  for (const name of target.compilers) {
    if (path.isAbsolute(name)) {
      if (await fs.pathExists(name)) return name;
      continue;
    }
    const onPath = await which(name, { nothrow: true });
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

class CompileError extends Error {}

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

async function main(): Promise<number> {
  let opts: Options;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    log((e as Error).message);
    return 2;
  }
  await fs.mkdirp(buildDir);
  let failed = false;
  for (const backend of opts.backends) {
    const target = await loadTarget(backend);
    if (typeof target === "string") {
      log(`${backend}: ${target}`);
      continue;
    }
    try {
      const outcome = await buildTarget(target, opts);
      log(`${backend}: ${outcome}${outcome.startsWith("skipped") ? "" : ` -> build/libflashattn_${backend}.so`}`);
    } catch (e) {
      failed = true;
      log(`${backend}: FAILED — ${(e as Error).message}`);
    }
  }
  return failed ? 1 : 0;
}

process.exitCode = await main();
