// The doctor's rules against machines: this CPU-only one and the H100 as captured, and derived fixtures of machines
// we cannot reach (each fixture names its provenance). For each: the exit code, the chosen backend, and the
// findings that must (and must not) appear with their severity and the gist of their fix.
import { describe, expect, test } from "bun:test";
import type { DoctorFacts, DoctorOptions, DoctorReport, Finding } from "../doctor/facts.ts";
import { loadFixture } from "./fixtures/doctor/load.ts";
import { buildReport } from "../doctor/report.ts";
import { validate } from "../doctor/schema.ts";

interface Expected {
  id: string;
  severity: Finding["severity"];
  /** substrings the message must contain */
  message?: string[];
  /** substrings the fix must contain */
  fix?: string[];
  /** the finding must print no fix (there is nothing the user could do) */
  noFix?: boolean;
}

interface Case {
  fixture: string;
  options?: DoctorOptions;
  exitCode: 0 | 1;
  chosen: string | null;
  expect: Expected[];
  /** finding ids that must not appear */
  absent?: string[];
}

function diagnose(facts: DoctorFacts, options: DoctorOptions = {}): DoctorReport {
  return buildReport(facts, options, { version: "test", runtime: "bun test", createdAt: "2026-11-25T00:00:00Z" });
}

function checkCase(c: Case) {
  const { report: saved, provenance } = loadFixture(c.fixture);
  if (saved.schema === undefined) throw new Error(`${c.fixture}: not a report`);
  // Captured reports are their own provenance; every derived fixture must say where its values come from.
  const captured = ["cpu-only.json", "cpu-only-gpu-libraries-built.json", "h100.json"];
  if (!captured.includes(c.fixture)) expect(provenance?.length ?? 0).toBeGreaterThan(40);
  else expect(validate(saved)).toEqual([]); // a capture is a report as `--json` printed it
  const report = diagnose(saved.facts, c.options);
  const byId = new Map(report.findings.map((f) => [f.id, f]));
  for (const want of c.expect) {
    const got = byId.get(want.id);
    if (!got) {
      throw new Error(
        `${c.fixture}: expected finding ${want.id}; got ${
          report.findings.map((f) => `${f.id}(${f.severity})`).join(", ")
        }`,
      );
    }
    expect(`${want.id}: ${got.severity}`).toBe(`${want.id}: ${want.severity}`);
    for (const s of want.message ?? []) expect(got.message).toContain(s);
    for (const s of want.fix ?? []) expect(got.fix ?? "").toContain(s);
    if (want.noFix) expect(`${want.id}: ${got.fix}`).toBe(`${want.id}: undefined`);
  }
  for (const id of c.absent ?? []) {
    if (byId.has(id)) throw new Error(`${c.fixture}: finding ${id} should not appear: ${byId.get(id)!.message}`);
  }
  expect(report.summary.chosen_backend).toBe(c.chosen as never);
  expect(report.exit_code).toBe(c.exitCode);
  // Invariants of every report: schema-valid, and a fix under every warning and error.
  expect(validate(JSON.parse(JSON.stringify(report)))).toEqual([]);
  for (const [i, f] of report.findings.entries()) {
    if (f.severity === "error" || f.severity === "warning") {
      expect(`${f.id}: ${f.fix ?? ""}`.length).toBeGreaterThan(f.id.length + 10);
    }
    // a fix that points above needs something above to point at
    if (/errors above/.test(f.fix ?? "")) {
      expect(`${f.id}: ${report.findings.slice(0, i).some((x) => x.severity === "error")}`).toBe(`${f.id}: true`);
    }
  }
  return report;
}

