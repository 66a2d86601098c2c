// Compatibility data the rules consult, as tables. Sources are named per table// /work/shared/reference/doctor-facts.md for the citations); update the data, not the rule code.

/**
 * Minimum Linux x86_64 driver for each CUDA toolkit release (GA), from the CUDA release notes table "CUDA Toolkit
 * and Corresponding Driver Versions". There is no CUDA 12.7.
 */
export const minimumDriverForCuda: Record<string, string> = {
  "13.2": "595.45.04",
  "13.1": "590.44.01",
  "13.0": "580.65.06",
  "12.9": "575.51.03",
  "12.8": "570.26",
  "12.6": "560.28.03",
  "12.5": "555.42.02",
  "12.4": "550.54.14",
  "12.3": "545.23.06",
  "12.2": "535.54.03",
  "12.1": "530.30.02",
  "12.0": "525.60.13",
  "11.8": "520.61.05",
  "11.7": "515.43.04",
  "11.6": "510.39.01",
  "11.5": "495.29.05",
  "11.4": "470.42.01",
  "11.3": "465.19.01",
  "11.2": "460.27.03",
  "11.1": "455.23",
  "11.0": "450.51.05",
};

/**
 * Minor-version compatibility: a program built with any toolkit of a major runs (with a limited feature set: no
 * JIT of newer PTX) on drivers from this version on. 11.x from 450.80.02, 12.x from 525, 13.x from 580.
 */
export const minorVersionCompatibleDriver: Record<number, string> = {
  11: "450.80.02",
  12: "525.60.13",
  13: "580.65.06",
};

/** The driver branch to name in advice for a CUDA major ("R580"). */
export const driverBranchForCudaMajor: Record<number, string> = { 11: "R450", 12: "R525", 13: "R580" };

/** Architecture names by compute capability (NVIDIA CUDA GPUs pages); unknown minors fall back to the major's. */
export const nvidiaArchitectureByCapability: Record<string, string> = {
  "5": "Maxwell",
  "6": "Pascal",
  "7.0": "Volta",
  "7.2": "Volta (Jetson Xavier)",
  "7.5": "Turing",
  "8": "Ampere",
  "8.7": "Ampere (Jetson Orin)",
  "8.9": "Ada",
  "9": "Hopper",
  "10": "Blackwell",
  "10.3": "Blackwell Ultra",
  "11": "Blackwell (Jetson Thor)",
  "12": "Blackwell",
};

/** The first nvcc that can compile for a compute capability (sm_XY); older GPUs are all covered by 11.0. */
export const firstCudaForCapability: Record<string, string> = {
  "8.0": "11.0",
  "8.6": "11.1",
  "8.9": "11.8",
  "9.0": "11.8",
  "10.0": "12.8",
  "11.0": "13.0",
  "12.0": "12.8",
};

/** flash-attn 2 (CUDA) requires Ampere or newer: flash_api.cpp checks cc_major >= 8. */
export const FLASH_ATTN_2_MIN_CC = "8.0";
/** flash-attn 3 (hopper/) builds sm_90a and needs CUDA >= 12.3 at build time. */
export const FLASH_ATTN_3_CC = "9.0";
export const FLASH_ATTN_3_MIN_CUDA = "12.3";

/** flash-attn's Composable Kernel backend: the GPU_ARCHS allow-list of setup.py. */
export const flashAttnCkArchs = [
  "gfx90a",
  "gfx942",
  "gfx950",
  "gfx1100",
  "gfx1101",
  "gfx1102",
  "gfx1150",
  "gfx1151",
  "gfx1200",
  "gfx1201",
];

/** transformers uses SDPA from torch 2.1.1 on. */
export const SDPA_MIN_TORCH = "2.1.1";

/**
 * PyTorch wheel index per CUDA toolkit, newest first: the newest index whose CUDA this driver runs. Each needs its
 * CUDA's minimum driver (minimumDriverForCuda).
 */
export const torchCudaIndexes = [
  { cuda: "13.0", index: "cu130" },
  { cuda: "12.8", index: "cu128" },
  { cuda: "12.6", index: "cu126" },
  { cuda: "11.8", index: "cu118" },
];
/** CUDA 13.0 dropped Maxwell, Pascal and Volta (sm_50 to sm_72): its torch wheels have no code for those GPUs. */
export const CUDA_13_MIN_CC = "7.5";
export const TORCH_ROCM_INDEX = "rocm6.4";
export const torchIndexUrl = (index: string) => `https://download.pytorch.org/whl/${index}`;

/**
 * The code `bun kernels/build.ts cuda` puts in libflashattn_cuda (kernels/cuda/target.ts's -gencode targets; a test
 * holds the two together). A fix may say "rebuild" only for a GPU this covers: the build takes no list of targets.
 */
export const cudaBuildTargets = ["sm_75", "sm_80", "sm_89", "sm_90", "sm_90a", "compute_90"];
