// The Python stack: torch against the GPU and the driver, flash_attn (and why its import fails), flash_attn_3, the
// rotary / layer_norm extensions, triton, and which attn_implementation transformers can use.
import type { DoctorFacts, Finding, PyModuleFacts, TorchFacts } from "../facts.ts";
import { hiddenByVisibleDevices } from "./nvidia.ts";
import {
  amdHardwarePresent,
  archSupport,
  compareVersions,
  driverCudaVersion,
  driverRuns,
  driverVersion,
  gfxBase,
  majorMinor,
  majorOf,
  nvidiaGpus,
  nvidiaHardwarePresent,
  sectionFindings,
  smName,
} from "./common.ts";
import {
  CUDA_13_MIN_CC,
  FLASH_ATTN_2_MIN_CC,
  FLASH_ATTN_3_CC,
  FLASH_ATTN_3_MIN_CUDA,
  flashAttnCkArchs,
  minimumDriverForCuda,
  SDPA_MIN_TORCH,
  TORCH_ROCM_INDEX,
  torchCudaIndexes,
  torchIndexUrl,
} from "./tables.ts";

export type UndefinedSymbolKind = "cxx11-abi" | "torch-version" | "other";

/**
 * What an `undefined symbol` in a flash_attn import error means. The pre-C++11 std::string mangles as `Ss`, the
 * C++11 one as `NSt7__cxx1112basic_string...`: a wheel built with one ABI looks for torch symbols (c10::Error's
 * constructor is the usual first) in the other spelling. Any other missing c10/at/torch symbol means the wheel was
 * built against a different torch version.
 */
export function classifyUndefinedSymbol(symbol: string): { kind: UndefinedSymbolKind; wheelAbi?: boolean } {
  const fromTorch = /^_ZNK?(3c10|2at|5torch)/.test(symbol);
  if (symbol.includes("__cxx11")) return { kind: "cxx11-abi", wheelAbi: true };
  // `Ss` as a type code follows a digit or an upper-case code (ESs, RKSs), never a lower-case identifier letter.
  if (fromTorch && /(?<![a-z])Ss/.test(symbol)) return { kind: "cxx11-abi", wheelAbi: false };
  if (fromTorch) return { kind: "torch-version" };
  return { kind: "other" };
}

export interface WheelTag {
  cuda?: string;
  rocm?: string;
  torch: string;
  cxx11abi: boolean;
}

/** flash-attn's wheel tag "+cu12torch2.8cxx11abiTRUE" (or "+rocm63torch2.6...") from a version or a wheel URL. */
export function parseWheelTag(text: string | undefined): WheelTag | undefined {
  const m = /\+(?:cu(\d+)|rocm(\d)(\d))torch(\d+\.\d+)cxx11abi(TRUE|FALSE)/i.exec(text ?? "");
  if (!m) return undefined;
  return {
    cuda: m[1],
    rocm: m[2] ? `${m[2]}.${m[3]}` : undefined,
    torch: m[4],
    cxx11abi: m[5].toUpperCase() === "TRUE",
  };
}

/**
 * The newest PyTorch CUDA wheel index this driver runs (cu130 on R580+, cu128 on R570+, ...) that still has code
 * for every GPU of compute capability `ccs` (cu130 has none below sm_75).
 */
export function torchIndexForDriver(driver: string | undefined, ccs: readonly string[] = []): string {
  const old = ccs.some((cc) => compareVersions(cc, CUDA_13_MIN_CC) < 0);
  const candidates = torchCudaIndexes.filter((t) => !old || majorOf(t.cuda) < 13);
  return (candidates.find((t) => !driver || driverRuns(t.cuda, driver) !== "no") ?? candidates.at(-1)!).index;
}

/** The torch wheel index for this machine: its driver and its GPUs. */
const torchIndexHere = (f: DoctorFacts) =>
  torchIndexForDriver(driverVersion(f), nvidiaGpus(f).map((g) => g.cc).filter((cc): cc is string => !!cc));

/** "triton 3.5.1", or just "triton" when the version is unknown */
const named = (module: string, version?: string) => (version ? `${module} ${version}` : module);

const pipTorch = (index: string) => `pip install --force-reinstall torch --index-url ${torchIndexUrl(index)}`;
const reinstall = (dist: string) =>
  `pip uninstall -y ${dist} && pip install ${dist} --no-build-isolation --no-cache-dir`;
