// `bench --devices all|0,2`: one case on every GPU of the node at once, TFLOP/s per GPU, and the card that lags.
//
// How: one child process per device (the probe worker running bench/device_run.ts), started together; each warms up
// on its device, waits at a shared barrier, then times the case. A process per device rather than a thread per
// device: every FFI call blocks its thread, the library's device selection is per thread but its workspaces are not
// promised thread-safe, and a GPU that hangs or crashes ends its own child (each has a deadline), not the run.
// While the timed runs overlap, NVML is read once, so a link's generation is judged under load.
//
// The outlier rule: a GPU more than OUTLIER_MARGIN slower than the median of its peers (the other GPUs that ran),
// or whose PCIe link breaks doctor's link rule (doctor/rules/node.ts pcieVerdict: narrower than possible, or a
// slower generation while busy). A node of one GPU has no peers: no outlier check, and the report says so.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Backend } from "../lib/backend.ts";
import { FlashAttnError } from "../lib/errors.ts";
import type { DeviceSelection } from "../lib/devices.ts";
import { paint, printable } from "../lib/terminal.ts";
import type { NvmlFacts } from "../doctor/facts.ts";
import { runNativeProbe } from "../doctor/probes/native.ts";
import { pciKey, pcieVerdict } from "../doctor/rules/node.ts";
import { attentionFlops } from "./flops.ts";
import type { TimingPlan } from "./ours.ts";
import type { BenchCase } from "./sweep.ts";
import type { DeviceRunOptions, DeviceRunResult } from "./device_run.ts";

/** A GPU this much slower than the median of its peers is an outlier (0.10: more than 10 % slower). */
export const OUTLIER_MARGIN = 0.10;

/**
 * The case every GPU runs: a bf16 forward, batch 8, seqlen 8192, 16 heads of 128, not causal (4.4 TFLOP, about
 * 1 GiB of tensors). Large enough that one run takes milliseconds on any data-centre GPU (launch overhead does not
 * decide), and that 100 runs keep the GPU busy for NVML's utilization sample.
 */
export const DEVICE_CASE: BenchCase = {
  id: "devices-bf16-fwd-b8-s8192-h16-d128",
  direction: "fwd",
  kind: "prefill",
  batch: 8,
  seqlenQ: 8192,
  seqlenK: 8192,
  headsQ: 16,
  headsKv: 16,
  headDim: 128,
  causal: false,
  dtype: "bf16",
};

export const DEVICE_TIMING: TimingPlan = { warmup: 5, iters: 100, minIters: 10, caseBudgetMs: 10_000 };

export const caseText = (c: BenchCase) =>
  `${c.dtype} ${c.direction}, batch ${c.batch}, seqlen ${c.seqlenQ}${c.seqlenK !== c.seqlenQ ? `/${c.seqlenK}` : ""}, ` +
  `${c.headsQ} heads${c.headsKv !== c.headsQ ? ` (${c.headsKv} KV)` : ""}, head_dim ${c.headDim}${c.causal ? ", causal" : ""}`;

/** One GPU's row. */
export interface DeviceRow {
  device: number;
  name?: string;
  pci_bus_id?: string;
  status: "ok" | "error";
  tflops?: number;
  median_ms?: number;
  kernel?: string;
  error?: string;
  /** the PCIe link during the run, as doctor words it */
  link?: string;
  /** why this GPU is an outlier (empty: it is not) */
  flags: string[];
}

