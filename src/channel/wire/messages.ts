/**
 * LMCache's control-plane messages, byte-compatible with LMCache's `msgspec` encoding.
 *
 * LMCache declares each message as a `msgspec.Struct` with `tag=True`; msgspec encodes it
 * as a msgpack **map** whose first key is `"type"` with the class name as value, followed
 * by every field in declaration order (fields with defaults included), `bytes` as msgpack
 * bin, `str` as str, ints in their smallest msgpack form, tuples and lists as arrays, and
 * enums by value. {@linkcode encodeMessage} produces exactly those bytes;
 * {@linkcode decodeMessage} reads any key order, ignores unknown keys (as msgspec does,
 * so newer LMCache versions with extra fields still decode) and checks every known field,
 * throwing {@linkcode WireMessageError} naming the type, the field, what was expected and
 * what was found.
 *
 * Fields LMCache added later with a default (`AllocRequest.req_id`, `is_last_batch`,
 * `total_chunks`, `KVAdmitMsg.seq_num`, the NIXL handshake's `*_list` fields...) are
 * optional here: absent on decode when the peer did not send them (LMCache's default
 * applies), and encoded only when set, so either LMCache generation gets the bytes it
 * would produce itself. Where two generations order the same fields differently
 * (`AllocResponse`), {@linkcode decodeMessage} records the order the fields arrived in
 * ({@linkcode receivedFieldOrder}) and {@linkcode encodeMessage} follows an order set
 * with {@linkcode withFieldOrder}, so a reply can be written the way the peer writes.
 *
 * Integers: msgspec's `int` takes the whole int64/uint64 range, so every integer field
 * does too. A value that is a safe JavaScript integer decodes as a `number`; one beyond
 * 2^53 decodes as an exact `bigint` ({@linkcode WireInt}) and encodes back to the same
 * bytes. Consumers that need a small number (a page index, a port) check the range.
 *
 * @example
 * ```ts
 * import { decodeMessage, encodeMessage } from "@kvport/nixl/wire";
 *
 * const bytes = encodeMessage({ type: "ProxyNotif", req_id: "req-1" });
 * const msg = decodeMessage(bytes, ["ProxyNotif", "CancelNotif"]);
 * if (msg.type === "ProxyNotif") console.log(msg.req_id); // req-1
 * ```
 *
 * @module
 */

import { Decoder, Encoder } from "@msgpack/msgpack";
import { WireMessageError } from "./errors.ts";
import {
  BIG_I32_MIN,
  BIG_U32_END,
  I32_MIN,
  INT64_MIN,
  MAX_SAFE,
  MIN_SAFE,
  U32_END,
  UINT64_MAX,
} from "./_msgpack_rw.ts";

/**
 * An integer field: a `number` when it is a safe integer, else an exact `bigint` (msgspec
 * encodes any int64/uint64; JavaScript numbers are exact only up to 2^53).
 *
 * @example
 * ```ts
 * import { decodeMessage, encodeMessage, type WireInt } from "@kvport/nixl/wire";
 *
 * const seq: WireInt = 2n ** 60n;
 * const bytes = encodeMessage({
 *   type: "KVAdmitMsg", instance_id: "i", worker_id: 0, key: 1n, location: "L", seq_num: seq,
 * });
 * console.log(decodeMessage(bytes, ["KVAdmitMsg"]).seq_num === seq); // true
 * ```
 */
export type WireInt = number | bigint;

// ---------------------------------------------------------------------------------------
// NIXL channel handshake (lmcache/v1/transfer_channel/nixl_channel.py)

/** Stage 1 of the channel handshake, initiator to responder: the initiator's agent metadata. */
export interface NixlInitRequest {
  /** The tag. */
  type: "NixlInitRequest";
  /** Serialized NIXL agent metadata of the initiator (its first agent's). */
  local_meta_bytes: Uint8Array;
  /**
   * Newer LMCache: the metadata of every agent of the initiator (a channel may run
   * several NIXL agents over one buffer, one per NIC); `null`/absent: one agent.
   */
  local_meta_bytes_list?: Uint8Array[] | null;
}

/** Reply to {@linkcode NixlInitRequest}: the responder's agent metadata. */
export interface NixlInitResponse {
  /** The tag. */
  type: "NixlInitResponse";
  /** Name under which the responder registered the initiator's agent (bytes in LMCache). */
  remote_agent_name: Uint8Array;
  /** Serialized NIXL agent metadata of the responder. */
  remote_meta_bytes: Uint8Array;
  /** Newer LMCache: per initiator agent, the name the responder registered it under. */
  remote_agent_names?: Uint8Array[] | null;
  /** Newer LMCache: the metadata of every agent of the responder. */
  remote_meta_bytes_list?: Uint8Array[] | null;
}

