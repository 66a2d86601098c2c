// The doctor's pure pieces one by one: version and architecture arithmetic, the driver tables, undefined-symbol
// and wheel-tag reading, the parsers of tool output (captured formats), and the schema validator.
import { describe, expect, test } from "bun:test";
import { archSupport, compareVersions, driverRuns, formatBytes, parseArch } from "../doctor/rules/common.ts";
import { classifyUndefinedSymbol, parseWheelTag, torchIndexForDriver } from "../doctor/rules/python.ts";
import {
  parseAmdSmiJson,
  parseHipccVersion,
  parseNvccVersion,
  parseNvidiaSmiCsv,
  parseRocminfo,
} from "../doctor/probes/tools.ts";
import { findGcnArchName, hipVersionString } from "../doctor/probes/hip.ts";
import { cudaVersionString, loaderError } from "../doctor/probes/native_util.ts";
import { validate } from "../doctor/schema.ts";
import { verdict } from "../doctor/rules/index.ts";
import { redactFacts, redactText } from "../doctor/redact.ts";
import { parseJsonBounded } from "../lib/json.ts";

describe("versions", () => {
  test("compare as numeric tuples, not strings", () => {
    expect(compareVersions("570.26", "570.124.06")).toBe(-1);
    expect(compareVersions("580.95.05", "580.65.06")).toBe(1);
    expect(compareVersions("13.0", "13.0.0")).toBe(0);
    expect(compareVersions("2.11.0+cu130", "2.1.1")).toBe(1);
  });
  test("driver encodings", () => {
    expect(cudaVersionString(12020)).toBe("12.2");
    expect(cudaVersionString(13000)).toBe("13.0");
    expect(hipVersionString(60241133)).toBe("6.2");
    expect(hipVersionString(50221153)).toBe("5.2");
  });
  test("which driver runs which toolkit (release-notes table and minor-version compatibility)", () => {
    expect(driverRuns("13.0", "580.65.06")).toBe("full");
    expect(driverRuns("13.0", "580.65.05")).toBe("no");
    expect(driverRuns("13.1", "580.95.05")).toBe("minor-compat");
    expect(driverRuns("12.8", "560.35.03")).toBe("minor-compat");
    expect(driverRuns("12.8", "570.26")).toBe("full");
    expect(driverRuns("12.0", "520.61.05")).toBe("no");
    expect(driverRuns("11.8", "535.104.05")).toBe("full");
  });
  test("the torch wheel index a driver runs", () => {
    expect(torchIndexForDriver("580.95.05")).toBe("cu130");
    expect(torchIndexForDriver("570.124.06")).toBe("cu128");
    expect(torchIndexForDriver("535.104.05")).toBe("cu128"); // 12.x runs on R525+ under minor-version compatibility
    expect(torchIndexForDriver("470.82.01")).toBe("cu118");
    // CUDA 13 wheels have no code below sm_75: a V100 anywhere on the machine keeps the advice at 12.x
    expect(torchIndexForDriver("580.95.05", ["7.0"])).toBe("cu128");
    expect(torchIndexForDriver("580.95.05", ["9.0", "7.0"])).toBe("cu128");
    expect(torchIndexForDriver("580.95.05", ["7.5"])).toBe("cu130");
    expect(torchIndexForDriver(undefined, ["6.0"])).toBe("cu128");
  });
  test("bytes", () => {
    expect(formatBytes(232448)).toBe("227 KiB");
    expect(formatBytes(52428800)).toBe("50 MiB");
    expect(formatBytes(85899345920)).toBe("80 GiB");
  });
});

