/**
 * LMCache cache-engine keys as they travel between prefiller and decoder:
 * `fmt@model@world_size@worker_id@hash_hex@dtype`.
 *
 * @module
 */

/** The parts of a cache-engine key. */
export interface CacheKey {
  /** Serving format, e.g. `"vllm"`. */
  fmt: string;
  /** Model name. May contain `@`. */
  model: string;
  /** Tensor-parallel world size. */
  worldSize: number;
  /** Tensor-parallel rank that owns the chunk. */
  workerId: number;
  /** Chunk hash, lowercase hexadecimal (a leading `-` allowed, as Python prints it). */
  hashHex: string;
  /** Data type name, e.g. `"bfloat16"`. */
  dtype: string;
}

/**
 * Formats a key as `fmt@model@world_size@worker_id@hash_hex@dtype`.
 *
 * @example
 * ```ts
 * import { formatCacheKey } from "@kvport/nixl";
 *
 * const s = formatCacheKey({
 *   fmt: "vllm", model: "Qwen/Qwen3-8B", worldSize: 1, workerId: 0,
 *   hashHex: "1f2e", dtype: "bfloat16",
 * });
 * console.log(s); // vllm@Qwen/Qwen3-8B@1@0@1f2e@bfloat16
 * ```
 */
export function formatCacheKey(key: CacheKey): string {
  return [key.fmt, key.model, key.worldSize, key.workerId, key.hashHex, key.dtype].join("@");
}

/**
 * Parses a key string; throws a `TypeError` naming the key and the expected form when
 * it has fewer than six `@`-separated parts or non-numeric sizes. A model name that
 * contains `@` is kept whole.
 *
 * @example
 * ```ts
 * import { parseCacheKey } from "@kvport/nixl";
 *
 * const k = parseCacheKey("vllm@m@2@1@abc@bfloat16");
 * console.log(k.workerId, k.hashHex); // 1 abc
 * ```
 */
export function parseCacheKey(text: string): CacheKey {
  const parts = text.split("@");
  const bad = (why: string) =>
    new TypeError(
      `invalid cache key ${JSON.stringify(text)}: ${why} ` +
        "(expected fmt@model@world_size@worker_id@hash_hex@dtype)",
    );
  if (parts.length < 6) throw bad(`${parts.length} parts`);
  const dtype = parts[parts.length - 1];
  const hashHex = parts[parts.length - 2];
  const workerId = Number(parts[parts.length - 3]);
  const worldSize = Number(parts[parts.length - 4]);
  if (!Number.isInteger(worldSize) || !Number.isInteger(workerId)) {
    throw bad("world_size and worker_id must be integers");
  }
  if (!/^-?[0-9a-f]+$/i.test(hashHex)) throw bad("hash_hex must be hexadecimal");
  return {
    fmt: parts[0],
    model: parts.slice(1, parts.length - 4).join("@"),
    worldSize,
    workerId,
    hashHex,
    dtype,
  };
}

/**
 * LMCache's `MemoryFormat` values that AllocRequest carries in `fmt`.
 *
 * @example
 * ```ts
 * import { MemoryFormat } from "@kvport/nixl";
 * console.log(MemoryFormat.KV_2LTD); // 1: [2, layers, tokens, hidden]
 * ```
 */
export const MemoryFormat: {
  readonly UNDEFINED: 0;
  readonly KV_2LTD: 1;
  readonly KV_T2D: 2;
  readonly KV_2TD: 3;
  readonly BINARY: 4;
  readonly BINARY_BUFFER: 5;
  readonly KV_MLA_FMT: 6;
} = {
  UNDEFINED: 0,
  KV_2LTD: 1,
  KV_T2D: 2,
  KV_2TD: 3,
  BINARY: 4,
  BINARY_BUFFER: 5,
  KV_MLA_FMT: 6,
} as const;

const TOKEN_DIM: Record<number, number> = { 1: 2, 2: 0, 3: 1, 6: 1 };

const DTYPE_BYTES: Record<string, number> = {
  float32: 4,
  float: 4,
  float16: 2,
  half: 2,
  bfloat16: 2,
  float64: 8,
  double: 8,
  int8: 1,
  uint8: 1,
  float8_e4m3fn: 1,
  float8_e5m2: 1,
  int16: 2,
  int32: 4,
  int64: 8,
  bool: 1,
};

/**
 * Bytes of one element of a dtype name (`"bfloat16"`, `"torch.float16"`, ...), or
 * `undefined` when unknown.
 *
 * @example
 * ```ts
 * import { dtypeBytes } from "@kvport/nixl";
 *
 * console.log(dtypeBytes("bfloat16")); // 2
 * ```
 */
export function dtypeBytes(dtype: string): number | undefined {
  return DTYPE_BYTES[dtype.replace(/^torch\./, "")];
}

/**
 * Bytes of one chunk of `shape`/`dtype`, with the token dimension of `fmt` set to
 * `tokens` when given (a partial last chunk). `undefined` when the dtype is unknown.
 *
 * @example
 * ```ts
 * import { chunkBytes, MemoryFormat } from "@kvport/nixl";
 *
 * // 2 x 28 layers x 256 tokens x 1024 (8 heads x 128) x bf16 = 28 MiB
 * console.log(chunkBytes(MemoryFormat.KV_2LTD, [2, 28, 256, 1024], "bfloat16"));
 * console.log(chunkBytes(MemoryFormat.KV_2LTD, [2, 28, 256, 1024], "bfloat16", 10));
 * ```
 */
export function chunkBytes(
  fmt: number,
  shape: readonly number[],
  dtype: string,
  tokens?: number,
): number | undefined {
  const size = dtypeBytes(dtype);
  if (size === undefined) return undefined;
  // A plain product, dimension by dimension (the token dimension replaced when asked):
  // no copy of the shape, on the decoder's path of every bind.
  const td = tokens === undefined ? -1 : TOKEN_DIM[fmt] ?? -1;
  let n = size;
  for (let i = 0; i < shape.length; i++) n *= i === td ? tokens! : shape[i];
  return n;
}

/**
 * `shape` with the token dimension of `fmt` set to `tokens` (a partial last chunk's
 * shape), as a new array; a format without one (or a shape too short for it) as it is.
 *
 * @example
 * ```ts
 * import { MemoryFormat, withTokens } from "./keys.ts";
 *
 * console.log(withTokens(MemoryFormat.KV_2LTD, [2, 28, 256, 1024], 10)); // [2, 28, 10, 1024]
 * ```
 */
export function withTokens(fmt: number, shape: readonly number[], tokens: number): number[] {
  const td = TOKEN_DIM[fmt];
  const out = [...shape];
  if (td !== undefined && td < out.length) out[td] = tokens;
  return out;
}