const FA_REINSTALL = reinstall("flash-attn");

export function pythonRules(f: DoctorFacts): Finding[] {
  const s = sectionFindings("python");
  const py = f.python;
  // The interpreter the user named must run: the checks below are about that environment, not some other python.
  const chosenPython = f.host.env.FLASHATTN_PYTHON;
  if (chosenPython && (py.status === "absent" || py.status === "error")) {
    s.error(
      "interpreter",
      `FLASHATTN_PYTHON=${chosenPython} does not run: ${py.error ?? "no answer"}`,
      "point FLASHATTN_PYTHON at your environment's python (in that environment: python -c 'import sys; print(sys.executable)'), or unset it to check python3 on PATH",
    );
    return s.list;
  }
  if (py.status === "absent") {
    if (py.error?.startsWith("skipped")) s.info("absent", `PyTorch / flash-attn checks ${py.error}`);
    else {s.info(
        "absent",
        `${py.error ?? "python3 not found"}: PyTorch / flash-attn checks skipped`,
        "set FLASHATTN_PYTHON to the interpreter of your environment to check it",
      );}
    return s.list;
  }
  if (py.status !== "ok") {
    s.warn(
      "probe_failed",
      `the Python probe did not finish: ${py.error}`,
      "run `python3 -c 'import torch, flash_attn'` to see where it hangs or fails",
    );
    return s.list;
  }
  s.ok("python", `Python ${py.version} (${py.executable})`);
  const torch = py.torch;
  if (!torch?.installed) {
    s.info("torch", "PyTorch not installed: nothing of the Python attention stack to check");
    return s.list;
  }
  const torchWorks = torchRules(f, torch, s);
  if (!torchWorks) return s.list;
  flashAttnRules(f, torch, s);
  flashAttn3Rules(f, torch, s);
  extensionRules(f, s);
  transformersRules(f, torch, s);
  return s.list;
}

type Builder = ReturnType<typeof sectionFindings>;

/** Returns whether torch imports (the later checks need it). */
function torchRules(f: DoctorFacts, torch: TorchFacts, s: Builder): boolean {
  if (torch.importable === false) {
    s.error(
      "torch_import",
      `import torch fails: ${torch.import_error}`,
      `reinstall PyTorch: ${pipTorch(torchIndexHere(f))}`,
    );
    return false;
  }
  const build = torch.cuda ? `CUDA ${torch.cuda}` : torch.hip ? `ROCm/HIP ${torch.hip}` : "CPU only";
  const nvidia = nvidiaHardwarePresent(f), amd = amdHardwarePresent(f);
  const driver = driverVersion(f);

  if (!torch.cuda && !torch.hip) {
    if (nvidia) {
      s.error(
        "torch_cpu_only",
        `torch ${torch.version} is a CPU-only build, but this machine has an NVIDIA GPU`,
        pipTorch(torchIndexHere(f)),
      );
    } else if (amd) {
      s.error(
        "torch_cpu_only",
        `torch ${torch.version} is a CPU-only build, but this machine has an AMD GPU`,
        pipTorch(TORCH_ROCM_INDEX),
      );
    } else {
      s.ok("torch", `torch ${torch.version} (${build}; no GPU here)`);
    }
    return true;
  }
  if (torch.cuda && !nvidia && amd) {
    s.error(
      "torch_wrong_vendor",
      `torch ${torch.version} is built for CUDA but this machine's GPU is AMD`,
      pipTorch(TORCH_ROCM_INDEX),
    );
    return true;
  }
  if (torch.hip && !amd && nvidia) {
    s.error(
      "torch_wrong_vendor",
      `torch ${torch.version} is built for ROCm but this machine's GPU is NVIDIA`,
      pipTorch(torchIndexHere(f)),
    );
    return true;
  }
  if (!nvidia && !amd) {
    s.ok("torch", `torch ${torch.version} (${build}; no GPU here, so torch.cuda is unavailable)`);
    return true;
  }

  if (!torch.cuda_available) {
    const runs = torch.cuda && driver ? driverRuns(torch.cuda, driver) : undefined;
    if (runs === "no") {
      s.error(
        "torch_driver_too_old",
        `torch ${torch.version} is built with CUDA ${torch.cuda}, which needs driver ≥ ${
          minimumDriverForCuda[majorMinor(torch.cuda!)] ?? "a newer one"
        }; this driver is ${driver} (CUDA ${driverCudaVersion(f) ?? "?"})`,
        `upgrade the NVIDIA driver, or install a torch this driver runs: ${pipTorch(torchIndexHere(f))}`,
      );
    } else {
      s.error(
        "torch_no_gpu",
        `torch ${torch.version} (${build}) cannot use the GPU: torch.cuda.is_available() is False${
          torch.cuda_error ? ` (${torch.cuda_error})` : ""
        }`,
        hiddenByVisibleDevices(f)?.fix ??
          "see the NVIDIA/AMD sections above; check CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES",
      );
    }
    return true;
  }

  const devices = torch.devices ?? [];
  s.ok(
    "torch",
    `torch ${torch.version} (${build}), ${devices.length} GPU${devices.length === 1 ? "" : "s"} available${
      devices[0] ? `: ${devices[0].name}` : ""
    }`,
    torch.arch_list?.length ? [`arch list: ${torch.arch_list.join(" ")}`] : undefined,
  );

  // The GPU's architecture must be in torch's arch list (else "sm_120 is not compatible with the current PyTorch").
  for (const [i, d] of devices.entries()) {
    if (!torch.arch_list?.length) break;
    if (torch.hip) {
      const gfx = gfxBase(d.gcn_arch_name ?? "");
      if (gfx && !torch.arch_list.map(gfxBase).includes(gfx)) {
        s.error(
          `torch_arch${i}`,
          `torch ${torch.version} has no kernels for GPU ${i} (${d.name}, ${gfx}): built for ${
            torch.arch_list.join(" ")
          }`,
          `install a ROCm build of torch that supports ${gfx}: ${pipTorch(TORCH_ROCM_INDEX)}`,
        );
      }
    } else if (archSupport(torch.arch_list, d.capability) === "none") {
      s.error(
        `torch_arch${i}`,
        `torch ${torch.version} does not support GPU ${i} (${d.name}, ${smName(d.capability)}): built for ${
          torch.arch_list.join(" ")
        } ("${smName(d.capability)} is not compatible with the current PyTorch installation")`,
        `install a CUDA build of torch that supports it: ${pipTorch(torchIndexHere(f))}`,
      );
    }
  }
  return true;
}

