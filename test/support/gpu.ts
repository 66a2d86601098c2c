// The GPU backend a GPU test file runs on, or the sentence its skipped entry gives instead (no library, no device).
import { type Backend, openBackend } from "../../lib/backend.ts";
import type { BackendName } from "../../lib/vocabulary.ts";

/** A usable GPU backend, or the sentence that explains why there is none. */
export function gpuBackend(name: BackendName): { backend?: Backend; why?: string } {
  const { backend, attempts } = openBackend(name);
  if (!backend) return { why: `libflashattn_${name}.so is not built or not loadable (${attempts.find((a) => a.source === "build")?.error ?? "not found"})` };
  try {
    const n = backend.deviceCount();
    return n > 0 ? { backend } : { why: `${name}: no device` };
  } catch (e) {
    return { why: (e as Error).message };
  }
}