/** Stage 2 of the channel handshake: the initiator's page descriptor list. */
export interface NixlMemRegRequest {
  /** The tag. */
  type: "NixlMemRegRequest";
  /** `remote_agent_name` of the {@linkcode NixlInitResponse}, sent back. */
  remote_agent_name: Uint8Array;
  /** Id under which the responder stores the initiator's pages. */
  local_id: string;
  /** Serialized transfer descriptor list of the initiator's pages. */
  local_xfer_dlist_bytes: Uint8Array;
  /** Newer LMCache: `remote_agent_names` of the {@linkcode NixlInitResponse}, sent back. */
  remote_agent_names?: Uint8Array[] | null;
  /** Newer LMCache: the page list of every agent of the initiator. */
  local_xfer_dlist_bytes_list?: Uint8Array[] | null;
}

/** Reply to {@linkcode NixlMemRegRequest}: the responder's page descriptor list. */
export interface NixlMemRegResponse {
  /** The tag. */
  type: "NixlMemRegResponse";
  /** Serialized transfer descriptor list of the responder's pages. */
  remote_xfer_dlist_bytes: Uint8Array;
  /** Newer LMCache: the page list of every agent of the responder. */
  remote_xfer_dlist_bytes_list?: Uint8Array[] | null;
}

// ---------------------------------------------------------------------------------------
// Side messages of the handshake (lmcache/v1/transfer_channel/transfer_utils.py)

/** Optional stage 3 of the handshake for P2P: asks for the peer's lookup URL. */
export interface P2PInitSideMsg {
  /** The tag. */
  type: "P2PInitSideMsg";
}

/** Reply to {@linkcode P2PInitSideMsg}. */
export interface P2PInitSideRetMsg {
  /** The tag. */
  type: "P2PInitSideRetMsg";
  /** `host:port` of the peer's lookup socket. */
  peer_lookup_url: string;
}

// ---------------------------------------------------------------------------------------
// Disaggregated prefill (lmcache/v1/storage_backend/pd_backend*.py)

/** Sender to receiver: allocate one page per key (the last one possibly partial). */
export interface AllocRequest {
  /** The tag. */
  type: "AllocRequest";
  /** Keys `fmt@model@world_size@worker_id@hash_hex@dtype`; one page each. */
  keys: string[];
  /** LMCache `MemoryFormat` value. */
  fmt: WireInt;
  /** Shape of one full chunk. */
  shape: WireInt[];
  /** Dtype name, e.g. `"bfloat16"`. */
  dtype: string;
  /** Tokens in the last (possibly partial) chunk. */
  last_chunk_toks: WireInt;
  /** Newer LMCache (async PD, PD L2 adapter): request id for admission (default `""`). */
  req_id?: string;
  /** Newer LMCache: the last batch of `req_id` (default false). */
  is_last_batch?: boolean;
  /** Newer LMCache: total chunks of the request, reserved up front (default 0). */
  total_chunks?: WireInt;
  /**
   * kvport only (LMCache ignores unknown fields): the sender's NIXL agent name, which a
   * receiver enforcing page grants grants WRITE on the pages of its reply.
   */
  kvport_agent?: string;
  /**
   * kvport only: how long the sender may still WRITE into what it is given, ms; the
   * receiver keeps such reservations no longer (capped).
   */
  kvport_ttl_ms?: WireInt;
  /**
   * kvport only: page credits wanted (free pages given ahead of requests, written with
   * no AllocRequest and bound by a notification); `keys` may then be empty.
   */
  kvport_credit_want?: WireInt;
  /** kvport only: how long the sender wants its credits to live, ms (capped). */
  kvport_credit_ttl_ms?: WireInt;
  /** kvport only: credit pages the sender no longer uses (stale, link reset, closing). */
  kvport_credit_return?: WireInt[];
}

/**
 * Reply to {@linkcode AllocRequest}. LMCache's sync PD backend declares
 * `already_sent_indexes, remote_indexes`; its async PD backend and PD L2 adapter declare
 * `remote_indexes, already_sent_indexes = []` (see {@linkcode withFieldOrder}).
 */
export interface AllocResponse {
  /** The tag. */
  type: "AllocResponse";
  /** Positions (in the request) of keys the receiver already has (newer: default `[]`). */
  already_sent_indexes?: WireInt[];
  /** Receiver page index per key to write (`-1`: allocation failed for that key). */
  remote_indexes: WireInt[];
  /**
   * kvport only (LMCache ignores unknown fields): why the allocation was refused, a
   * code such as `"chunk_too_large"`; sent only with `-1` indexes.
   */
  kvport_reason?: string;
  /** kvport only: the refusal in words. */
  kvport_detail?: string;
  /** kvport only, to a request with `kvport_credit_want`: the credit pages given. */
  kvport_credit?: WireInt[];
  /** kvport only: how long those credits live from the reply, ms. */
  kvport_credit_ttl_ms?: WireInt;
}

/** Sender to proxy (PUSH): the request's KV is at the decoder. */
export interface ProxyNotif {
  /** The tag. */
  type: "ProxyNotif";
  /** The request id. */
  req_id: string;
}

