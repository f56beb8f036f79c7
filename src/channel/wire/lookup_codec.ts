/**
 * The P2P registry round trip's two messages (`BatchedP2PLookupMsg` and its
 * `BatchedP2PLookupRetMsg`) written and read byte by byte, without the generic path of
 * {@linkcode encodeMessage} / {@linkcode decodeMessage} (validate, normalise the
 * integers, build a copy, walk it with the msgpack library). That path is most of the
 * JavaScript of a lookup: on the 2-core machine some 40 us of a one-chunk lookup's 120,
 * and it grows with the hashes.
 *
 * The bytes are the generic path's, bit for bit (msgspec's layout: `type` first, the
 * fields in declaration order, the smallest integer format; a test compares both over
 * every integer format boundary). Whatever the fast path does not cover - a string that
 * is not ASCII, a number where a bigint is expected, another field order, a truncated or
 * odd message, anything that is not these two types - goes through the generic path, so
 * results and errors are the generic path's too.
 *
 * @module
 */

import {
  type BatchedP2PLookupMsg,
  type BatchedP2PLookupRetMsg,
  decodeMessage,
  type DecodeOptions,
  encodeMessage,
  type LmcacheMessage,
  type MessageOf,
  type MessageType,
  type WireInt,
  withFieldOrder,
} from "./messages.ts";
import {
  arrayHeaderBytes,
  ascii,
  BIG_I32_MIN,
  BIG_U32_END,
  fixstr,
  INT64_MIN,
  intBytes,
  Reader,
  strHeaderBytes,
  UINT64_MAX,
  wireInt,
  Writer,
} from "./_msgpack_rw.ts";

/** `{"type": "BatchedP2PLookupMsg", "hashes": ` */
const LOOKUP_HEAD = Uint8Array.from([
  0x84,
  ...fixstr("type"),
  ...fixstr("BatchedP2PLookupMsg"),
  ...fixstr("hashes"),
]);
const INSTANCE_ID = Uint8Array.from(fixstr("instance_id"));
const WORKER_ID = Uint8Array.from(fixstr("worker_id"));
/** `{"type": "BatchedP2PLookupRetMsg", "layout_info": ` */
const REPLY_HEAD = Uint8Array.from([
  0x82,
  ...fixstr("type"),
  ...fixstr("BatchedP2PLookupRetMsg"),
  ...fixstr("layout_info"),
]);
const LOOKUP_ORDER = Object.freeze(["hashes", "instance_id", "worker_id"]);
const REPLY_ORDER = Object.freeze(["layout_info"]);

/**
 * `encodeMessage({type: "BatchedP2PLookupMsg", hashes, instance_id, worker_id})`, the
 * same bytes, without the generic path where the values allow (bigint hashes, an ASCII
 * instance id, a safe-integer worker id); otherwise, and for an invalid value, the
 * generic path answers (its bytes or its error).
 *
 * @param hashes chunk hashes (64-bit)
 * @param instanceId the asking instance
 * @param workerId the asking worker (TP rank)
 * @returns the msgpack bytes
 * @throws {WireMessageError} for a value the message cannot carry (as `encodeMessage`)
 *
 * @example
 * ```ts
 * import { encodeLookup } from "./lookup_codec.ts";
 * import { encodeMessage } from "./messages.ts";
 *
 * const fast = encodeLookup([1n, 2n ** 63n], "a", 0);
 * const slow = encodeMessage({ type: "BatchedP2PLookupMsg", hashes: [1n, 2n ** 63n], instance_id: "a", worker_id: 0 });
 * console.log(fast.length === slow.length && fast.every((b, i) => b === slow[i])); // true
 * ```
 */