/** The compute capabilities torch (else the driver) reports. */
function capabilities(f: DoctorFacts, torch: TorchFacts): string[] {
  const fromTorch = (torch.devices ?? []).filter(() => !torch.hip).map((d) => d.capability);
  return fromTorch.length ? fromTorch : nvidiaGpus(f).flatMap((g) => (g.cc ? [g.cc] : []));
}

function describeImportFailure(
  m: PyModuleFacts,
  torch: TorchFacts,
  tag: WheelTag | undefined,
  pkg: { module: string; dist: string } = { module: "flash_attn", dist: "flash-attn" },
): { message: string; fix: string } {
  const again = reinstall(pkg.dist);
  const symbol = m.undefined_symbol;
  const torchMM = majorMinor(torch.version ?? "");
  if (symbol) {
    const kind = classifyUndefinedSymbol(symbol);
    if (kind.kind === "cxx11-abi") {
      const want = torch.cxx11_abi ?? !kind.wheelAbi;
      return {
        message: `C++ ABI mismatch: the ${pkg.module} binary was built with CXX11_ABI=${
          kind.wheelAbi ? "TRUE" : "FALSE"
        } but torch uses ${want ? "TRUE" : "FALSE"} (undefined symbol ${symbol})`,
        fix: `install the wheel tagged cxx11abi${
          want ? "TRUE" : "FALSE"
        } for torch ${torchMM}, or build it here: ${again}`,
      };
    }
    if (kind.kind === "torch-version") {
      return {
        message: `${pkg.module} was built for another torch${
          tag ? ` (${tag.torch})` : ""
        } than the installed ${torch.version} (undefined symbol ${symbol})`,
        fix: `install the ${pkg.dist} wheel whose tag says torch${torchMM}, or rebuild it against this torch: ${again}`,
      };
    }
    return { message: `import ${pkg.module} fails: undefined symbol ${symbol}`, fix: again };
  }
  const lib = /(libcudart\.so\.(\d+)|libc10\w*\.so|libtorch\w*\.so)[^:]*: cannot open shared object file/.exec(
    m.import_error ?? "",
  );
  if (lib?.[2]) {
    return {
      message: `${pkg.module} needs ${lib[1]} (CUDA ${lib[2]}) but torch brings CUDA ${
        torch.cuda ?? "none"
      }: ${m.import_error}`,
      fix: `install the ${pkg.dist} wheel for CUDA ${majorOf(torch.cuda ?? "12")} (tag cu${
        majorOf(torch.cuda ?? "12")
      }), or rebuild it: ${again}`,
    };
  }
  if (/flash_attn_2_cuda/.test(m.import_error ?? "") && /No module named/.test(m.import_error ?? "")) {
    return {
      message: `${pkg.module} is installed without its CUDA extension (flash_attn_2_cuda): ${m.import_error}`,
      fix: again,
    };
  }
  return { message: `import ${pkg.module} fails: ${m.import_error}`, fix: again };
}