/** Sender to receiver (newer LMCache): the request was aborted, release these keys. */
export interface CancelNotif {
  /** The tag. */
  type: "CancelNotif";
  /** The request id. */
  req_id: string;
  /** Keys the receiver should release. */
  keys: string[];
}

/** Probe (newer LMCache, bidirectional PD): which of these keys does the decoder hold? */
export interface CacheQueryRequest {
  /** The tag. */
  type: "CacheQueryRequest";
  /** Keys to check. */
  keys: string[];
}

/** Reply to {@linkcode CacheQueryRequest}. */
export interface CacheQueryResponse {
  /** The tag. */
  type: "CacheQueryResponse";
  /** Keys that exist on the decoder. */
  cached_keys: string[];
  /** Their page indexes there. */
  cached_indexes: WireInt[];
}

// ---------------------------------------------------------------------------------------
// P2P sharing (lmcache/v1/storage_backend/p2p_backend.py)

/** Requester to holder: write the hit prefix of `keys` into my pages `mem_indexes`. */
export interface BatchedLookupAndGetMsg {
  /** The tag. */
  type: "BatchedLookupAndGetMsg";
  /** Id of the lookup. */
  lookup_id: string;
  /** The requester's id in the holder's channel (its `local_id` of the handshake). */
  receiver_id: string;
  /** Keys, in prefix order. */
  keys: string[];
  /** The requester's page index per key. */
  mem_indexes: WireInt[];
}

/** Reply to {@linkcode BatchedLookupAndGetMsg}. */
export interface BatchedLookupAndGetRetMsg {
  /** The tag. */
  type: "BatchedLookupAndGetRetMsg";
  /** Number of leading keys found and written. */
  num_hit_chunks: WireInt;
}

/** Pusher to holder: read these pages of mine that you lack. */
export interface BatchedLookupAndPutMsg {
  /** The tag. */
  type: "BatchedLookupAndPutMsg";
  /** The pusher's id in the holder's channel. */
  sender_id: string;
  /** Keys. */
  keys: string[];
  /** Tokens per chunk. */
  offsets: WireInt[];
  /** The pusher's page index per key. */
  mem_indexes: WireInt[];
}

/** Reply to {@linkcode BatchedLookupAndPutMsg}. */
export interface BatchedLookupAndPutRetMsg {
  /** The tag. */
  type: "BatchedLookupAndPutRetMsg";
  /** Number of pages read. */
  num_read_chunks: WireInt;
}

/** An error reply of the P2P lookup socket; see {@linkcode P2PErrorCode}. */
export interface P2PErrorMsg {
  /** The tag. */
  type: "P2PErrorMsg";
  /** 1 server error, 2 unknown message type, 3 remote handler not initialized. */
  error_code: WireInt;
}

/**
 * Values of LMCache's `P2PErrorCode` enum (encoded by value).
 *
 * @example
 * ```ts
 * import { P2PErrorCode } from "@kvport/nixl/wire";
 *
 * console.log(P2PErrorCode.REMOTE_XFER_HANDLER_NOT_INITIALIZED); // 3: re-handshake, retry
 * ```
 */
export const P2PErrorCode: {
  readonly P2P_SERVER_ERROR: 1;
  readonly UNKNOWN_MSG_TYPE: 2;
  readonly REMOTE_XFER_HANDLER_NOT_INITIALIZED: 3;
} = {
  P2P_SERVER_ERROR: 1,
  UNKNOWN_MSG_TYPE: 2,
  REMOTE_XFER_HANDLER_NOT_INITIALIZED: 3,
} as const;

// ---------------------------------------------------------------------------------------
// Cache controller (lmcache/v1/cache_controller/message.py)

/** Worker to controller (PUSH): registration. */
export interface RegisterMsg {
  /** The tag. */
  type: "RegisterMsg";
  /** LMCache instance id. */
  instance_id: string;
  /** Worker (TP rank). */
  worker_id: WireInt;
  /** Worker IP. */
  ip: string;
  /** Worker port. */
  port: WireInt;
  /** P2P init URL (`host:port`), `null` when P2P is off. */
  peer_init_url: string | null;
}

/** Worker to controller (PUSH): deregistration. */
export interface DeRegisterMsg {
  /** The tag. */
  type: "DeRegisterMsg";
  /** LMCache instance id. */
  instance_id: string;
  /** Worker (TP rank). */
  worker_id: WireInt;
  /** Worker IP. */
  ip: string;
  /** Worker port. */
  port: WireInt;
}

/** Worker to controller: heartbeat carrying the registration (re-register after a restart). */
export interface HeartbeatMsg {
  /** The tag. */
  type: "HeartbeatMsg";
  /** LMCache instance id. */
  instance_id: string;
  /** Worker (TP rank). */
  worker_id: WireInt;
  /** Worker IP. */
  ip: string;
  /** Worker port. */
  port: WireInt;
  /** P2P init URL, `null` when P2P is off. */
  peer_init_url: string | null;
}

