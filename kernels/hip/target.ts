// libflashattn_hip: the shared GPU glue (kernels/gpu), the HIP device hooks and MFMA kernels (kernels/hip), and the
// portable fallback kernels (kernels/portable), built with hipcc for AMD GPUs.
//
// Every unit is compiled as HIP (-x hip): the .cu files are the same sources nvcc builds for the CUDA library.
// Targets: gfx90a (CDNA2: MI200 series), the one CDNA target whose device libraries ROCm 5.2 ships that has the
// bf16 "_1k" MFMA instructions. ROCm 5.2 (LLVM 15) has no generic gfx9/gfx11 targets and no device libraries for
// gfx942 or gfx1100, so nothing else is built by default. FLASHATTN_HIP_ARCHS=gfx90a,gfx1030 (comma list)
// overrides the list for a ROCm that has the other targets; the MFMA path compiles to nothing outside CDNA.
import path from "node:path";
import { $ } from "zx";
import fs from "node:fs";
import { fileURLToPath } from "node:url";
import type { BuildTarget, CompileUnit } from "../target.ts";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

const archs = (process.env.FLASHATTN_HIP_ARCHS ?? "gfx90a").split(",").map((a) => a.trim()).filter(Boolean);
const badArch = archs.find((a) => !/^gfx[0-9a-f]+$/.test(a));
const offload = archs.map((a) => `--offload-arch=${a}`);
const env = { HIP_PLATFORM: "amd" };

function sourcesIn(dir: string, ext: RegExp): CompileUnit[] {
  const abs = path.join(root, dir);
  if (!fs.existsSync(abs)) return [];
  return fs.readdirSync(abs).filter((f) => ext.test(f)).sort().map((f) => ({ source: `${dir}/${f}` }));
}

const target: BuildTarget = {
  backend: "hip",
  compilers: ["hipcc"],
  compilerDirs: [process.env.ROCM_PATH ? path.join(process.env.ROCM_PATH, "bin") : "/opt/rocm/bin"],
  env,
  compileArgs: [
    "-x", "hip", "-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden", ...offload, `-DFA_HIP_ARCHS=${archs.join(",")}`,
    // HIP 5.2 marks every runtime call [[nodiscard]]; cleanup calls whose status cannot matter would warn.
    "-Wno-unused-result",
  ],
  units: [
    ...sourcesIn("kernels/gpu", /\.(cpp|cu)$/),
    ...sourcesIn("kernels/hip", /\.(cpp|cu)$/),
    ...sourcesIn("kernels/portable", /\.cu$/),
  ],
  linkArgs: ["-shared", ...offload, "-Wl,--no-undefined"],
  headerDirs: ["kernels/include", "kernels/common", "kernels/gpu", "kernels/hip", "kernels/portable"],
  // Debian's hipcc defaults to the NVIDIA platform when nvcc is installed; HIP_PLATFORM=amd (env above) selects
  // clang. Skip with a reason when that platform is not usable (no HIP headers / device libraries for the targets).
  async precheck(compiler) {
    if (badArch !== undefined || archs.length === 0)
      return `FLASHATTN_HIP_ARCHS="${process.env.FLASHATTN_HIP_ARCHS}" is not a comma list of gfx targets such as gfx90a,gfx942`;
    const probe = await $({ env: { ...process.env, ...env }, nothrow: true, quiet: true })`${compiler} --version`;
    if (probe.exitCode !== 0) return `${compiler} --version failed: ${probe.stderr.trim().split("\n")[0] ?? ""}`;
    if (!/HIP version/i.test(probe.stdout)) return `${compiler} is not a HIP compiler (no "HIP version" in --version)`;
    return null;
  },
};

export default target;
