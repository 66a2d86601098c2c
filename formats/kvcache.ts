// A KV-cache step as a .safetensors file holds it (flash_attn_with_kvcache's arguments by name): q, k_cache, v_cache
// and optionally k_new, v_new, rotary_cos, rotary_sin (float tensors of one dtype) and cache_seqlens, block_table,
// cache_batch_idx, cache_leftpad (I32). Shapes are checked by lib/kvcache.ts describeKvCache, values by the library.
import type { Tensor } from "../lib/tensor.ts";
import { badFile, describeShape } from "./input.ts";
import type { SafetensorsFile } from "./safetensors.ts";

export interface KvCacheTensors {
  q: Tensor;
  kCache: Tensor;
  vCache: Tensor;
  kNew?: Tensor;
  vNew?: Tensor;
  rotaryCos?: Tensor;
  rotarySin?: Tensor;
  /** Absent: every sequence's cache is full (flash-attn without cache_seqlens); an append then is refused. */
  cacheSeqlens?: Int32Array;
  /** (batch, max_blocks) flattened. */
  blockTable?: Int32Array;
  cacheBatchIdx?: Int32Array;
  cacheLeftpad?: Int32Array;
}

/** Whether an opened file is a KV-cache step (it holds k_cache) rather than plain q, k, v. */
export function isKvCacheFile(file: SafetensorsFile): boolean {
  return file.entries.has("k_cache");
}

/** Reads the step's tensors from an opened file (the caller closes it). */
export function readKvCacheTensors(file: SafetensorsFile): KvCacheTensors {
  const has = (name: string) => file.entries.has(name);
  const optional = (name: string) => (has(name) ? file.read(name) : undefined);
  const ints = (name: string, rank: number) => {
    if (!has(name)) return undefined;
    const { shape, data } = file.readInt32(name);
    if (shape.length !== rank) {
      throw badFile(file.path, `'${name}' must be ${rank === 1 ? "(batch,)" : "(batch, max_blocks)"}, got ${describeShape(shape)}`);
    }
    return data;
  };
  const cacheSeqlens = ints("cache_seqlens", 1);
  return {
    q: file.read("q"), kCache: file.read("k_cache"), vCache: file.read("v_cache"), kNew: optional("k_new"),
    vNew: optional("v_new"), rotaryCos: optional("rotary_cos"), rotarySin: optional("rotary_sin"), cacheSeqlens,
    blockTable: ints("block_table", 2), cacheBatchIdx: ints("cache_batch_idx", 1), cacheLeftpad: ints("cache_leftpad", 1),
  };
}