export interface DeviceBenchReport {
  schema: "flashattn.bench-devices/1";
  backend: string;
  case: string;
  /** how the devices ran, in words */
  method: string;
  outlier_margin: number;
  devices: DeviceRow[];
  /** a node of one, a barrier that timed out, NVML not readable */
  notes: string[];
  /** GPUs that failed or were flagged */
  failing: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/**
 * The outlier rule over finished rows (pure): each ok row against the median TFLOP/s of the other ok rows, and each
 * row's link against doctor's rule using the NVML reading taken during the run. Returns the notes to print.
 */
export function judgeDevices(rows: DeviceRow[], nvml: NvmlFacts | undefined, margin = OUTLIER_MARGIN): string[] {
  const notes: string[] = [];
  const ok = rows.filter((r) => r.status === "ok" && r.tflops !== undefined);
  if (rows.length === 1) notes.push("one GPU: no peers to compare it with, so no outlier check");
  else if (ok.length < 2) notes.push("fewer than two GPUs finished: no outlier check");
  else {
    for (const r of ok) {
      const peers = median(ok.filter((p) => p !== r).map((p) => p.tflops!));
      if (r.tflops! < (1 - margin) * peers) {
        r.flags.push(
          `${Math.round((1 - r.tflops! / peers) * 100)}% slower than the median of its peers (${peers.toFixed(1)} TFLOP/s)`,
        );
      }
    }
  }
  const gpus = nvml?.status === "ok" ? nvml.devices ?? [] : [];
  if (!gpus.length) {
    const why = !nvml ? "not read" : nvml.status === "ok" ? "lists no GPU" : `${nvml.status}${nvml.error ? ` (${nvml.error})` : ""}`;
    notes.push(`PCIe links not checked: NVML ${why}`);
  }
  for (const r of rows) {
    const key = pciKey(r.pci_bus_id);
    const d = key ? gpus.find((g) => pciKey(g.pci_bus_id) === key) : undefined;
    const verdict = pcieVerdict(d?.pcie, d?.utilization_percent);
    if (!verdict) continue;
    r.link = verdict.text;
    if (verdict.failure) r.flags.push(verdict.failure);
    if (verdict.warning) r.flags.push(verdict.warning);
  }
  return notes;
}

/** The device ordinals `selection` names on a backend with `count` devices; naming one it lacks is a usage error. */
export function devicesToRun(selection: DeviceSelection, count: number, backend: string): number[] {
  if (selection === "all") return Array.from({ length: Math.min(count, 64) }, (_, i) => i);
  const missing = selection.filter((d) => d >= count);
  if (missing.length) {
    throw new FlashAttnError(
      "USAGE",
      `--devices ${selection.join(",")}: libflashattn_${backend} sees ${count} device${count === 1 ? "" : "s"}${
        count ? ` (0..${count - 1})` : ""
      }, not ${missing.join(", ")}`,
    );
  }
  return selection;
}

export interface DeviceBenchOptions {
  backend: Backend;
  libPath?: string;
  devices: DeviceSelection;
  case?: BenchCase;
  timing?: TimingPlan;
  /** each child's deadline (warm-up, barrier, timed runs) */
  timeoutMs?: number;
  /** NVML as the doctor reads it (a child with a deadline); called once while the timed runs overlap */
  readNvml?: () => Promise<NvmlFacts>;
  progress?: (line: string) => void;
}

const DEFAULT_TIMEOUT_MS = 300_000;
const BARRIER_POLL_MS = 20;

export async function benchDevices(o: DeviceBenchOptions): Promise<DeviceBenchReport> {
  const c = o.case ?? DEVICE_CASE;
  const timing = o.timing ?? DEVICE_TIMING;
  const devices = devicesToRun(o.devices, o.backend.deviceCount(), o.backend.name);
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-devices-"));
  o.progress?.(`flashattn bench: ${caseText(c)} on ${devices.length} ${o.backend.name} device(s) at once, one process each`);
  try {
    let done = 0;
    const children = devices.map((device) => {
      const options: DeviceRunOptions = {
        backend: o.backend.name,
        libPath: o.libPath,
        device,
        case: c,
        timing,
        // The barrier gives up well before the child's own deadline, so a late peer costs a note, not the run.
        barrier: { dir, count: devices.length, timeoutMs: Math.floor(timeoutMs / 2) },
      };
      return runNativeProbe<DeviceRunResult>("device-bench", { timeoutMs, options }).finally(() => done++);
    });
    // NVML once every device is warm (their timed runs then overlap), or once all have ended.
    const ready = () => fs.readdirSync(dir).filter((f) => f.startsWith("ready-")).length;
    while (ready() < devices.length && done < devices.length) {
      await new Promise((resolve) => setTimeout(resolve, BARRIER_POLL_MS));
    }
    const nvml = o.readNvml ? await o.readNvml() : undefined;
    const results = await Promise.all(children);
    const flops = attentionFlops(c, c.direction);
    const rows: DeviceRow[] = results.map((r, i) => {
      const m = r.measurement;
      const medianMs = m?.timing?.medianMs;
      return {
        device: devices[i],
        ...(r.name ? { name: r.name } : {}),
        ...(r.pci_bus_id ? { pci_bus_id: r.pci_bus_id } : {}),
        status: r.status === "ok" && medianMs ? "ok" : "error",
        ...(medianMs ? { median_ms: medianMs, tflops: flops / (medianMs * 1e9) } : {}),
        ...(m?.kernel ? { kernel: m.kernel } : {}),
        ...(r.status === "ok" ? {} : { error: r.error ?? `ended ${r.status}` }),
        flags: [],
      };
    });
    const notes = judgeDevices(rows, nvml);
    const late = results.filter((r) => r.barrier === "timed out").map((r) => r.device);
    if (late.length) notes.push(`device ${late.join(", ")} timed out at the barrier: their runs may not have overlapped`);
    return {
      schema: "flashattn.bench-devices/1",
      backend: o.backend.name,
      case: caseText(c),
      method: `one process per device, warmed up, released together at a barrier; median of up to ${timing.iters} timed runs each`,
      outlier_margin: OUTLIER_MARGIN,
      devices: rows,
      notes,
      failing: rows.filter((r) => r.status !== "ok" || r.flags.length).length,
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The report as a table, one row per GPU, then the notes and the verdict. */
export function renderDeviceTable(r: DeviceBenchReport, color: boolean): string {
  const head = ["device", "GPU", "PCI", "TFLOP/s", "median ms", "link", "verdict"];
  const body = r.devices.map((d) => [
    String(d.device),
    d.name ?? "?",
    d.pci_bus_id ?? "?",
    d.tflops !== undefined ? (d.tflops >= 10 ? d.tflops.toFixed(1) : d.tflops.toPrecision(3)) : "-",
    d.median_ms !== undefined ? d.median_ms.toFixed(3) : "-",
    d.link ?? "?",
    d.status !== "ok" ? `failed: ${d.error}` : d.flags.length ? `OUTLIER: ${d.flags.join("; ")}` : "ok",
  ].map(printable));
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i]))).join("  ");
  const lines = [paint("bold", `${r.backend}: ${r.case}`, color), line(head), ...body.map((row, i) => {
    const d = r.devices[i];
    const text = line(row);
    return d.status !== "ok" ? paint("red", text, color) : d.flags.length ? paint("yellow", text, color) : text;
  })];
  for (const note of r.notes) lines.push(paint("dim", `note: ${note}`, color));
  lines.push(
    r.failing
      ? `${r.failing} of ${r.devices.length} GPUs failed or lag (margin ${Math.round(r.outlier_margin * 100)}% below the median of their peers)`
      : `all ${r.devices.length} GPU${r.devices.length === 1 ? "" : "s"} ok (outlier margin ${Math.round(r.outlier_margin * 100)}%)`,
  );
  return lines.join("\n") + "\n";
}
