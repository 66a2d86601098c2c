// NVIDIA: the driver (kernel module and user space agree? the real libcuda or a stub?), what cuInit says, and
// each GPU. NVML and the driver API are the sources; nvidia-smi only confirms.
import type { DoctorFacts, Finding } from "../facts.ts";
import {
  driverCudaVersion,
  driverVersion,
  formatBytes,
  libcudaFileVersion,
  nvidiaGpus,
  nvidiaHardwarePresent,
  sectionFindings,
  smName,
} from "./common.ts";
import { nvidiaArchitectureByCapability } from "./tables.ts";

/** Advice for a failing cuInit, by CUresult name. */
const cuInitAdvice: Record<string, { message: string; fix: string }> = {
  CUDA_ERROR_NO_DEVICE: {
    message: "the CUDA driver sees no GPU",
    fix:
      "check CUDA_VISIBLE_DEVICES (an empty or wrong value hides every GPU) and, in a container, that it was started with GPU access (--gpus all)",
  },
  CUDA_ERROR_DEVICE_UNAVAILABLE: {
    message: "the GPU is unavailable (compute mode exclusive or prohibited, or busy)",
    fix: "check the compute mode with nvidia-smi -q -d COMPUTE and set it back with sudo nvidia-smi -c DEFAULT",
  },
  CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: {
    message: "the kernel module and the user-space CUDA driver are different versions",
    fix: "reboot (or reload the nvidia kernel modules) after the driver upgrade so both are the same version",
  },
  CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE: {
    message:
      "a cuda-compat (forward compatibility) libcuda is loaded, but this GPU does not support forward compatibility",
    fix:
      "remove the cuda-compat directory from LD_LIBRARY_PATH (forward compatibility works only on data-center GPUs) or upgrade the driver",
  },
  CUDA_ERROR_SYSTEM_NOT_READY: {
    message: "the system is not ready for CUDA (on NVSwitch systems the fabric manager is not running)",
    fix: "start nvidia-fabricmanager (sudo systemctl start nvidia-fabricmanager) with the same version as the driver",
  },
  CUDA_ERROR_OPERATING_SYSTEM: {
    message: "the operating system refused the CUDA driver",
    fix: "check dmesg for NVRM errors and the permissions of /dev/nvidia*",
  },
  CUDA_ERROR_UNKNOWN: {
    message: "cuInit failed with an unknown error",
    fix: "check dmesg for Xid errors; a GPU that fell off the bus needs a reset or a reboot",
  },
};

/** Advice for a failing NVML, by nvmlReturn_t name. */
const nvmlAdvice: Record<string, { message: string; fix: string }> = {
  NVML_ERROR_DRIVER_NOT_LOADED: {
    message: "the NVIDIA kernel module is not loaded",
    fix: "load it (sudo modprobe nvidia); after a kernel update rebuild it (dkms autoinstall) and reboot",
  },
  NVML_ERROR_LIB_RM_VERSION_MISMATCH: {
    message: "driver/library version mismatch: the kernel module and libnvidia-ml are different versions",
    fix: "reboot (or reload the nvidia kernel modules) after the driver upgrade so both are the same version",
  },
  NVML_ERROR_NO_PERMISSION: {
    message: "no permission to talk to the NVIDIA driver",
    fix: "check the permissions of /dev/nvidia* (the user may need to be in the video group)",
  },
  NVML_ERROR_GPU_IS_LOST: {
    message: "a GPU has fallen off the bus",
    fix: "check dmesg for Xid 79; reset the GPU (nvidia-smi -r) or reboot",
  },
};

/**
 * CUDA_VISIBLE_DEVICES as the cause of "the CUDA driver sees no GPU": NVML (which ignores the variable) lists GPUs,
 * the driver API lists none, and the value is empty, -1, or starts with an entry that names no GPU here (CUDA
 * stops reading at the first invalid entry).
 */
