// Entry point of the standalone executable (`bun build --compile`, see scripts/release/release.ts): the CLI, or, when the
// doctor re-runs the executable with PROBE_WORKER_ENV set, the doctor's probe worker (doctor/probes/native.ts).
import process from "node:process";
import { PROBE_WORKER_ENV } from "../lib/standalone.ts";

if (process.env[PROBE_WORKER_ENV] === "1") {
  await import("../doctor/probes/worker.ts");
} else {
  const { main } = await import("../cli.ts");
  process.exitCode = await main(process.argv.slice(2));
}
