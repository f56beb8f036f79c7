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
  // with the rules of parseCacheKey, without splitting the whole key. Checked with char
  // codes rather than a RegExp and Number(): a lookup hashes every key it asks for.
  const p4 = key.lastIndexOf("@");
  const p3 = p4 > 0 ? key.lastIndexOf("@", p4 - 1) : -1;
  const p2 = p3 > 0 ? key.lastIndexOf("@", p3 - 1) : -1;
  const p1 = p2 > 0 ? key.lastIndexOf("@", p2 - 1) : -1;
  const p0 = p1 > 0 ? key.lastIndexOf("@", p1 - 1) : -1;
  const neg = p0 >= 0 && key.charCodeAt(p3 + 1) === 45; // "-"
  if (
    p0 < 0 || !isHex(key, p3 + 1 + (neg ? 1 : 0), p4) || !isIntegerText(key, p1 + 1, p2) ||
    !isIntegerText(key, p2 + 1, p3)
  ) {
    return BigInt(`0x${fnv1a64Hex(key)}`);
  }
  const digits = key.slice(p3 + 1 + (neg ? 1 : 0), p4);
  const h = neg ? -BigInt(`0x${digits}`) : BigInt(`0x${digits}`);
  return h < INT64_MIN || h > UINT64_MAX ? BigInt.asIntN(64, h) : h;
}

/** Whether `s[from, to)` is one or more hexadecimal digits. */
function isHex(s: string, from: number, to: number): boolean {
  if (to <= from) return false;
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    const lower = c | 0x20; // a-f and A-F
    if (!((c >= 48 && c <= 57) || (lower >= 97 && lower <= 102))) return false;
  }
  return true;
}

/** `Number.isInteger(Number(s.slice(from, to)))`, without the slice for plain digits. */
function isIntegerText(s: string, from: number, to: number): boolean {
  let i = from;
  while (i < to && s.charCodeAt(i) >= 48 && s.charCodeAt(i) <= 57) i++;
  return i === to || Number.isInteger(Number(s.slice(from, to)));
}