export function hiddenByVisibleDevices(f: DoctorFacts): { message: string; fix: string } | undefined {
  const value = f.host.env.CUDA_VISIBLE_DEVICES;
  const { nvml, cuda_driver: cuda } = f.nvidia;
  const listed = nvml.devices ?? [];
  const driverSeesNone = (cuda.status === "ok" && (cuda.devices?.length ?? 0) === 0) ||
    cuda.code_name === "CUDA_ERROR_NO_DEVICE";
  if (value === undefined || !listed.length || !driverSeesNone) return undefined;
  const first = value.split(",")[0].trim();
  const names = (e: string) =>
    /^\d+$/.test(e)
      ? Number(e) < listed.length
      : e.startsWith("MIG-") || (e.startsWith("GPU-") && listed.some((d) => d.uuid?.startsWith(e)));
  const why = value.trim() === ""
    ? "is empty, which hides every GPU"
    : names(first)
    ? undefined
    : `names no GPU here (its first entry ${JSON.stringify(first)} is not an index 0..${
      listed.length - 1
    } or a listed UUID; CUDA stops at the first invalid entry)`;
  if (!why) return undefined;
  return {
    message: `CUDA_VISIBLE_DEVICES=${JSON.stringify(value)} ${why}: NVML sees ${listed.length} GPU${
      listed.length === 1 ? "" : "s"
    }, the CUDA driver none`,
    fix: `unset CUDA_VISIBLE_DEVICES, or set it to ${
      listed.length === 1 ? "0" : `GPU indices 0..${listed.length - 1}`
    } or a GPU's UUID (nvidia-smi -L lists them)`,
  };
}

