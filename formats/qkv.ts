// Attention inputs as files hold them: q, k and v as separate tensors of a .safetensors file (named q, k, v or as
// the caller says), or one packed (batch, seqlen, 3, heads, head_dim) tensor, the layout flash_attn_qkvpacked_func
// takes.
import { type Tensor, tensor } from "../lib/tensor.ts";
import { badFile, describeShape } from "./input.ts";
import { openSafetensors } from "./safetensors.ts";

export interface QkvTensors {
  q: Tensor;
  k: Tensor;
  v: Tensor;
}

/** Which tensors of a .safetensors file: explicit q/k/v names, an explicit packed name, or neither (q/k/v, else qkv). */
export interface QkvSelection {
  names?: { q: string; k: string; v: string };
  packed?: string;
}

/** (b, s, 3, h, d) packed qkv → three contiguous (b, s, h, d) tensors (a host copy of the strided views). */
export function unpackQkv(file: string, name: string, qkv: Tensor): QkvTensors {
  const shape = qkv.shape;
  if (shape.length !== 5 || shape[2] !== 3) {
    throw badFile(
      file,
      `packed tensor '${name}' must be (batch, seqlen, 3, heads, head_dim), got ${describeShape(shape)}`,
      "pack as torch.stack([q, k, v], dim=2), as flash_attn_qkvpacked_func takes it",
    );
  }
  const [b, s, , h, d] = shape;
  const slice = h * d;
  const parts = [0, 1, 2].map(() => tensor(qkv.dtype, [b, s, h, d]));
  for (let token = 0; token < b * s; token++) {
    for (let which = 0; which < 3; which++) {
      const from = (token * 3 + which) * slice;
      parts[which].data.set(qkv.data.subarray(from, from + slice), token * slice);
    }
  }
  return { q: parts[0], k: parts[1], v: parts[2] };
}

/** Reads q, k, v from a .safetensors file as `selection` says. */
export function readQkvSafetensors(path: string, selection: QkvSelection = {}): QkvTensors {
  const file = openSafetensors(path);
  try {
    const has = (n: string) => file.entries.has(n);
    // Without names: separate q, k, v tensors if the file has them, else one packed qkv.
    const packed = selection.packed ??
      (!selection.names && !(has("q") && has("k") && has("v")) && has("qkv") ? "qkv" : undefined);
    if (packed !== undefined) return unpackQkv(path, packed, file.read(packed));
    const names = selection.names ?? { q: "q", k: "k", v: "v" };
    return { q: file.read(names.q), k: file.read(names.k), v: file.read(names.v) };
  } finally {
    file.close();
  }
}
