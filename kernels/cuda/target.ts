// libflashattn_cuda: the shared GPU glue (kernels/gpu), the CUDA device hooks and tensor-core kernels
// (kernels/cuda), and the portable fallback kernels (kernels/portable), built with nvcc.
//
// The tensor-core kernels are instantiated once per (dtype, head dim): this file writes one small .cu per kernel
// family and head dim, holding both dtypes' instantiations, into build/gen/cuda/ (so they compile in parallel), plus
// tc_instances.inc, decode_instances.inc and sm90_instances.inc, the X-macro lists that tc_paths.cu expands into
// extern declarations and the dispatch tables, and wgmma_ops.inc (the Hopper matrix instructions, one wrapper per
// shape). The mma.sync kernels are built for sm_80 and sm_90 (+PTX; the fp8 decode also sm_89), the wgmma kernels for
// sm_90a alone. Files are rewritten only when their text changes, so the incremental build keeps its objects.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { BuildTarget, CompileUnit } from "../target.ts";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const genDir = path.join(root, "build", "gen", "cuda");

/** Head dims with their own kernels; any other multiple of 8 up to 256 runs padded up to the next one. */
const headDims = [32, 64, 96, 128, 192, 256];
const dtypes = [
  { name: "fp16", cxx: "fa::half_t" },
  { name: "bf16", cxx: "fa::bf16_t" },
];
/** SASS for Ampere and Hopper, plus compute_90 PTX that newer GPUs JIT-compile. sm_80 SASS runs on every 8.x GPU
 *  (A10 / RTX 30 at 8.6, L4 / RTX 40 at 8.9), as flash-attn 2 ships it: nothing here is tuned for 8.6 or 8.9 at
 *  compile time (shared memory limits are checked at run time), and each extra target costs every unit one more
 *  front-end and ptxas pass (with sm_86 and sm_89 SASS the clean build took 6–7 minutes on 2 cores, without 4). */
const sass = ["80", "90"];
const gencode = [...sass.map((sm) => `-gencode=arch=compute_${sm},code=sm_${sm}`), "-gencode=arch=compute_90,code=compute_90"];
/** Ada (sm_89) converts fp8 with cvt instructions (fp8.cuh): the fp8 decode units carry sm_89 SASS for L4 / RTX 40. */
const ada = ["-gencode=arch=compute_89,code=sm_89"];
/** Turing (T4, RTX 20xx) machine code for the units that can run there: the portable and naive kernels. */
const turing = ["-gencode=arch=compute_75,code=sm_75"];
/** Hopper's arch-specific target (wgmma, setmaxnreg): the sm_90a kernels run on sm_90 GPUs only, so they get no PTX. */
const hopper = ["-gencode=arch=compute_90a,code=sm_90a"];
/** Every target the -gencode lists above make (what the library reports it was built for), ordered by architecture:
 *  sm_75, sm_80, sm_89, sm_90, sm_90a, compute_90. */
const archList = [...new Set([...turing, ...gencode, ...ada, ...hopper].map((flag) => /,code=(\w+)/.exec(flag)![1]))]
  .sort((x, y) => {
    const key = (t: string) => [parseInt(t.replace(/\D/g, ""), 10), t.startsWith("compute") ? 1 : 0, t.endsWith("a") ? 1 : 0];
    const [a, b] = [key(x), key(y)];
    return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
  })
  .map((t) => `"${t}"`)
  .join(",");
/** Head dims of the Hopper kernels: multiples of 64 (whole 128-byte swizzle rows). The backward keeps dK and dV of
 *  64 keys per warpgroup in registers up to head dim 128; at 192 and 256 its two warpgroups split the columns of 64
 *  keys (bwd_sm90.cuh). */
const sm90FwdHeadDims = [64, 128, 192, 256];
const sm90BwdHeadDims = [64, 128, 192, 256];
/** The fp8 forward (fwd_sm90.cuh with fp8 operands): forward only, at 128 and 256 (a 64- or 192-byte row is not a whole
 *  128-byte swizzle row, so head dims <= 128 run padded to 128 and the rest to 256). The P V product's A operand is
 *  always E4M3 (P in [0, 1]); V and the Q K^T operands are the input format. */
