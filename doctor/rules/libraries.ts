// Our native libraries: loaded or not (in the loader's words), built for what vs running on what, and the self-test.
import type { DoctorFacts, Finding, LibraryFacts } from "../facts.ts";
import {
  amdHardwarePresent,
  archSupport,
  buildSupport,
  compareVersions,
  driverCudaVersion,
  driverRuns,
  driverVersion,
  gfxBase,
  majorMinor,
  majorOf,
  minimumDriverFor,
  nvidiaGpus,
  nvidiaHardwarePresent,
  sectionFindings,
  smName,
} from "./common.ts";
import { driverBranchForCudaMajor, firstCudaForCapability, minimumDriverForCuda } from "./tables.ts";

const BUILD = "bun kernels/build.ts";

function builtWith(lib: LibraryFacts): string {
  const bw = lib.info?.built_with ?? {};
  const compiler = lib.info?.compiler ?? "";
  // The compiler string may already name the toolkit version ("hipcc (clang 15.0) HIP 5.2"): say it once.
  const toolkit = [bw.cuda && `CUDA ${bw.cuda}`, bw.hip && `HIP ${bw.hip}`].filter((t) => t && !compiler.includes(t));
  const parts = [compiler, ...toolkit].filter(Boolean);
  const archs = lib.info?.archs?.length ? ` for ${lib.info.archs.join(", ")}` : "";
  return `${parts.length ? `built with ${parts.join(", ")}` : "built"}${archs}`;
}

export function libraryRules(f: DoctorFacts, prior: readonly Finding[] = []): Finding[] {
  const s = sectionFindings("libraries");
  const probe = f.flashattn;
  if (probe.status === "timeout" || (probe.status === "error" && probe.libraries.length === 0)) {
    s.error(
      "probe_failed",
      `the library probe did not finish: ${probe.error}`,
      "run `flashattn run --backend cpu` to see whether loading alone hangs; attach this report (--json) to a bug report",
    );
  }

  for (const lib of probe.libraries) {
    const name = `libflashattn_${lib.backend}`;
    const hardware = lib.backend === "cpu" ||
      (lib.backend === "cuda" ? nvidiaHardwarePresent(f) : amdHardwarePresent(f));
    const explicit = lib.attempts.find((a) => a.source === "flag" || a.source === "env");
    if (!lib.loaded && explicit) {
      const via = explicit.source === "flag" ? "--lib" : "FLASHATTN_LIB";
      s.error(
        "explicit_load_failed",
        `the library named by ${via} (${explicit.path}) does not load: ${explicit.error}`,
        `point ${via} at a libflashattn_<backend>.so built by \`${BUILD}\`, or drop it to search the usual places`,
      );
      continue;
    }
    if (!lib.loaded) {
      const real = lib.attempts.filter((a) => a.error !== "no such file" && a.source !== "system");
      const tried = lib.attempts.map((a) => `${a.path} (${a.source}): ${a.error}`);
      if (real.length) {
        const first = real[0];
        const abi = /ABI|layout/.test(first.error ?? "");
        // Without the GPU it is for, a library that cannot load (its runtime is not installed either) costs nothing.
        const report = hardware ? s.error : s.info;
        report(
          `${lib.backend}_load_failed`,
          `${name} at ${first.path} does not load: ${first.error}${
            hardware ? "" : ` (no ${vendorName(lib.backend)} GPU here, so not needed)`
          }`,
          abi
            ? `rebuild it so it matches this flashattn: ${BUILD}`
            : missingDependencyFix(first.error ?? "", lib.backend),
          tried,
        );
      } else if (hardware) {
        const compiler = lib.backend === "hip" ? f.toolkits.hipcc : f.toolkits.nvcc;
        const needs = lib.backend === "cpu"
          ? ""
          : compiler.status === "ok"
          ? ` (${lib.backend === "cuda" ? "nvcc" : "hipcc"} ${compiler.version} is here)`
          : ` (needs ${lib.backend === "cuda" ? "nvcc: install the CUDA toolkit" : "hipcc: install ROCm"} first)`;
        s.error(
          `${lib.backend}_missing`,
          `${name}.so is not built or installed`,
          `${BUILD}${needs}, or point FLASHATTN_LIB at a built library`,
          tried,
        );
      } else {
        s.info(
          `${lib.backend}_missing`,
          `${name}.so is not built (no ${vendorName(lib.backend)} GPU here, so not needed)`,
          undefined,
          tried,
        );
      }
      continue;
    }

    const version = lib.info?.version ? ` ${lib.info.version}` : "";
    s.ok(
      `${lib.backend}_loaded`,
      `${name}${version} (ABI ${lib.info?.abi ?? "?"}) ${builtWith(lib)}: ${lib.path}`,
      [
        lib.info?.kernels?.length ? `kernels: ${lib.info.kernels.join(", ")}` : "",
        lib.device_error ? `devices: none (${lib.device_error})` : `devices: ${lib.device_count ?? "?"}`,
      ].filter(Boolean),
    );

    if (lib.backend === "cuda") cudaBuildRules(f, lib, s);
    if (lib.backend === "hip") hipBuildRules(f, lib, s);

    // A driver too old for the library, or a driver/runtime problem found above, explains "no device"; say it once.
    const vendor = lib.backend === "cuda" ? "nvidia" : "amd";
    const explained = s.list.some((x) => x.id === `libraries.${lib.backend}_driver_too_old`) ||
      prior.some((x) => x.section === vendor && x.severity === "error");
    if (lib.device_error && hardware && !explained) {
      s.error(
        `${lib.backend}_no_device`,
        `${name} finds no usable device: ${lib.device_error}`,
        lib.backend === "cuda"
          ? "see the NVIDIA section above for the driver's own diagnosis"
          : "see the AMD section above for the runtime's own diagnosis",
      );
    }

    const t = lib.self_test;
    if (t?.ok) {
      s.ok(
        `${lib.backend}_self_test`,
        `self-test on ${lib.backend} passed: relative error ${Number(t.rel_error).toExponential(1)} ≤ ${
          t.tolerance?.toExponential(1)
        } (${t.kernel}, ${t.ms} ms)`,
        [t.problem],
      );
    } else if (t) {
      const what = t.error
        ? t.error
        : `relative error ${Number(t.rel_error).toExponential(2)} exceeds ${t.tolerance?.toExponential(1)}`;
      // No code for the GPU is said above with the fix that holds for that GPU (which may be "no build serves it").
      const noCode = /NoKernelImage/.test(t.error ?? "") &&
        s.list.find((x) => x.id.startsWith(`libraries.${lib.backend}_arch_gpu`) && x.severity !== "info");
      (noCode && noCode.severity === "warning" ? s.warn : s.error)(
        `${lib.backend}_self_test`,
        `self-test on ${lib.backend} failed: ${what}`,
        noCode
          ? noCode.fix!
          : `rebuild (${BUILD}) and run the tests (bun test); if it persists, attach \`flashattn doctor --json\` to a bug report`,
        [t.problem, t.kernel ? `kernel: ${t.kernel}` : ""].filter(Boolean),
      );
    }
  }
  prebuiltRules(f, s);
  return s.list;
}

