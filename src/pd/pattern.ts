/**
 * Deterministic test content for KV chunks: every key gets its own pseudo-random bytes,
 * so a receiver can check every byte of what it got (and that no page landed under
 * another key) without any side channel. Used by `kvport demo`, `kvport pd-sender` /
 * `pd-receiver` and the benchmarks.
 *
 * @module
 */

import { Buffer } from "node:buffer";

const BLOCK = 64 * 1024;

function seedOf(key: string): [number, number] {
  // 64-bit FNV-1a as two 32-bit halves (Math.imul keeps it in integers).
  let lo = 0x84222325, hi = 0xcbf29ce4;
  for (let i = 0; i < key.length; i++) {
    lo ^= key.charCodeAt(i);
    // (hi:lo) * 0x100000001b3
    const a = Math.imul(lo, 0x1b3) >>> 0;
    const carry = Math.floor((lo >>> 0) * 0x1b3 / 0x100000000);
    hi = (Math.imul(hi, 0x1b3) + Math.imul(lo, 0x100) + carry) >>> 0;
    lo = a;
  }
  return [lo >>> 0 || 1, hi >>> 0 || 2];
}

const baseCache = new Map<string, Uint8Array>();
// One scratch block for pages shorter than a block: a fresh 64 KiB block per key of a
// 1 KiB page churned 64x the page through malloc, which kept it (a P2P holder storing
// 100k such chunks grew by ~4 KB per chunk).
const scratch = new Uint8Array(BLOCK);

/** Writes the first `bytes` bytes (rounded up to 4) of `key`'s base stream into `out`. */
function generate(key: string, out: Uint8Array, bytes: number): void {
  const w = new Uint32Array(out.buffer, out.byteOffset, Math.ceil(bytes / 4));
  let [x, y] = seedOf(key);
  for (let i = 0; i < w.length; i++) {
    // xorshift64 on two halves (xorshift128-lite): fast, good enough to tell keys apart
    let t = x ^ (x << 11);
    x = y;
    y = (y ^ (y >>> 19)) ^ (t ^ (t >>> 8));
    t = y >>> 0;
    w[i] = t;
  }
}

/**
 * The block every block of `key`'s content starts from, at least `bytes` long: cached
 * whole blocks for multi-block pages, else the shared scratch (valid until the next call).
 */
function baseBlock(key: string, bytes: number): Uint8Array {
  let b = baseCache.get(key);
  if (b) return b;
  if (bytes < BLOCK) {
    generate(key, scratch, bytes);
    return scratch;
  }
  b = new Uint8Array(BLOCK);
  generate(key, b, BLOCK);
  if (baseCache.size > 256) baseCache.clear();
  baseCache.set(key, b);
  return b;
}

function stamp(key: string, block: number): [number, number] {
  const [lo, hi] = seedOf(key);
  return [(lo ^ Math.imul(block + 1, 0x9e3779b1)) >>> 0, (hi + block) >>> 0];
}

/**
 * Fills `bytes` with `key`'s content: 64 KiB blocks of the key's pseudo-random block,
 * each stamped with its block number in its first 8 bytes. Runs at memcpy speed.
 *
 * @example
 * ```ts
 * import { checkPattern, fillPattern } from "./pattern.ts";
 *
 * const page = new Uint8Array(1 << 20);
 * fillPattern("vllm@m@1@0@ab@bfloat16", page);
 * console.log(checkPattern("vllm@m@1@0@ab@bfloat16", page)); // -1: every byte as expected
 * ```
 */
export function fillPattern(key: string, bytes: Uint8Array): void {
  const base = baseBlock(key, bytes.length);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let off = 0, blk = 0; off < bytes.length; off += BLOCK, blk++) {
    const n = Math.min(BLOCK, bytes.length - off);
    bytes.set(n === BLOCK ? base : base.subarray(0, n), off);
    if (n >= 8) {
      const [a, b] = stamp(key, blk);
      dv.setUint32(off, a, true);
      dv.setUint32(off + 4, b, true);
    }
  }
}

/**
 * Checks that `bytes` holds exactly what {@linkcode fillPattern} writes for `key`.
 * Returns `-1` when every byte matches, else the offset of the first 64 KiB block that
 * differs.
 *
 * @example
 * ```ts
 * import { checkPattern, fillPattern } from "./pattern.ts";
 *
 * const page = new Uint8Array(4096);
 * fillPattern("k@m@1@0@1@bfloat16", page);
 * page[100] ^= 1;
 * console.log(checkPattern("k@m@1@0@1@bfloat16", page)); // 0
 * ```
 */
export function checkPattern(key: string, bytes: Uint8Array): number {
  const block = baseBlock(key, bytes.length);
  const base = Buffer.from(block.buffer, block.byteOffset, BLOCK);
  const all = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let off = 0, blk = 0; off < bytes.length; off += BLOCK, blk++) {
    const n = Math.min(BLOCK, bytes.length - off);
    if (n >= 8) {
      const [a, b] = stamp(key, blk);
      if (dv.getUint32(off, true) !== a || dv.getUint32(off + 4, true) !== b) return off;
      if (all.compare(base, 8, n, off + 8, off + n) !== 0) return off;
    } else if (all.compare(base, 0, n, off, off + n) !== 0) return off;
  }
  return -1;
}
