// `flashattn doctor` in a child process, as the CLI tests run it (test/support/cli.ts: a plain shell's environment
// plus what a test sets), and the --json document checked against the report schema.
import { expect } from "bun:test";
import type { DoctorReport } from "../../doctor/facts.ts";
import { validate } from "../../doctor/schema.ts";
import { cli } from "./cli.ts";

export { bun, root } from "./cli.ts";

/** `command` runs the CLI some other way (Deno, bin/flashattn); `bun cli.ts` by default. */
export function doctor(args: string[], env: Record<string, string> = {}, command?: string[]) {
  return cli(["doctor", ...args], env, { command, timeoutMs: 180_000 });
}

export function jsonReport(r: ReturnType<typeof doctor>): DoctorReport {
  const doc = JSON.parse(r.stdout);
  expect(validate(doc)).toEqual([]);
  return doc as DoctorReport;
}
