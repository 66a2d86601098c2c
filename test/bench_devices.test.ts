// bench --devices: the outlier rule over rows of 1, 2 and 8 GPUs (pure), the link rule fed by NVML facts of the
// fixtures, the device list against what the library sees, and the real thing on this machine's CPU library: one
// child process per device through the probe worker, the barrier released by a failed child too, and the CLI's
// refusals. Nothing here depends on the measured speed.
import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { NvmlFacts } from "../doctor/facts.ts";
import { benchDevices, DEVICE_CASE, type DeviceRow, devicesToRun, judgeDevices, OUTLIER_MARGIN, renderDeviceTable } from "../bench/devices.ts";
import type { DeviceRunOptions, DeviceRunResult } from "../bench/device_run.ts";
import type { BenchCase } from "../bench/sweep.ts";
import { attentionFlops } from "../bench/flops.ts";
import { openBackend } from "../lib/backend.ts";
import { runNativeProbe } from "../doctor/probes/native.ts";
import { loadFixture } from "./fixtures/doctor/load.ts";
import { cli, root } from "./support/cli.ts";

const hasCpuLibrary = fs.existsSync(path.join(root, "build", "libflashattn_cpu.so"));
const hasGpu = fs.existsSync("/dev/nvidiactl") || fs.existsSync("/dev/kfd");

const rows = (tflops: number[]): DeviceRow[] =>
  tflops.map((t, device) => ({ device, status: "ok", tflops: t, median_ms: 1, flags: [] }));
const nvmlOf = (fixture: string): NvmlFacts => structuredClone(loadFixture(fixture).report.facts.nvidia.nvml);
const hgxRows = (tflops: number[]) =>
  rows(tflops).map((r, i) => ({ ...r, pci_bus_id: `0000:${["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"][i]}:00` }));

describe("the outlier rule", () => {
  test("a node of one: no outlier check, and the notes say so", () => {
    const r = rows([1.0]);
    const notes = judgeDevices(r, undefined);
    expect(notes[0]).toBe("one GPU: no peers to compare it with, so no outlier check");
    expect(r[0].flags).toEqual([]);
  });

  test("8 GPUs, one 20% below the others: only that one is flagged, with its shortfall", () => {
    const r = rows([600, 602, 598, 480, 601, 599, 600, 603]);
    judgeDevices(r, undefined);
    expect(r.map((x) => x.flags.length)).toEqual([0, 0, 0, 1, 0, 0, 0, 0]);
    expect(r[3].flags[0]).toBe("20% slower than the median of its peers (600.0 TFLOP/s)");
  });

  test("the margin is the boundary: 9% slower passes, 11% slower is flagged", () => {
    expect(OUTLIER_MARGIN).toBe(0.1);
    const within = rows([100, 100, 91]);
    judgeDevices(within, undefined);
    expect(within[2].flags).toEqual([]);
    const beyond = rows([100, 100, 89]);
    judgeDevices(beyond, undefined);
    expect(beyond[2].flags).toHaveLength(1);
  });

  test("2 GPUs: the slower is judged against the other, the faster is never flagged", () => {
    const r = rows([100, 70]);
    judgeDevices(r, undefined);
    expect(r[0].flags).toEqual([]);
    expect(r[1].flags[0]).toContain("30% slower");
  });

  test("a failed GPU is left out of its peers' median; with one left there is no comparison", () => {
    const r: DeviceRow[] = [...rows([100]), { device: 1, status: "error", error: "boom", flags: [] }];
    expect(judgeDevices(r, undefined)[0]).toBe("fewer than two GPUs finished: no outlier check");
  });

  test("a down-trained x8 link on an x16 card is flagged at full speed; the link is shown for all", () => {
    const nvml = nvmlOf("hgx-h100-8gpu.json");
    nvml.devices![5].pcie = { current_generation: 5, current_width: 8, max_generation: 5, max_width: 16 };
    const r = hgxRows([600, 600, 600, 600, 600, 600, 600, 600]);
    judgeDevices(r, nvml);
    expect(r.map((x) => x.flags.length)).toEqual([0, 0, 0, 0, 0, 1, 0, 0]);
    expect(r[5].flags[0]).toContain("down-trained to x8");
    expect(r[0].link).toBe("PCIe Gen5 x16");
  });

  test("a slow generation while busy is flagged; the same at idle is not", () => {
    const nvml = nvmlOf("hgx-h100-8gpu.json");
    Object.assign(nvml.devices![2], { utilization_percent: 100 });
    nvml.devices![2].pcie!.current_generation = 3;
    Object.assign(nvml.devices![4], { utilization_percent: 0 });
    nvml.devices![4].pcie!.current_generation = 1;
    const r = hgxRows([600, 600, 600, 600, 600, 600, 600, 600]);
    judgeDevices(r, nvml);
    expect(r[2].flags).toEqual(["PCIe Gen3 under load (100% busy) where Gen5 is possible"]);
    expect(r[4].flags).toEqual([]);
  });

  test("without NVML the links are not judged, and the notes say why", () => {
    const notes = judgeDevices(rows([1, 1]), { status: "absent", error: "no libnvidia-ml.so.1" });
    expect(notes).toEqual(["PCIe links not checked: NVML absent (no libnvidia-ml.so.1)"]);
  });
});

describe("the devices asked for", () => {
  test("all is every device the library sees; a list naming one it lacks is a usage error", () => {
    expect(devicesToRun("all", 3, "cuda")).toEqual([0, 1, 2]);
    expect(devicesToRun([2, 0], 3, "cuda")).toEqual([2, 0]);
    expect(() => devicesToRun([0, 4], 2, "cuda")).toThrow("--devices 0,4: libflashattn_cuda sees 2 devices (0..1), not 4");
  });

  test("the case: one bf16 forward of 4.4 TFLOP", () => {
    expect(DEVICE_CASE).toMatchObject({ dtype: "bf16", direction: "fwd", causal: false });
    expect(attentionFlops(DEVICE_CASE, "fwd")).toBe(4 * 8 * 16 * 8192 * 8192 * 128);
  });
});

