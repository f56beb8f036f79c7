/**
 * The holder's side of a P2P fetch: its request (`BatchedLookupAndGetMsg`) read and its
 * reply (`BatchedLookupAndGetRetMsg`) written byte by byte, as `lookup_codec.ts` does for
 * the registry's round trip, with the same rule: the generic codec's bytes, results and
 * errors, the generic path for anything the fast one does not cover (a key that is not
 * ASCII, another field order, odd or bad bytes, other types).
 *
 * @module
 */

import {
  type BatchedLookupAndGetMsg,
  decodeMessage,
  encodeMessage,
  type LmcacheMessage,
  type WireInt,
  withFieldOrder,
} from "./messages.ts";
import { fixstr, intBytes, Reader, wireInt, Writer } from "./_msgpack_rw.ts";

/** `{"type": "BatchedLookupAndGetMsg", "lookup_id": ` */
const GET_HEAD = Uint8Array.from([
  0x85,
  ...fixstr("type"),
  ...fixstr("BatchedLookupAndGetMsg"),
  ...fixstr("lookup_id"),
]);
const RECEIVER_ID = Uint8Array.from(fixstr("receiver_id"));
const KEYS = Uint8Array.from(fixstr("keys"));
const MEM_INDEXES = Uint8Array.from(fixstr("mem_indexes"));
/** `{"type": "BatchedLookupAndGetRetMsg", "num_hit_chunks": ` */
const RET_HEAD = Uint8Array.from([
  0x82,
  ...fixstr("type"),
  ...fixstr("BatchedLookupAndGetRetMsg"),
  ...fixstr("num_hit_chunks"),
]);
const GET_ORDER = Object.freeze(["lookup_id", "receiver_id", "keys", "mem_indexes"]);

/** The canonical `BatchedLookupAndGetMsg`, or undefined. */
function readGet(bytes: Uint8Array): BatchedLookupAndGetMsg | undefined {
  const r = new Reader(bytes);
  if (!r.lit(GET_HEAD)) return undefined;
  const lookup_id = r.str();
  if (lookup_id === undefined || !r.lit(RECEIVER_ID)) return undefined;
  const receiver_id = r.str();
  if (receiver_id === undefined || !r.lit(KEYS)) return undefined;
  const n = r.listHeader();
  if (n < 0) return undefined;
  const keys = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    const k = r.str();
    if (k === undefined) return undefined;
    keys[i] = k;
  }
  if (!r.lit(MEM_INDEXES)) return undefined;
  const m = r.listHeader();
  if (m < 0) return undefined;
  const mem_indexes = new Array<WireInt>(m);
  for (let i = 0; i < m; i++) {
    const x = r.int();
    if (x === undefined) return undefined;
    mem_indexes[i] = wireInt(x);
  }
  if (!r.done) return undefined;
  const msg: BatchedLookupAndGetMsg = {
    type: "BatchedLookupAndGetMsg",
    lookup_id,
    receiver_id,
    keys,
    mem_indexes,
  };
  return withFieldOrder(msg, GET_ORDER);
}

/**
 * `decodeMessage(bytes)` (every type accepted) with a fast path for a
 * `BatchedLookupAndGetMsg` in the layout LMCache (msgspec) and this library write: the
 * same result, field order included; anything else is the generic path's (its message
 * or its error).
 *
 * @param bytes one frame's msgpack bytes
 * @returns the message
 * @throws {WireMessageError} as `decodeMessage`
 *
 * @example
 * ```ts
 * import { decodeGetRequest } from "./get_codec.ts";
 * import { encodeMessage } from "./messages.ts";
 *
 * const msg = decodeGetRequest(encodeMessage({
 *   type: "BatchedLookupAndGetMsg", lookup_id: "l1", receiver_id: "r", keys: ["k"], mem_indexes: [3],
 * }));
 * console.log(msg.type); // BatchedLookupAndGetMsg
 * ```
 */
export function decodeGetRequest(bytes: Uint8Array): LmcacheMessage {
  return (bytes instanceof Uint8Array ? readGet(bytes) : undefined) ?? decodeMessage(bytes);
}

/**
 * `encodeMessage({type: "BatchedLookupAndGetRetMsg", num_hit_chunks})`, the same bytes,
 * written directly for a safe integer (the generic path answers anything else).
 *
 * @param numHitChunks the chunks written
 * @returns the msgpack bytes
 * @throws {WireMessageError} for a value the message cannot carry (as `encodeMessage`)
 *
 * @example
 * ```ts
 * import { encodeGetReply } from "./get_codec.ts";
 *
 * console.log(encodeGetReply(3).length); // 48
 * ```
 */
export function encodeGetReply(numHitChunks: number): Uint8Array {
  if (!Number.isSafeInteger(numHitChunks)) {
    return encodeMessage({ type: "BatchedLookupAndGetRetMsg", num_hit_chunks: numHitChunks });
  }
  const w = new Writer(RET_HEAD.length + intBytes(numHitChunks));
  w.raw(RET_HEAD);
  w.int(numHitChunks);
  return w.bytes;
}
