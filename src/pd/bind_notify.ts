/**
 * The "bind" notification of page credits (kvport to kvport only): a sender that holds
 * credit pages of a receiver WRITEs a batch into them with no AllocRequest, and this
 * notification, delivered after the data, tells the receiver which key each page now
 * holds. Its body is `kvport.pd.bind\n` then one JSON object:
 * `{"r": req_id, "f": fmt, "s": shape, "d": dtype, "t": last_chunk_toks | null,
 * "k": [keys], "p": [pages]}` (`t` is set on the group that ends the batch: its last key
 * has `t` tokens, every other key a full chunk, as an AllocRequest's keys would).
 *
 * Nothing in it is trusted: {@linkcode decodeBind} checks every field and its bounds, and
 * the receiver checks each page is a live credit of the agent that sent it.
 *
 * @module
 */

import { MAX_NOTIFICATION_BYTES } from "./notify.ts";
import { distinct } from "../channel/_util.ts";
import { parsePlainBind } from "./bind_fast.ts";
import { LastForm } from "./last_form.ts";

const PREFIX = "kvport.pd.bind\n";
const enc = new TextEncoder();
const strict = new TextDecoder("utf-8", { fatal: true });
const loose = new TextDecoder();
const PREFIX_BYTES = enc.encode(PREFIX);

/** Most dimensions a bound shape may have (KV shapes have 4 or 5). */
const MAX_DIMS = 8;

/** What a bind notification says. */
export interface BindNotice {
  /** The request id (may be empty). */
  reqId: string;
  /** LMCache `MemoryFormat` value. */
  fmt: number;
  /** Shape of a full chunk. */
  shape: number[];
  /** Data type name. */
  dtype: string;
  /** Tokens of the last key when this group ends the batch, else `null` (all full). */
  lastChunkToks: number | null;
  /** The keys, one per page. */
  keys: string[];
  /** The receiver's (credit) page of each key. */
  pages: number[];
}

/**
 * Encodes a bind notification.
 *
 * @example
 * ```ts
 * import { decodeBind, encodeBind } from "./bind_notify.ts";
 * const bytes = encodeBind({
 *   reqId: "r1", fmt: 1, shape: [2, 1, 256, 64], dtype: "bfloat16", lastChunkToks: 256,
 *   keys: ["k0"], pages: [7],
 * });
 * console.log(decodeBind(bytes)?.pages); // [7]
 * ```
 */
export function encodeBind(n: BindNotice): Uint8Array {
  return bindEncoder(n)(n.keys, n.pages, n.lastChunkToks);
}

/**
 * The encoder of the bind notifications of one batch: the fields every group of the batch
 * shares (request id, fmt, shape, dtype) are written once, and each call adds a group's
 * `t`, keys and pages. The bytes are those of {@linkcode encodeBind} (the same JSON, field
 * for field, in the same order).
 *
 * @example
 * ```ts
 * import { bindEncoder, decodeBind } from "./bind_notify.ts";
 * const encode = bindEncoder({ reqId: "r1", fmt: 1, shape: [2, 1, 256, 64], dtype: "bfloat16" });
 * console.log(decodeBind(encode(["k0", "k1"], [7, 3], 100))?.keys); // ["k0", "k1"]
 * ```
 */
export function bindEncoder(
  n: { reqId: string; fmt: number; shape: readonly number[]; dtype: string },
): (keys: readonly string[], pages: readonly number[], lastChunkToks: number | null) => Uint8Array {
  // What JSON.stringify of the whole object writes before "t", as one string.
  const head = PREFIX + '{"r":' + JSON.stringify(n.reqId) + formFields(n.fmt, n.shape, n.dtype);
  return (keys, pages, last) =>
    enc.encode(
      head + JSON.stringify(last) + ',"k":' + JSON.stringify(keys) + ',"p":' +
        JSON.stringify(pages) + "}",
    );
}

// The fields after the request id, as last written: the requests of one model share
// them, so they are not written again per request.
const lastFields = new LastForm<string>();

