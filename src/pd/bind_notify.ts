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

const PREFIX = "kvport.pd.bind\n";
const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });
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
  return enc.encode(
    PREFIX + JSON.stringify({
      r: n.reqId,
      f: n.fmt,
      s: n.shape,
      d: n.dtype,
      t: n.lastChunkToks,
      k: n.keys,
      p: n.pages,
    }),
  );
}

/** Whether `bytes` start like a bind notification (then {@linkcode decodeBind} reads it). */
export function isBind(bytes: Uint8Array): boolean {
  if (bytes.length < PREFIX_BYTES.length) return false;
  for (let i = 0; i < PREFIX_BYTES.length; i++) if (bytes[i] !== PREFIX_BYTES[i]) return false;
  return true;
}

/**
 * Reads a bind notification; throws an `Error` naming the field when it is malformed
 * (not JSON, a field of the wrong type, out of bounds, duplicate keys or pages, keys and
 * pages of different lengths), `null` when the bytes are not a bind notification.
 */
export function decodeBind(bytes: Uint8Array): BindNotice | null {
  if (!isBind(bytes)) return null;
  if (bytes.length > MAX_NOTIFICATION_BYTES) {
    throw new Error(
      `bind notification of ${bytes.length} bytes (at most ${MAX_NOTIFICATION_BYTES})`,
    );
  }
  let v: unknown;
  try {
    v = JSON.parse(dec.decode(bytes.subarray(PREFIX_BYTES.length)));
  } catch (e) {
    throw new Error(`bind notification is not UTF-8 JSON: ${(e as Error).message}`);
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) {
    throw new Error("bind notification: expected an object");
  }
  const o = v as Record<string, unknown>;
  const int = (x: unknown, what: string, min: number): number => {
    if (typeof x !== "number" || !Number.isSafeInteger(x) || x < min) {
      throw new Error(`bind notification: ${what} must be an integer >= ${min}, got ${String(x)}`);
    }
    return x;
  };
  if (typeof o.r !== "string") throw new Error("bind notification: r (req_id) must be a string");
  if (typeof o.d !== "string" || o.d === "") {
    throw new Error("bind notification: d (dtype) must be a non-empty string");
  }
  if (!Array.isArray(o.s) || o.s.length === 0 || o.s.length > MAX_DIMS) {
    throw new Error(`bind notification: s (shape) must be a list of 1..${MAX_DIMS} integers`);
  }
  const shape = o.s.map((x, i) => int(x, `s[${i}]`, 0));
  const fmt = int(o.f, "f (fmt)", 0);
  const last = o.t === null ? null : int(o.t, "t (last_chunk_toks)", 0);
  if (!Array.isArray(o.k) || !Array.isArray(o.p) || o.k.length !== o.p.length) {
    throw new Error("bind notification: k (keys) and p (pages) must be lists of one length");
  }
  if (o.k.length === 0) throw new Error("bind notification: no keys");
  const keys = o.k.map((k, i) => {
    if (typeof k !== "string" || k === "" || k.includes("\n")) {
      throw new Error(`bind notification: k[${i}] must be a non-empty key without newlines`);
    }
    return k;
  });
  const pages = o.p.map((p, i) => int(p, `p[${i}]`, 0));
  if (new Set(keys).size !== keys.length) throw new Error("bind notification: a key twice");
  if (new Set(pages).size !== pages.length) throw new Error("bind notification: a page twice");
  return { reqId: o.r, fmt, shape, dtype: o.d, lastChunkToks: last, keys, pages };
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
  const groups: number[][] = [];
  let cur: number[] = [];
  let size = base;
  for (const p of positions) {
    // The key as a JSON string, a comma, and a page index of up to 16 digits and a comma.
    const k = enc.encode(JSON.stringify(keys[p])).length + 18;
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
