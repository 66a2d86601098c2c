// The fuzz target of test/fuzz/fuzz.ts (the .npy and .safetensors parsers and `run`'s flags), run in a child process
// so that its allocation tracking stays out of this one and a hang is caught: the child prints a line before every
// case, and a case that prints nothing for two minutes (each takes milliseconds) is a hang, reported with its index.
// The bounded run here takes a few seconds; FLASHATTN_FUZZ_CASES=100000 (and FLASHATTN_FUZZ_SEED) run longer.
import { afterAll, describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import { readNpy } from "../formats/npy.ts";
import { openSafetensors } from "../formats/safetensors.ts";
import { FlashAttnError } from "../lib/errors.ts";
import type { FuzzSummary } from "./fuzz/fuzz.ts";

const fuzzer = path.join(import.meta.dir, "fuzz", "fuzz.ts");
const cases = Number(process.env.FLASHATTN_FUZZ_CASES ?? 1000);
const seed = Number(process.env.FLASHATTN_FUZZ_SEED ?? 1);
/** Silence after which the current case counts as hung: thousands of times what a case takes. */
const hangAfterMs = 120_000;

interface ChildResult {
  code: number | null;
  summary?: FuzzSummary;
  stdout: string;
  /** The last progress line: the case running when the child ended (or hung). */
  lastCase: string;
  hung: boolean;
}

function runFuzzer(args: string[]): Promise<ChildResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [fuzzer, ...args], { stdio: ["ignore", "pipe", "pipe"], detached: true });
    let stdout = "", lastCase = "", pending = "", hung = false;
    let lastProgress = Date.now();
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => {
      lastProgress = Date.now();
      const lines = (pending + chunk).split("\n");
      pending = lines.pop() ?? "";
      const progress = lines.filter((l) => l.startsWith("case "));
      if (progress.length) lastCase = progress[progress.length - 1];
    });
    const watchdog = setInterval(() => {
      if (Date.now() - lastProgress > hangAfterMs) {
        hung = true;
        process.kill(-child.pid!, "SIGKILL"); // the whole group: the child and anything it started
      }
    }, 1000);
    child.on("close", (code) => {
      clearInterval(watchdog);
      let summary: FuzzSummary | undefined;
      try {
        summary = JSON.parse(stdout);
      } catch { /* no summary: the child died; the assertions below say so */ }
      resolve({ code, summary, stdout, lastCase, hung });
    });
  });
}

function describeViolations(summary: FuzzSummary): string {
  return summary.violations.map((v) =>
    `${v.target} case ${v.index} (replay: bun test/fuzz/fuzz.ts --seed ${summary.seed} --target ${v.target} --only ${v.index}): ` +
    `${v.problem}\n    input: ${v.input.slice(0, 400)}`
  ).join("\n");
}

describe("fuzzing the parsers and the flags", () => {
  // One child per target, so a failure names the input it concerns.
  for (const target of ["npy", "safetensors", "flags"] as const) {
    test(`${target}: ${cases} cases (seed ${seed}), each succeeds or fails with one documented line`, async () => {
      const r = await runFuzzer(["--cases", String(cases), "--seed", String(seed), "--target", target]);
      expect(r.hung ? `hung at ${r.lastCase}` : "no hang").toBe("no hang");
      expect(r.summary).toBeDefined();
      const summary = r.summary!;
      expect(describeViolations(summary)).toBe("");
      expect(r.code).toBe(0);
      // A fuzzer that only ever produced garbage (or only valid input) would test half the property: both outcomes
      // must occur.
      const tally = summary.tallies[target];
      expect(summary.cases[target]).toBe(cases);
      expect(tally.ok).toBeGreaterThan(0);
      expect(tally.ok).toBeLessThan(cases);
      if (target === "flags") expect(tally.refused["exit 2"]).toBeGreaterThan(0);
      else expect(tally.refused.BAD_INPUT).toBe(cases - tally.ok);
    }, Math.max(120_000, cases * 100));
  }

  test("a seed gives the same cases every time (so a violation replays)", async () => {
    const [a, b] = [
      await runFuzzer(["--cases", "40", "--seed", "7"]),
      await runFuzzer(["--cases", "40", "--seed", "7"]),
    ];
    expect(a.summary?.tallies).toEqual(b.summary!.tallies);
    const other = await runFuzzer(["--cases", "40", "--seed", "8"]);
    expect(other.summary?.tallies).not.toEqual(a.summary!.tallies);
  }, 120_000);
});

describe("what the fuzzer found", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-fuzz-found-"));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const refusal = (read: () => unknown): FlashAttnError => {
    try {
      read();
    } catch (error) {
      if (error instanceof FlashAttnError) return error;
      throw error;
    }
    throw new Error("expected a refusal");
  };

  test("a .npy header key or dtype holding a newline or ESC is refused on one line, the characters escaped", () => {
    for (
      const [dict, quoted] of [
        ["{'des\ncr': '<f4', 'fortran_order': False, 'shape': (1,), }", "des\\x0acr"],
        ["{'descr': '\u001b]0;x\u0007', 'fortran_order': False, 'shape': (1,), }", "\\x1b]0;x\\x07"],
      ]
    ) {
      const header = dict + " ".repeat(63 - ((10 + dict.length) % 64)) + "\n";
      const file = path.join(dir, "a.npy");
      fs.writeFileSync(
        file,
        Buffer.concat([
          Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, header.length, 0]),
          Buffer.from(header, "latin1"),
          Buffer.alloc(4),
        ]),
      );
      const error = refusal(() => readNpy(file));
      expect(error.code).toBe("BAD_INPUT");
      // deno-lint-ignore no-control-regex -- no control character may remain
      expect(error.message).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
      expect(error.message).toContain(quoted);
    }
  });

  test("a .safetensors tensor name holding a newline is refused on one line", () => {
    const json = JSON.stringify({ "q\nk": { dtype: "F64", shape: [1], data_offsets: [0, 8] } });
    const file = path.join(dir, "a.safetensors");
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(file, Buffer.concat([length, Buffer.from(json), Buffer.alloc(8)]));
    // F64 is recognised, so the file opens; reading that tensor is refused, naming it escaped.
    const opened = openSafetensors(file);
    try {
      const error = refusal(() => opened.read("q\nk"));
      expect(error.message).toContain("tensor 'q\\x0ak' has dtype F64");
      expect(error.message).not.toContain("\n");
    } finally {
      opened.close();
    }
  });
});