/** `,"f":fmt,"s":shape,"d":dtype,"t":` as JSON.stringify writes them. */
function formFields(fmt: number, shape: readonly number[], dtype: string): string {
  return lastFields.get(fmt, shape, dtype) ??
    lastFields.keep(
      fmt,
      shape,
      dtype,
      ',"f":' + JSON.stringify(fmt) + ',"s":' + JSON.stringify(shape) + ',"d":' +
        JSON.stringify(dtype) + ',"t":',
    );
}

/** Whether `bytes` start like a bind notification (then {@linkcode decodeBind} reads it). */
export function isBind(bytes: Uint8Array): boolean {
  if (bytes.length < PREFIX_BYTES.length) return false;
  for (let i = 0; i < PREFIX_BYTES.length; i++) if (bytes[i] !== PREFIX_BYTES[i]) return false;
  return true;
}

/** Whether `x` is a safe integer >= `min`. */
function isInt(x: unknown, min: number): x is number {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= min;
}

/** `x` when it is a safe integer >= `min`, else throws naming `what`. */
function int(x: unknown, what: string, min: number): number {
  if (!isInt(x, min)) {
    throw new Error(`bind notification: ${what} must be an integer >= ${min}, got ${String(x)}`);
  }
  return x;
}

/**
 * Reads a bind notification; throws an `Error` naming the field when it is malformed
 * (not JSON, a field of the wrong type, out of bounds, duplicate keys or pages, keys and
 * pages of different lengths), `null` when the bytes are not a bind notification.
 */
export function decodeBind(bytes: Uint8Array): BindNotice | null {
  if (!isBind(bytes)) return null;
  return readBind(bytes);
}

/**
 * {@linkcode decodeBind} of bytes known to start like a bind notification (the receiver
 * asked {@linkcode isBind} already): every field is checked here, once.
 *
 * @example
 * ```ts
 * import { encodeBind, isBind, readBind } from "./bind_notify.ts";
 * const bytes = encodeBind({
 *   reqId: "", fmt: 1, shape: [2, 1, 256, 64], dtype: "bfloat16", lastChunkToks: null,
 *   keys: ["k0"], pages: [7],
 * });
 * if (isBind(bytes)) console.log(readBind(bytes).keys); // ["k0"]
 * ```
 */
export function readBind(bytes: Uint8Array): BindNotice {
  if (bytes.length > MAX_NOTIFICATION_BYTES) {
    throw new Error(
      `bind notification of ${bytes.length} bytes (at most ${MAX_NOTIFICATION_BYTES})`,
    );
  }
  // As our encoder writes it, read straight from the bytes (no decoding, no JSON.parse:
  // this runs on the decoder's path of every request); written any other way, as JSON.
  // Either way every field is checked below.
  let v: unknown = parsePlainBind(bytes, PREFIX_BYTES.length);
  if (v === null) {
    try {
      v = JSON.parse(utf8(bytes.subarray(PREFIX_BYTES.length)));
    } catch (e) {
      throw new Error(`bind notification is not UTF-8 JSON: ${(e as Error).message}`);
    }
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) {
    throw new Error("bind notification: expected an object");
  }
  const o = v as Record<string, unknown>;
  if (typeof o.r !== "string") throw new Error("bind notification: r (req_id) must be a string");
  if (typeof o.d !== "string" || o.d === "") {
    throw new Error("bind notification: d (dtype) must be a non-empty string");
  }
  const s = o.s;
  if (!Array.isArray(s) || s.length === 0 || s.length > MAX_DIMS) {
    throw new Error(`bind notification: s (shape) must be a list of 1..${MAX_DIMS} integers`);
  }
  // The parsed arrays are fresh and ours: checked in place, not copied.
  // (The names of list entries are made only for a refusal, not per entry.)
  for (let i = 0; i < s.length; i++) if (!isInt(s[i], 0)) int(s[i], `s[${i}]`, 0);
  const fmt = int(o.f, "f (fmt)", 0);
  const last = o.t === null ? null : int(o.t, "t (last_chunk_toks)", 0);
  const keys = o.k;
  const pages = o.p;
  if (!Array.isArray(keys) || !Array.isArray(pages) || keys.length !== pages.length) {
    throw new Error("bind notification: k (keys) and p (pages) must be lists of one length");
  }
  const n = keys.length;
  if (n === 0) throw new Error("bind notification: no keys");
  for (let i = 0; i < n; i++) {
    const k = keys[i];
    if (typeof k !== "string" || k === "" || k.includes("\n")) {
      throw new Error(`bind notification: k[${i}] must be a non-empty key without newlines`);
    }
  }
  for (let i = 0; i < n; i++) if (!isInt(pages[i], 0)) int(pages[i], `p[${i}]`, 0);
  if (n > 1) {
    // A set for the keys: their hashes are needed anyway (the receiver files each key in
    // its maps, and a set computes and keeps them); the pages pairwise (numbers, no set).
    if (new Set(keys).size !== n) throw new Error("bind notification: a key twice");
    if (!distinct(pages)) throw new Error("bind notification: a page twice");
  }
  return {
    reqId: o.r,
    fmt,
    shape: s as number[],
    dtype: o.d,
    lastChunkToks: last,
    keys: keys as string[],
    pages: pages as number[],
  };
}