/** Worker to controller (PUSH): a chunk was admitted to a storage location. */
export interface KVAdmitMsg {
  /** The tag. */
  type: "KVAdmitMsg";
  /** LMCache instance id. */
  instance_id: string;
  /** Worker (TP rank). */
  worker_id: WireInt;
  /** The chunk hash (a 64-bit integer). */
  key: bigint;
  /** Storage backend name, e.g. `"LocalCPUBackend"`. */
  location: string;
  /** Newer LMCache: sequence number (default 0). */
  seq_num?: WireInt;
}

/** Worker to controller (PUSH): a chunk was evicted from a storage location. */
export interface KVEvictMsg {
  /** The tag. */
  type: "KVEvictMsg";
  /** LMCache instance id. */
  instance_id: string;
  /** Worker (TP rank). */
  worker_id: WireInt;
  /** The chunk hash (a 64-bit integer). */
  key: bigint;
  /** Storage backend name. */
  location: string;
  /** Newer LMCache: sequence number (default 0). */
  seq_num?: WireInt;
}

/** One admit or evict of a {@linkcode BatchedKVOperationMsg} (an untagged map). */
export interface KVOpEvent {
  /** `"admit"` or `"evict"`. */
  op_type: "admit" | "evict";
  /** The chunk hash. */
  key: bigint;
  /** Sequence number. */
  seq_num: WireInt;
}

/** Worker to controller (PUSH, newer LMCache): admits and evicts in one message. */
export interface BatchedKVOperationMsg {
  /** The tag. */
  type: "BatchedKVOperationMsg";
  /** LMCache instance id. */
  instance_id: string;
  /** Worker (TP rank). */
  worker_id: WireInt;
  /** Storage backend name. */
  location: string;
  /** The operations, in order. */
  operations: KVOpEvent[];
}

/** Worker to controller (REQ): who holds these chunk hashes? */
export interface BatchedP2PLookupMsg {
  /** The tag. */
  type: "BatchedP2PLookupMsg";
  /** Chunk hashes, in prefix order. */
  hashes: bigint[];
  /** The asking instance. */
  instance_id: string;
  /** The asking worker (TP rank). */
  worker_id: WireInt;
}

/** Reply to {@linkcode BatchedP2PLookupMsg}. */
export interface BatchedP2PLookupRetMsg {
  /** The tag. */
  type: "BatchedP2PLookupRetMsg";
  /** `[instance_id, location, num_hit_chunks, peer_init_url]` per holder. */
  layout_info: Array<[string, string, WireInt, string]>;
}

/** Controller error reply. */
export interface ErrorMsg {
  /** The tag. */
  type: "ErrorMsg";
  /** What went wrong. */
  error: string;
}

/** Every LMCache message this library speaks. */
export type LmcacheMessage =
  | NixlInitRequest
  | NixlInitResponse
  | NixlMemRegRequest
  | NixlMemRegResponse
  | P2PInitSideMsg
  | P2PInitSideRetMsg
  | AllocRequest
  | AllocResponse
  | ProxyNotif
  | CancelNotif
  | CacheQueryRequest
  | CacheQueryResponse
  | BatchedLookupAndGetMsg
  | BatchedLookupAndGetRetMsg
  | BatchedLookupAndPutMsg
  | BatchedLookupAndPutRetMsg
  | P2PErrorMsg
  | RegisterMsg
  | DeRegisterMsg
  | HeartbeatMsg
  | KVAdmitMsg
  | KVEvictMsg
  | BatchedKVOperationMsg
  | BatchedP2PLookupMsg
  | BatchedP2PLookupRetMsg
  | ErrorMsg;

/** The `type` tag of a message: LMCache's class name. */
export type MessageType = LmcacheMessage["type"];

/** The message interface of one tag, e.g. `MessageOf<"AllocRequest">`. */
export type MessageOf<T extends MessageType> = Extract<LmcacheMessage, { type: T }>;

/** How one field is encoded. */
export type FieldKind =
  | "bytes"
  | "str"
  | "int"
  | "bool"
  | "str[]"
  | "int[]"
  | "hash"
  | "hash[]"
  | "str|null"
  | "bytes[]|null"
  | "layout[]"
  | "kvop[]";

/** One field of a message: name, kind, and whether LMCache gives it a default. */
export interface FieldSpec {
  /** Field name (LMCache's snake_case). */
  readonly name: string;
  /** How it is encoded. */
  readonly kind: FieldKind;
  /** LMCache declares a default: the field may be absent. */
  readonly optional: boolean;
}

function f(name: string, kind: FieldKind, optional = false): FieldSpec {
  return { name, kind, optional };
}

/**
 * The catalogue: every message type with its fields in LMCache's declaration order (the
 * order of the encoded map after `"type"`).
 *
 * @example
 * ```ts
 * import { MESSAGE_FIELDS } from "@kvport/nixl/wire";
 *
 * console.log(MESSAGE_FIELDS.AllocResponse.map((x) => x.name));
 * // ["already_sent_indexes", "remote_indexes", "kvport_reason", "kvport_detail", "kvport_credit",
 * //  "kvport_credit_ttl_ms"]
 * ```
 */