describe("GPU architectures", () => {
  test("sm_120 is 12.0, sm_90a is 9.0 exact", () => {
    expect(parseArch("sm_120")).toEqual({ kind: "sm", major: 12, minor: 0, suffix: "" });
    expect(parseArch("sm_90a")).toEqual({ kind: "sm", major: 9, minor: 0, suffix: "a" });
    expect(parseArch("gfx90a")).toBeUndefined();
  });
  const ours = ["sm_80", "sm_86", "sm_89", "sm_90", "compute_90"];
  test("cubins run on the same major with an equal or higher minor", () => {
    expect(archSupport(ours, "8.0")).toBe("sass");
    expect(archSupport(ours, "8.7")).toBe("sass"); // sm_86 cubin on 8.7
    expect(archSupport(["sm_86"], "8.0")).toBe("none");
  });
  test("PTX JIT-compiles on later GPUs only", () => {
    expect(archSupport(ours, "12.0")).toBe("ptx");
    expect(archSupport(ours, "10.0")).toBe("ptx");
    expect(archSupport(ours, "7.5")).toBe("none");
  });
  test("arch-specific targets run on that exact GPU only", () => {
    expect(archSupport(["sm_90a"], "9.0")).toBe("sass");
    expect(archSupport(["sm_90a"], "10.0")).toBe("none");
    expect(archSupport(["sm_100a"], "10.3")).toBe("none");
  });
});

describe("flash_attn import failures", () => {
  test("C++11 ABI: __cxx11 spelling means the wheel uses the new ABI", () => {
    expect(
      classifyUndefinedSymbol(
        "_ZN3c105ErrorC2ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE",
      ),
    )
      .toEqual({ kind: "cxx11-abi", wheelAbi: true });
  });
  test("C++11 ABI: the old std::string code Ss means the wheel uses the old ABI", () => {
    expect(classifyUndefinedSymbol("_ZN3c105ErrorC2ENS_14SourceLocationESs")).toEqual({
      kind: "cxx11-abi",
      wheelAbi: false,
    });
    expect(classifyUndefinedSymbol("_ZN3c106detail14torchCheckFailEPKcS2_jRKSs")).toEqual({
      kind: "cxx11-abi",
      wheelAbi: false,
    });
  });
  test("another torch symbol is a torch version mismatch; anything else is other", () => {
    expect(classifyUndefinedSymbol("_ZN3c104cuda9SetDeviceEi")).toEqual({ kind: "torch-version" });
    expect(classifyUndefinedSymbol("_ZN2at4_ops5zeros4callEN3c108ArrayRefINS2_6SymIntEEE")).toEqual({
      kind: "torch-version",
    });
    expect(classifyUndefinedSymbol("_ZNK3c1010TensorImpl4sizeEl")).toEqual({ kind: "torch-version" });
    expect(classifyUndefinedSymbol("cublasLtMatmul")).toEqual({ kind: "other" });
  });
  test("wheel tags", () => {
    expect(parseWheelTag("https://x/flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"))
      .toEqual({ cuda: "12", rocm: undefined, torch: "2.8", cxx11abi: true });
    expect(parseWheelTag("2.3.4+cu122torch2.1cxx11abiFALSE")).toEqual({
      cuda: "122",
      rocm: undefined,
      torch: "2.1",
      cxx11abi: false,
    });
    expect(parseWheelTag("2.7.4+rocm63torch2.6cxx11abiFALSE")?.rocm).toBe("6.3");
    expect(parseWheelTag("2.7.4.post1")).toBeUndefined();
  });
});