/**
 * Each prebuilt library (npm package, beside the standalone executable): its manifest, and whether it can load and
 * run on this machine, and if not why: refused (bytes differ from the manifest), glibc older than the file needs,
 * no GPU of its kind, an NVIDIA driver older than the manifest's minimum, or the loader's own words.
 */
function prebuiltRules(f: DoctorFacts, s: ReturnType<typeof sectionFindings>): void {
  for (const p of f.flashattn.prebuilt ?? []) {
    const name = `prebuilt ${p.path.split("/").pop()}`;
    const m = p.manifest;
    const reinstall = p.source === "package"
      ? "reinstall flashattn (npm i -g flashattn, or npm i flashattn in the project)"
      : "download and unpack the release archive again";
    if (p.refused || !m) {
      s.error(
        `${p.backend}_prebuilt_refused`,
        `${name} (${p.source}) is not loaded: ${p.refused ?? "no manifest"}`,
        reinstall,
        [p.path],
      );
      continue;
    }
    const needs = [
      m.needs.glibc ? `glibc ≥ ${m.needs.glibc}` : "",
      // The C++ runtime is the other system library a build machine's compiler ties us to (GCC 12: GLIBCXX_3.4.30).
      ...(m.needs.symbol_versions["libstdc++.so.6"] ?? []).filter((v) => v.startsWith("GLIBCXX_")).map((v) =>
        `libstdc++ ${v}`
      ),
      m.min_nvidia_driver ? `NVIDIA driver ≥ ${m.min_nvidia_driver}` : "",
      ...m.needs.libraries.filter((l) => !/^(libc|libm|libgcc_s|libstdc\+\+|ld-linux[\w-]*)\.so/.test(l)),
    ].filter(Boolean);
    const details = [
      p.path,
      `commit ${m.commit}, ${
        [m.compiler, ...Object.entries(m.toolkit).map(([k, v]) => `${k.toUpperCase()} ${v}`)]
          .filter((t, i) => i === 0 || !m.compiler.includes(t)).join(", ")
      }`,
      m.archs.length ? `targets: ${m.archs.join(", ")}` : "",
      `needs: ${needs.join(", ") || "nothing beyond the C/C++ runtime"}`,
      `sha256 ${m.sha256} (verified)`,
    ].filter(Boolean);

    const blockers: string[] = [];
    if (m.needs.glibc && f.flashattn.glibc && compareVersions(f.flashattn.glibc, m.needs.glibc) < 0) {
      blockers.push(`glibc ${f.flashattn.glibc} here is older than the ${m.needs.glibc} it needs`);
    }
    const loadError = f.flashattn.libraries.flatMap((l) => l.attempts).find((a) => a.path === p.path && !a.ok)?.error;
    if (loadError && !blockers.length) blockers.push(`it does not load: ${loadError}`);
    let noHardware = false;
    if (p.backend === "cuda") {
      const driver = driverVersion(f);
      if (!nvidiaHardwarePresent(f)) noHardware = true;
      else if (driver && m.min_nvidia_driver && compareVersions(driver, m.min_nvidia_driver) < 0) {
        blockers.push(`NVIDIA driver ${driver} is older than the ${m.min_nvidia_driver} it needs`);
      }
    }
    if (p.backend === "hip" && !amdHardwarePresent(f)) noHardware = true;

    if (blockers.length) {
      const fix = blockers.some((b) => b.startsWith("NVIDIA driver"))
        ? `update the NVIDIA driver to ${m.min_nvidia_driver} or newer`
        : blockers.some((b) => b.startsWith("glibc"))
        ? `use a distribution with glibc ≥ ${m.needs.glibc}, or build the library here (${BUILD})`
        : missingDependencyFix(loadError ?? "", p.backend);
      // Only what this machine could use is a problem; a GPU library without its GPU is information.
      (noHardware ? s.info : p.backend === "cpu" ? s.error : s.warn)(
        `${p.backend}_prebuilt_unusable`,
        `${name} cannot run here: ${blockers.join("; ")}`,
        fix,
        details,
      );
    } else if (noHardware) {
      s.info(
        `${p.backend}_prebuilt`,
        `${name} loads, but has nothing to run on: no ${vendorName(p.backend)} GPU here`,
        undefined,
        details,
      );
    } else {
      const here = f.flashattn.glibc ? `; glibc ${f.flashattn.glibc} here` : "";
      s.ok(
        `${p.backend}_prebuilt`,
        `${name} can load and run here (needs ${needs.join(", ") || "nothing special"}${here})`,
        details,
      );
    }
  }
}