export const MESSAGE_FIELDS: Readonly<Record<MessageType, readonly FieldSpec[]>> = {
  NixlInitRequest: [
    f("local_meta_bytes", "bytes"),
    f("local_meta_bytes_list", "bytes[]|null", true),
  ],
  NixlInitResponse: [
    f("remote_agent_name", "bytes"),
    f("remote_meta_bytes", "bytes"),
    f("remote_agent_names", "bytes[]|null", true),
    f("remote_meta_bytes_list", "bytes[]|null", true),
  ],
  NixlMemRegRequest: [
    f("remote_agent_name", "bytes"),
    f("local_id", "str"),
    f("local_xfer_dlist_bytes", "bytes"),
    f("remote_agent_names", "bytes[]|null", true),
    f("local_xfer_dlist_bytes_list", "bytes[]|null", true),
  ],
  NixlMemRegResponse: [
    f("remote_xfer_dlist_bytes", "bytes"),
    f("remote_xfer_dlist_bytes_list", "bytes[]|null", true),
  ],
  P2PInitSideMsg: [],
  P2PInitSideRetMsg: [f("peer_lookup_url", "str")],
  AllocRequest: [
    f("keys", "str[]"),
    f("fmt", "int"),
    f("shape", "int[]"),
    f("dtype", "str"),
    f("last_chunk_toks", "int"),
    f("req_id", "str", true),
    f("is_last_batch", "bool", true),
    f("total_chunks", "int", true),
    f("kvport_agent", "str", true),
    f("kvport_ttl_ms", "int", true),
    f("kvport_credit_want", "int", true),
    f("kvport_credit_ttl_ms", "int", true),
    f("kvport_credit_return", "int[]", true),
  ],
  AllocResponse: [
    f("already_sent_indexes", "int[]", true),
    f("remote_indexes", "int[]"),
    f("kvport_reason", "str", true),
    f("kvport_detail", "str", true),
    f("kvport_credit", "int[]", true),
    f("kvport_credit_ttl_ms", "int", true),
  ],
  ProxyNotif: [f("req_id", "str")],
  CancelNotif: [f("req_id", "str"), f("keys", "str[]")],
  CacheQueryRequest: [f("keys", "str[]")],
  CacheQueryResponse: [f("cached_keys", "str[]"), f("cached_indexes", "int[]")],
  BatchedLookupAndGetMsg: [
    f("lookup_id", "str"),
    f("receiver_id", "str"),
    f("keys", "str[]"),
    f("mem_indexes", "int[]"),
  ],
  BatchedLookupAndGetRetMsg: [f("num_hit_chunks", "int")],
  BatchedLookupAndPutMsg: [
    f("sender_id", "str"),
    f("keys", "str[]"),
    f("offsets", "int[]"),
    f("mem_indexes", "int[]"),
  ],
  BatchedLookupAndPutRetMsg: [f("num_read_chunks", "int")],
  P2PErrorMsg: [f("error_code", "int")],
  RegisterMsg: [
    f("instance_id", "str"),
    f("worker_id", "int"),
    f("ip", "str"),
    f("port", "int"),
    f("peer_init_url", "str|null"),
  ],
  DeRegisterMsg: [f("instance_id", "str"), f("worker_id", "int"), f("ip", "str"), f("port", "int")],
  HeartbeatMsg: [
    f("instance_id", "str"),
    f("worker_id", "int"),
    f("ip", "str"),
    f("port", "int"),
    f("peer_init_url", "str|null"),
  ],
  KVAdmitMsg: [
    f("instance_id", "str"),
    f("worker_id", "int"),
    f("key", "hash"),
    f("location", "str"),
    f("seq_num", "int", true),
  ],
  KVEvictMsg: [
    f("instance_id", "str"),
    f("worker_id", "int"),
    f("key", "hash"),
    f("location", "str"),
    f("seq_num", "int", true),
  ],
  BatchedKVOperationMsg: [
    f("instance_id", "str"),
    f("worker_id", "int"),
    f("location", "str"),
    f("operations", "kvop[]"),
  ],
  BatchedP2PLookupMsg: [f("hashes", "hash[]"), f("instance_id", "str"), f("worker_id", "int")],
  BatchedP2PLookupRetMsg: [f("layout_info", "layout[]")],
  ErrorMsg: [f("error", "str")],
};

/** Every message type, in catalogue order. */
export const MESSAGE_TYPES: readonly MessageType[] = Object.keys(MESSAGE_FIELDS) as MessageType[];

/**
 * Whether `name` is a message type of the catalogue.
 *
 * @param name a `type` tag
 * @returns true for LMCache class names this library knows
 *
 * @example
 * ```ts
 * import { isMessageType } from "@kvport/nixl/wire";
 *
 * console.log(isMessageType("AllocRequest"), isMessageType("Foo")); // true false
 * ```
 */
