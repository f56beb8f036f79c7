/**
 * The byte writer and reader of the P2P messages' own codecs (`lookup_codec.ts`,
 * `get_codec.ts`): msgpack in the layout msgspec writes, nothing else. Internal.
 *
 * @module
 */

import type { WireInt } from "./messages.ts";

/** Integers in [I32_MIN, U32_END) are written in their smallest format, the rest as
 * (u)int 64 (msgspec's choice: the rule of the generic codec in messages.ts too, which
 * takes these bounds from here). */
export const I32_MIN = -(2 ** 31);
/** See {@linkcode I32_MIN}. */
export const U32_END = 2 ** 32;
/** {@linkcode I32_MIN} as a bigint. */
export const BIG_I32_MIN = BigInt(I32_MIN);
/** {@linkcode U32_END} as a bigint. */
export const BIG_U32_END = BigInt(U32_END);
/** The smallest msgpack integer. */
export const INT64_MIN = -(2n ** 63n);
/** The largest msgpack integer. */
export const UINT64_MAX = 2n ** 64n - 1n;
/** The safe integers' bounds as bigints. */
export const MIN_SAFE = BigInt(Number.MIN_SAFE_INTEGER);
/** See {@linkcode MIN_SAFE}. */
export const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * msgpack fixstr of an ASCII constant.
 *
 * @example
 * ```ts
 * import { fixstr } from "./_msgpack_rw.ts";
 * console.log(fixstr("ab")); // [162, 97, 98]
 * ```
 */
export function fixstr(s: string): number[] {
  return [0xa0 + s.length, ...Array.from(s, (c) => c.charCodeAt(0))];
}

/**
 * Whether `s` is all ASCII (its UTF-8 bytes are its char codes).
 *
 * @example
 * ```ts
 * import { ascii } from "./_msgpack_rw.ts";
 * console.log(ascii("a@1"), ascii("\u00e9")); // true false
 * ```
 */
export function ascii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

/**
 * Bytes of a msgpack str header for `n` bytes (the encoder's choice: fixstr, str 8/16/32).
 *
 * @example
 * ```ts
 * import { strHeaderBytes } from "./_msgpack_rw.ts";
 * console.log(strHeaderBytes(31), strHeaderBytes(32)); // 1 2
 * ```
 */
export function strHeaderBytes(n: number): number {
  return n < 32 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : 5;
}

/**
 * Bytes of a msgpack array header for `n` elements (fixarray, array 16/32).
 *
 * @example
 * ```ts
 * import { arrayHeaderBytes } from "./_msgpack_rw.ts";
 * console.log(arrayHeaderBytes(15), arrayHeaderBytes(16)); // 1 3
 * ```
 */
export function arrayHeaderBytes(n: number): number {
  return n < 16 ? 1 : n < 0x10000 ? 3 : 5;
}

/**
 * Bytes of an integer the way `encodeMessage` writes it (numbers in [-2^31, 2^32)
 * minimal, the rest as int 64 / uint 64).
 *
 * @example
 * ```ts
 * import { intBytes } from "./_msgpack_rw.ts";
 * console.log(intBytes(5), intBytes(2 ** 32)); // 1 9
 * ```
 */
export function intBytes(x: number): number {
  if (x >= 0) return x < 0x80 ? 1 : x < 0x100 ? 2 : x < 0x10000 ? 3 : x < U32_END ? 5 : 9;
  return x >= -0x20 ? 1 : x >= -0x80 ? 2 : x >= -0x8000 ? 3 : x >= I32_MIN ? 5 : 9;
}

/**
 * A byte writer over a buffer sized by its caller.
 *
 * @example
 * ```ts
 * import { Writer } from "./_msgpack_rw.ts";
 * const w = new Writer(3);
 * w.int(300);
 * console.log(w.bytes); // Uint8Array(3) [205, 1, 44]
 * ```
 */