const vendorName = (backend: string) => (backend === "cuda" ? "NVIDIA" : "AMD");

function missingDependencyFix(error: string, backend: string): string {
  const dep = /(lib[\w.+-]+\.so[\w.]*): cannot open shared object file/.exec(error)?.[1];
  if (dep?.startsWith("libamdhip64")) {
    return `the library was built against ${dep}: install that ROCm version or rebuild with the installed hipcc (${BUILD})`;
  }
  if (dep?.startsWith("libcudart")) {
    return `the library needs ${dep}; rebuild it (${BUILD}), which links the CUDA runtime statically`;
  }
  if (dep) return `install ${dep} or rebuild the library here (${BUILD})`;
  return `rebuild the ${backend} library (${BUILD}) and check it with ldd`;
}

/** Built for vs running on: the CUDA version against the driver, the compiled archs against each GPU. */
function cudaBuildRules(f: DoctorFacts, lib: LibraryFacts, s: ReturnType<typeof sectionFindings>): void {
  const built = lib.info?.built_with?.cuda;
  const driver = driverVersion(f);
  const supported = driverCudaVersion(f);
  // Driver libraries left on a machine without an NVIDIA GPU run nothing: what they could not run is information.
  const gpu = nvidiaHardwarePresent(f);
  let runs: "full" | "minor-compat" | "no" | undefined;
  if (built && driver) {
    runs = driverRuns(built, driver);
    const major = majorOf(built);
    if (runs === "no") {
      const message = `libflashattn_cuda was built with CUDA ${built}, which needs driver ≥ ${
        minimumDriverFor(built)
      } (any ${driverBranchForCudaMajor[major] ?? ""}+ under minor-version compatibility); this driver is ${driver}${
        supported ? ` (CUDA ${supported})` : ""
      }`;
      if (gpu) {
        s.error(
          "cuda_driver_too_old",
          message,
          `upgrade the NVIDIA driver to ${
            driverBranchForCudaMajor[major] ?? minimumDriverFor(built)
          } or newer, or rebuild the library with a toolkit no newer than CUDA ${
            supported ?? "the driver supports"
          } (CUDA_HOME=<that toolkit> ${BUILD} cuda); data-center GPUs can also use the cuda-compat-${major}-${
            built.split(".")[1] ?? 0
          } package`,
        );
      } else s.info("cuda_driver_too_old", `${message} (no NVIDIA GPU here, so nothing runs on it)`);
    } else if (runs === "minor-compat" && gpu) {
      s.info(
        "cuda_minor_compat",
        `libflashattn_cuda (CUDA ${built}) runs on driver ${driver} under minor-version compatibility: it must carry native code (SASS) for each GPU, PTX from a newer toolkit cannot be JIT-compiled`,
        `upgrade the driver to ≥ ${
          minimumDriverForCuda[majorMinor(built)] ?? "the toolkit's minimum"
        } for the full feature set`,
      );
    }
  }
  const archs = lib.info?.archs ?? [];
  if (!archs.length) return;
  for (const gpu of nvidiaGpus(f)) {
    if (!gpu.cc) continue;
    const support = archSupport(archs, gpu.cc);
    const sm = smName(gpu.cc);
    // A fix may only ask for what the build makes: it has one fixed list of targets (tables.ts cudaBuildTargets).
    const rebuilt = buildSupport(gpu.cc);
    if (support === "none") {
      const nvccNeeded = firstCudaForCapability[gpu.cc];
      const message = `libflashattn_cuda has no code for GPU ${gpu.index} (${gpu.name}, ${sm}): built for ${
        archs.join(", ")
      } ("no kernel image is available for execution on the device")`;
      if (rebuilt === "none") {
        s.warn(
          `cuda_arch_gpu${gpu.index}`,
          `${message}; flashattn's CUDA kernels start at sm_75 (Turing), so no build serves this GPU`,
          "use the CPU backend here (auto picks it; FLASHATTN_BACKEND=cpu says so), or a GPU of compute capability 7.5 or newer",
        );
      } else {
        s.error(
          `cuda_arch_gpu${gpu.index}`,
          message,
          `rebuild it here: ${BUILD} cuda (its targets ${
            rebuilt === "sass" ? `include ${sm}` : `end in compute_90 PTX, which runs on ${sm}`
          }${nvccNeeded ? `; needs nvcc ≥ ${nvccNeeded}` : ""})`,
        );
      }
    } else if (support === "ptx") {
      if (runs === "minor-compat") {
        s.error(
          `cuda_arch_gpu${gpu.index}`,
          `GPU ${gpu.index} (${sm}) has only PTX in libflashattn_cuda and this driver is too old to JIT-compile PTX from CUDA ${built}`,
          rebuilt === "sass"
            ? `rebuild it here (${BUILD} cuda, whose targets include ${sm}) or upgrade the driver`
            : `upgrade the driver to ≥ ${
              minimumDriverForCuda[majorMinor(built!)] ?? "the toolkit's minimum"
            }, or rebuild with a toolkit no newer than the driver supports (CUDA_HOME=<that toolkit> ${BUILD} cuda)`,
        );
      } else {
        s.info(
          `cuda_arch_gpu${gpu.index}`,
          `GPU ${gpu.index} (${sm}) runs libflashattn_cuda by JIT-compiling its PTX (slow first launch; tuned kernels for ${sm} are not included)`,
          rebuilt === "sass" ? `rebuild it here for native code: ${BUILD} cuda (its targets include ${sm})` : undefined,
        );
      }
    }
  }
}

