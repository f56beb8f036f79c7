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
  const h = p0 >= 0 && isIntegerText(key, p1 + 1, p2) && isIntegerText(key, p2 + 1, p3)
    ? hexValue(key, p3 + 1 + (neg ? 1 : 0), p4)
    : undefined;
  if (h === undefined) return BigInt(`0x${fnv1a64Hex(key)}`);
  const v = neg ? -h : h;
  return v < INT64_MIN || v > UINT64_MAX ? BigInt.asIntN(64, v) : v;
}

const VIEW = new DataView(new ArrayBuffer(8));

/** The value of `s[from, to)` read as hexadecimal digits (one at least), or undefined. */
function hexValue(s: string, from: number, to: number): bigint | undefined {
  if (to <= from) return undefined;
  if (to - from > 16) {
    // Beyond 64 bits (folded by the caller): rare, the plain way.
    for (let i = from; i < to; i++) if (hexDigit(s.charCodeAt(i)) < 0) return undefined;
    return BigInt(`0x${s.slice(from, to)}`);
  }
  // Two 32-bit halves into one 8-byte view: one bigint made, no string parsed.
  const split = Math.max(from, to - 8);
  let hi = 0;
  let lo = 0;
  for (let i = from; i < split; i++) {
    const d = hexDigit(s.charCodeAt(i));
    if (d < 0) return undefined;
    hi = hi * 16 + d;
  }
  for (let i = split; i < to; i++) {
    const d = hexDigit(s.charCodeAt(i));
    if (d < 0) return undefined;
    lo = lo * 16 + d;
  }
  VIEW.setUint32(0, hi);
  VIEW.setUint32(4, lo);
  return VIEW.getBigUint64(0);
}

/** A hexadecimal digit's value, or -1. */
function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  const lower = c | 0x20; // a-f and A-F
  return lower >= 97 && lower <= 102 ? lower - 87 : -1;
}

/** `Number.isInteger(Number(s.slice(from, to)))`, without the slice for plain digits. */
function isIntegerText(s: string, from: number, to: number): boolean {
  let i = from;
  while (i < to && s.charCodeAt(i) >= 48 && s.charCodeAt(i) <= 57) i++;
  return i === to || Number.isInteger(Number(s.slice(from, to)));
}
