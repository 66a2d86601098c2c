// A wrong kernel for the tests of bench's reference check: the real library, except that one entry point's output O
// is overwritten with zeros after the real call succeeded. Not a mock: everything else is the library itself.
import type { NativeLibrary } from "../../ffi/loader.ts";
import type { FaSymbols } from "../../ffi/symbols.ts";

/** Byte offset of o.data in each entry's params struct (flashattn.h); dtype, batch, seqlen_q, heads_q, head_dim sit
 * at the same offsets (8, 12, 16, 24, 32) in both. */
const outputOffset = { fa_forward: 208, fa_forward_kvcache: 312 } as const;

export function zeroingOutput(lib: NativeLibrary<FaSymbols>, entry: keyof typeof outputOffset): NativeLibrary<FaSymbols> {
  return {
    path: lib.path,
    has: (name) => lib.has(name),
    close: () => lib.close(),
    call(name, ...args) {
      const status = lib.call(name, ...args);
      if (name === entry && status === 0) {
        const params = new DataView((args[0] as Uint8Array).buffer);
        const elementBytes = params.getInt32(8, true) === 0 ? 4 : 2;
        const elements = [12, 16, 24, 32].reduce((n, offset) => n * params.getInt32(offset, true), 1);
        lib.call("fa_memset", params.getBigUint64(outputOffset[entry], true), 0, BigInt(elements * elementBytes));
      }
      return status;
    },
  };
}
