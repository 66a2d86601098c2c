// Our own native libraries: which load (and the loader's words for those that do not), what each was built for,
// its devices, a self-test against the fp64 reference, and the backend decision exactly as `run` and `bench` make
// it (lib/select.ts chooseBackend, not a copy). Runs in the probe worker: a GPU self-test that hangs must not
// take the doctor with it.
import fs from "node:fs";
import process from "node:process";
import { libraryCandidates } from "../../ffi/discovery.ts";
import { prebuiltRefusal, readManifest, runningGlibcVersion } from "../../ffi/prebuilt.ts";
import { backendNames } from "../../lib/vocabulary.ts";
import { attention } from "../../lib/attention.ts";
import { openBackend } from "../../lib/backend.ts";
import { FlashAttnError } from "../../lib/errors.ts";
import { describeProblem } from "../../lib/problem.ts";
import { naiveSamePrecisionForward, referenceForward, relativeError, withinTolerance } from "../../lib/reference.ts";
import { type AttnRequest, chooseBackend, requestedBackend } from "../../lib/select.ts";
import { type DType, randomTensor, tensor, toFloat32 } from "../../lib/tensor.ts";
import type {
  BackendName,
  DeviceSelection,
  DeviceSelfTestFacts,
  FlashattnFacts,
  LibraryFacts,
  PrebuiltFacts,
  SelfTestFacts,
} from "../facts.ts";
import { loaderError } from "./native_util.ts";

export interface FlashattnProbeOptions {
  backend?: "auto" | BackendName;
  libPath?: string;
  /** skip the self-test (faster; the decision and library facts are still collected) */
  noSelfTest?: boolean;
  /** `doctor --devices`: run the self-test on each of these devices of every GPU library (fa_set_device) */
  devices?: DeviceSelection;
}

/** Devices described per library; more are counted but not listed. */
const MAX_DEVICES_LISTED = 16;

// The request the decision is made for: a typical training/inference shape in bf16 (what GPU kernels serve).
const DECISION_SHAPE = { batch: 1, seqlen: 256, heads: 8, headDim: 128 };
const decisionProblemText =
  `bf16 forward, batch ${DECISION_SHAPE.batch}, seqlen ${DECISION_SHAPE.seqlen}, ${DECISION_SHAPE.heads} heads, ` +
  `head_dim ${DECISION_SHAPE.headDim}, causal`;

function decisionRequest(): AttnRequest {
  const { batch, seqlen, heads, headDim } = DECISION_SHAPE;
  const shape = [batch, seqlen, heads, headDim];
  const t = tensor("bf16", shape);
  return { problem: describeProblem(t, t, t, { causal: true }), direction: "fwd" };
}

// The self-test: odd sizes on purpose (sq ≠ sk, GQA 2:1, causal bottom-right), small enough for the CPU.
const SELF_TEST = { batch: 2, seqlenQ: 37, seqlenK: 53, headsQ: 4, headsKv: 2, headDim: 64, causal: true };
const selfTestDtype = (backend: BackendName): DType => (backend === "cpu" ? "fp32" : "bf16");
const selfTestText = (dtype: DType) =>
  `${dtype} forward, batch ${SELF_TEST.batch}, seqlen_q ${SELF_TEST.seqlenQ}, seqlen_k ${SELF_TEST.seqlenK}, ` +
  `heads ${SELF_TEST.headsQ}/${SELF_TEST.headsKv}, head_dim ${SELF_TEST.headDim}, causal`;

async function selfTest(
  backend: BackendName,
  opts: FlashattnProbeOptions,
  env: Record<string, string | undefined>,
): Promise<SelfTestFacts> {
  const dtype = selfTestDtype(backend);
  const { batch, seqlenQ, seqlenK, headsQ, headsKv, headDim, causal } = SELF_TEST;
  const q = randomTensor(dtype, [batch, seqlenQ, headsQ, headDim], 1);
  const k = randomTensor(dtype, [batch, seqlenK, headsKv, headDim], 2);
  const v = randomTensor(dtype, [batch, seqlenK, headsKv, headDim], 3);
  const facts: SelfTestFacts = { ok: false, problem: selfTestText(dtype) };
  try {
    const result = await attention(q, k, v, { causal, backend, libPath: opts.libPath, env });
    const ref = referenceForward(q, k, v, { causal });
    const error = relativeError(toFloat32(result.out), ref.out);
    const naive = dtype === "fp32" ? undefined : relativeError(naiveSamePrecisionForward(q, k, v, { causal }), ref.out);
    const verdict = withinTolerance(dtype, error, naive);
    return {
      ...facts,
      ok: verdict.ok,
      kernel: result.kernel,
      rel_error: error,
      tolerance: verdict.limit,
      ms: Math.round(result.ms * 100) / 100,
    };
  } catch (e) {
    return { ...facts, error: (e as Error).message.split("\n")[0] };
  }
}

function describeLibrary(
  name: BackendName,
  opts: FlashattnProbeOptions,
  env: Record<string, string | undefined>,
): LibraryFacts {
  const { backend, attempts } = openBackend(name, { libPath: opts.libPath, env });
  const facts: LibraryFacts = {
    backend: name,
    loaded: !!backend,
    attempts: attempts.map((a) => (a.error ? { ...a, error: loaderError(a.error) } : a)),
  };
  if (!backend) return facts;
  try {
    facts.backend = backend.name;
    facts.path = backend.path;
    const info = backend.info();
    facts.info = {
      version: info.version,
      abi: info.abi,
      compiler: info.compiler,
      built_with: info.built_with,
      archs: info.archs,
      kernels: info.kernels?.map((k) => k.name),
    };
    try {
      facts.device_count = backend.deviceCount();
      facts.devices = [];
      for (let i = 0; i < Math.min(facts.device_count, MAX_DEVICES_LISTED); i++) {
        facts.devices.push(backend.deviceInfo(i));
      }
    } catch (e) {
      facts.device_count = 0;
      facts.device_error = (e as Error).message.replace(/^\w+: /, "");
    }
  } finally {
    backend.close();
  }
  return facts;
}

