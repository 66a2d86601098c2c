// `flashattn bench --devices all|0,2`: the node-wide run of bench/devices.ts, from flags to output. Only the flags
// that mean something for one fixed case on every GPU apply; any other is a usage error naming it.
import process from "node:process";
import { FlashAttnError } from "../lib/errors.ts";
import { parseDeviceSelection } from "../lib/devices.ts";
import { chooseBackend } from "../lib/select.ts";
import type { BackendChoice } from "../lib/select.ts";
import { checkOutputTargets, writeFileAtomic } from "../formats/atomic.ts";
import { benchDevices, DEVICE_CASE, renderDeviceTable } from "../bench/devices.ts";
import { problemFor } from "../bench/ours.ts";
import { runNativeProbe } from "../doctor/probes/native.ts";
import type { NvmlFacts } from "../doctor/facts.ts";
import { EXIT_FAILURE, type GlobalOptions, printJson, progress, useColor } from "./_output.ts";

/** The flags --devices keeps; each other bench flag changes the sweep, which --devices does not run. */
const DEVICE_FLAGS = new Set(["devices", "backend", "lib", "save", "quiet"]);

export async function benchDevicesCommand(
  raw: Record<string, unknown>,
  globals: GlobalOptions,
): Promise<number | undefined> {
  const devices = parseDeviceSelection(String(raw.devices));
  const extra = Object.keys(raw).filter((k) => raw[k] !== undefined && !DEVICE_FLAGS.has(k));
  if (extra.length) {
    const flag = `--${extra[0].replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    throw new FlashAttnError("USAGE", `${flag} does not apply with --devices (it runs one fixed case on every GPU)`);
  }
  const choice = (raw.backend ?? "auto") as BackendChoice;
  if (choice === "cpu") throw new FlashAttnError("USAGE", "--devices measures GPUs: use --backend auto, cuda or hip");
  const { decisions, usable } = chooseBackend(
    { problem: problemFor(DEVICE_CASE), direction: DEVICE_CASE.direction },
    { backend: choice, libPath: raw.lib as string | undefined },
  );
  const backend = usable.get("cuda") ?? usable.get("hip");
  if (!backend) {
    const why = decisions.filter((d) => d.backend !== "cpu").map((d) => `${d.backend}: ${d.reasons[0] ?? d.verdict}`);
    throw new FlashAttnError(
      "NO_BACKEND",
      `--devices measures GPUs, and no GPU backend can run here (${why.join("; ")})`,
      "run `flashattn doctor --devices all` for the node's diagnosis",
    );
  }
  if (typeof raw.save === "string") checkOutputTargets([raw.save]);
  const quiet = raw.quiet === true;
  const report = await benchDevices({
    backend,
    libPath: raw.lib as string | undefined,
    devices,
    readNvml: () => runNativeProbe<NvmlFacts>("nvml", { timeoutMs: 10_000 }),
    progress: quiet ? undefined : progress,
  });
  if (typeof raw.save === "string") {
    writeFileAtomic(raw.save, new TextEncoder().encode(JSON.stringify(report, null, 2) + "\n"));
    if (!quiet) progress(`flashattn bench: wrote report: ${raw.save}`);
  }
  if (globals.json) printJson(report);
  else process.stdout.write(renderDeviceTable(report, useColor(process.stdout, globals.color)));
  // A GPU that failed or lags fails the run: `bench --devices all` gates a node as doctor does.
  return report.failing ? EXIT_FAILURE : undefined;
}
