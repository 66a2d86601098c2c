// The CPU library's portable (non-AVX2) kernels, forced with FLASHATTN_CPU_ISA=portable in a child process: the same
// problems must pass the fp64 check there too, so machines without AVX2 get correct results.
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import path from "node:path";

const root = path.resolve(import.meta.dir, "..");

function runPortable(args: string[]) {
  const r = spawnSync(process.execPath, ["cli.ts", "run", "--json", "--backend", "cpu", "--check", ...args], {
    cwd: root,
    env: { ...process.env, FLASHATTN_CPU_ISA: "portable", NO_COLOR: "1" },
    encoding: "utf8",
    timeout: 120_000,
  });
  return { status: r.status, doc: JSON.parse(r.stdout) };
}

describe("CPU portable kernels (FLASHATTN_CPU_ISA=portable)", () => {
  for (const [name, args] of [
    ["fp32, causal, GQA, sq ≠ sk", ["--shape", "2,113,203,4,2,40", "--causal", "--seed", String(Date.now() % 100000)]],
    ["fp16, window + softcap", ["--shape", "1,203,113,2,1,64", "--dtype", "fp16", "--window", "16,4", "--softcap", "20"]],
    ["bf16, ALiBi", ["--shape", "1,64,64,4,4,24", "--dtype", "bf16", "--alibi"]],
    // fp8: the table loads and the E4M3 rounding of P in plain vector arithmetic (no AVX blend / min)
    ["fp8_e4m3, causal, GQA", ["--shape", "1,150,150,4,2,64", "--dtype", "fp8_e4m3", "--causal"]],
  ] as const) {
    test(name, () => {
      const { status, doc } = runPortable([...args]);
      expect(doc.kernel).toBe("cpu_flash_fwd_portable");
      expect(doc.check.pass).toBe(true);
      expect(status).toBe(0);
    });
  }
});