export function isMessageType(name: string): name is MessageType {
  return Object.prototype.hasOwnProperty.call(MESSAGE_FIELDS, name);
}

/** Most entries of one `bytes[]` field (LMCache sends one per NIXL agent). */
const MAX_LIST_ENTRIES = 1024;

function describe(v: unknown): string {
  if (v === null) return "nil";
  if (v === undefined) return "nothing (field absent)";
  if (v instanceof Uint8Array) return `bin (${v.length} bytes)`;
  if (Array.isArray(v)) return `array (${v.length} elements)`;
  switch (typeof v) {
    case "string":
      return `str ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + "..." : v)}`;
    case "number":
      return Number.isInteger(v) ? `int ${v}` : `float ${v}`;
    case "bigint":
      return `int ${v}`;
    case "boolean":
      return `bool ${v}`;
    case "object":
      return "map";
    default:
      return typeof v;
  }
}

class Checker {
  constructor(readonly type: string | undefined, readonly peer: string | undefined) {}

  fail(field: string, expected: string, got: unknown): never {
    throw new WireMessageError(expected, describe(got), {
      messageType: this.type,
      field,
      peer: this.peer,
    });
  }

  str(field: string, v: unknown): string {
    if (typeof v !== "string") this.fail(field, "str", v);
    return v;
  }

  /** msgspec's `int`: any int64/uint64; a number when exact, else a bigint. */
  int(field: string, v: unknown): WireInt {
    if (typeof v === "number" && Number.isSafeInteger(v)) return v;
    if (typeof v === "bigint" && v >= INT64_MIN && v <= UINT64_MAX) {
      return v >= MIN_SAFE && v <= MAX_SAFE ? Number(v) : v;
    }
    if (typeof v === "number" && Number.isInteger(v)) {
      // A number beyond 2^53 is not exact any more: the caller must give a bigint.
      return this.fail(field, "int (a bigint beyond 2^53: this number is not exact)", v);
    }
    return this.fail(field, "int (64-bit)", v);
  }

  hash(field: string, v: unknown): bigint {
    let b: bigint | undefined;
    if (typeof v === "bigint") b = v;
    else if (typeof v === "number" && Number.isSafeInteger(v)) b = BigInt(v);
    if (b === undefined || b < INT64_MIN || b > UINT64_MAX) {
      return this.fail(field, "int (64-bit)", v);
    }
    return b;
  }

  list<T>(field: string, v: unknown, item: (field: string, x: unknown) => T): T[] {
    if (!Array.isArray(v)) this.fail(field, "array", v);
    return v.map((x, i) => item(`${field}[${i}]`, x));
  }

  value(kind: FieldKind, field: string, v: unknown): unknown {
    switch (kind) {
      case "bytes":
        if (!(v instanceof Uint8Array)) this.fail(field, "bin (bytes)", v);
        return v;
      case "str":
        return this.str(field, v);
      case "int":
        return this.int(field, v);
      case "bool":
        if (typeof v !== "boolean") this.fail(field, "bool", v);
        return v;
      case "str[]":
        return this.list(field, v, (n, x) => this.str(n, x));
      case "int[]":
        return this.list(field, v, (n, x) => this.int(n, x));
      case "hash":
        return this.hash(field, v);
      case "hash[]":
        return this.list(field, v, (n, x) => this.hash(n, x));
      case "str|null":
        if (v === null) return null;
        if (typeof v !== "string") this.fail(field, "str or nil", v);
        return v;
      case "bytes[]|null":
        if (v === null) return null;
        if (Array.isArray(v) && v.length > MAX_LIST_ENTRIES) {
          this.fail(field, `an array of at most ${MAX_LIST_ENTRIES} bin`, v);
        }
        return this.list(field, v, (n, x) => {
          if (!(x instanceof Uint8Array)) this.fail(n, "bin (bytes)", x);
          return x;
        });
      case "layout[]":
        return this.list(field, v, (n, x) => {
          if (!Array.isArray(x) || x.length !== 4) {
            this.fail(n, "array [instance_id, location, num_hit_chunks, peer_init_url]", x);
          }
          return [
            this.str(`${n}[0]`, x[0]),
            this.str(`${n}[1]`, x[1]),
            this.int(`${n}[2]`, x[2]),
            this.str(`${n}[3]`, x[3]),
          ];
        });
      case "kvop[]":
        return this.list(field, v, (n, x) => {
          if (x === null || typeof x !== "object" || Array.isArray(x) || x instanceof Uint8Array) {
            this.fail(n, "map {op_type, key, seq_num}", x);
          }
          const o = x as Record<string, unknown>;
          const op = o.op_type;
          if (op !== "admit" && op !== "evict") this.fail(`${n}.op_type`, `"admit" or "evict"`, op);
          return {
            op_type: op,
            key: this.hash(`${n}.key`, o.key),
            seq_num: this.int(`${n}.seq_num`, o.seq_num),
          };
        });
    }
  }
}

