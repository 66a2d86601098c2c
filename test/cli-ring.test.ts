// The CLI's context parallelism as a user meets it: `run --devices` (flags, refusals, a checked CPU ring in a real
// subprocess, the one-device case said so) and `bench --preset context-parallel` without a GPU.
import { describe, expect, test } from "bun:test";
import { parseRunOptions } from "../commands/run.ts";
import { cli, runUsageError } from "./support/cli.ts";

describe("run --devices: flags", () => {
  test("a device list becomes the plan's ranks", () => {
    expect(parseRunOptions({ devices: "0,1,3", seqlen: "64" }).devices).toEqual([0, 1, 3]);
    expect(parseRunOptions({ seqlen: "64" }).devices).toBeUndefined();
  });
  test("bad lists and semantics a split cannot keep are refused with one sentence", () => {
    expect(runUsageError({ devices: "0,x" })).toContain("--devices entries must be a whole number");
    expect(runUsageError({ devices: "" })).toContain("--devices entries");
    expect(runUsageError({ devices: "0,1", window: "8,0" })).toContain("--window");
    expect(runUsageError({ devices: "0,1", alibi: true })).toContain("--alibi");
    expect(runUsageError({ devices: "0", decode: true, cacheLen: "16" })).toContain("--decode");
    expect(runUsageError({ devices: "0", seqlenQ: "8", seqlenK: "16" })).toContain("seqlen_q and seqlen_k must be equal");
  });
});

describe("run --devices: the CLI", () => {
  test("three CPU ranks: checked against the fp64 reference, the ring reported in text and JSON", () => {
    const text = cli(["run", "--backend", "cpu", "--devices", "0,0,0", "--seqlen", "131", "--heads-q", "4", "--heads-kv", "2", "--head-dim", "32", "--causal", "--check"]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain("3 ranks over in-process copies");
    expect(text.stdout).toContain("PASS");
    const json = cli(["run", "--backend", "cpu", "--devices", "0,0", "--seqlen", "65", "--check", "--json"]);
    expect(json.code).toBe(0);
    const doc = JSON.parse(json.stdout);
    expect(doc.ring).toEqual({ ranks: 2, devices: [0, 0], transport: "in-process copies on one device" });
    expect(doc.check.pass).toBe(true);
  });
  test("one device is the ring of 1, and the report says so", () => {
    const r = cli(["run", "--backend", "cpu", "--devices", "0", "--seqlen", "33", "--check"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("1 rank (one device: no context parallelism)");
  });
  test("a CPU rank on another device is a usage error (exit 2)", () => {
    const r = cli(["run", "--backend", "cpu", "--devices", "0,1", "--seqlen", "33"]);
    expect(r.code).toBe(2);
    expect(r.stderr.split("\n")[0]).toBe("flashattn: the CPU backend has one device (0): --devices 0,1 names others");
  });
});

describe("bench --preset context-parallel with every GPU hidden (CUDA_VISIBLE_DEVICES=)", () => {
  test("an environment error (exit 3) that names what is missing; misplaced flags are usage errors", () => {
    const r = cli(["bench", "--preset", "context-parallel", "--seqlen", "1k"], { CUDA_VISIBLE_DEVICES: "" });
    expect(r.code).toBe(3);
    expect(r.stderr).toContain("context-parallel needs the cuda backend with a GPU");
    const flag = cli(["bench", "--preset", "context-parallel", "--hdim", "64"]);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain("--hdim does not apply");
  });
});
