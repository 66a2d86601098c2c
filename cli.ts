#!/usr/bin/env bun
// The flashattn command line: a commander program with the global flags, one module per command. No business logic
// lives here; see commands/*.ts for each command and commands/_output.ts for output and exit-code conventions.
// Runs unchanged under Bun and Deno (no `bun:` import on this path).
import process from "node:process";
import { Command } from "@commander-js/extra-typings";
import packageJson from "./package.json" with { type: "json" };
import { configureProgram, runProgram } from "./commands/_output.ts";
import { register as registerRun } from "./commands/run.ts";
import { register as registerBench } from "./commands/bench.ts";
import { register as registerDoctor } from "./commands/doctor.ts";

const exitCodesHelp = `
Exit codes:
  0  success
  1  runtime failure, or a check that missed its tolerance (doctor: problems found)
  2  usage error: a bad flag, input file or shape
  3  environment unusable: no library, ABI mismatch, requested backend not usable

Environment:
  FLASHATTN_BACKEND=cpu|cuda|hip   backend choice (same as --backend)
  FLASHATTN_LIB=PATH               explicit libflashattn_*.so (same as --lib)
  NO_COLOR=1                       no colour; FLASHATTN_DEBUG=1 prints stack traces`;

/** The program for `argv` (user arguments only; --json/--no-color are looked up early for commander's own errors). */
export function buildProgram(argv: readonly string[]) {
  const program = new Command("flashattn")
    .description("Exact tiled attention (FlashAttention) on CPU, CUDA and ROCm: run it, benchmark it, diagnose it")
    .version(packageJson.version, "-V, --version")
    .option("--json", "print one JSON document on stdout (errors too)")
    .option("--no-color", "no ANSI colours (also NO_COLOR=1, TERM=dumb, or output not a terminal)")
    .option("-v, --verbose", "more detail on stderr")
    .showSuggestionAfterError(true)
    .addHelpText("after", exitCodesHelp);
  configureProgram(program, argv);
  registerRun(program);
  registerBench(program);
  registerDoctor(program);
  return program;
}

/** Runs the CLI on user arguments and returns the exit code. */
export function main(argv: readonly string[]): Promise<number> {
  return runProgram(buildProgram(argv), argv);
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
