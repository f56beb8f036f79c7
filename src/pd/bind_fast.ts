/**
 * The fast reading of a bind notification's body (see `bind_notify.ts`): the bytes that
 * our own encoder writes, `{"r":…,"f":…,"s":[…],"d":…,"t":…,"k":[…],"p":[…]}` with its
 * fields in that order, no white space, plain ASCII strings (no escape) and integers of
 * at most 15 digits, are read straight from the bytes, without the UTF-8 decoding and
 * `JSON.parse` (on the decoder's path of every request: in place, where every request
 * finds the code cold, those took 6.6 us under Deno and 5.3 under Bun on the 2-core VM,
 * this 3.7 and 2.7; in a hot loop both take well under a microsecond).
 *
 * Anything else - another field order, white space, an escape, a byte beyond ASCII, a
 * number with a sign, a fraction, an exponent, a leading zero or 16 digits - is not
 * read here (`null`): the caller then parses the body as JSON, as before, so this
 * accepts nothing that path would not read the same way. The values are not checked
 * here either: the caller checks every field whichever way it was read.
 *
 * @example
 * ```ts
 * import { parsePlainBind } from "./bind_fast.ts";
 * const body = new TextEncoder().encode(
 *   '{"r":"r1","f":1,"s":[2,1,256,64],"d":"bfloat16","t":null,"k":["k0"],"p":[7]}',
 * );
 * console.log(parsePlainBind(body, 0)?.p); // [7]
 * ```
 * @module
 */

const enc = new TextEncoder();
// The strings are checked to be printable ASCII, which decodes as itself. Under Deno a
// short one is made with String.fromCharCode (a decode is a call out of V8 there: in
// place, a bind read in 3.7 us against 4.6); Bun decodes faster than it makes one of
// char codes (2.7 us against 4.0).
const ascii = new TextDecoder();
const BY_CHAR_CODES = typeof (globalThis as { Bun?: unknown }).Bun === "undefined";
/** Longest string made with `String.fromCharCode` (one argument per byte). */
const SHORT_STRING = 1024;

const QUOTE = 0x22;
const COMMA = 0x2c;
const CLOSE_LIST = 0x5d;
const CLOSE_OBJECT = 0x7d;
const ZERO = 0x30;
const BACKSLASH = 0x5c;

// What comes before each value, in the encoder's order.
const R = enc.encode('{"r":');
const F = enc.encode(',"f":');
const S = enc.encode(',"s":[');
const D = enc.encode(',"d":');
const T = enc.encode(',"t":');
const K = enc.encode(',"k":[');
const P = enc.encode(',"p":[');
const NULL = enc.encode("null");

/** Most digits of an integer read here: 15 are always exact in a double. */
const MAX_DIGITS = 15;

/** What {@linkcode parsePlainBind} read: the fields as `JSON.parse` would give them. */
export interface PlainBind {
  r: string;
  f: number;
  s: number[];
  d: string;
  t: number | null;
  k: string[];
  p: number[];
}

const NONE = new Uint8Array(0);

// The read position and bytes of the call in progress (one at a time: synchronous).
let buf: Uint8Array = NONE;
let at = 0;

function lit(bytes: Uint8Array): boolean {
  if (at + bytes.length > buf.length) return false;
  for (let i = 0; i < bytes.length; i++) if (buf[at + i] !== bytes[i]) return false;
  at += bytes.length;
  return true;
}

/** A string of printable ASCII without quote or backslash, or null. */
function str(): string | null {
  if (buf[at] !== QUOTE) return null;
  const start = ++at;
  for (; at < buf.length; at++) {
    const c = buf[at];
    if (c === QUOTE) break;
    if (c < 0x20 || c > 0x7e || c === BACKSLASH) return null;
  }
  if (at >= buf.length) return null;
  const part = buf.subarray(start, at++);
  return BY_CHAR_CODES && part.length <= SHORT_STRING
    ? String.fromCharCode.apply(null, part as unknown as number[])
    : ascii.decode(part);
}

/** An integer of 1 to 15 digits without a leading zero, or -1. */
function uint(): number {
  const start = at;
  let v = 0;
  for (; at < buf.length; at++) {
    const d = buf[at] - ZERO;
    if (d < 0 || d > 9) break;
    v = v * 10 + d;
  }
  const n = at - start;
  if (n === 0 || n > MAX_DIGITS || (n > 1 && buf[start] === ZERO)) return -1;
  return v;
}

/** The rest of a list of integers (its `[` read), or null. */
function uints(): number[] | null {
  const out: number[] = [];
  if (buf[at] === CLOSE_LIST) {
    at++;
    return out;
  }
  for (;;) {
    const v = uint();
    if (v < 0) return null;
    out.push(v);
    const c = buf[at++];
    if (c === CLOSE_LIST) return out;
    if (c !== COMMA) return null;
  }
}

/** The rest of a list of strings (its `[` read), or null. */
function strs(): string[] | null {
  const out: string[] = [];
  if (buf[at] === CLOSE_LIST) {
    at++;
    return out;
  }
  for (;;) {
    const s = str();
    if (s === null) return null;
    out.push(s);
    const c = buf[at++];
    if (c === CLOSE_LIST) return out;
    if (c !== COMMA) return null;
  }
}

function read(): PlainBind | null {
  if (!lit(R)) return null;
  const r = str();
  if (r === null || !lit(F)) return null;
  const f = uint();
  if (f < 0 || !lit(S)) return null;
  const s = uints();
  if (s === null || !lit(D)) return null;
  const d = str();
  if (d === null || !lit(T)) return null;
  let t: number | null = null;
  if (!lit(NULL)) {
    t = uint();
    if (t < 0) return null;
  }
  if (!lit(K)) return null;
  const k = strs();
  if (k === null || !lit(P)) return null;
  const p = uints();
  if (p === null || buf[at] !== CLOSE_OBJECT || at + 1 !== buf.length) return null;
  return { r, f, s, d, t, k, p };
}

/**
 * The body of a bind notification (`bytes` from `start`) read as our encoder writes it,
 * or `null` when it is written any other way (parse it as JSON then). Nothing is
 * checked but the syntax: the caller checks the values.
 */
export function parsePlainBind(bytes: Uint8Array, start: number): PlainBind | null {
  buf = bytes;
  at = start;
  try {
    return read();
  } finally {
    buf = NONE; // the notification is not kept
  }
}
