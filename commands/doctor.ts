// `flashattn doctor`: checks the GPU, driver, toolkits, our native libraries and the Python flash-attention stack,
// says what is wrong and how to fix it, and explains the backend decision. Probes live in doctor/probes, the rules
// in doctor/rules, rendering in doctor/report.ts; this file parses flags and picks live facts or a saved report.
import process from "node:process";
import type { Command } from "@commander-js/extra-typings";
import packageJson from "../package.json" with { type: "json" };
import { action, printJson, useColor } from "./_output.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { parseDeviceSelection } from "../lib/devices.ts";
import { collectFacts } from "../doctor/collect.ts";
import type { BackendName, DoctorFacts, DoctorOptions } from "../doctor/facts.ts";
import { buildReport, renderHuman } from "../doctor/report.ts";
import { readSavedReport } from "../doctor/schema.ts";
import { missingDenoPermissions, runtimeVersion } from "../doctor/probes/system.ts";
import { readModel } from "../doctor/model/read.ts";
import { collectModelFacts } from "../doctor/model/probe.ts";

interface RawDoctorOptions {
  require?: string;
  facts?: string;
  backend?: string;
  lib?: string;
  model?: string;
  python: boolean;
  selfTest: boolean;
  devices?: string;
}

const requireChoices = ["cuda", "hip", "gpu", "cpu"] as const;
const backendChoices = ["auto", "cpu", "cuda", "hip"] as const;

const help = `
Examples:
  flashattn doctor                      check this machine
  flashattn doctor --require gpu        exit 1 unless a GPU backend is usable (for CI)
  flashattn doctor --require gpu --devices all
                                        gate a CI job on the whole node: the self-test on every GPU, ECC, retired
                                        pages/remapped rows, PCIe link, NVLink; one line per failing GPU
  flashattn doctor --json > doctor.json attach to a bug report
  flashattn doctor --facts doctor.json  replay a saved report: the same diagnosis on another machine
  flashattn doctor --model ./Llama-3.1-8B which attention this model can use here, and the line to load it with

Exit codes: 0 healthy (warnings allowed), 1 problems found (or --require not met), 2 usage error.
Sections: NVIDIA, AMD, toolkits, flashattn libraries, Python stack, backend decision.`;

/** Flag values to doctor options; a bad value is a usage error. */
export function parseDoctorOptions(raw: RawDoctorOptions): { options: DoctorOptions; backend?: "auto" | BackendName } {
  const options: DoctorOptions = {};
  if (raw.require !== undefined) {
    if (!(requireChoices as readonly string[]).includes(raw.require)) {
      throw new FlashAttnError(
        "USAGE",
        `--require must be one of ${requireChoices.join(", ")}, got ${JSON.stringify(raw.require)}`,
      );
    }
    options.require = raw.require as DoctorOptions["require"];
  }
  if (raw.backend !== undefined && !(backendChoices as readonly string[]).includes(raw.backend)) {
    throw new FlashAttnError(
      "USAGE",
      `--backend must be one of ${backendChoices.join(", ")}, got ${JSON.stringify(raw.backend)}`,
    );
  }
  if (raw.devices !== undefined) {
    if (!raw.selfTest) throw new FlashAttnError("USAGE", "--devices runs the self-test on each device; drop --no-self-test");
    options.devices = parseDeviceSelection(raw.devices);
  }
  if (raw.facts !== undefined && (raw.backend !== undefined || raw.lib !== undefined)) {
    throw new FlashAttnError("USAGE", "--facts replays a saved report; --backend and --lib apply only to a live check");
  }
  if (raw.facts !== undefined && raw.model !== undefined) {
    throw new FlashAttnError("USAGE", "--facts replays a saved report (with its model, if it had one); --model applies only to a live check");
  }
  return { options, backend: raw.backend as "auto" | BackendName | undefined };
}

export function register(program: Command) {
  program.command("doctor")
    .description(
      "check GPU, driver, CUDA/ROCm, our libraries and the Python flash-attn stack; explain the backend choice",
    )
    .option("--require <cuda|hip|gpu|cpu>", "exit 1 unless this backend (gpu: cuda or hip) is usable")
    .option("--facts <report.json>", "diagnose a report saved with --json (from another machine) instead of this one")
    .option("--backend <auto|cpu|cuda|hip>", "decide as `run --backend` would (default: FLASHATTN_BACKEND, else auto)")
    .option("--lib <path>", "check this libflashattn_<backend>.so only (as FLASHATTN_LIB)")
    .option("--model <path>", "advise on this local model (a directory with config.json, or the file): attention needs, implementations, the line to use")
    .option("--no-python", "skip the Python stack (torch, flash_attn, ...)")
    .option("--no-self-test", "skip the small attention run on each usable backend")
    .option("--devices <all|0,2>", "run the self-test on each of these GPUs and give each GPU of the node one line")
    .addHelpText("after", help)
    .action(action(async (globals, raw: RawDoctorOptions) => {
      const { options, backend } = parseDoctorOptions(raw);
      // The model's files first: a bad path or config is a usage error before any probe runs.
      const model = raw.model === undefined ? undefined : readModel(raw.model);
      let facts: DoctorFacts;
      let meta = {
        version: packageJson.version,
        runtime: runtimeVersion(),
        createdAt: new Date().toISOString(),
        replayedFrom: undefined as string | undefined,
      };
      if (raw.facts !== undefined) {
        const saved = readSavedReport(raw.facts);
        facts = saved.facts;
        meta = {
          ...meta,
          runtime: saved.tool.runtime,
          version: saved.tool.version,
          createdAt: saved.created_at,
          replayedFrom: raw.facts,
        };
        // A saved --require is a property of that run; the one given now applies, else the saved one.
        options.require ??= saved.options?.require;
        options.devices ??= saved.options?.devices;
      } else {
        const missing = missingDenoPermissions();
        if (missing.length) {
          throw new FlashAttnError(
            "USAGE",
            `flashattn doctor under Deno needs ${missing.join(" ")} (it loads drivers through FFI and runs tools)`,
            "deno run -A cli.ts doctor (-A also lets it read /proc, /sys and /dev)",
          );
        }
        if (!globals.json) process.stderr.write("flashattn doctor: probing (drivers, libraries, Python)...\n");
        facts = await collectFacts({
          backend,
          libPath: raw.lib,
          noPython: !raw.python,
          noSelfTest: !raw.selfTest,
          devices: options.devices,
          // Every probe has its own deadline; this only says what the wait is for.
          onSlow: globals.json
            ? undefined
            : (pending) => process.stderr.write(`flashattn doctor: still waiting for ${pending.join(", ")}...\n`),
        });
        if (model) facts.model = await collectModelFacts(model, { backend, libPath: raw.lib, noPython: !raw.python });
      }
      const report = buildReport(facts, options, meta);
      if (globals.json) printJson(report);
      else {process.stdout.write(
          renderHuman(report, { color: useColor(process.stdout, globals.color), verbose: globals.verbose }),
        );}
      return report.exit_code;
    }));
}