export function encodeLookup(
  hashes: readonly bigint[],
  instanceId: string,
  workerId: number,
): Uint8Array {
  const slow = () =>
    encodeMessage({
      type: "BatchedP2PLookupMsg",
      hashes: [...hashes],
      instance_id: instanceId,
      worker_id: workerId,
    });
  if (
    !Array.isArray(hashes) || typeof instanceId !== "string" || !ascii(instanceId) ||
    !Number.isSafeInteger(workerId)
  ) {
    return slow();
  }
  const n = hashes.length;
  // One pass: sized for 9 bytes a hash (real hashes are 64-bit), cut to what was written.
  const w = new Writer(
    LOOKUP_HEAD.length + arrayHeaderBytes(n) + 9 * n + INSTANCE_ID.length +
      strHeaderBytes(instanceId.length) + instanceId.length + WORKER_ID.length + 9,
  );
  w.raw(LOOKUP_HEAD);
  w.arrayHeader(n);
  for (let i = 0; i < n; i++) {
    const h = hashes[i];
    if (typeof h !== "bigint") return slow();
    if (h >= BIG_U32_END) {
      if (h > UINT64_MAX) return slow();
      w.big(h);
    } else if (h < BIG_I32_MIN) {
      if (h < INT64_MIN) return slow();
      w.big(h);
    } else {
      w.small(Number(h));
    }
  }
  w.raw(INSTANCE_ID);
  w.str(instanceId);
  w.raw(WORKER_ID);
  w.int(workerId);
  return w.bytes.slice(0, w.pos);
}

/**
 * `encodeMessage` of a `BatchedP2PLookupRetMsg`, the same bytes, without the generic path
 * where the values allow (ASCII strings, safe-integer hit counts); otherwise the generic
 * path answers.
 *
 * @param message the reply
 * @returns the msgpack bytes
 * @throws {WireMessageError} for a value the message cannot carry (as `encodeMessage`)
 *
 * @example
 * ```ts
 * import { encodeLookupReply } from "./lookup_codec.ts";
 *
 * const bytes = encodeLookupReply({
 *   type: "BatchedP2PLookupRetMsg",
 *   layout_info: [["holder", "LocalCPUBackend", 3, "10.0.0.2:8200"]],
 * });
 * console.log(bytes[0].toString(16)); // 82 (a map of 2 entries)
 * ```
 */
export function encodeLookupReply(message: BatchedP2PLookupRetMsg): Uint8Array {
  const layout = message.layout_info;
  if (!Array.isArray(layout)) return encodeMessage(message);
  const n = layout.length;
  let size = REPLY_HEAD.length + arrayHeaderBytes(n);
  for (let i = 0; i < n; i++) {
    const e = layout[i];
    if (
      !Array.isArray(e) || e.length !== 4 || typeof e[0] !== "string" ||
      typeof e[1] !== "string" || typeof e[3] !== "string" || !Number.isSafeInteger(e[2]) ||
      !ascii(e[0]) || !ascii(e[1]) || !ascii(e[3])
    ) {
      return encodeMessage(message);
    }
    size += 1 + strHeaderBytes(e[0].length) + e[0].length + strHeaderBytes(e[1].length) +
      e[1].length + intBytes(e[2] as number) + strHeaderBytes(e[3].length) + e[3].length;
  }
  const w = new Writer(size);
  w.raw(REPLY_HEAD);
  w.arrayHeader(n);
  for (let i = 0; i < n; i++) {
    const e = layout[i];
    w.bytes[w.pos++] = 0x94;
    w.str(e[0]);
    w.str(e[1]);
    w.int(e[2] as number);
    w.str(e[3]);
  }
  return w.bytes;
}

/** The canonical `BatchedP2PLookupMsg`, or undefined. */
function readLookup(bytes: Uint8Array): BatchedP2PLookupMsg | undefined {
  const r = new Reader(bytes);
  if (!r.lit(LOOKUP_HEAD)) return undefined;
  const n = r.listHeader();
  if (n < 0) return undefined;
  const hashes = new Array<bigint>(n);
  for (let i = 0; i < n; i++) {
    const h = r.int();
    if (h === undefined) return undefined;
    hashes[i] = typeof h === "bigint" ? h : BigInt(h);
  }
  if (!r.lit(INSTANCE_ID)) return undefined;
  const instance_id = r.str();
  if (instance_id === undefined || !r.lit(WORKER_ID)) return undefined;
  const worker = r.int();
  if (worker === undefined || !r.done) return undefined;
  const msg: BatchedP2PLookupMsg = {
    type: "BatchedP2PLookupMsg",
    hashes,
    instance_id,
    worker_id: wireInt(worker),
  };
  return withFieldOrder(msg, LOOKUP_ORDER);
}

