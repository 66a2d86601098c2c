// libflashattn_cpu: the CPU backend, built by kernels/build.ts (interface in kernels/target.ts).
// Portable x86-64 code: no -march=native. The AVX2/FMA/F16C kernels are compiled through function attributes in
// isa_avx2.cpp and chosen at run time (isa.cpp), so the same binary runs on any x86-64.
import type { BuildTarget } from "../target.ts";

const target: BuildTarget = {
  backend: "cpu",
  compilers: ["g++", "c++", "clang++"],
  compileArgs: ["-O3", "-fPIC", "-std=c++17", "-fvisibility=hidden", "-pthread", "-Wall", "-Wextra"],
  units: [
    { source: "kernels/cpu/api.cpp" },
    { source: "kernels/cpu/memory.cpp" },
    { source: "kernels/cpu/thread_pool.cpp" },
    { source: "kernels/cpu/isa.cpp" },
    { source: "kernels/cpu/isa_avx2.cpp" },
    { source: "kernels/cpu/isa_portable.cpp" },
    { source: "kernels/cpu/forward.cpp" },
    { source: "kernels/cpu/backward.cpp" },
    { source: "kernels/cpu/naive.cpp" },
    { source: "kernels/cpu/kvcache.cpp" },
    { source: "kernels/cpu/combine.cpp" },
  ],
  linkArgs: ["-shared", "-pthread"],
  headerDirs: ["kernels/include", "kernels/common", "kernels/cpu"],
};

export default target;
