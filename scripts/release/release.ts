#!/usr/bin/env bun
// `npm run release`: the standalone build for machines without Node, Bun or Deno.
//   dist/flashattn-linux-x64/flashattn                    one executable (bun build --compile), Python scripts embedded
//   dist/flashattn-linux-x64/libflashattn_<backend>.so    the prebuilt libraries with their manifests beside it
//   dist/flashattn-linux-x64.tar.xz                       the two above, as one download
// The libraries come from scripts/release/prebuilt.ts (built from this commit; all three, unless --allow-missing is given,
// which makes a test build, not a release); discovery finds them beside the executable and checks their sha256.
//
// Usage: bun scripts/release/release.ts [--allow-missing cuda,hip] [--no-archive]   (--no-archive: skip the slow xz step)
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const platform = `${process.platform}-${process.arch}`;
const name = `flashattn-${platform}`;
const dist = path.join(root, "dist");
const stage = path.join(dist, name);
const log = (line: string) => process.stderr.write(`release: ${line}\n`);

/** Files read at run time rather than imported: embedded in the executable, extracted by lib/standalone.ts. */
const embedded = ["doctor/probes/python_stack.py", "doctor/model/transformers_probe.py", "bench/baselines/numpy_attention.py", "bench/baselines/torch_sdpa.py", "bench/baselines/worker_protocol.py"];

function run(command: string, args: string[], env: Record<string, string | undefined> = process.env): void {
  const r = spawnSync(command, args, { cwd: root, stdio: "inherit", env });
  if (r.status !== 0) throw new Error(`${path.basename(command)} ${args.join(" ")} failed (${r.error?.message ?? r.signal ?? `status ${r.status}`})`);
}

function main(): number {
  const argv = process.argv.slice(2);
  const archive = !argv.includes("--no-archive");
  const allowMissing = argv.includes("--allow-missing") ? argv[argv.indexOf("--allow-missing") + 1] ?? "" : null;
  const unknown = argv.find((a, i) => a !== "--no-archive" && a !== "--allow-missing" && argv[i - 1] !== "--allow-missing");
  if (unknown) {
    log(`unknown argument ${unknown}: expected --allow-missing cuda,hip or --no-archive`);
    return 2;
  }
  for (const file of embedded) if (!fs.existsSync(path.join(root, file))) throw new Error(`${file} is missing`);
  // Only the flag may leave libraries out: a FLASHATTN_PACK_ALLOW_MISSING left in the environment must not.
  const env = { ...process.env, FLASHATTN_PACK_ALLOW_MISSING: "" };
  run(process.execPath, ["scripts/release/prebuilt.ts", ...(allowMissing !== null ? ["--allow-missing", allowMissing] : [])], env);

  fs.rmSync(stage, { recursive: true, force: true });
  fs.mkdirSync(stage, { recursive: true });
  // Each embedded file keeps its base name (the names are unique): lib/standalone.ts finds it by that name.
  run(process.execPath, ["build", "--compile", "bin/standalone.ts", ...embedded, "--asset-naming=[name].[ext]", "--outfile", path.join(stage, "flashattn")]);
  const prebuilt = path.join(root, "prebuilt", platform);
  for (const file of fs.readdirSync(prebuilt).filter((f) => /^libflashattn_\w+\.(so|json)$/.test(f))) {
    fs.copyFileSync(path.join(prebuilt, file), path.join(stage, file));
  }
  log(`${path.relative(root, stage)}: ${fs.readdirSync(stage).sort().join(", ")}`);
  if (archive) {
    const tarball = path.join(dist, `${name}.tar.xz`);
    const tmp = `${tarball}.tmp`;
    run("tar", ["-C", dist, "-cf", tmp, "--use-compress-program=xz -T0 -6", name]);
    fs.renameSync(tmp, tarball);
    log(`${path.relative(root, tarball)}: ${(fs.statSync(tarball).size / 1e6).toFixed(1)} MB`);
  }
  return 0;
}

try {
  process.exitCode = main();
} catch (e) {
  log((e as Error).message);
  process.exitCode = 1;
}