function hipBuildRules(f: DoctorFacts, lib: LibraryFacts, s: ReturnType<typeof sectionFindings>): void {
  const built = lib.info?.built_with?.hip;
  const runtime = f.amd.hip.runtime_version;
  if (built && runtime && majorOf(built) !== majorOf(runtime)) {
    // Without an AMD GPU the mismatch runs nothing: information, like the CUDA driver rules.
    const gpu = amdHardwarePresent(f);
    (gpu ? s.error : s.info)(
      "hip_version",
      `libflashattn_hip was built with HIP ${built} but the runtime is HIP ${runtime}${
        gpu ? "" : " (no AMD GPU here, so nothing runs on it)"
      }`,
      `rebuild it with this ROCm's hipcc: ${BUILD} hip`,
    );
  }
  const archs = (lib.info?.archs ?? []).map(gfxBase);
  if (!archs.length) return;
  for (const d of f.amd.hip.devices ?? []) {
    const gfx = d.gcn_arch_name && gfxBase(d.gcn_arch_name);
    if (gfx && !archs.includes(gfx)) {
      s.error(
        `hip_arch_gpu${d.index}`,
        `libflashattn_hip has no code for GPU ${d.index} (${d.name ?? "AMD GPU"}, ${gfx}): built for ${
          archs.join(", ")
        }`,
        `rebuild with ${gfx} among the offload targets: FLASHATTN_HIP_ARCHS=${
          [...new Set([...archs, gfx])].join(",")
        } ${BUILD} hip (the installed ROCm must ship device libraries for ${gfx})`,
      );
    }
  }
}
