/**
 * Chunk hashes: the 64-bit integers the registry indexes chunks by (LMCache's
 * `CacheEngineKey.chunk_hash`, the `key` of `KVAdmitMsg` and the `hashes` of
 * `BatchedP2PLookupMsg`).
 *
 * @module
 */

import { fnv1a64Hex } from "../storage/checksum.ts";

const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;
const HEX = /^-?[0-9a-f]+$/i;

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
  // The last four `@` end the model name; parsed from the tail (a model may hold `@`),
  // with the rules of parseCacheKey, without splitting the whole key.
  const p4 = key.lastIndexOf("@");
  const p3 = p4 > 0 ? key.lastIndexOf("@", p4 - 1) : -1;
  const p2 = p3 > 0 ? key.lastIndexOf("@", p3 - 1) : -1;
  const p1 = p2 > 0 ? key.lastIndexOf("@", p2 - 1) : -1;
  const p0 = p1 > 0 ? key.lastIndexOf("@", p1 - 1) : -1;
  const hex = p0 >= 0 ? key.slice(p3 + 1, p4) : "";
  if (
    p0 < 0 || !HEX.test(hex) || !Number.isInteger(Number(key.slice(p1 + 1, p2))) ||
    !Number.isInteger(Number(key.slice(p2 + 1, p3)))
  ) {
    return BigInt(`0x${fnv1a64Hex(key)}`);
  }
  const h = hex.charCodeAt(0) === 45 ? -BigInt(`0x${hex.slice(1)}`) : BigInt(`0x${hex}`);
  return h < INT64_MIN || h > UINT64_MAX ? BigInt.asIntN(64, h) : h;
}
