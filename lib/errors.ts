// One error type for everything a user can cause or meet: a code, one line, and a fix when there is one.
// The CLI maps codes to exit statuses (docs/ARCHITECTURE.md): usage/input problems exit 2, an unusable environment
// exits 3, anything else 1. The message and the fix are one line each whatever they quote: control characters of a
// flag value, a file or tensor name are shown as escapes (lib/terminal.ts), so no caller has to remember to.
import { printable } from "./terminal.ts";

export type ErrorCode =
  | "USAGE" // a bad flag or flag value
  | "BAD_INPUT" // an input file or tensor that cannot be used as given
  | "LIBRARY_NOT_FOUND" // no libflashattn could be loaded
  | "ABI_MISMATCH" // a library built for another ABI or params layout
  | "NO_DEVICE" // the backend has no usable device
  | "NO_BACKEND" // no backend can serve the request
  | "INVALID_ARGUMENT" // the native library refused the request's values
  | "UNSUPPORTED" // valid, but no kernel implements it
  | "OUT_OF_MEMORY"
  | "DEVICE_ERROR"
  | "CHECK_FAILED" // a result missed its tolerance
  | "INTERNAL";

export class FlashAttnError extends Error {
  readonly code: ErrorCode;
  readonly fix?: string;
  constructor(code: ErrorCode, message: string, fix?: string) {
    super(printable(message));
    this.name = "FlashAttnError";
    this.code = code;
    this.fix = fix === undefined ? undefined : printable(fix);
  }
}

const usageCodes = new Set<ErrorCode>(["USAGE", "BAD_INPUT", "INVALID_ARGUMENT", "UNSUPPORTED"]);
const environmentCodes = new Set<ErrorCode>(["LIBRARY_NOT_FOUND", "ABI_MISMATCH", "NO_DEVICE", "NO_BACKEND"]);

/** Exit status for an error: 2 usage/input, 3 environment, 1 everything else. */
export function exitCodeFor(error: unknown): number {
  if (error instanceof FlashAttnError) {
    if (usageCodes.has(error.code)) return 2;
    if (environmentCodes.has(error.code)) return 3;
  }
  return 1;
}