const cases: Case[] = [
  {
    fixture: "cpu-only.json",
    exitCode: 0,
    chosen: "cpu",
    expect: [
      { id: "nvidia.none", severity: "info" },
      { id: "amd.none", severity: "info", message: ["HIP runtime 5.2"] },
      { id: "libraries.cpu_loaded", severity: "ok", message: ["libflashattn_cpu", "ABI 1"] },
      { id: "libraries.cpu_self_test", severity: "ok" },
      { id: "libraries.cuda_missing", severity: "info" },
      { id: "backend.cpu", severity: "ok", message: ["chosen"] },
      { id: "backend.cuda", severity: "info", message: ["rejected", "no NVIDIA GPU here"] },
      { id: "python.torch", severity: "info" },
    ],
  },
  {
    // the same machine later, captured again: the CUDA and HIP libraries are built here and load, without a GPU
    fixture: "cpu-only-gpu-libraries-built.json",
    exitCode: 0,
    chosen: "cpu",
    expect: [
      { id: "libraries.cuda_loaded", severity: "ok", message: ["CUDA 13.0", "sm_90"] },
      { id: "libraries.hip_loaded", severity: "ok", message: ["HIP 5.2", "gfx90a"] },
      { id: "backend.cuda", severity: "info", message: ["no NVIDIA driver found", "no NVIDIA GPU here"] },
      { id: "backend.hip", severity: "info", message: ["/dev/kfd does not exist"] },
      { id: "backend.cpu", severity: "ok", message: ["chosen"] },
    ],
    absent: ["libraries.cuda_no_device", "libraries.hip_no_device", "libraries.cuda_self_test"],
  },
  {
    fixture: "cpu-only.json",
    options: { require: "gpu" },
    exitCode: 1,
    chosen: "cpu",
    expect: [{ id: "backend.require", severity: "error", message: ["--require gpu", "cuda rejected", "hip rejected"] }],
  },
  {
    fixture: "cpu-only.json",
    options: { require: "cpu" },
    exitCode: 0,
    chosen: "cpu",
    expect: [{ id: "backend.require", severity: "ok" }],
  },
  {
    fixture: "a100-driver535.json",
    exitCode: 1,
    chosen: "cpu",
    expect: [
      { id: "nvidia.driver", severity: "ok", message: ["535.104.05", "CUDA up to 12.2"] },
      { id: "nvidia.gpu0", severity: "ok", message: ["A100", "sm_80", "108 SMs", "163 KiB shared/block", "40 MiB L2"] },
      {
        id: "libraries.cuda_driver_too_old",
        severity: "error",
        message: ["CUDA 13.0", "580.65.06", "535.104.05"],
        fix: ["R580", "cuda-compat-13-0"],
      },

      {
        id: "backend.cuda",
        severity: "error",
        message: ["rejected", "CUDA 12.2"],
        fix: ["NVIDIA and libraries sections"],
      },
      { id: "toolkits.nvcc_newer_than_driver", severity: "warning", message: ["nvcc 13.0"], fix: ["CUDA 12.x"] },
      { id: "toolkits.nvcc_vs_torch", severity: "warning", fix: ["CUDA 12.x toolkit"] },
      { id: "python.torch", severity: "ok", message: ["2.5.1+cu121"] },
      { id: "python.flash_attn", severity: "ok", message: ["2.7.4.post1"] },
      { id: "python.rotary", severity: "info", fix: ["csrc/rotary"] },
      { id: "python.transformers", severity: "ok", message: ['"flash_attention_2", "sdpa", "eager"'] },
    ],
    absent: ["nvidia.driver_mismatch", "nvidia.stub_libcuda", "libraries.cuda_arch_gpu0", "libraries.cuda_no_device"],
  },
  {
    fixture: "t4.json",
    exitCode: 1,
    // The recorded decision chose cuda (planning needs no kernel image); the facts say it has no code for sm_75.
    chosen: "cpu",
    expect: [
      { id: "nvidia.gpu0", severity: "ok", message: ["Tesla T4", "sm_75 (Turing)", "40 SMs"] },
      // the build's targets include sm_75, so "rebuild" is a fix the user can carry out
      {
        id: "libraries.cuda_arch_gpu0",
        severity: "error",
        message: ["sm_75", "no kernel image"],
        fix: ["bun kernels/build.ts cuda", "include sm_75"],
      },
      { id: "backend.cuda", severity: "error", message: ["rejected", "no code for sm_75"] },
      { id: "libraries.cuda_self_test", severity: "error", message: ["cudaErrorNoKernelImageForDevice"] },
      { id: "python.flash_attn_arch", severity: "warning", message: ["Ampere", "sm_75"], fix: ["sdpa"] },
      { id: "python.transformers", severity: "ok", message: ['"sdpa", "eager"'] },
    ],
    absent: ["libraries.cuda_driver_too_old", "python.torch_arch0", "python.flash_attn"],
  },
  {
    fixture: "rtx5090.json",
    exitCode: 1,
    chosen: "cuda",
    expect: [
      { id: "nvidia.gpu0", severity: "ok", message: ["RTX 5090", "sm_120 (Blackwell)", "170 SMs", "96 MiB L2"] },
      // compute_90 PTX JIT-compiles on sm_120: it runs, without native code
      // no build makes sm_120 code (tables.ts cudaBuildTargets), so there is no fix to print
      { id: "libraries.cuda_arch_gpu0", severity: "info", message: ["PTX"], noFix: true },
      { id: "libraries.cuda_self_test", severity: "ok" },
      { id: "python.torch_arch0", severity: "error", message: ["sm_120", "not compatible"], fix: ["whl/cu130"] },
    ],
  },
  {
    fixture: "mi250x-rocm6.json",
    exitCode: 1,
    chosen: "cpu",
    expect: [
      { id: "amd.runtime", severity: "ok", message: ["HIP runtime 6.2"] },
      { id: "amd.gpu0", severity: "ok", message: ["MI250X", "gfx90a", "64 GiB"] },
      { id: "amd.gpu1", severity: "ok" },
      {
        id: "libraries.hip_load_failed",
        severity: "error",
        message: ["libamdhip64.so.5"],
        fix: ["libamdhip64.so.5", "hipcc"],
      },
      { id: "backend.hip", severity: "error", message: ["rejected"] },
      { id: "python.torch", severity: "ok", message: ["rocm6.2", "2 GPUs"] },
      { id: "python.flash_attn", severity: "ok", message: ["ROCm"] },
      { id: "nvidia.none", severity: "info" },
    ],
    absent: [
      "amd.kfd_permission",
      "amd.rocminfo_disagrees",
      "amd.amd_smi_disagrees",
      "python.torch_arch0",
      "python.flash_attn_rocm_arch",
    ],
  },
  {
    fixture: "mi250x-kfd-denied.json",
    exitCode: 1,
    chosen: "cpu",
    expect: [
      {
        id: "amd.kfd_permission",
        severity: "error",
        message: ["/dev/kfd", "render"],
        fix: ["usermod -aG render,video"],
      },
      { id: "python.torch_no_gpu", severity: "error" },
    ],
    absent: ["amd.hip_failed", "amd.none"],
  },
  {
    fixture: "h100.json",
    exitCode: 0,
    chosen: "cuda",
    expect: [
      // captured on the lent H100 with the device tool (see docs/doctor.md)
      { id: "nvidia.driver", severity: "ok", message: ["driver 580.159.04", "CUDA up to 13.0"] },
      {
        id: "nvidia.gpu0",
        severity: "ok",
        message: ["H100", "sm_90 (Hopper)", "132 SMs", "227 KiB shared/block", "50 MiB L2"],
      },
      { id: "libraries.cuda_loaded", severity: "ok", message: ["CUDA 13.0", "sm_90"] },
      { id: "libraries.cuda_self_test", severity: "ok", message: ["cuda-mma-sm80"] },
      { id: "python.torch", severity: "ok", message: ["2.11.0+cu130", "1 GPU available"] },
      { id: "python.flash_attn", severity: "info", fix: ["pip install flash-attn"] },
      { id: "python.flash_attn_3", severity: "info", fix: ["hopper/"] },
      { id: "backend.cuda", severity: "ok", message: ["chosen"] },
      { id: "backend.cpu", severity: "ok", message: ["usable"] },
    ],
    absent: [
      "libraries.cuda_arch_gpu0",
      "libraries.cuda_driver_too_old",
      "libraries.cuda_minor_compat",
      "python.torch_arch0",
    ],
  },
  {
    fixture: "h100-hip-library-without-rocm.json",
    exitCode: 0,
    chosen: "cuda",
    expect: [{
      id: "libraries.hip_load_failed",
      severity: "info",
      message: ["libamdhip64.so.5", "no AMD GPU here"],
      fix: ["libamdhip64.so.5"],
    }],
  },
  {
    fixture: "h100.json",
    options: { require: "cuda" },
    exitCode: 0,
    chosen: "cuda",
    expect: [{ id: "backend.require", severity: "ok" }],
  },
  {
    fixture: "stub-libcuda.json",
    options: { require: "gpu" },
    exitCode: 1,
    chosen: "cpu",
    expect: [
      {
        id: "nvidia.stub_libcuda",
        severity: "error",
        message: ["stubs/libcuda.so.1"],
        fix: ["remove /usr/local/cuda-13.0/targets/x86_64-linux/lib/stubs from LD_LIBRARY_PATH"],
      },
      { id: "backend.cuda", severity: "error", message: ["stub"] },
      { id: "backend.require", severity: "error", message: ["--require gpu", "cuda rejected"] },
    ],
    // the stub explains why the library sees no device; it is said once
    absent: ["nvidia.cuinit_failed", "libraries.cuda_no_device"],
  },
  {
    fixture: "driver-mismatch.json",
    exitCode: 1,
    chosen: "cpu",
    expect: [
      {
        id: "nvidia.driver_mismatch",
        severity: "error",
        message: ["kernel module is 580.95.05", "user-space driver is 580.159.04"],
        fix: ["reboot"],
      },
      { id: "backend.cuda", severity: "error" },
    ],
    // one cause, said once: not again as an NVML, cuInit or library finding
    absent: ["nvidia.nvml_failed", "nvidia.cuinit_failed", "libraries.cuda_no_device", "nvidia.smi_failed"],
  },
  {
    fixture: "flash-attn-undefined-cxx11-true.json",
    exitCode: 1,
    chosen: "cuda",
    expect: [
      {
        id: "python.flash_attn_import",
        severity: "error",
        message: ["ABI mismatch", "CXX11_ABI=TRUE", "torch uses FALSE"],
        fix: ["cxx11abiFALSE", "torch 2.6"],
      },
      { id: "python.transformers", severity: "ok", message: ['"sdpa", "eager"'] },
    ],
    // flash_attn itself does not import: nothing about its optional extensions or triton
    absent: [
      "python.flash_attn_tag_abi",
      "python.flash_attn_tag_torch",
      "python.flash_attn",
      "python.rotary",
      "python.layer_norm",
      "python.triton",
    ],
  },
  {
    fixture: "flash-attn-undefined-cxx11-false.json",
    exitCode: 1,
    chosen: "cuda",
    expect: [
      {
        id: "python.flash_attn_import",
        severity: "error",
        message: ["ABI mismatch", "CXX11_ABI=FALSE", "torch uses TRUE"],
        fix: ["cxx11abiTRUE", "torch 2.8"],
      },
    ],
    absent: ["python.flash_attn_tag_abi"],
  },
  {
    fixture: "flash-attn-undefined-torch-version.json",
    exitCode: 1,
    chosen: "cuda",
    expect: [
      {
        id: "python.flash_attn_import",
        severity: "error",
        message: ["another torch (2.8)", "2.9.1+cu128", "_ZN3c104cuda9SetDeviceEi"],
        fix: ["torch2.9"],
      },
    ],
    absent: ["python.flash_attn_tag_torch", "python.flash_attn_tag_abi"],
  },
  {
    fixture: "flash-attn-3-off-hopper.json",
    exitCode: 1,
    chosen: "cpu",
    expect: [{
      id: "python.flash_attn_3_arch",
      severity: "warning",
      message: ["flash_attn_3 3.0.0b1", "Hopper (sm_90)", "sm_80"],
    }],
  },
  {
    fixture: "flash-attn-3-import-failure.json",
    exitCode: 0,
    chosen: "cuda",
    expect: [{
      id: "python.flash_attn_3_import",
      severity: "warning",
      message: ["flash_attn_3 was built for another torch", "2.11.0+cu130"],
      fix: ["pip uninstall -y flash-attn-3 && pip install flash-attn-3"],
    }],
    absent: ["python.flash_attn_3"],
  },
  {
    fixture: "torch-cpu-only.json",
    exitCode: 1,
    chosen: "cuda",
    expect: [{
      id: "python.torch_cpu_only",
      severity: "error",
      message: ["2.9.1+cpu", "NVIDIA GPU"],
      fix: ["download.pytorch.org/whl/cu130"],
    }],
  },
  // ---- issue 16: verdicts that must hold outside the first fixtures ----
  {
    fixture: "forced-backend-cuda-no-gpu.json",
    exitCode: 1,
    chosen: null,
    expect: [
      {
        id: "backend.cuda",
        severity: "error",
        message: ["FLASHATTN_BACKEND=cuda allows no other backend", "libflashattn_cuda.so not found"],
        fix: ["unset FLASHATTN_BACKEND (then cpu is chosen), or set it to cpu"],
      },
      { id: "backend.cpu", severity: "info", message: ["disabled by your choice"] },
    ],
    // nothing above is wrong: no "fix the errors above"
    absent: ["backend.none"],
  },
  {
    fixture: "forced-cpu-on-h100.json",
    options: { require: "gpu" },
    exitCode: 1,
    chosen: "cpu",
    expect: [
      { id: "backend.cuda", severity: "info", message: ["disabled by your choice", "FLASHATTN_BACKEND=cpu"] },
      {
        id: "backend.require",
        severity: "error",
        message: ["--require gpu", "FLASHATTN_BACKEND=cpu disables the GPU backends"],
        fix: ["unset FLASHATTN_BACKEND", "without it gpu is usable here"],
      },
    ],
  },
  {
    fixture: "cpu-only.json",
    options: { require: "gpu" },
    exitCode: 1,
    chosen: "cpu",
    expect: [{ id: "backend.require", severity: "error", message: ["cuda rejected"], fix: ["fix the findings above"] }],
  },
  {
    fixture: "h100-edited-driver535.json",
    exitCode: 1,
    chosen: "cpu",
    // CUDA_HOME=/usr/local/cuda holds the nvcc in use (a report from before the probe looked there first)
    absent: ["toolkits.cuda_home_differs"],
    expect: [
      {
        id: "libraries.cuda_driver_too_old",
        severity: "error",
        message: ["CUDA 13.0", "535.183.01"],
        fix: ["CUDA_HOME="],
      },
      { id: "backend.cuda", severity: "error", message: ["rejected", "driver 535.183.01 is older than"] },
      { id: "backend.cpu", severity: "ok", message: ["cpu: chosen"] },
    ],
  },
  {
    fixture: "leftover-driver-no-gpu.json",
    exitCode: 0,
    chosen: "cpu",
    expect: [
      { id: "nvidia.no_gpu", severity: "info", message: ["no NVIDIA GPU"] },
      { id: "libraries.cuda_driver_too_old", severity: "info", message: ["535.183.01", "no NVIDIA GPU here"] },
      { id: "toolkits.nvcc_newer_than_driver", severity: "info" },
      { id: "backend.cuda", severity: "info" },
    ],
    absent: ["nvidia.nvml_failed", "nvidia.cuinit_failed", "libraries.cuda_no_device"],
  },
  {
    fixture: "v100-sm70.json",
    exitCode: 1,
    chosen: "cpu",
    expect: [
      {
        id: "libraries.cuda_arch_gpu0",
        severity: "warning",
        message: ["sm_70", "no build serves this GPU"],
        fix: ["use the CPU backend"],
      },
      { id: "libraries.cuda_self_test", severity: "warning", fix: ["use the CPU backend"] },
      { id: "backend.cuda", severity: "warning", message: ["no code for sm_70"], fix: ["nothing to rebuild"] },
      // torch's cu130 wheels dropped Volta: the advice is a 12.x index, not the newest the driver runs
      { id: "python.torch_arch0", severity: "error", message: ["sm_70"], fix: ["whl/cu128"] },
    ],
  },
  {
    fixture: "h100-cuda-visible-devices-empty.json",
    exitCode: 1,
    chosen: "cpu",
    expect: [
      {
        id: "nvidia.visible_devices",
        severity: "error",
        message: ['CUDA_VISIBLE_DEVICES=""', "hides every GPU", "NVML sees 1 GPU"],
        fix: ["unset CUDA_VISIBLE_DEVICES"],
      },
      { id: "python.torch_no_gpu", severity: "error", fix: ["unset CUDA_VISIBLE_DEVICES"] },
    ],
    // one cause, named once: not as a generic cuInit failure, nor again as the library's missing device
    absent: ["nvidia.cuinit_failed", "nvidia.no_visible_gpu", "libraries.cuda_no_device"],
  },
  {
    fixture: "flash-attn-rotary-without-triton.json",
    exitCode: 0,
    chosen: "cuda",
    expect: [
      {
        id: "python.import_layers_rotary",
        severity: "warning",
        message: ["flash_attn.layers.rotary", "triton is not installed"],
        fix: ["pip install triton"],
      },
      { id: "python.import_ops_rms_norm", severity: "info", message: ["dropout_layer_norm"], fix: ["csrc/layer_norm"] },
      { id: "python.import_ops_triton_layer_norm", severity: "warning", fix: ["pip install triton"] },
      { id: "python.needs", severity: "ok", message: ["einops 0.8.1"] },
      // flash_attn itself imports: its attention serves transformers whatever its rotary and norm imports do
      { id: "python.transformers", severity: "ok", message: ['"flash_attention_2", "sdpa", "eager"'] },
    ],
    absent: ["python.rotary", "python.layer_norm", "python.triton"],
  },
  {
    fixture: "flashattn-python-missing.json",
    exitCode: 1,
    chosen: "cpu",
    expect: [{
      id: "python.interpreter",
      severity: "error",
      message: ["FLASHATTN_PYTHON=/opt/venv/bin/python", "not found"],
      fix: ["point FLASHATTN_PYTHON at your environment's python", "unset it"],
    }],
    absent: ["python.absent"],
  },
];

describe("doctor rules against machine fixtures", () => {
  for (const c of cases) {
    test(`${c.fixture}${c.options?.require ? ` --require ${c.options.require}` : ""}: exit ${c.exitCode}`, () => {
      checkCase(c);
    });
  }
});
