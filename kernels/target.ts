// The shape of one native library's build, as each backend describes it in kernels/<backend>/target.ts.
// kernels/build.ts finds the compiler, compiles the units in parallel (only those whose inputs changed: source,
// the headers it can see, the flags), links, and writes build/libflashattn_<backend>.so.

import type { BackendName } from "../lib/vocabulary.ts";
export type { BackendName };

export interface CompileUnit {
  /** Source path relative to the repository root. */
  source: string;
  /** Extra arguments for this unit (the target's common args come first). */
  args?: string[];
}

export interface BuildTarget {
  backend: BackendName;
  /** Compiler names or absolute paths tried in order (PATH lookup); the first found is used. */
  compilers: string[];
  /** Extra places to look for the compiler (e.g. $CUDA_HOME/bin, /opt/rocm/bin). */
  compilerDirs?: string[];
  /** Environment for every compiler invocation (e.g. HIP_PLATFORM=amd). */
  env?: Record<string, string>;
  /** Arguments for every compile step (without -c/-o/source). */
  compileArgs: string[];
  units: CompileUnit[];
  /** Arguments for the link step (without -o/objects), e.g. ["-shared", "-lpthread"]. */
  linkArgs: string[];
  /** Directories (relative to the root) whose files are inputs of every unit: a change rebuilds everything. */
  headerDirs: string[];
  /** Optional check after finding the compiler: return a reason to skip this target (e.g. missing headers). */
  precheck?: (compiler: string) => Promise<string | null>;
  /** Compiler messages that fail a unit although it compiled (e.g. a known performance trap), with the reason. */
  rejectedDiagnostics?: { pattern: RegExp; reason: string }[];
}
