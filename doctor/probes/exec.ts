// Runs one external program with a hard deadline and returns what it said; never throws. A program that is not
// installed is "absent", one that overruns is killed with everything it started (its process group, SIGKILL: a
// process stuck in a driver call may ignore SIGTERM) and reported as "timeout" without waiting for anything: its
// pipes are abandoned, so a process that escaped the group and still holds them cannot keep the doctor waiting.
import type { ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import process from "node:process";
import type { ProbeStatus } from "../facts.ts";
import { abandonPipes, killGroup, spawnGroup } from "../../lib/subprocess.ts";
import { parseJsonBounded } from "../../lib/json.ts";

export interface ExecResult {
  status: ProbeStatus;
  exitCode?: number;
  signal?: string;
  stdout: string;
  stderr: string;
  ms: number;
  /** why it failed to start or was stopped */
  error?: string;
}

/** Output beyond this is dropped: a tool that floods its pipes must not grow our memory. */
const MAX_OUTPUT_BYTES = 4 << 20;
/**
 * After the program exits (and its group is killed), how long its pipes may take to deliver what is left in them.
 * Only a process that left the group (setsid) can hold them longer; what it holds back is abandoned.
 */
const PIPE_DRAIN_MS = 5_000;

export function execWithTimeout(
  command: string,
  args: string[],
  opts: { timeoutMs: number; env?: Record<string, string | undefined>; input?: string } = { timeoutMs: 10_000 },
): Promise<ExecResult> {
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  return new Promise((resolve) => {
    let settled = false;
    let drain: ReturnType<typeof setTimeout> | undefined;
    let child: ChildProcess | undefined;
    const finish = (r: Omit<ExecResult, "ms">) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(drain);
      if (child) abandonPipes(child);
      resolve({ ...r, ms: elapsed() });
    };
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    const collect = (into: Buffer[]) => (chunk: Buffer) => {
      if (outBytes >= MAX_OUTPUT_BYTES) return;
      outBytes += chunk.length;
      into.push(chunk);
    };
    const text = (b: Buffer[]) => Buffer.concat(b).toString("utf8");
    const ended = (code: number | null, signal: NodeJS.Signals | null) =>
      finish({
        status: code === 0 ? "ok" : "error",
        exitCode: code ?? undefined,
        signal: signal ?? undefined,
        stdout: text(out),
        stderr: text(err),
        error: code === 0 ? undefined : signal ? `killed by ${signal}` : `exited with status ${code}`,
      });

    let exited: Parameters<typeof ended> | undefined;
    const timer = setTimeout(() => {
      if (exited) return ended(...exited); // it has ended; an escaped process holds its pipes: keep what came
      if (child) killGroup(child);
      finish({
        status: "timeout",
        stdout: text(out),
        stderr: text(err),
        error: `${path.basename(command)} did not finish within ${opts.timeoutMs / 1000} s`,
      });
    }, opts.timeoutMs);
    try {
      child = spawnGroup(command, args, {
        env: (opts.env ?? process.env) as NodeJS.ProcessEnv,
        stdio: [opts.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
      });
    } catch (e) {
      finish({ status: "error", stdout: "", stderr: "", error: (e as Error).message });
      return;
    }
    child.stdout?.on("data", collect(out));
    child.stderr?.on("data", collect(err));
    if (opts.input !== undefined) {
      child.stdin?.on("error", () => {}); // a program that exits without reading its input: its exit status says it
      child.stdin?.end(opts.input);
    }
    child.on("error", (e: NodeJS.ErrnoException) => {
      finish({
        status: e.code === "ENOENT" ? "absent" : "error",
        stdout: text(out),
        stderr: text(err),
        error: e.code === "ENOENT" ? `${command} not found` : e.message,
      });
    });
    // "close" comes once the pipes are drained too; an escaped process holding them delays it, within reason.
    child.on("exit", (code, signal) => {
      exited = [code, signal];
      if (!settled) drain = setTimeout(() => ended(code, signal), PIPE_DRAIN_MS);
    });
    child.on("close", ended);
  });
}

/** The first executable called `name` on PATH (or in `extraDirs`, searched first), or undefined. */
export function findExecutable(name: string, extraDirs: string[] = [], env = process.env): string | undefined {
  const dirs = [...extraDirs, ...(env.PATH ?? "").split(path.delimiter)].filter(Boolean);
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      if (fs.statSync(candidate).isFile()) return candidate;
    } catch { /* not here */ }
  }
  return undefined;
}

/** The last non-empty line of a tool's output: the sentence worth quoting in a finding. */
export function lastLine(text: string): string {
  const lines = text.split("\n").map((l) => l.trim()).filter(Boolean);
  return lines.at(-1) ?? "";
}

/** A probe's result is a few KiB, a handful of levels deep; one far beyond either is not a probe result. */
const PROBE_RESULT_LIMITS = { maxChars: 256 << 10, maxDepth: 32 };

/**
 * The JSON document a probe program printed as its last line, bounded in size and depth before it is parsed (the
 * program may be anything on PATH). Throws an Error saying what is wrong with it; the caller checks the schema.
 */
export function probeJson(stdout: string): Record<string, unknown> {
  const line = lastLine(stdout);
  if (!line) throw new Error("printed no result");
  let doc: unknown;
  try {
    doc = parseJsonBounded(line, PROBE_RESULT_LIMITS);
  } catch (e) {
    throw new Error(`printed a result that is not readable JSON (${(e as Error).message.slice(0, 200)})`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    throw new Error(
      `printed ${Array.isArray(doc) ? "an array" : doc === null ? "null" : `a ${typeof doc}`}, not a result`,
    );
  }
  return doc as Record<string, unknown>;
}
