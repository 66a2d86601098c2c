// Entry point of the probe worker: `<runtime> doctor/probes/worker.ts <probe> [options-json]` runs one probe that
// calls into native libraries and prints its facts as one JSON document on stdout. The doctor runs it as a child
// process with a deadline (doctor/probes/native.ts), so a driver call that hangs or crashes becomes a finding. `bench
// --devices` runs each device's share of its node-wide run through it too ("device-bench", bench/device_run.ts).
import process from "node:process";
import { jsonReplacer } from "../../lib/json.ts";
import { probeNvml } from "./nvml.ts";
import { probeCudaDriver } from "./cuda_driver.ts";
import { probeHip } from "./hip.ts";
import { probeNccl } from "./nccl.ts";
import { type FlashattnProbeOptions, probeFlashattn } from "./flashattn.ts";
import { type ModelKernelOptions, probeModelKernels } from "../model/kernels.ts";
import { type DeviceRunOptions, runOnDevice } from "../../bench/device_run.ts";

type WorkerOptions = FlashattnProbeOptions & ModelKernelOptions & DeviceRunOptions;
const probes: Record<string, (options: WorkerOptions) => unknown | Promise<unknown>> = {
  nvml: probeNvml,
  cuda: probeCudaDriver,
  hip: probeHip,
  nccl: probeNccl,
  flashattn: probeFlashattn,
  model: probeModelKernels,
  // bench --devices: one device's share of the node-wide run (bench/devices.ts)
  "device-bench": runOnDevice,
};

const [name, optionsJson] = process.argv.slice(2);
const probe = probes[name];
if (!probe) {
  console.error(`unknown probe ${JSON.stringify(name)}; one of ${Object.keys(probes).join(", ")}`);
  process.exit(2);
}
try {
  const facts = await probe(optionsJson ? JSON.parse(optionsJson) : {});
  // A self-test's relative error of Infinity (NaN output) must stay "Infinity", not become null (not in the schema).
  process.stdout.write(JSON.stringify(facts, jsonReplacer) + "\n");
  process.exit(0);
} catch (e) {
  // A probe's own bug: report it as the probe's result rather than a stack trace on a pipe nobody reads.
  process.stdout.write(
    JSON.stringify({ status: "error", error: `probe ${name} failed: ${(e as Error).message}` }) + "\n",
  );
  process.exit(0);
}