/**
 * `bytes` as UTF-8 text, or an error for bytes that are not UTF-8. Decoded leniently
 * first (under Deno the strict decoder takes twice as long for the kilobyte of a bind):
 * only a text with a replacement character in it, which is what malformed bytes become,
 * is decoded again strictly (which throws for those, and returns the same text for a
 * replacement character that was sent as such).
 */
function utf8(bytes: Uint8Array): string {
  const text = loose.decode(bytes);
  return text.includes("\uFFFD") ? strict.decode(bytes) : text;
}

/**
 * Splits positions of a batch into groups whose bind notification fits `maxBytes` (each
 * group is one WRITE with its own notification). `fixed` is what every notification
 * carries besides keys and pages (its request id, shape, dtype).
 *
 * @example
 * ```ts
 * import { groupForBind } from "./bind_notify.ts";
 * console.log(groupForBind(["a", "b"], [0, 1], 64, 1000)); // [[0, 1]]
 * ```
 */
export function groupForBind(
  keys: readonly string[],
  positions: readonly number[],
  fixed: number,
  maxBytes: number = MAX_NOTIFICATION_BYTES - 1024,
): number[][] {
  const base = PREFIX_BYTES.length + 64 + fixed;
  // A key's JSON string takes at most 6 bytes per UTF-16 unit (`\uXXXX`) and its quotes:
  // when even that bound fits, the batch is one group (no key's bytes counted).
  let bound = base;
  for (const p of positions) bound += 6 * keys[p].length + 20;
  if (bound <= maxBytes) return positions.length > 0 ? [positions.slice()] : [];
  const groups: number[][] = [];
  let cur: number[] = [];
  let size = base;
  for (const p of positions) {
    // The key as a JSON string, a comma, and a page index of up to 16 digits and a comma.
    const k = jsonBytes(keys[p]) + 18;
    if (cur.length > 0 && size + k > maxBytes) {
      groups.push(cur);
      cur = [];
      size = base;
    }
    cur.push(p);
    size += k;
  }
  if (cur.length > 0) groups.push(cur);
  return groups;
}

/** Characters a JSON string may not carry as they are, and any beyond ASCII. */
const NOT_PLAIN = /[^\x20\x21\x23-\x5b\x5d-\x7e]/;

/** UTF-8 bytes of `key` as a JSON string (no encoding for a plain ASCII key). */
function jsonBytes(key: string): number {
  if (!NOT_PLAIN.test(key)) return key.length + 2;
  return enc.encode(JSON.stringify(key)).length;
}