/** Options of {@linkcode decodeMessage}. */
export interface DecodeOptions {
  /** The peer the bytes came from, named in errors. */
  peer?: string;
}

/**
 * Validates a decoded msgpack value as a message (shared by encode and decode).
 */
function check(
  raw: unknown,
  expected: readonly string[] | undefined,
  peer: string | undefined,
): LmcacheMessage {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw) || raw instanceof Uint8Array) {
    throw new WireMessageError(`a map with a "type" key`, describe(raw), { peer });
  }
  const obj = raw as Record<string, unknown>;
  const type = obj.type;
  if (typeof type !== "string") {
    throw new WireMessageError(`a "type" tag (str)`, describe(type), { peer, field: "type" });
  }
  if (!isMessageType(type)) {
    throw new WireMessageError(
      `one of the known message types (${MESSAGE_TYPES.join(", ")})`,
      `unknown type ${JSON.stringify(type)}`,
      { peer, field: "type", messageType: type },
    );
  }
  if (expected && !expected.includes(type)) {
    throw new WireMessageError(
      expected.length === 1 ? expected[0] : `one of ${expected.join(", ")}`,
      type,
      { peer, field: "type", messageType: type },
    );
  }
  const c = new Checker(type, peer);
  const out: Record<string, unknown> = { type };
  for (const spec of MESSAGE_FIELDS[type]) {
    const present = Object.prototype.hasOwnProperty.call(obj, spec.name) &&
      obj[spec.name] !== undefined;
    if (!present) {
      if (spec.optional) continue;
      c.fail(spec.name, `field of kind ${spec.kind}`, undefined);
    }
    out[spec.name] = c.value(spec.kind, spec.name, obj[spec.name]);
  }
  return out as unknown as LmcacheMessage;
}

/**
 * Puts integers in the form that makes `@msgpack/msgpack` pick msgspec's (the smallest)
 * msgpack format: numbers for [-2^31, 2^32), which it encodes minimally, and bigints
 * beyond, which it encodes as int64/uint64 (what msgspec uses there). Without this a
 * number of 2^32 or more would be written as a float64.
 */
function wire(v: unknown): unknown {
  if (typeof v === "number") {
    return Number.isInteger(v) && (v < I32_MIN || v >= U32_END) ? BigInt(v) : v;
  }
  if (typeof v === "bigint") {
    return v >= BIG_I32_MIN && v < BIG_U32_END ? Number(v) : v;
  }
  if (Array.isArray(v)) return v.map(wire);
  if (v !== null && typeof v === "object" && !(v instanceof Uint8Array)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = wire(x);
    return out;
  }
  return v;
}

const ENCODER = new Encoder({ useBigInt64: true });

/** Where a message object keeps the order of its fields (not enumerable, not copied). */
const FIELD_ORDER: unique symbol = Symbol("kvport.wire.fieldOrder");

/**
 * The order in which a decoded message's fields arrived (without `"type"`), or
 * `undefined` for a message that was not decoded. Two LMCache generations write
 * `AllocResponse` in different orders; this tells which one a peer speaks.
 *
 * @param message a message returned by {@linkcode decodeMessage}
 * @returns the field names in arrival order, known fields only
 *
 * @example
 * ```ts
 * import {
 *   type AllocResponse,
 *   decodeMessage,
 *   encodeMessage,
 *   receivedFieldOrder,
 *   withFieldOrder,
 * } from "@kvport/nixl/wire";
 *
 * const reply: AllocResponse = { type: "AllocResponse", remote_indexes: [3], already_sent_indexes: [] };
 * const sent = withFieldOrder(reply, ["remote_indexes", "already_sent_indexes"]);
 * console.log(receivedFieldOrder(decodeMessage(encodeMessage(sent))));
 * // ["remote_indexes", "already_sent_indexes"]
 * ```
 */
export function receivedFieldOrder(message: object): readonly string[] | undefined {
  return (message as { [FIELD_ORDER]?: readonly string[] })[FIELD_ORDER];
}

/**
 * Marks `message` to be encoded with its fields in `order` (names not in `order`
 * follow in catalogue order). Returns the same object.
 *
 * @param message the message
 * @param order field names, e.g. `["remote_indexes", "already_sent_indexes"]`
 * @returns `message`
 *
 * @example
 * ```ts
 * import { type AllocResponse, encodeMessage, withFieldOrder } from "@kvport/nixl/wire";
 *
 * const reply: AllocResponse = { type: "AllocResponse", already_sent_indexes: [], remote_indexes: [-1] };
 * // LMCache's async PD backend declares remote_indexes first.
 * const m = withFieldOrder(reply, ["remote_indexes", "already_sent_indexes"]);
 * console.log(encodeMessage(m).length); // 59
 * ```
 */