export class Writer {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  pos = 0;

  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }

  raw(b: Uint8Array): void {
    this.bytes.set(b, this.pos);
    this.pos += b.length;
  }

  /** An ASCII string (checked by the caller). */
  str(s: string): void {
    const n = s.length;
    const v = this.view;
    if (n < 32) v.setUint8(this.pos++, 0xa0 + n);
    else if (n < 0x100) {
      v.setUint8(this.pos, 0xd9);
      v.setUint8(this.pos + 1, n);
      this.pos += 2;
    } else if (n < 0x10000) {
      v.setUint8(this.pos, 0xda);
      v.setUint16(this.pos + 1, n);
      this.pos += 3;
    } else {
      v.setUint8(this.pos, 0xdb);
      v.setUint32(this.pos + 1, n);
      this.pos += 5;
    }
    const b = this.bytes;
    let p = this.pos;
    for (let i = 0; i < n; i++) b[p++] = s.charCodeAt(i);
    this.pos = p;
  }

  arrayHeader(n: number): void {
    const v = this.view;
    if (n < 16) v.setUint8(this.pos++, 0x90 + n);
    else if (n < 0x10000) {
      v.setUint8(this.pos, 0xdc);
      v.setUint16(this.pos + 1, n);
      this.pos += 3;
    } else {
      v.setUint8(this.pos, 0xdd);
      v.setUint32(this.pos + 1, n);
      this.pos += 5;
    }
  }

  /** A safe integer in [-2^31, 2^32), in its smallest format. */
  small(x: number): void {
    const v = this.view;
    const p = this.pos;
    if (x >= 0) {
      if (x < 0x80) {
        v.setUint8(p, x);
        this.pos = p + 1;
      } else if (x < 0x100) {
        v.setUint8(p, 0xcc);
        v.setUint8(p + 1, x);
        this.pos = p + 2;
      } else if (x < 0x10000) {
        v.setUint8(p, 0xcd);
        v.setUint16(p + 1, x);
        this.pos = p + 3;
      } else {
        v.setUint8(p, 0xce);
        v.setUint32(p + 1, x);
        this.pos = p + 5;
      }
    } else if (x >= -0x20) {
      v.setUint8(p, 0xe0 | (x + 0x20));
      this.pos = p + 1;
    } else if (x >= -0x80) {
      v.setUint8(p, 0xd0);
      v.setInt8(p + 1, x);
      this.pos = p + 2;
    } else if (x >= -0x8000) {
      v.setUint8(p, 0xd1);
      v.setInt16(p + 1, x);
      this.pos = p + 3;
    } else {
      v.setUint8(p, 0xd2);
      v.setInt32(p + 1, x);
      this.pos = p + 5;
    }
  }

  /** A 64-bit integer outside [-2^31, 2^32): uint 64 or int 64. */
  big(x: bigint): void {
    if (x >= 0n) {
      this.view.setUint8(this.pos, 0xcf);
      this.view.setBigUint64(this.pos + 1, x);
    } else {
      this.view.setUint8(this.pos, 0xd3);
      this.view.setBigInt64(this.pos + 1, x);
    }
    this.pos += 9;
  }

  /** A safe integer, as `encodeMessage` writes it. */
  int(x: number): void {
    if (x >= I32_MIN && x < U32_END) this.small(x);
    else this.big(BigInt(x));
  }
}

/**
 * A reader of the canonical layout; every method returns `undefined` (or -1) off it.
 *
 * @example
 * ```ts
 * import { Reader } from "./_msgpack_rw.ts";
 * const r = new Reader(new Uint8Array([0xcd, 1, 44]));
 * console.log(r.int(), r.done); // 300 true
 * ```
 */
export class Reader {
  readonly view: DataView;
  pos = 0;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Whether the next bytes are `b` (consumed if so). */
  lit(b: Uint8Array): boolean {
    const p = this.pos;
    const bytes = this.bytes;
    if (p + b.length > bytes.length) return false;
    for (let i = 0; i < b.length; i++) if (bytes[p + i] !== b[i]) return false;
    this.pos = p + b.length;
    return true;
  }