// A case the CPU library finishes in milliseconds.
const tinyCase: BenchCase = {
  id: "tiny",
  direction: "fwd",
  kind: "prefill",
  batch: 1,
  seqlenQ: 64,
  seqlenK: 64,
  headsQ: 2,
  headsKv: 2,
  headDim: 32,
  causal: false,
  dtype: "fp32",
};
const tinyTiming = { warmup: 1, iters: 2, minIters: 1, caseBudgetMs: 1000 };

describe.skipIf(!hasCpuLibrary)("for real on this machine's CPU library", () => {
  test("benchDevices: one child on device 0, a row with TFLOP/s from its median, and the node-of-one note", async () => {
    const { backend } = openBackend("cpu");
    const report = await benchDevices({ backend: backend!, devices: "all", case: tinyCase, timing: tinyTiming });
    expect(report.devices).toHaveLength(1);
    const row = report.devices[0];
    expect(row).toMatchObject({ device: 0, status: "ok", flags: [] });
    expect(row.tflops).toBeCloseTo(attentionFlops(tinyCase, "fwd") / (row.median_ms! * 1e9), 9);
    expect(report.notes).toContain("one GPU: no peers to compare it with, so no outlier check");
    expect(report.failing).toBe(0);
    expect(renderDeviceTable(report, false)).toContain("all 1 GPU ok (outlier margin 10%)");
  });

  test("the barrier: a child that fails (no device 1) still releases its peer; each says how it ended", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-barrier-"));
    try {
      const run = (device: number) =>
        runNativeProbe<DeviceRunResult>("device-bench", {
          timeoutMs: 120_000,
          options: {
            backend: "cpu",
            device,
            case: tinyCase,
            timing: tinyTiming,
            // a hang guard only, just inside the child's own: both children start together, whatever the load
            barrier: { dir, count: 2, timeoutMs: 110_000 },
          } satisfies DeviceRunOptions,
        });
      const [ok, missing] = await Promise.all([run(0), run(1)]);
      expect(ok).toMatchObject({ status: "ok", device: 0, barrier: "released" });
      expect(ok.measurement?.status).toBe("ok");
      expect(missing).toMatchObject({ status: "error", device: 1, barrier: "released" });
      expect(missing.error).toBe("no device 1: libflashattn_cpu sees 1");
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the barrier gives up at its deadline when a peer never comes", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-barrier-"));
    try {
      const r = await runNativeProbe<DeviceRunResult>("device-bench", {
        timeoutMs: 120_000,
        options: {
          backend: "cpu",
          device: 0,
          case: tinyCase,
          timing: tinyTiming,
          barrier: { dir, count: 2, timeoutMs: 50 },
        } satisfies DeviceRunOptions,
      });
      expect(r).toMatchObject({ status: "ok", barrier: "timed out" });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the CLI", () => {
  const bench = (args: string[]) => cli(["bench", ...args], {}, { timeoutMs: 120_000 });

  test("flags of the sweep do not apply with --devices; the CPU is refused; a bad list is refused", () => {
    for (const [args, line] of [
      [["--devices", "all", "--preset", "fa"], "--preset does not apply with --devices"],
      [["--devices", "all", "--seqlen-q", "1"], "--seqlen-q does not apply with --devices"],
      [["--devices", "all", "--backend", "cpu"], "--devices measures GPUs: use --backend auto, cuda or hip"],
      [["--devices", "0,0"], "--devices names device 0 twice"],
    ] as const) {
      const r = bench([...args]);
      expect(r.code).toBe(2);
      expect(r.stderr.split("\n")[0]).toContain(line);
    }
  });

  test.skipIf(hasGpu)("without a GPU backend: exit 3 and one line naming why", () => {
    const r = bench(["--devices", "all"]);
    expect(r.code).toBe(3);
    expect(r.stderr.split("\n")[0]).toContain("--devices measures GPUs, and no GPU backend can run here");
  });
});

const hasNvidia = fs.existsSync("/dev/nvidiactl") && fs.existsSync(path.join(root, "build", "libflashattn_cuda.so"));
if (!hasNvidia) console.warn("bench --devices: no NVIDIA GPU with build/libflashattn_cuda.so here; the live node test is skipped");

describe.skipIf(!hasNvidia)("live on an NVIDIA node", () => {
  test("bench --devices all --json: a row per GPU with TFLOP/s, its link from NVML, the node-of-one note on one", () => {
    const r = cli(["--json", "bench", "--devices", "all", "--quiet"], {}, { timeoutMs: 600_000 });
    const report = JSON.parse(r.stdout);
    expect(report.schema).toBe("flashattn.bench-devices/1");
    expect(report.devices.length).toBeGreaterThan(0);
    for (const d of report.devices) {
      expect(`${d.device}: ${d.status} ${d.error ?? ""}`).toBe(`${d.device}: ok `);
      expect(d.tflops).toBeGreaterThan(0);
      // the link as NVML read it during the run (absent only where NVML cannot read links, e.g. some VMs)
      if (d.link !== undefined) expect(d.link).toMatch(/^PCIe Gen\d+ x\d+/);
    }
    if (report.devices.length === 1) expect(report.notes).toContain("one GPU: no peers to compare it with, so no outlier check");
    expect(r.code).toBe(report.failing ? 1 : 0);
  }, 600_000);
});