/** The canonical `BatchedP2PLookupRetMsg`, or undefined. */
function readReply(bytes: Uint8Array): BatchedP2PLookupRetMsg | undefined {
  const r = new Reader(bytes);
  if (!r.lit(REPLY_HEAD)) return undefined;
  const n = r.listHeader();
  if (n < 0) return undefined;
  const layout_info = new Array<[string, string, WireInt, string]>(n);
  for (let i = 0; i < n; i++) {
    if (r.arrayHeader() !== 4) return undefined;
    const a = r.str();
    const b = a === undefined ? undefined : r.str();
    const c = b === undefined ? undefined : r.int();
    const d = c === undefined ? undefined : r.str();
    if (d === undefined) return undefined;
    layout_info[i] = [a!, b!, wireInt(c!), d];
  }
  if (!r.done) return undefined;
  const msg: BatchedP2PLookupRetMsg = { type: "BatchedP2PLookupRetMsg", layout_info };
  return withFieldOrder(msg, REPLY_ORDER);
}

/**
 * `decodeMessage(bytes, expected, options)` with a fast path for a `BatchedP2PLookupMsg`
 * in the layout LMCache (msgspec) and this library write: the same result, field order
 * included. Anything else - other types, another layout, bad bytes - is the generic
 * path's (its message or its error).
 *
 * @param bytes one frame's msgpack bytes
 * @param expected the acceptable types (default all)
 * @param options the peer, named in errors
 * @returns the message
 * @throws {WireMessageError} as `decodeMessage`
 *
 * @example
 * ```ts
 * import { decodeRequest, encodeLookup } from "./lookup_codec.ts";
 *
 * const msg = decodeRequest(encodeLookup([7n], "a", 0));
 * console.log(msg.type); // BatchedP2PLookupMsg
 * ```
 */
export function decodeRequest<T extends MessageType = MessageType>(
  bytes: Uint8Array,
  expected?: readonly T[],
  options: DecodeOptions = {},
): MessageOf<T> {
  if (
    bytes instanceof Uint8Array &&
    (!expected || (expected as readonly string[]).includes("BatchedP2PLookupMsg"))
  ) {
    const m = readLookup(bytes);
    if (m) return m as LmcacheMessage as MessageOf<T>;
  }
  return decodeMessage(bytes, expected, options);
}

/**
 * `decodeMessage(bytes, ["BatchedP2PLookupRetMsg", "ErrorMsg"], options)` with a fast
 * path for the canonical `BatchedP2PLookupRetMsg`: the same result, or the same error.
 *
 * @param bytes the reply's msgpack bytes
 * @param options the peer, named in errors
 * @returns the reply
 * @throws {WireMessageError} as `decodeMessage`
 *
 * @example
 * ```ts
 * import { decodeLookupReply, encodeLookupReply } from "./lookup_codec.ts";
 *
 * const reply = decodeLookupReply(encodeLookupReply({
 *   type: "BatchedP2PLookupRetMsg", layout_info: [["", "", 0, ""]],
 * }));
 * console.log(reply.type); // BatchedP2PLookupRetMsg
 * ```
 */
export function decodeLookupReply(
  bytes: Uint8Array,
  options: DecodeOptions = {},
): MessageOf<"BatchedP2PLookupRetMsg" | "ErrorMsg"> {
  const m = bytes instanceof Uint8Array ? readReply(bytes) : undefined;
  return m ?? decodeMessage(bytes, ["BatchedP2PLookupRetMsg", "ErrorMsg"], options);
}
