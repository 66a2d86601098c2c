// Compilers: needed to build our libraries (and flash-attn from source), never to run them.
import type { DoctorFacts, Finding } from "../facts.ts";
import {
  compareVersions,
  driverCudaVersion,
  driverRuns,
  driverVersion,
  majorOf,
  nvidiaHardwarePresent,
  sectionFindings,
} from "./common.ts";

const BUILD_CUDA = "bun kernels/build.ts cuda";

export function toolkitRules(f: DoctorFacts): Finding[] {
  const s = sectionFindings("toolkits");
  const { nvcc, hipcc } = f.toolkits;
  const torchCuda = f.python.torch?.cuda ?? undefined;

  if (nvcc.status === "ok" && nvcc.version) {
    s.ok("nvcc", `nvcc ${nvcc.version} (${nvcc.path}, found via ${nvcc.source})`);
    const driver = driverVersion(f);
    const supported = driverCudaVersion(f);
    if (
      driver && supported && compareVersions(nvcc.version, supported) > 0 && driverRuns(nvcc.version, driver) === "no"
    ) {
      // Without an NVIDIA GPU nothing built here runs on that driver anyway.
      (nvidiaHardwarePresent(f) ? s.warn : s.info)(
        "nvcc_newer_than_driver",
        `nvcc ${nvcc.version} builds programs this driver (${driver}, CUDA ${supported}) cannot run`,
        `build with a CUDA ${
          majorOf(supported)
        }.x toolkit (CUDA_HOME=<that toolkit> bun kernels/build.ts cuda) or upgrade the NVIDIA driver`,
      );
    }
    if (torchCuda && majorOf(torchCuda) !== majorOf(nvcc.version)) {
      s.warn(
        "nvcc_vs_torch",
        `nvcc ${nvcc.version} and torch's CUDA ${torchCuda} differ in major version: building flash-attn from source fails ("The detected CUDA version mismatches the version that was used to compile PyTorch")`,
        `point CUDA_HOME at a CUDA ${
          majorOf(torchCuda)
        }.x toolkit before pip install flash-attn --no-build-isolation, or install prebuilt wheels`,
      );
    }
  } else if (nvcc.status === "absent") {
    s.info(
      "nvcc",
      "nvcc not found: needed only to build libflashattn_cuda or flash-attn from source",
      nvidiaHardwarePresent(f) ? "install the CUDA toolkit and put its bin/ on PATH (or set CUDA_HOME)" : undefined,
    );
  } else {
    s.warn(
      "nvcc_broken",
      `nvcc at ${nvcc.path} does not run: ${nvcc.error}`,
      "reinstall the CUDA toolkit or fix PATH/CUDA_HOME to point at a working one",
    );
  }

  // The nvcc probe takes $CUDA_HOME/bin/nvcc first, as the builds do: another nvcc means CUDA_HOME has none.
  const cudaHome = f.host.env.CUDA_HOME;
  if (cudaHome && nvcc.path && !nvcc.path.startsWith(cudaHome.replace(/\/$/, "") + "/")) {
    s.warn(
      "cuda_home_differs",
      `CUDA_HOME=${cudaHome} has no bin/nvcc (the nvcc on PATH is ${nvcc.path}): \`${BUILD_CUDA}\` refuses it and torch extension builds fail`,
      `point CUDA_HOME at a toolkit (the directory that holds bin/nvcc, e.g. ${
        nvcc.path.replace(/\/bin\/nvcc$/, "")
      }) or unset it`,
    );
  }
  for (const variable of ["CUDA_PATH"] as const) {
    const home = f.host.env[variable];
    if (home && nvcc.path && !nvcc.path.startsWith(home.replace(/\/$/, "") + "/")) {
      s.warn(
        `${variable.toLowerCase()}_differs`,
        `${variable}=${home} but the nvcc in use is ${nvcc.path}`,
        `builds (ours and torch extensions) may mix two toolkits: put ${home}/bin first on PATH or fix ${variable}`,
      );
    }
  }

  if (hipcc.status === "ok" && hipcc.version) s.ok("hipcc", `hipcc ${hipcc.version} (${hipcc.path})`);
  else if (hipcc.status === "absent") s.info("hipcc", "hipcc not found: needed only to build libflashattn_hip");
  else {s.warn(
      "hipcc_broken",
      `hipcc at ${hipcc.path} does not run: ${hipcc.error}`,
      "reinstall ROCm's HIP compiler (hipcc) or fix PATH/ROCM_PATH",
    );}
  return s.list;
}