const fp8Dtypes = [
  { name: "fp8_e4m3", cxx: "fa::tc::fp8_e4m3_t", ptx: "e4m3" },
  { name: "fp8_e5m2", cxx: "fa::tc::fp8_e5m2_t", ptx: "e5m2" },
];
const sm90Fp8HeadDims = [128, 256];
/** The decode kernel with fp8 K / V (converted to fp16 in shared memory, any sm_80+): head dims 64, 128 and 256, the
 *  others run padded to the next (each unit holds the fp16- and bf16-output kernels, so it costs twice a 16-bit one). */
const decodeFp8HeadDims = [64, 128, 256];

function writeIfChanged(file: string, text: string): void {
  if (fs.existsSync(file) && fs.readFileSync(file, "utf8") === text) return;
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
}

/** The launchers' parameters (tc_paths.cu declares the same): the kernel arguments, how to launch (row fragments; decode: DecodeLaunch), the stream. */
const prefillParams = "const fa::tc::AttnArgs&, int, gpuStream_t";
const decodeParams = "const fa::tc::DecodeArgs&, const fa::tc::DecodeLaunch&, gpuStream_t";

/** One generated unit: the explicit instantiations of one kernel launcher for each dtype it lists (both dtypes of a
 *  family and head dim share a unit, so nvcc's host-side passes, about a third of a unit's time, run once for both),
 *  compiled with its own -gencode list. */
function instanceUnit(file: string, what: string, header: string, launchers: string[], args: string[], params = prefillParams): CompileUnit {
  const abs = path.join(genDir, file);
  writeIfChanged(
    abs,
    `// Generated by kernels/cuda/target.ts: ${what}.\n#include "../../../kernels/cuda/${header}"\n` +
      launchers.map((launcher) => `template gpuError_t ${launcher}(${params});\n`).join(""),
  );
  return { source: path.relative(root, abs), args };
}

function generateInstances(): CompileUnit[] {
  const units: CompileUnit[] = [];
  const list: string[] = [];
  const names = (ts: { name: string }[]) => ts.map((t) => t.name).join(" and ");
  for (const d of headDims) {
    for (const t of dtypes) list.push(`FA_TC_INSTANCE(${t.cxx}, ${d})`);
    for (const dir of ["fwd", "bwd"] as const) {
      const what = `the ${dir === "fwd" ? "forward" : "backward"} mma.sync kernels for ${names(dtypes)}, head dim ${d}`;
      units.push(instanceUnit(`${dir}_hdim${d}.cu`, what, `${dir}.cuh`, dtypes.map((t) => `fa::tc::launch_${dir}<${t.cxx}, ${d}>`), gencode));
    }
  }
  // The decode kernel (decode.cuh) at every head dim, sm_80+ like the mma.sync kernels.
  const decodeList: string[] = [];
  for (const d of headDims) {
    for (const t of dtypes) decodeList.push(`FA_DECODE_INSTANCE(${t.cxx}, ${d})`);
    const what = `the decode / KV-cache kernels for ${names(dtypes)}, head dim ${d}`;
    units.push(instanceUnit(`decode_hdim${d}.cu`, what, "decode.cuh", dtypes.map((t) => `fa::tc::launch_decode<${t.cxx}, ${d}>`), gencode, decodeParams));
  }
  for (const d of decodeFp8HeadDims) {
    for (const t of fp8Dtypes) decodeList.push(`FA_DECODE_INSTANCE(${t.cxx}, ${d})`);
    const what = `the decode / KV-cache kernels for ${names(fp8Dtypes)} (fp16 or bf16 output), head dim ${d}`;
    units.push(instanceUnit(`decode_hdim${d}_fp8.cu`, what, "decode.cuh", fp8Dtypes.map((t) => `fa::tc::launch_decode<${t.cxx}, ${d}>`), [...gencode, ...ada], decodeParams));
  }
  const hopperList: string[] = [];
  for (const [dir, dims] of [["fwd", sm90FwdHeadDims], ["bwd", sm90BwdHeadDims]] as const) {
    for (const d of dims) {
      for (const t of dtypes) hopperList.push(`FA_SM90_${dir.toUpperCase()}(${t.cxx}, ${d})`);
      const what = `the ${dir === "fwd" ? "forward" : "backward"} wgmma kernels for ${names(dtypes)}, head dim ${d} (sm_90a only)`;
      units.push(instanceUnit(`${dir}_sm90_hdim${d}.cu`, what, `${dir}_sm90.cuh`, dtypes.map((t) => `fa::tc::launch_${dir}_sm90<${t.cxx}, ${d}>`), hopper));
    }
  }
  for (const d of sm90Fp8HeadDims) {
    for (const t of fp8Dtypes) hopperList.push(`FA_SM90_FP8_FWD(${t.cxx}, ${d})`);
    const what = `the forward wgmma kernels for ${names(fp8Dtypes)}, head dim ${d} (sm_90a only)`;
    units.push(instanceUnit(`fwd_sm90_hdim${d}_fp8.cu`, what, "fwd_sm90.cuh", fp8Dtypes.map((t) => `fa::tc::launch_fwd_sm90<${t.cxx}, ${d}>`), hopper));
  }
  // nvcc splits -D values at commas, so the arch list travels in a generated header instead.
  writeIfChanged(
    path.join(genDir, "cuda_archs.inc"),
    `// Generated by kernels/cuda/target.ts: the targets of the -gencode lists, as JSON list items.\n#define FA_CUDA_ARCHS ${JSON.stringify(archList)}\n`,
  );
  writeIfChanged(
    path.join(genDir, "tc_instances.inc"),
    `// Generated by kernels/cuda/target.ts: one FA_TC_INSTANCE(element type, head dim) per instantiated kernel pair.\n${list.join("\n")}\n`,
  );
  writeIfChanged(
    path.join(genDir, "decode_instances.inc"),
    `// Generated by kernels/cuda/target.ts: one FA_DECODE_INSTANCE(element type, head dim) per decode kernel.\n${decodeList.join("\n")}\n`,
  );
  writeIfChanged(
    path.join(genDir, "sm90_instances.inc"),
    `// Generated by kernels/cuda/target.ts: one FA_SM90_FWD / FA_SM90_BWD / FA_SM90_FP8_FWD(element type, head dim) per Hopper kernel.\n${hopperList.join("\n")}\n`,
  );
  writeIfChanged(path.join(genDir, "wgmma_ops.inc"), wgmmaOps());
  return units;
}

