// `flashattn doctor` in a child process, as the CLI tests run it: a clean environment (our node_modules/.bin first
// on PATH) plus what a test sets, and the --json document checked against the report schema.
import { expect } from "bun:test";
import { spawnSync } from "node:child_process";
import os from "node:os";
import path from "node:path";
import type { DoctorReport } from "../../doctor/facts.ts";
import { validate } from "../../doctor/schema.ts";

export const root = path.resolve(import.meta.dir, "../..");
export const bun = path.join(root, "node_modules", ".bin", "bun");

const baseEnv: Record<string, string> = {
  PATH: `${path.join(root, "node_modules", ".bin")}:${process.env.PATH ?? "/usr/bin:/bin"}`,
  HOME: process.env.HOME ?? os.tmpdir(),
};

export function doctor(args: string[], env: Record<string, string> = {}, command = [bun, "cli.ts"]) {
  const r = spawnSync(command[0], [...command.slice(1), "doctor", ...args], {
    cwd: root,
    env: { ...baseEnv, ...env },
    encoding: "utf8",
    timeout: 180_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function jsonReport(r: ReturnType<typeof doctor>): DoctorReport {
  const doc = JSON.parse(r.stdout);
  expect(validate(doc)).toEqual([]);
  return doc as DoctorReport;
}