function flashAttnRules(f: DoctorFacts, torch: TorchFacts, s: Builder): void {
  const fa = f.python.flash_attn;
  const ccs = capabilities(f, torch);
  const ampere = ccs.some((cc) => compareVersions(cc, FLASH_ATTN_2_MIN_CC) >= 0);
  if (!fa?.installed) {
    if (torch.cuda_available && (ampere || torch.hip)) {
      s.info(
        "flash_attn",
        "flash_attn is not installed (transformers and others fall back to SDPA)",
        "pip install flash-attn --no-build-isolation",
      );
    } else {
      s.info("flash_attn", "flash_attn is not installed");
    }
    return;
  }
  const tag = parseWheelTag(fa.version) ?? parseWheelTag(fa.wheel_url);
  if (fa.importable === false) {
    const { message, fix } = describeImportFailure(fa, torch, tag);
    s.error("flash_attn_import", message, fix, [`import error: ${fa.import_error}`]);
  }
  // The wheel tag names what it was built for; each part must match torch. An undefined symbol has already named
  // the torch or ABI mismatch, so only the CUDA part is left to say then.
  const explainedByImport = fa.importable === false && !!fa.undefined_symbol;
  if (tag) {
    const sev = fa.importable === false ? s.error : s.warn;
    const torchMM = majorMinor(torch.version ?? "");
    if (tag.torch !== torchMM && !explainedByImport) {
      sev(
        "flash_attn_tag_torch",
        `the flash-attn wheel is built for torch ${tag.torch}, torch is ${torch.version}`,
        `install the wheel tagged torch${torchMM}: ${FA_REINSTALL}`,
      );
    }
    if (tag.cuda && torch.cuda && majorOf(tag.cuda) !== majorOf(torch.cuda)) {
      sev(
        "flash_attn_tag_cuda",
        `the flash-attn wheel is built for CUDA ${tag.cuda}, torch for CUDA ${torch.cuda}`,
        `install the wheel tagged cu${majorOf(torch.cuda)}: ${FA_REINSTALL}`,
      );
    }
    if (torch.cxx11_abi !== undefined && tag.cxx11abi !== torch.cxx11_abi && !explainedByImport) {
      sev(
        "flash_attn_tag_abi",
        `the flash-attn wheel is tagged cxx11abi${tag.cxx11abi ? "TRUE" : "FALSE"} but torch uses CXX11_ABI=${
          torch.cxx11_abi ? "1" : "0"
        }`,
        `install the wheel tagged cxx11abi${torch.cxx11_abi ? "TRUE" : "FALSE"}: ${FA_REINSTALL}`,
      );
    }
  }
  if (fa.importable === false) return;

  if (torch.hip) {
    const archs = (torch.devices ?? []).map((d) => gfxBase(d.gcn_arch_name ?? "")).filter(Boolean);
    const unsupported = archs.filter((a) => !flashAttnCkArchs.includes(a));
    if (unsupported.length) {
      s.warn(
        "flash_attn_rocm_arch",
        `flash_attn's Composable Kernel backend does not support ${unsupported.join(", ")}`,
        'use its Triton backend: FLASH_ATTENTION_TRITON_AMD_ENABLE=TRUE (reinstall with it set), or attn_implementation="sdpa"',
      );
    } else {
      s.ok("flash_attn", `flash_attn ${fa.version} imports (ROCm)`);
    }
    return;
  }
  const old = ccs.filter((cc) => compareVersions(cc, FLASH_ATTN_2_MIN_CC) < 0);
  if (old.length) {
    s.warn(
      "flash_attn_arch",
      `flash_attn ${fa.version} imports, but FlashAttention 2 needs Ampere (sm_80) or newer; this GPU is ${
        old.map(smName).join(", ")
      } ("FlashAttention only supports Ampere GPUs or newer.")`,
      'use attn_implementation="sdpa" (or xformers) on this GPU; flash_attn cannot run here',
    );
  } else {
    s.ok(
      "flash_attn",
      `flash_attn ${fa.version} imports${
        tag
          ? ` (wheel ${tag.cuda ? `cu${tag.cuda}` : `rocm${tag.rocm}`}, torch ${tag.torch}, cxx11abi ${
            tag.cxx11abi ? "TRUE" : "FALSE"
          })`
          : ""
      }`,
    );
  }
}

