/**
 * Chunk hashes: the 64-bit integers the registry indexes chunks by (LMCache's
 * `CacheEngineKey.chunk_hash`, the `key` of `KVAdmitMsg` and the `hashes` of
 * `BatchedP2PLookupMsg`).
 *
 * @module
 */

import { parseCacheKey } from "../pd/keys.ts";
import { fnv1a64Hex } from "../storage/checksum.ts";

const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;

/**
 * The chunk hash of a cache-engine key: the `hash_hex` part of
 * `fmt@model@world_size@worker_id@hash_hex@dtype` read as a (possibly negative, as Python
 * prints it) hexadecimal integer, so the registry sees the same numbers LMCache's workers
 * report. A key of another form hashes with 64-bit FNV-1a. Values outside the 64-bit
 * range are folded to a signed 64-bit integer.
 *
 * @example
 * ```ts
 * import { chunkHashOf } from "@kvport/nixl";
 *
 * console.log(chunkHashOf("vllm@m@1@0@1f@bfloat16")); // 31n
 * console.log(chunkHashOf("vllm@m@1@0@-a@bfloat16")); // -10n
 * ```
 */
export function chunkHashOf(key: string): bigint {
  let h: bigint;
  try {
    const hex = parseCacheKey(key).hashHex;
    h = hex.startsWith("-") ? -BigInt(`0x${hex.slice(1)}`) : BigInt(`0x${hex}`);
  } catch {
    return BigInt(`0x${fnv1a64Hex(key)}`);
  }
  return h < INT64_MIN || h > UINT64_MAX ? BigInt.asIntN(64, h) : h;
}