/** The prebuilt libraries that exist where the package and the standalone executable keep them, with manifests. */
function describePrebuilt(env: Record<string, string | undefined>): PrebuiltFacts[] {
  const found: PrebuiltFacts[] = [];
  for (const backend of backendNames) {
    for (const c of libraryCandidates(backend, { env: { ...env, FLASHATTN_LIB: undefined } })) {
      if ((c.source !== "package" && c.source !== "executable") || !fs.existsSync(c.path)) continue;
      const facts: PrebuiltFacts = { backend, path: c.path, source: c.source };
      const read = readManifest(c.path);
      if ("manifest" in read) facts.manifest = read.manifest;
      const refused = prebuiltRefusal(c.path);
      if (refused) facts.refused = refused;
      found.push(facts);
    }
  }
  return found;
}

export async function probeFlashattn(opts: FlashattnProbeOptions = {}): Promise<FlashattnFacts> {
  const started = performance.now();
  const env = process.env;
  // With an explicit library only that one is looked at (the same rule chooseBackend follows).
  const libraries = opts.libPath || env.FLASHATTN_LIB
    ? [describeLibrary(explicitBackendOf(opts, env), opts, env)]
    : backendNames.map((name) => describeLibrary(name, opts, env));

  const facts: FlashattnFacts = {
    status: "ok",
    libraries,
    request: { backend: "auto", source: "default", problem: decisionProblemText },
    decisions: [],
    prebuilt: describePrebuilt(env),
    glibc: runningGlibcVersion(),
  };
  try {
    const { choice } = requestedBackend({ backend: opts.backend, env });
    facts.request.backend = choice;
    facts.request.source = opts.backend && opts.backend !== "auto" ? "flag" : choice !== "auto" ? "env" : "default";
    const { decisions } = chooseBackend(decisionRequest(), { backend: opts.backend, libPath: opts.libPath, env });
    facts.decisions = decisions.map(({ backend, verdict, reasons, kernel, library }) => ({
      backend,
      verdict,
      reasons,
      kernel,
      library,
    }));
    facts.chosen = decisions.find((d) => d.verdict === "chosen")?.backend;
  } catch (e) {
    facts.status = "error";
    facts.error = e instanceof FlashAttnError && e.fix
      ? `${e.message} (fix: ${e.fix})`
      : (e as Error).message.split("\n")[0];
  }

  if (!opts.noSelfTest) {
    for (const lib of libraries) {
      if (!lib.loaded || (lib.device_count ?? 0) <= 0) continue;
      if (opts.devices && lib.backend !== "cpu") lib.device_self_tests = await selfTestEach(lib, opts, env);
      else lib.self_test = await selfTest(lib.backend, opts, env);
    }
  }
  return { ...facts, ms: Math.round(performance.now() - started) };
}

/**
 * The self-test on each device asked for, one after the other on this thread: fa_set_device selects the device the
 * library's later calls use, and the library stays loaded (lib/backend.ts), so attention() runs on that device. A
 * device the library does not have is a failed entry that says so, not a call.
 */
async function selfTestEach(
  lib: LibraryFacts,
  opts: FlashattnProbeOptions,
  env: Record<string, string | undefined>,
): Promise<DeviceSelfTestFacts[]> {
  const count = Math.min(lib.device_count ?? 0, MAX_DEVICES_LISTED);
  const wanted = opts.devices === "all" ? Array.from({ length: count }, (_, i) => i) : opts.devices ?? [];
  const { backend } = openBackend(lib.backend, { libPath: opts.libPath, env });
  const results: DeviceSelfTestFacts[] = [];
  for (const device of wanted.slice(0, MAX_DEVICES_LISTED)) {
    const pci = lib.devices?.[device]?.pci_bus_id;
    const entry = { device, ...(typeof pci === "string" ? { pci_bus_id: pci } : {}) };
    if (!backend || device >= (lib.device_count ?? 0)) {
      const why = backend ? `no device ${device}: the library sees ${lib.device_count}` : "the library did not load";
      results.push({ ...entry, ok: false, problem: selfTestText(selfTestDtype(lib.backend)), error: why });
      continue;
    }
    try {
      backend.setDevice(device);
    } catch (e) {
      const error = (e as Error).message.split("\n")[0];
      results.push({ ...entry, ok: false, problem: selfTestText(selfTestDtype(lib.backend)), error });
      continue;
    }
    results.push({ ...entry, ...await selfTest(lib.backend, opts, env) });
  }
  return results;
}

/** An explicit library is whatever backend it says it is; until loaded, call it by the requested backend. */
function explicitBackendOf(opts: FlashattnProbeOptions, env: Record<string, string | undefined>): BackendName {
  const requested = opts.backend && opts.backend !== "auto" ? opts.backend : env.FLASHATTN_BACKEND;
  return (backendNames as readonly string[]).includes(requested ?? "") ? requested as BackendName : "cpu";
}