function flashAttn3Rules(f: DoctorFacts, torch: TorchFacts, s: Builder): void {
  const fa3 = f.python.flash_attn_3;
  const hopper = capabilities(f, torch).some((cc) => cc === FLASH_ATTN_3_CC);
  if (!fa3?.installed) {
    if (hopper && torch.cuda_available) {
      s.info(
        "flash_attn_3",
        "flash_attn_3 (FlashAttention 3, faster on Hopper) is not installed",
        `optional: build it from flash-attention's hopper/ directory (cd hopper && python setup.py install; needs CUDA ≥ ${FLASH_ATTN_3_MIN_CUDA})`,
      );
    }
    return;
  }
  if (fa3.importable === false) {
    const { message, fix } = describeImportFailure(fa3, torch, undefined, {
      module: "flash_attn_3",
      dist: "flash-attn-3",
    });
    s.warn("flash_attn_3_import", message, fix);
    return;
  }
  if (!hopper) {
    s.warn(
      "flash_attn_3_arch",
      `${
        named("flash_attn_3", fa3.version)
      } is installed, but FlashAttention 3 runs only on Hopper (sm_90); this GPU is ${
        capabilities(f, torch).map(smName).join(", ") || "unknown"
      }`,
      "use flash_attn (FA2) or SDPA on this GPU",
    );
  } else if (torch.cuda && compareVersions(torch.cuda, FLASH_ATTN_3_MIN_CUDA) < 0) {
    s.warn(
      "flash_attn_3_cuda",
      `flash_attn_3 needs CUDA ≥ ${FLASH_ATTN_3_MIN_CUDA}; torch is built with CUDA ${torch.cuda}`,
      pipTorch(torchIndexHere(f)),
    );
  } else {
    s.ok("flash_attn_3", `${named("flash_attn_3", fa3.version)} imports (Hopper)`);
  }
}

/** flash_attn's optional CUDA extensions: what installs each (the fix when an import misses it). */
const optionalExtensions: Record<string, string> = { rotary_emb: "csrc/rotary", dropout_layer_norm: "csrc/layer_norm" };
const installExtension = (dir: string) =>
  `pip install --no-build-isolation "git+https://github.com/Dao-AILab/flash-attention.git#subdirectory=${dir}"`;

/**
 * What people import from flash_attn beyond attention (flash_attn.layers.rotary, flash_attn.ops.rms_norm,
 * flash_attn.ops.triton.layer_norm), each as the import went: the module it missed is named, with what installs it.
 * Asked only of a flash_attn that imports: otherwise its own import failure is the one finding.
 */
function flashAttnModuleRules(f: DoctorFacts, s: Builder): boolean {
  const modules = f.python.flash_attn_modules;
  if (!modules) return false; // a report from before the doctor imported them: the extension facts below
  for (const m of modules) {
    const id = `import_${m.module.replace(/^flash_attn\./, "").replace(/\./g, "_")}`;
    if (m.importable) {
      s.ok(id, `import ${m.module} works`);
      continue;
    }
    const missing = m.missing_module?.split(".")[0];
    const extension = missing && optionalExtensions[missing];
    if (missing === "flash_attn") {
      s.warn(
        id,
        `this flash_attn${
          f.python.flash_attn?.version ? ` ${f.python.flash_attn.version}` : ""
        } has no ${m.module} (${m.import_error})`,
        `upgrade it: pip install -U flash-attn --no-build-isolation`,
      );
    } else if (extension) {
      s.info(
        id,
        `import ${m.module} fails: flash_attn's optional ${missing} extension (${extension}) is not installed (${m.import_error})`,
        installExtension(extension),
      );
    } else if (missing) {
      s.warn(
        id,
        `import ${m.module} fails: ${missing} is not installed (${m.import_error})`,
        missing === "triton"
          ? "pip install triton (then `pip check` says whether it is the release your torch requires)"
          : `pip install ${missing}`,
      );
    } else {
      s.warn(
        id,
        `import ${m.module} fails: ${m.import_error}`,
        /triton/i.test(m.import_error ?? "")
          ? "pip install --force-reinstall triton (the version your torch pins)"
          : `reinstall flash-attn against this torch: ${FA_REINSTALL}`,
      );
    }
  }
  // What those modules run on, by version (a failed import above already named what is missing).
  const needs = [["triton", f.python.triton], ["einops", f.python.einops]] as const;
  const present = needs.filter(([, m]) => m?.importable).map(([name, m]) => named(name, m?.version));
  if (present.length) s.ok("needs", `${present.join(", ")} import${present.length === 1 ? "s" : ""}`);
  return true;
}

