// The CLI as the tests run it: `bun cli.ts ...` in a child process with the environment of a plain shell (our
// node_modules/.bin first on PATH, HOME, nothing inherited: no colour or backend settings) plus what a test sets.
// Also the in-process form of a `run` usage error, for the flag-parsing tests.
import { expect } from "bun:test";
import { spawnSync } from "node:child_process";
import os from "node:os";
import path from "node:path";
import { parseRunOptions, type RawRunOptions } from "../../commands/run.ts";
import { FlashAttnError } from "../../lib/errors.ts";

export const root = path.resolve(import.meta.dir, "../..");
// The Bun running the tests (also where node_modules/.bin has no bun, as on the GPU machine).
export const bun = process.execPath;

export const plainEnv: Record<string, string> = {
  PATH: `${path.join(root, "node_modules", ".bin")}:${process.env.PATH ?? "/usr/bin:/bin"}`,
  HOME: process.env.HOME ?? os.tmpdir(),
};

export interface CliOptions {
  /** The working directory; the repository root by default. */
  cwd?: string;
  /** The program and its first arguments; `bun <root>/cli.ts` by default. */
  command?: string[];
  /** A hang guard only: a run that overstays it ends with code null (and `error` set), which fails every exit-code check. */
  timeoutMs?: number;
}

/** `env` is added to (or replaces parts of) plainEnv. */
export function cli(args: string[], env: Record<string, string> = {}, opts: CliOptions = {}) {
  const [program, ...first] = opts.command ?? [bun, path.join(root, "cli.ts")];
  const r = spawnSync(program, [...first, ...args], {
    cwd: opts.cwd ?? root,
    env: { ...plainEnv, ...env },
    encoding: "utf8",
    timeout: opts.timeoutMs ?? 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, error: r.error };
}

/** The USAGE sentence parseRunOptions answers `raw` with; fails the test when it accepts `raw` or throws anything else. */
export function runUsageError(raw: RawRunOptions): string {
  try {
    parseRunOptions(raw);
  } catch (error) {
    expect(error).toBeInstanceOf(FlashAttnError);
    expect((error as FlashAttnError).code).toBe("USAGE");
    return (error as FlashAttnError).message;
  }
  throw new Error(`expected a usage error for ${JSON.stringify(raw)}`);
}