/** N of the wgmma.m64nNk16 shapes the Hopper kernels issue (key blocks, head dims, dQ column halves; 32: the head-dim-256
 *  backward's S^T per warpgroup). */
const wgmmaN = [32, 64, 128, 192, 256];

/** The N/2 fp32 accumulators of an m64nN wgmma as asm operands %0.. and their constraints. */
function accumulators(n: number): { regs: number; dList: string; dOps: string } {
  const regs = n / 2;
  const dList = Array.from({ length: regs }, (_, i) => `%${i}`).join(", ");
  const dOps = Array.from({ length: regs }, (_, i) => `"+f"(d[${i}])`).join(", ");
  return { regs, dList, dOps };
}

/** The asm prologue that turns operand %r (`accumulate`) into the scale-d predicate p. */
const pred = (r: number) => `"{\\n.reg .pred p;\\nsetp.ne.b32 p, %${r}, 0;\\n"`;

// wgmma takes its N/2 fp32 accumulators as separate asm operands, so each shape is written out here rather than by
// hand: Wgmma<N, T>::ss (A and B from shared memory through descriptors, optional transposes) and ::rs (A from
// four registers, the mma.sync A-fragment layout). `accumulate` = 0 overwrites D (the first k-step of a product).
function wgmmaOps(): string {
  const out = ["// Generated by kernels/cuda/target.ts: wgmma.mma_async m64nNk16 and fp8 m64nNk32 wrappers for kernels/cuda/wgmma.cuh.", "#pragma once"];
  for (const n of wgmmaN) {
    for (const t of dtypes) {
      const ptx = t.name === "fp16" ? "f16" : "bf16";
      const { regs, dList, dOps } = accumulators(n);
      const op = `wgmma.mma_async.sync.aligned.m64n${n}k16.f32.${ptx}.${ptx}`;
      out.push(
        `template <> struct Wgmma<${n}, ${t.cxx}> {`,
        `  template <int TransA, int TransB>`,
        `  static __device__ __forceinline__ void ss(float (&d)[${regs}], uint64_t a, uint64_t b, int accumulate) {`,
        `    asm volatile(${pred(regs + 2)}`,
        `                 "${op} {${dList}}, %${regs}, %${regs + 1}, p, 1, 1, %${regs + 3}, %${regs + 4};\\n}\\n"`,
        `                 : ${dOps}`,
        `                 : "l"(a), "l"(b), "r"(accumulate), "n"(TransA), "n"(TransB));`,
        `  }`,
        `  template <int TransB>`,
        `  static __device__ __forceinline__ void rs(float (&d)[${regs}], const uint32_t (&a)[4], uint64_t b, int accumulate) {`,
        `    asm volatile(${pred(regs + 5)}`,
        `                 "${op} {${dList}}, {%${regs}, %${regs + 1}, %${regs + 2}, %${regs + 3}}, %${regs + 4}, p, 1, 1, %${regs + 6};\\n}\\n"`,
        `                 : ${dOps}`,
        `                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate), "n"(TransB));`,
        `  }`,
        `};`,
      );
    }
  }
  // fp8: m64nNk32, N = 128 (Q K^T over 128-key blocks; P V at head dim 128) and 256 (P V at head dim 256).
  for (const n of [128, 256]) {
    for (const ta of fp8Dtypes) {
      for (const tb of fp8Dtypes) {
        const { regs, dList, dOps } = accumulators(n);
        const op = `wgmma.mma_async.sync.aligned.m64n${n}k32.f32.${ta.ptx}.${tb.ptx}`;
        out.push(
          `template <> struct WgmmaFp8<${n}, ${ta.cxx}, ${tb.cxx}> {`,
          `  static __device__ __forceinline__ void ss(float (&d)[${regs}], uint64_t a, uint64_t b, int accumulate) {`,
          `    asm volatile(${pred(regs + 2)}`,
          `                 "${op} {${dList}}, %${regs}, %${regs + 1}, p, 1, 1;\\n}\\n"`,
          `                 : ${dOps}`,
          `                 : "l"(a), "l"(b), "r"(accumulate));`,
          `  }`,
          `  static __device__ __forceinline__ void rs(float (&d)[${regs}], const uint32_t (&a)[4], uint64_t b, int accumulate) {`,
          `    asm volatile(${pred(regs + 5)}`,
          `                 "${op} {${dList}}, {%${regs}, %${regs + 1}, %${regs + 2}, %${regs + 3}}, %${regs + 4}, p, 1, 1;\\n}\\n"`,
          `                 : ${dOps}`,
          `                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));`,
          `  }`,
          `};`,
        );
      }
    }
  }
  return out.join("\n") + "\n";
}