describe("tool output parsers (formats of doctor-facts.md §1.8-1.9)", () => {
  test("nvcc and hipcc versions", () => {
    expect(parseNvccVersion("nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 13.0, V13.0.88\n"))
      .toBe("13.0");
    expect(parseHipccVersion("HIP version: 5.2.21153-0\nclang version 15.0.0")).toBe("5.2");
  });
  test("nvidia-smi --query-gpu CSV", () => {
    const out = parseNvidiaSmiCsv(
      "NVIDIA H100 80GB HBM3, 9.0, 81559, 580.159.04\nNVIDIA H100 80GB HBM3, 9.0, 81559, 580.159.04\n",
    );
    expect(out.driver_version).toBe("580.159.04");
    expect(out.gpus).toEqual([
      { name: "NVIDIA H100 80GB HBM3", compute_capability: "9.0", memory_mib: 81559 },
      { name: "NVIDIA H100 80GB HBM3", compute_capability: "9.0", memory_mib: 81559 },
    ]);
    expect(parseNvidiaSmiCsv("Tesla T4, [N/A], 15360, 470.82.01").gpus?.[0].compute_capability).toBeUndefined();
  });
  test("rocminfo agents: GPUs only", () => {
    const text = [
      "*******",
      "Agent 1",
      "*******",
      "  Name:                    AMD EPYC 7A53 64-Core Processor",
      "  Marketing Name:          AMD EPYC 7A53",
      "  Device Type:             CPU",
      "*******",
      "Agent 2",
      "*******",
      "  Name:                    gfx90a",
      "  Marketing Name:          AMD Instinct MI250X",
      "  Device Type:             GPU",
    ].join("\n");
    expect(parseRocminfo(text)).toEqual([{ gfx: "gfx90a", name: "AMD Instinct MI250X" }]);
  });
  test("amd-smi static --json: a list or gpu_data", () => {
    const gpu = { gpu: 0, asic: { market_name: "AMD Instinct MI300X", target_graphics_version: "gfx942" } };
    expect(parseAmdSmiJson(JSON.stringify([gpu]))).toEqual([{ gfx: "gfx942", name: "AMD Instinct MI300X" }]);
    expect(parseAmdSmiJson(JSON.stringify({ gpu_data: [gpu] }))).toEqual([{
      gfx: "gfx942",
      name: "AMD Instinct MI300X",
    }]);
    expect(() => parseAmdSmiJson("not json")).toThrow();
  });
  test("gcnArchName is found in a properties block of any layout", () => {
    const props = new Uint8Array(4096);
    props.set(new TextEncoder().encode("AMD Instinct MI250X\0"), 0);
    props.set(new TextEncoder().encode("gfx90a:sramecc+:xnack-\0"), 1160);
    expect(findGcnArchName(props)).toBe("gfx90a:sramecc+:xnack-");
    expect(findGcnArchName(new Uint8Array(64))).toBeUndefined();
  });
});

describe("loader errors", () => {
  test("a bare soname's error names the soname, not the cwd-relative path Bun also tried", () => {
    expect(
      loaderError(
        'Failed to open library "libcuda.so.1": /work/main/libcuda.so.1: cannot open shared object file: No such file',
      ),
    )
      .toBe('Failed to open library "libcuda.so.1": cannot open shared object file: No such file');
    const absolute =
      'Failed to open library "/x/libflashattn_hip.so": libamdhip64.so.5: cannot open shared object file';
    expect(loaderError(absolute)).toBe(absolute);
    expect(loaderError(new Error("first line\nsecond"))).toBe("first line");
  });
});

describe("verdict and schema validator", () => {
  test("errors decide the exit code, warnings do not", () => {
    const f = (severity: "ok" | "warning" | "error") => ({
      id: "x.y",
      section: "nvidia" as const,
      severity,
      message: "m",
      fix: "f",
    });
    expect(verdict([f("ok"), f("warning")], "cpu")).toMatchObject({ exitCode: 0, healthy: true, warnings: 1 });
    expect(verdict([f("error")], undefined)).toMatchObject({
      exitCode: 1,
      healthy: false,
      line: "Doctor found 1 error and 0 warnings; no usable backend.",
    });
    expect(verdict([], "cuda").line).toBe("No issues found; backend: cuda.");
  });
  test("the validator catches wrong types, missing keys, unknown keys, bad enums and patterns", () => {
    const schema = {
      type: "object",
      required: ["a"],
      additionalProperties: false,
      properties: {
        a: { enum: ["x", "y"] },
        b: { type: "integer", minimum: 0 },
        c: { type: "string", pattern: "^\\d+\\.\\d+$" },
      },
    };
    expect(validate({ a: "x", b: 3, c: "9.0" }, schema)).toEqual([]);
    expect(validate({ b: 1.5 }, schema)).toEqual(["$.b: expected integer, got number", '$: missing "a"'].reverse());
    expect(validate({ a: "z", c: "nine", d: 1 }, schema)).toEqual([
      '$: must be one of "x", "y"'.replace("$", "$.a"),
      "$.c: does not match ^\\d+\\.\\d+$",
      '$: unexpected property "d"',
    ]);
  });
});

