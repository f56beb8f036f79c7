/**
 * Checksums of the storage format: CRC-32 (IEEE, the zlib polynomial) of chunk data and
 * of every index record, and a 64-bit FNV-1a of keys for file names.
 *
 * CRC-32 comes from `node:zlib` (hardware accelerated in Deno and Bun: tens of GB/s, so a
 * 28 MiB chunk costs about a millisecond); a table-driven fallback covers a runtime
 * without `zlib.crc32`.
 *
 * @module
 */
import * as zlib from "node:zlib";

type Crc32Fn = (data: Uint8Array, value?: number) => number;

// deno-lint-ignore no-explicit-any
const nativeCrc32: Crc32Fn | undefined = typeof (zlib as any).crc32 === "function"
  // deno-lint-ignore no-explicit-any
  ? ((zlib as any).crc32 as Crc32Fn)
  : undefined;

let table: Uint32Array | undefined;

function softCrc32(data: Uint8Array, value = 0): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
  }
  let crc = (value ^ 0xffffffff) >>> 0;
  for (let i = 0; i < data.length; i++) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/**
 * CRC-32 (IEEE 802.3, as zlib computes it) of `data`, continuing from `value`.
 *
 * @example
 * ```ts
 * import { crc32 } from "./checksum.ts";
 * console.log(crc32(new TextEncoder().encode("123456789")).toString(16)); // "cbf43926"
 * ```
 */
export function crc32(data: Uint8Array, value = 0): number {
  if (data.length === 0) return value >>> 0;
  return nativeCrc32 ? nativeCrc32(data, value) >>> 0 : softCrc32(data, value);
}

/** The table-driven CRC-32, exported for tests that compare it with zlib's. @internal */
export const crc32Portable: (data: Uint8Array, value?: number) => number = softCrc32;

const FNV_OFFSET = 0xcbf29ce484222325n;
const FNV_PRIME = 0x100000001b3n;
const MASK64 = 0xffffffffffffffffn;

/**
 * 64-bit FNV-1a of a string's UTF-8 bytes, as 16 lowercase hex digits (the same function
 * as the native `kvp_mem_checksum`).
 *
 * @example
 * ```ts
 * import { fnv1a64Hex } from "./checksum.ts";
 * console.log(fnv1a64Hex("")); // "cbf29ce484222325"
 * ```
 */
export function fnv1a64Hex(text: string): string {
  let h = FNV_OFFSET;
  for (const b of new TextEncoder().encode(text)) {
    h ^= BigInt(b);
    h = (h * FNV_PRIME) & MASK64;
  }
  return h.toString(16).padStart(16, "0");
}
