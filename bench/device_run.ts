// One device's part of `bench --devices`: in a child process of its own (the probe worker, doctor/probes/worker.ts,
// with a deadline), select the device (fa_set_device), run the case once to warm up (context, kernels, memory),
// wait at a barrier until every device is warm, then time the case exactly as `bench` times any case
// (bench/ours.ts measureOurs). The barrier makes the timed runs of all devices overlap: the node is measured under
// the load it will carry, its shared power, cooling and PCIe included.
//
// The barrier is a directory: each child writes ready-<device> and waits (polling) until `count` such files exist
// or the deadline passes. A child that failed still writes its file, so the others never wait for a dead peer.
import fs from "node:fs";
import path from "node:path";
import { openBackend, describeAttempts } from "../lib/backend.ts";
import type { BackendName } from "../lib/vocabulary.ts";
import type { ProbeResult } from "../doctor/facts.ts";
import type { Measurement } from "./results.ts";
import type { BenchCase } from "./sweep.ts";
import { measureOurs, memoryLimit, SpeedMemory, type TimingPlan } from "./ours.ts";

export interface DeviceRunOptions {
  backend: BackendName;
  libPath?: string;
  device: number;
  case: BenchCase;
  timing: TimingPlan;
  barrier: { dir: string; count: number; timeoutMs: number };
}

export interface DeviceRunResult extends ProbeResult {
  device: number;
  name?: string;
  /** as the library reports it ("0000:3b:00") */
  pci_bus_id?: string;
  measurement?: Measurement;
  /** whether every device was warm before this one's timed runs began */
  barrier?: "released" | "timed out";
}

const POLL_MS = 5;

async function awaitBarrier(b: DeviceRunOptions["barrier"], device: number): Promise<"released" | "timed out"> {
  fs.writeFileSync(path.join(b.dir, `ready-${device}`), "");
  const deadline = performance.now() + b.timeoutMs;
  while (fs.readdirSync(b.dir).filter((f) => f.startsWith("ready-")).length < b.count) {
    if (performance.now() > deadline) return "timed out";
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  return "released";
}

export async function runOnDevice(o: DeviceRunOptions): Promise<DeviceRunResult> {
  const started = performance.now();
  const result = (r: Omit<DeviceRunResult, "device" | "ms">): DeviceRunResult => ({
    device: o.device,
    ...r,
    ms: Math.round(performance.now() - started),
  });
  let warm: Measurement | undefined;
  let failure: string | undefined;
  let backend;
  let info: Record<string, unknown> = {};
  try {
    const opened = openBackend(o.backend, { libPath: o.libPath });
    backend = opened.backend;
    if (!backend) failure = `libflashattn_${o.backend} did not load: ${describeAttempts(opened.attempts)}`;
    else {
      const count = backend.deviceCount();
      if (o.device >= count) failure = `no device ${o.device}: libflashattn_${o.backend} sees ${count}`;
      else {
        backend.setDevice(o.device);
        info = backend.deviceInfo(o.device);
        // Warm-up: the whole case once, with one timed run (its figure is not used).
        warm = measureOurs(backend, o.case, "flash", {
          plan: { warmup: 1, iters: 1, minIters: 1, caseBudgetMs: o.timing.caseBudgetMs },
          memoryLimitBytes: memoryLimit(backend),
          speeds: new SpeedMemory(),
        });
        if (warm.status !== "ok") failure = `${warm.status}: ${warm.reason ?? "the warm-up run failed"}`;
      }
    }
  } catch (e) {
    failure = (e as Error).message.split("\n")[0];
  }
  const identity = {
    ...(typeof info.name === "string" ? { name: info.name } : {}),
    ...(typeof info.pci_bus_id === "string" ? { pci_bus_id: info.pci_bus_id } : {}),
  };
  // Every child reaches the barrier, a failed one too: the others must not wait for it.
  const barrier = await awaitBarrier(o.barrier, o.device);
  if (failure || !backend) return result({ status: "error", error: failure, barrier, ...identity });
  const measurement = measureOurs(backend, o.case, "flash", {
    plan: o.timing,
    memoryLimitBytes: memoryLimit(backend),
    speeds: new SpeedMemory(),
  });
  return result({
    status: measurement.status === "ok" ? "ok" : "error",
    ...(measurement.status === "ok" ? {} : { error: `${measurement.status}: ${measurement.reason}` }),
    barrier,
    ...identity,
    measurement,
  });
}