/** flash_attn's optional CUDA extensions (csrc/rotary, csrc/layer_norm) and triton, which its rotary code needs. */
function extensionRules(f: DoctorFacts, s: Builder): void {
  const py = f.python;
  // A flash_attn that does not import has one finding, its import failure: nothing optional matters before it.
  if (!py.flash_attn?.installed || py.flash_attn.importable === false) return;
  if (flashAttnModuleRules(f, s)) return;
  const extensions = [
    ["rotary", "rotary_emb", py.rotary, "csrc/rotary"],
    ["layer_norm", "dropout_layer_norm", py.layer_norm, "csrc/layer_norm"],
  ] as const;
  for (const [id, module, facts, dir] of extensions) {
    const install = installExtension(dir);
    if (!facts?.installed) {
      s.info(
        id,
        `flash_attn's ${module} extension (${dir}) is not installed: models that import it (Qwen: "import flash_attn ${
          id === "rotary" ? "rotary" : "rms_norm"
        } fail") fall back to slower code`,
        install,
      );
    } else if (facts.importable === false) {
      s.warn(
        id,
        `${module} is installed but does not import: ${facts.import_error}`,
        `rebuild it against this torch: ${install}`,
      );
    } else {
      s.ok(id, `${named(module, facts.version)} imports`);
    }
  }
  const triton = py.triton;
  if (!triton?.installed) {
    s.warn(
      "triton",
      "triton is not installed: flash_attn's rotary embedding (flash_attn.layers.rotary) needs it",
      "pip install triton",
    );
  } else if (triton.importable === false) {
    s.warn(
      "triton",
      `triton does not import: ${triton.import_error}`,
      "pip install --force-reinstall triton (the version your torch pins)",
    );
  } else {
    s.ok("triton", `${named("triton", triton.version)} imports`);
  }
}

/** Which attn_implementation transformers can use here, best first. */
export function attnImplementations(f: DoctorFacts): string[] {
  const torch = f.python.torch;
  const tf = f.python.transformers;
  if (!torch?.installed || torch.importable === false) return [];
  const impls: string[] = [];
  const fa = f.python.flash_attn;
  const ccs = torch.devices?.map((d) => d.capability) ?? [];
  const faWorks = fa?.importable === true && torch.cuda_available === true &&
    (!!torch.hip || ccs.some((cc) => compareVersions(cc, FLASH_ATTN_2_MIN_CC) >= 0));
  // transformers' own check only asks whether the package imports; the GPU generation matters as much.
  if (faWorks && tf?.flash_attn_2_available !== false) impls.push("flash_attention_2");
  if (tf?.sdpa_available ?? compareVersions(torch.version ?? "0", SDPA_MIN_TORCH) >= 0) impls.push("sdpa");
  impls.push("eager");
  return impls;
}

function transformersRules(f: DoctorFacts, torch: TorchFacts, s: Builder): void {
  const tf = f.python.transformers;
  if (!tf?.installed) return;
  if (tf.importable === false) {
    s.warn("transformers", `transformers does not import: ${tf.import_error}`, "pip install --upgrade transformers");
    return;
  }
  const impls = attnImplementations(f);
  const why = impls.includes("flash_attention_2")
    ? ""
    : torch.cuda_available
    ? " (flash_attention_2 needs flash_attn importable on an Ampere+ GPU)"
    : " (flash_attention_2 needs a GPU)";
  s.ok(
    "transformers",
    `transformers ${tf.version}: attn_implementation can be ${impls.map((i) => `"${i}"`).join(", ")}${why}`,
  );
}
