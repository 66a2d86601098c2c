#!/usr/bin/env bun
// Checks that a native library exports every FA_API function that kernels/include/flashattn.h declares.
//
// Usage: bun scripts/ci/check_exports.ts <library.so> [--header path/to/flashattn.h] [--json]
// Prints one line per missing symbol on stdout ("missing: fa_bench"), a summary on stderr.
// Exit codes: 0 all exported, 1 some missing, 2 usage error or the library/header/nm could not be read.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

/** Names of the functions the header declares with FA_API (comments stripped so prose never counts). */
export function declaredFunctions(headerText: string): string[] {
  const code = headerText.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/\/\/[^\n]*/g, " ");
  const names = new Set<string>();
  // FA_API <return type, possibly with * and qualifiers> <name>(   -- the #define FA_API lines have no "(" after a name
  for (const m of code.matchAll(/\bFA_API\s+[A-Za-z_][\w\s*]*?\b([A-Za-z_]\w*)\s*\(/g)) names.add(m[1]);
  return [...names].sort();
}

/** Dynamic symbols the library defines, from `nm -D --defined-only`. */
export function definedSymbols(library: string): Set<string> {
  const r = spawnSync("nm", ["-D", "--defined-only", library], { encoding: "utf8" });
  if (r.error) throw new Error(`cannot run nm (${(r.error as NodeJS.ErrnoException).code ?? r.error.message}): install binutils`);
  if (r.status !== 0) throw new Error(`nm could not read ${library}: ${r.stderr.trim().split("\n")[0] ?? `exit ${r.status}`}`);
  const out = new Set<string>();
  for (const line of r.stdout.split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields.length >= 3) out.add(fields[2].replace(/@.*$/, "")); // drop symbol versions (name@@VER)
  }
  return out;
}

function main(argv: string[]): number {
  let library: string | undefined;
  let header = path.join(root, "kernels", "include", "flashattn.h");
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--header") {
      if (argv[i + 1] === undefined) return usage("--header needs a path");
      header = argv[++i];
    } else if (a === "--json") json = true;
    else if (a === "-h" || a === "--help") {
      process.stdout.write("usage: bun scripts/ci/check_exports.ts <library.so> [--header flashattn.h] [--json]\n");
      return 0;
    } else if (a.startsWith("-")) return usage(`unknown option ${a}`);
    else if (library === undefined) library = a;
    else return usage(`only one library path is taken, got ${library} and ${a}`);
  }
  if (library === undefined) return usage("give the path of a libflashattn_*.so");

  let declared: string[];
  let exported: Set<string>;
  try {
    if (!fs.existsSync(library)) throw new Error(`${library} does not exist`);
    declared = declaredFunctions(fs.readFileSync(header, "utf8"));
    if (declared.length === 0) throw new Error(`${header} declares no FA_API function: is it flashattn.h?`);
    exported = definedSymbols(library);
  } catch (e) {
    return report(json, { ok: false, error: (e as Error).message }, 2);
  }
  const missing = declared.filter((name) => !exported.has(name));
  if (json) return report(true, { ok: missing.length === 0, library, declared: declared.length, missing }, missing.length ? 1 : 0);
  for (const name of missing) process.stdout.write(`missing: ${name}\n`);
  process.stderr.write(
    missing.length
      ? `check_exports: ${library} lacks ${missing.length} of ${declared.length} FA_API functions\n`
      : `check_exports: ${library} exports all ${declared.length} FA_API functions\n`,
  );
  return missing.length ? 1 : 0;
}

function usage(message: string): number {
  process.stderr.write(`check_exports: ${message}\nusage: bun scripts/ci/check_exports.ts <library.so> [--header flashattn.h] [--json]\n`);
  return 2;
}

function report(json: boolean, doc: Record<string, unknown>, code: number): number {
  if (json) process.stdout.write(`${JSON.stringify(doc)}\n`);
  else process.stderr.write(`check_exports: ${doc.error}\n`);
  return code;
}

if (import.meta.main) process.exitCode = main(process.argv.slice(2));