function sourcesIn(dir: string, ext: RegExp): CompileUnit[] {
  const abs = path.join(root, dir);
  if (!fs.existsSync(abs)) return [];
  return fs.readdirSync(abs).filter((f) => ext.test(f)).sort().map((f) => ({ source: `${dir}/${f}` }));
}

const target: BuildTarget = {
  backend: "cuda",
  compilers: ["nvcc"],
  compilerDirs: [process.env.CUDA_HOME ? path.join(process.env.CUDA_HOME, "bin") : "/usr/local/cuda/bin"],
  compileArgs: [
    "-std=c++17", "-O3", "-Xcompiler=-fPIC,-fvisibility=hidden", "--expt-relaxed-constexpr",
    "-cudart=static", `-I${genDir}`,
  ],
  units: [
    ...sourcesIn("kernels/gpu", /\.(cpp|cu)$/).map((u) => ({ ...u, args: u.source.endsWith(".cpp") ? ["-x", "cu", ...gencode] : [...gencode, ...turing] })),
    ...sourcesIn("kernels/cuda", /\.cu$/).map((u) => ({ ...u, args: gencode })),
    ...sourcesIn("kernels/portable", /\.cu$/).map((u) => ({ ...u, args: [...gencode, ...turing] })),
    ...generateInstances(),
  ],
  linkArgs: ["-shared", "-cudart=static", ...gencode, "-Xlinker=--no-undefined"],
  headerDirs: ["kernels/include", "kernels/common", "kernels/gpu", "kernels/cuda", "kernels/portable", "build/gen/cuda"],
  // ptxas reports (info C7510-C7519) when it has to serialise the wgmma pipeline because other instructions touch the
  // accumulators inside it, or has to inject a warpgroup arrive / wait: the kernel still runs correctly, 20-40% slower
  // (a one-body forward loop did it on the H200; C7515, a product issued on one branch only, cost the H100 forward
  // 25-40%).
  rejectedDiagnostics: [
    { pattern: /\(C751\d\)/, reason: "ptxas serialised the wgmma pipeline (a performance loss, not an error, but never wanted)" },
  ],
};

export default target;
