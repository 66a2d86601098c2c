// Writing what a run computed: O (and the LSE) as .npy or .safetensors. Every output path is checked before the
// run computes anything, and the outputs of one run are written together: all of them or none
// (formats/atomic.ts writeFilesAtomic).
import type { Problem } from "../lib/problem.ts";
import { type Tensor, tensor } from "../lib/tensor.ts";
import { checkOutputTargets, type OutputFile, writeFilesAtomic } from "../formats/atomic.ts";
import { encodeNpy } from "../formats/npy.ts";
import { encodeSafetensors } from "../formats/safetensors.ts";
import type { OutputPlan } from "./plan.ts";

/** The paths an output plan writes, in order. */
function outputPaths(output: OutputPlan): string[] {
  return output.lse.kind === "npy" ? [output.path, output.lse.path] : [output.path];
}

/** Refuses, before any work, an output that cannot be written (or would replace an input). */
export function checkOutputs(output: OutputPlan, inputs: readonly string[]): void {
  checkOutputTargets(outputPaths(output), inputs);
}

/** Writes O and the LSE as `output` says, all or nothing; returns the paths written. */
export async function writeOutputs(
  output: OutputPlan,
  out: Tensor,
  lse: Float32Array,
  problem: Problem,
  inputs: readonly string[],
  meta: Record<string, string>,
): Promise<string[]> {
  const lseTensor = tensor("fp32", [problem.batch, problem.headsQ, problem.seqlenQ], lse);
  const files: OutputFile[] = output.format === "safetensors"
    ? [{
      target: output.path,
      bytes: encodeSafetensors(output.lse.kind === "same-file" ? { out, lse: lseTensor } : { out }, meta),
    }]
    : [{ target: output.path, bytes: encodeNpy(out) }];
  if (output.lse.kind === "npy") files.push({ target: output.lse.path, bytes: encodeNpy(lseTensor) });
  await writeFilesAtomic(files, { inputs });
  return outputPaths(output);
}
