#!/usr/bin/env bun
// Stages the prebuilt libraries the npm package and the standalone release carry: builds them from this commit's
// sources with kernels/build.ts (incremental: only what changed recompiles), copies them to prebuilt/<platform>/ and
// writes a manifest beside each (ffi/prebuilt.ts: sha256, commit, compiler and toolkit, target archs, the minimum
// NVIDIA driver, and the GLIBC version and libraries the file needs, read from the file). Runs as `prepack`, so
// `npm pack` and `npm publish` cannot ship without it.
//
// A release carries all three libraries. Where a GPU library cannot or need not be built (no nvcc/hipcc, or a test
// that must not spend minutes compiling CUDA) it may be left out only when asked: --allow-missing cuda,hip (or
// FLASHATTN_PACK_ALLOW_MISSING, since `npm pack` passes no arguments). An allowed-missing backend is packed when
// build/ already has its library (rebuilt first if its sources changed) and its compiler is here, and left out
// otherwise; the output says what the package lacks and that it is not a release.
//
// Usage: bun scripts/release/prebuilt.ts [--allow-missing cuda,hip] [--out DIR]
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { buildBackends } from "../../kernels/build.ts";
import type { BackendName } from "../../kernels/target.ts";
import { openBackend } from "../../lib/backend.ts";
import { libraryFileName } from "../../ffi/discovery.ts";
import { MANIFEST_SCHEMA, manifestPathFor, type PrebuiltManifest, sha256File } from "../../ffi/prebuilt.ts";
import { readElfNeeds } from "./elf.ts";
import { minimumDriverForCuda } from "../../doctor/rules/tables.ts";
import packageJson from "../../package.json" with { type: "json" };

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const allBackends: BackendName[] = ["cpu", "cuda", "hip"];
const log = (line: string) => process.stderr.write(`prebuilt: ${line}\n`);

function parseArgs(argv: string[]): { allowMissing: Set<BackendName>; out: string } {
  const list = (v: string | undefined, what: string) => {
    const names = (v ?? "").split(",").map((s) => s.trim()).filter(Boolean);
    const bad = names.find((n) => n === "cpu" || !(allBackends as string[]).includes(n));
    if (bad !== undefined) throw new Error(`${what} takes cuda and/or hip (the CPU library is always required), got ${bad}`);
    return names as BackendName[];
  };
  const allowMissing = new Set(list(process.env.FLASHATTN_PACK_ALLOW_MISSING, "FLASHATTN_PACK_ALLOW_MISSING"));
  let out = path.join(root, "prebuilt", `${process.platform}-${process.arch}`);
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--allow-missing") list(argv[++i], "--allow-missing").forEach((b) => allowMissing.add(b));
    else if (argv[i] === "--out" && argv[i + 1]) out = path.resolve(argv[++i]);
    else throw new Error(`unknown argument ${argv[i]}: expected --allow-missing cuda,hip or --out DIR`);
  }
  return { allowMissing, out };
}

function gitCommit(): string {
  try {
    const head = execFileSync("git", ["rev-parse", "HEAD"], { cwd: root, encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--untracked-files=no"], { cwd: root, encoding: "utf8" }).trim();
    return dirty ? `${head}-dirty` : head;
  } catch {
    return "unknown (not a git checkout)";
  }
}

function manifestFor(backend: BackendName, file: string, commit: string): PrebuiltManifest {
  const { backend: lib, attempts } = openBackend(backend, { libPath: file });
  if (!lib) throw new Error(`${file} does not load here, so its manifest cannot be written: ${attempts[0]?.error}`);
  const info = lib.info();
  const cuda = info.built_with?.cuda;
  const bytes = fs.readFileSync(file);
  const manifest: PrebuiltManifest = {
    schema: MANIFEST_SCHEMA,
    library: path.basename(file),
    backend,
    sha256: sha256File(file),
    bytes: bytes.length,
    version: packageJson.version,
    commit,
    compiler: info.compiler ?? "unknown",
    toolkit: info.built_with ?? {},
    archs: info.archs ?? [],
    needs: readElfNeeds(bytes),
  };
  if (backend === "cuda") {
    // Static cudart: the driver must be at least the toolkit's own minimum (PTX for newer GPUs is JIT-compiled by
    // the driver, which needs the full minimum rather than the minor-version-compatibility branch floor).
    const minimum = cuda ? minimumDriverForCuda[cuda] : undefined;
    if (!minimum) throw new Error(`no minimum driver known for CUDA ${cuda}: add it to doctor/rules/tables.ts`);
    manifest.min_nvidia_driver = minimum;
  }
  return manifest;
}

/** Writes `data` to `file` through a temporary name, so nothing ever sees a half-written library or manifest. */
function writeAtomic(file: string, data: Uint8Array | string) {
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

async function main(): Promise<number> {
  let opts: ReturnType<typeof parseArgs>;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    log((e as Error).message);
    return 2;
  }
  const wanted = allBackends.filter((b) => !opts.allowMissing.has(b) || fs.existsSync(path.join(root, "build", libraryFileName(b))));
  const outcomes = await buildBackends({ backends: wanted, all: false, jobs: Math.max(1, os.availableParallelism()), force: false, verbose: false });
  for (const b of allBackends.filter((x) => !wanted.includes(x))) {
    outcomes.push({ backend: b, status: "skipped", detail: "not built in build/ and allowed missing, so not compiled now" });
  }
  const failed = outcomes.filter((o) => o.status === "failed");
  if (failed.length) {
    log(`the build failed for ${failed.map((o) => o.backend).join(", ")}: nothing was staged`);
    return 1;
  }
  const commit = gitCommit();
  fs.mkdirSync(opts.out, { recursive: true });
  const missing = outcomes.filter((o) => o.status !== "built" && o.status !== "up to date");
  for (const o of outcomes) {
    const name = libraryFileName(o.backend);
    const dest = path.join(opts.out, name);
    // A library that was not (re)built now is never shipped: a stale copy from an older commit would lie.
    fs.rmSync(dest, { force: true });
    fs.rmSync(manifestPathFor(dest), { force: true });
    if (missing.includes(o)) continue;
    writeAtomic(dest, fs.readFileSync(path.join(root, "build", name)));
    const manifest = manifestFor(o.backend, dest, commit);
    writeAtomic(manifestPathFor(dest), JSON.stringify(manifest, null, 2) + "\n");
    log(`${name}: ${(manifest.bytes / 1e6).toFixed(1)} MB, sha256 ${manifest.sha256.slice(0, 16)}…, needs glibc ≥ ${manifest.needs.glibc}` +
      `${manifest.min_nvidia_driver ? `, NVIDIA driver ≥ ${manifest.min_nvidia_driver}` : ""} -> ${path.relative(root, dest)}`);
  }
  for (const m of missing) log(`MISSING ${m.backend} (${m.detail})`);
  const notAllowed = missing.filter((m) => !opts.allowMissing.has(m.backend)).map((m) => m.backend);
  if (notAllowed.length) {
    log(`a release carries cpu, cuda and hip; missing ${notAllowed.join(", ")}. ` +
      `To pack without them anyway (not for release): FLASHATTN_PACK_ALLOW_MISSING=${notAllowed.filter((b) => b !== "cpu").join(",")}`);
    return 1;
  }
  if (missing.length) log(`packing WITHOUT ${missing.map((m) => m.backend).join(", ")} (allowed by request): not a release`);
  return 0;
}

process.exitCode = await main();