export function nvidiaRules(f: DoctorFacts): Finding[] {
  const s = sectionFindings("nvidia");
  const { nvml, cuda_driver: cuda, smi, kernel_module: kmod } = f.nvidia;
  const libcudaPresent = cuda.status !== "absent";
  const nvmlPresent = nvml.status !== "absent";

  if (!nvidiaHardwarePresent(f) && !libcudaPresent && !nvmlPresent) {
    s.info("none", "no NVIDIA GPU or driver on this machine (no libcuda.so.1, no NVIDIA kernel module)");
    return s.list;
  }
  // NVML failing ("driver not loaded") may be a GPU whose kernel module did not load; with the PCI bus read and no
  // NVIDIA GPU on it, it is not.
  if (!nvidiaHardwarePresent(f) && (nvml.status !== "error" || f.nvidia.pci_gpus === 0)) {
    // Driver libraries without a kernel module, device nodes or a listed GPU: a CPU machine or container that
    // happens to carry them. Nothing to fix unless a GPU was expected (--require says so).
    s.info(
      "no_gpu",
      `NVIDIA driver libraries are present but there is no NVIDIA GPU or kernel module${
        cuda.error ? ` (${cuda.error})` : nvml.error ? ` (${nvml.error})` : ""
      }`,
      "in a container, start it with GPU access (--gpus all)",
    );
    return s.list;
  }

  // A stub libcuda (from the toolkit's lib64/stubs, for linking only) shadowing the driver's library.
  const stub = cuda.code_name === "CUDA_ERROR_STUB_LIBRARY" || /\/stubs\//.test(cuda.library ?? "");
  if (stub) {
    const dir = cuda.library ? cuda.library.replace(/\/[^/]+$/, "") : undefined;
    const inLdPath = dir && (f.host.env.LD_LIBRARY_PATH ?? "").split(":").some((p) => p.replace(/\/$/, "") === dir);
    s.error(
      "stub_libcuda",
      `libcuda.so.1 resolves to the CUDA toolkit's stub${
        cuda.library ? ` (${cuda.library})` : ""
      }, not the driver's library`,
      inLdPath
        ? `remove ${dir} from LD_LIBRARY_PATH: stubs are for linking only; the real libcuda.so.1 comes with the NVIDIA driver`
        : "make sure the driver's libcuda.so.1 is found first (check LD_LIBRARY_PATH and ldconfig -p | grep libcuda); stubs are for linking only",
    );
  }

  // Kernel module vs user space: both must be the same build.
  const userSpace = f.nvidia.nvml.driver_version ?? libcudaFileVersion(f);
  if (kmod.version && userSpace && kmod.version !== userSpace) {
    s.error(
      "driver_mismatch",
      `the NVIDIA kernel module is ${kmod.version} but the user-space driver is ${userSpace}`,
      "reboot (or reload the nvidia kernel modules) after the driver upgrade so both are the same version",
    );
  }

  if (nvml.status === "error" && nvml.code_name) {
    const advice = nvmlAdvice[nvml.code_name];
    const already = nvml.code_name === "NVML_ERROR_LIB_RM_VERSION_MISMATCH" &&
      s.list.some((x) => x.id === "nvidia.driver_mismatch");
    if (!already) {
      s.error(
        "nvml_failed",
        `NVML: ${advice?.message ?? nvml.error}`,
        advice?.fix ?? "check dmesg for NVRM errors; reinstalling the driver usually helps",
      );
    }
  } else if (nvml.status === "timeout" || (nvml.status === "error" && !nvml.code_name)) {
    s.error(
      "nvml_failed",
      `NVML: ${nvml.error}`,
      "check dmesg for NVRM/Xid errors; a hung GPU needs a reset or a reboot",
    );
  } else if (nvml.status === "absent" && libcudaPresent) {
    s.warn(
      "nvml_absent",
      "libnvidia-ml.so.1 (NVML) is not installed although libcuda.so.1 is",
      "install the full NVIDIA driver (in containers: the NVIDIA container toolkit mounts it)",
    );
  }

  const hidden = hiddenByVisibleDevices(f);
  if (cuda.status === "absent") {
    s.error(
      "libcuda_absent",
      `libcuda.so.1 (the CUDA driver) cannot be loaded: ${cuda.error}`,
      "install the NVIDIA driver (in containers: run with --gpus all and the NVIDIA container toolkit)",
    );
  } else if (cuda.status === "timeout") {
    s.error(
      "cuinit_timeout",
      `libcuda did not answer: ${cuda.error}`,
      "check dmesg for Xid errors and processes stuck on the GPU (nvidia-smi); a reset or a reboot may be needed",
    );
  } else if (hidden) {
    s.error("visible_devices", hidden.message, hidden.fix);
  } else if (cuda.status === "error" && !stub) {
    const advice = cuda.code_name ? cuInitAdvice[cuda.code_name] : undefined;
    const duplicate = cuda.code_name === "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH" &&
      s.list.some((x) => x.id === "nvidia.driver_mismatch");
    if (!duplicate) {
      s.error(
        "cuinit_failed",
        `CUDA driver: ${advice?.message ?? cuda.error} (${cuda.error})`,
        advice?.fix ?? "check dmesg for NVRM/Xid errors; reinstalling the driver usually helps",
      );
    }
  }

  const driver = driverVersion(f);
  const cudaSupported = driverCudaVersion(f);
  if (driver || cudaSupported) {
    s.ok("driver", `driver ${driver ?? "?"}${cudaSupported ? `, supports CUDA up to ${cudaSupported}` : ""}`, [
      `libcuda: ${cuda.library ?? "?"}`,
      `NVML: ${nvml.library ?? nvml.status}`,
      `kernel module: ${kmod.version ?? (kmod.loaded ? "loaded" : "not loaded")}`,
    ]);
  }

  const visible = f.host.env.CUDA_VISIBLE_DEVICES;
  if (!hidden && cuda.status === "ok" && (cuda.devices?.length ?? 0) === 0 && (nvml.devices?.length ?? 0) > 0) {
    s.error(
      "no_visible_gpu",
      `the CUDA driver lists no GPU although NVML sees ${nvml.devices!.length}`,
      visible !== undefined
        ? `CUDA_VISIBLE_DEVICES=${JSON.stringify(visible)} hides them: unset it or list valid GPU indices/UUIDs`
        : "check CUDA_VISIBLE_DEVICES and the container's GPU access",
    );
  }

  for (const gpu of nvidiaGpus(f)) {
    const dev = cuda.devices?.find((d) => d.index === gpu.index);
    const family = gpu.cc &&
      (nvidiaArchitectureByCapability[gpu.cc] ?? nvidiaArchitectureByCapability[gpu.cc.split(".")[0]]);
    const arch = gpu.cc ? `${smName(gpu.cc)} (${family ?? "unknown architecture"})` : "compute capability unknown";
    const parts = [arch];
    if (dev?.multiprocessors) parts.push(`${dev.multiprocessors} SMs`);
    if (gpu.memoryBytes) parts.push(formatBytes(gpu.memoryBytes));
    if (dev?.shared_memory_per_block_optin_bytes) {
      parts.push(`${formatBytes(dev.shared_memory_per_block_optin_bytes)} shared/block (opt-in)`);
    }
    if (dev?.l2_bytes) parts.push(`${formatBytes(dev.l2_bytes)} L2`);
    const nvmlDev = nvml.devices?.find((d) => d.index === gpu.index);
    s.ok(
      `gpu${gpu.index}`,
      `GPU ${gpu.index}: ${gpu.name}, ${parts.join(", ")}`,
      [nvmlDev?.uuid && `UUID ${nvmlDev.uuid}`, dev?.pci_bus_id && `PCI ${dev.pci_bus_id}`].filter(Boolean) as string[],
    );
    if (nvmlDev?.mig?.current) {
      s.warn(
        `mig${gpu.index}`,
        `MIG is enabled on GPU ${gpu.index}: CUDA sees only the MIG instances, each with a share of SMs and memory`,
        "select an instance with CUDA_VISIBLE_DEVICES=MIG-<uuid> (nvidia-smi -L lists them), or disable MIG: sudo nvidia-smi -i " +
          gpu.index + " -mig 0",
      );
    }
    if (nvmlDev?.mig && nvmlDev.mig.current !== nvmlDev.mig.pending) {
      s.warn(
        `mig_pending${gpu.index}`,
        `a MIG mode change is pending on GPU ${gpu.index}`,
        `reset the GPU (sudo nvidia-smi -i ${gpu.index} -r) or reboot to apply it`,
      );
    }
    if (dev?.compute_mode === 2) {
      s.error(
        `compute_mode${gpu.index}`,
        `GPU ${gpu.index} is in compute mode PROHIBITED: no process may use it`,
        `sudo nvidia-smi -i ${gpu.index} -c DEFAULT`,
      );
    } else if (dev?.compute_mode === 3) {
      s.warn(
        `compute_mode${gpu.index}`,
        `GPU ${gpu.index} is in compute mode EXCLUSIVE_PROCESS: it fails while another process holds it`,
        `sudo nvidia-smi -i ${gpu.index} -c DEFAULT, or make sure nothing else runs on it`,
      );
    }
  }

  // nvidia-smi as a second source: it should agree with NVML.
  if (smi.status === "ok") {
    const nvmlCount = nvml.devices?.length;
    const smiCount = smi.gpus?.length ?? 0;
    if (nvml.driver_version && smi.driver_version && nvml.driver_version !== smi.driver_version) {
      s.warn(
        "smi_disagrees",
        `nvidia-smi reports driver ${smi.driver_version} but NVML ${nvml.driver_version}`,
        "two drivers are installed side by side; remove the stale one (check ldconfig -p | grep nvidia-ml)",
      );
    } else if (nvmlCount !== undefined && nvmlCount !== smiCount) {
      s.warn(
        "smi_disagrees",
        `nvidia-smi lists ${smiCount} GPUs but NVML ${nvmlCount}`,
        "check CUDA_VISIBLE_DEVICES and MIG settings; reinstall the driver if they still differ",
      );
    }
  } else if (smi.status === "error" && nvml.status === "ok") {
    s.warn(
      "smi_failed",
      `nvidia-smi failed (${smi.error}) although NVML works`,
      "reinstall the driver's utilities (nvidia-utils) so nvidia-smi matches the driver",
    );
  }
  return s.list;
}