describe("redaction (every string on its way into a report)", () => {
  const hf = "hf_" + "AbCdEfGhIjKlMnOpQrStUv01";
  test("credentials in URLs and token-shaped values become <redacted>, keeping what they were", () => {
    const cases: [string, string][] = [
      [`https://__token__:${hf}@huggingface.co/o/r/x.whl`, "https://<redacted>@huggingface.co/o/r/x.whl"],
      [`git+https://ghp_${"a".repeat(36)}@github.com/o/r@v2.8.3`, "git+https://<redacted>@github.com/o/r@v2.8.3"],
      [`https://pypi.example/simple/?token=abc123&x=1`, "https://pypi.example/simple/?token=<redacted>&x=1"],
      [
        "https://b.s3.amazonaws.com/f.whl?X-Amz-Signature=00ff&X-Amz-Credential=AKIAXX%2F1&X-Amz-Expires=300",
        "https://b.s3.amazonaws.com/f.whl?X-Amz-Signature=<redacted>&X-Amz-Credential=<redacted>&X-Amz-Expires=300",
      ],
      [`HF_TOKEN=${hf} python -c ...`, "HF_TOKEN=<redacted> python -c ..."],
      ["aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_access_key = <redacted>"],
      ["Authorization: Bearer abcdefghijklmnop.qrstuvwx", "Authorization: Bearer <redacted>"],
      [`said ${hf}`, "said hf_<redacted>"],
      [`github_pat_11AB${"c".repeat(30)} sk-proj-${"d".repeat(40)}`, "github_pat_<redacted> sk-<redacted>"],
      ["id AKIAIOSFODNN7EXAMPLE", "id AKIA<redacted>"],
      ["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJlX2hlcmU", "<redacted>"],
    ];
    for (const [text, expected] of cases) expect(redactText(text)).toBe(expected);
  });
  test("what is no credential stays as it is", () => {
    for (
      const text of [
        "https://github.com/Dao-AILab/flash-attention/releases/download/v2.8.3/flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl",
        "file:///home/me/wheels/flash_attn-2.8.3-cp312-cp312-linux_x86_64.whl",
        "/usr/lib/libtorch_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi",
        "/usr/local/cuda/lib64:/opt/rocm/lib",
      ]
    ) expect(redactText(text)).toBe(text);
  });
  test("deep through facts, keys included; long strings cut once (a replayed report is not cut again)", () => {
    const long = "x".repeat(100_000);
    const facts: Record<string, unknown> & { long: string } = {
      a: [{ [`k ${hf}`]: `u ${hf}` }],
      n: 1,
      b: true,
      z: null,
      long,
    };
    const once = redactFacts(facts);
    expect(once.a).toEqual([{ "k hf_<redacted>": "u hf_<redacted>" }]);
    expect(once).toMatchObject({ n: 1, b: true, z: null });
    expect(once.long.length).toBeLessThanOrEqual(4096);
    expect(once.long).toEndWith("… (100000 characters, cut)");
    expect(redactFacts(once)).toEqual(once);
  });
});

describe("JSON from outside", () => {
  test("bounded in size and depth before parsing; within the bounds, JSON.parse's answer", () => {
    const limits = { maxChars: 1000, maxDepth: 3 };
    expect(parseJsonBounded('{"a": [[1]], "s": "[[[[[[{{{{"}', limits)).toEqual({ a: [[1]], s: "[[[[[[{{{{" });
    expect(parseJsonBounded('["\\"[[[["]', limits)).toEqual(['"[[[[']);
    expect(() => parseJsonBounded("[[[[1]]]]", limits)).toThrow("nested more than 3 levels deep");
    expect(() => parseJsonBounded("[".repeat(1_000_000), { maxChars: 2_000_000, maxDepth: 64 })).toThrow(
      "nested more than 64 levels deep",
    );
    expect(() => parseJsonBounded(`"${"x".repeat(1000)}"`, limits)).toThrow("1002 characters, more than the 1000");
    expect(() => parseJsonBounded("{", limits)).toThrow(SyntaxError);
  });
});