export function withFieldOrder<T extends object>(message: T, order: readonly string[]): T {
  Object.defineProperty(message, FIELD_ORDER, {
    value: Object.freeze([...order]),
    enumerable: false,
    configurable: true,
    writable: false,
  });
  return message;
}

/**
 * An integer field as a `number`, or a {@linkcode WireMessageError} naming the field when
 * it is beyond 2^53 (a page index, a port or a TP rank never is; a peer that sends one
 * is answered with an error instead of a silently rounded value).
 *
 * @param v the decoded value
 * @param field the field, named in the error
 * @param messageType the message type, named in the error
 * @returns the value as a number
 *
 * @example
 * ```ts
 * import { toSafeInt } from "@kvport/nixl/wire";
 *
 * console.log(toSafeInt(7n, "worker_id")); // 7
 * try {
 *   toSafeInt(2n ** 60n, "worker_id", "RegisterMsg");
 * } catch (e) {
 *   console.log((e as Error).message); // invalid RegisterMsg field "worker_id": expected ...
 * }
 * ```
 */
export function toSafeInt(v: WireInt, field: string, messageType?: string): number {
  if (typeof v === "number" && Number.isSafeInteger(v)) return v;
  if (typeof v === "bigint" && v >= MIN_SAFE && v <= MAX_SAFE) return Number(v);
  throw new WireMessageError(
    `an integer within +-(2^53 - 1)`,
    typeof v === "bigint" ? `int ${v}` : describe(v),
    { messageType, field },
  );
}

/**
 * Encodes a message exactly as LMCache's `msgspec.msgpack.encode` does: a map with
 * `"type"` first, then the fields in declaration order. The message is validated first.
 *
 * The order is the catalogue's unless {@linkcode withFieldOrder} set another (a decoded
 * message keeps the order it arrived in).
 *
 * @param message the message
 * @returns the msgpack bytes
 * @throws {WireMessageError} when a field is missing or of the wrong type
 *
 * @example
 * ```ts
 * import { encodeMessage } from "@kvport/nixl/wire";
 *
 * const bytes = encodeMessage({ type: "BatchedLookupAndGetRetMsg", num_hit_chunks: 3 });
 * console.log(bytes[0].toString(16)); // 82 (a map of 2 entries)
 * ```
 */
export function encodeMessage(message: LmcacheMessage): Uint8Array {
  const valid = check(message, undefined, undefined) as unknown as Record<string, unknown>;
  const ordered: Record<string, unknown> = { type: valid.type };
  const order = receivedFieldOrder(message) ?? [];
  for (const name of order) {
    if (name !== "type" && Object.prototype.hasOwnProperty.call(valid, name)) {
      ordered[name] = wire(valid[name]);
    }
  }
  for (const spec of MESSAGE_FIELDS[valid.type as MessageType]) {
    if (spec.name in valid && !(spec.name in ordered)) ordered[spec.name] = wire(valid[spec.name]);
  }
  return ENCODER.encode(ordered);
}

/**
 * Decodes and validates one message. Never trusts a size: every length in the bytes is
 * checked against the bytes present before anything is allocated for it.
 *
 * @param bytes the msgpack bytes (one ZeroMQ frame)
 * @param expected the acceptable types (default: every type of the catalogue)
 * @param options the peer, named in errors
 * @returns the message, narrowed to `expected`
 * @throws {WireMessageError} naming the type, the field, what was expected and got
 *
 * @example
 * ```ts
 * import { decodeMessage, encodeMessage } from "@kvport/nixl/wire";
 *
 * const bytes = encodeMessage({ type: "P2PInitSideRetMsg", peer_lookup_url: "10.0.0.2:8300" });
 * console.log(decodeMessage(bytes, ["P2PInitSideRetMsg"]).peer_lookup_url); // 10.0.0.2:8300
 * ```
 */
export function decodeMessage<T extends MessageType = MessageType>(
  bytes: Uint8Array,
  expected?: readonly T[],
  options: DecodeOptions = {},
): MessageOf<T> {
  if (!(bytes instanceof Uint8Array)) {
    throw new WireMessageError("msgpack bytes (Uint8Array)", describe(bytes), {
      peer: options.peer,
    });
  }
  const limit = bytes.length;
  const decoder = new Decoder({
    useBigInt64: true,
    maxStrLength: limit,
    maxBinLength: limit,
    maxArrayLength: limit,
    maxMapLength: limit,
    maxExtLength: 0, // no LMCache message uses msgpack extensions
  });
  let raw: unknown;
  try {
    raw = decoder.decode(bytes);
  } catch (e) {
    throw new WireMessageError(
      "one well-formed msgpack value",
      `${bytes.length} bytes that do not decode (${e instanceof Error ? e.message : String(e)})`,
      { peer: options.peer, cause: e },
    );
  }
  const msg = check(raw, expected, options.peer);
  const known = new Set(MESSAGE_FIELDS[msg.type].map((x) => x.name));
  withFieldOrder(msg, Object.keys(raw as object).filter((k) => known.has(k)));
  return msg as MessageOf<T>;
}