  /** An array header's count, or -1. */
  arrayHeader(): number {
    const bytes = this.bytes;
    const p = this.pos;
    if (p >= bytes.length) return -1;
    const t = bytes[p];
    if (t >= 0x90 && t <= 0x9f) {
      this.pos = p + 1;
      return t - 0x90;
    }
    if (t === 0xdc && p + 3 <= bytes.length) {
      this.pos = p + 3;
      return this.view.getUint16(p + 1);
    }
    if (t === 0xdd && p + 5 <= bytes.length) {
      this.pos = p + 5;
      return this.view.getUint32(p + 1);
    }
    return -1;
  }

  /** The count of a list whose every element takes a byte at least: -1 off the layout
   * or when the count is beyond the bytes left (no canonical message has that). */
  listHeader(): number {
    const n = this.arrayHeader();
    return n > this.bytes.length - this.pos ? -1 : n;
  }

  /** An integer of any msgpack integer format: a number, or a bigint for (u)int 64. */
  int(): number | bigint | undefined {
    const bytes = this.bytes;
    const v = this.view;
    const p = this.pos;
    if (p >= bytes.length) return undefined;
    const t = bytes[p];
    if (t < 0x80) {
      this.pos = p + 1;
      return t;
    }
    if (t >= 0xe0) {
      this.pos = p + 1;
      return t - 0x100;
    }
    const need = t === 0xcc || t === 0xd0
      ? 2
      : t === 0xcd || t === 0xd1
      ? 3
      : t === 0xce || t === 0xd2
      ? 5
      : t === 0xcf || t === 0xd3
      ? 9
      : 0;
    if (need === 0 || p + need > bytes.length) return undefined;
    this.pos = p + need;
    switch (t) {
      case 0xcc:
        return bytes[p + 1];
      case 0xcd:
        return v.getUint16(p + 1);
      case 0xce:
        return v.getUint32(p + 1);
      case 0xcf:
        return v.getBigUint64(p + 1);
      case 0xd0:
        return v.getInt8(p + 1);
      case 0xd1:
        return v.getInt16(p + 1);
      case 0xd2:
        return v.getInt32(p + 1);
      default:
        return v.getBigInt64(p + 1);
    }
  }

  /** An all-ASCII string of any str format, or undefined. */
  str(): string | undefined {
    const bytes = this.bytes;
    let p = this.pos;
    if (p >= bytes.length) return undefined;
    const t = bytes[p];
    let n: number;
    if (t >= 0xa0 && t <= 0xbf) {
      n = t - 0xa0;
      p += 1;
    } else if (t === 0xd9 && p + 2 <= bytes.length) {
      n = bytes[p + 1];
      p += 2;
    } else if (t === 0xda && p + 3 <= bytes.length) {
      n = this.view.getUint16(p + 1);
      p += 3;
    } else if (t === 0xdb && p + 5 <= bytes.length) {
      n = this.view.getUint32(p + 1);
      p += 5;
    } else {
      return undefined;
    }
    if (p + n > bytes.length) return undefined;
    let s = "";
    for (let i = 0; i < n; i++) {
      const c = bytes[p + i];
      if (c > 0x7f) return undefined;
      s += String.fromCharCode(c);
    }
    this.pos = p + n;
    return s;
  }

  get done(): boolean {
    return this.pos === this.bytes.length;
  }
}

/**
 * msgspec's `int` as `decodeMessage` gives it: a number when safe, else the bigint.
 *
 * @example
 * ```ts
 * import { wireInt } from "./_msgpack_rw.ts";
 * console.log(wireInt(5n), wireInt(2n ** 60n)); // 5 1152921504606846976n
 * ```
 */
export function wireInt(x: number | bigint): WireInt {
  return typeof x === "number" ? x : x >= MIN_SAFE && x <= MAX_SAFE ? Number(x) : x;
}
