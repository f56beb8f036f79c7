/**
 * The `AllocRequest` -> `AllocResponse` exchange in both of LMCache's generations, and
 * how a refused allocation travels.
 *
 * - `"sync"`: LMCache's synchronous PD backend (`pd_backend.py`). `AllocRequest` has five
 *   fields; `AllocResponse` declares `already_sent_indexes, remote_indexes`.
 * - `"async"`: its async PD backend and the PD L2 adapter. `AllocRequest` adds
 *   `req_id = ""`, `is_last_batch = false`, `total_chunks = 0`; `AllocResponse` declares
 *   `remote_indexes, already_sent_indexes = []`; `CancelNotif` exists.
 *
 * msgspec ignores unknown fields and reads any key order, so either side decodes the
 * other; the bytes differ. A receiver answers in the generation of the request; a sender
 * learns the receiver's generation from the field order of its first `AllocResponse`.
 *
 * A refusal is an `AllocResponse` whose `remote_indexes` are all `-1` (what LMCache's
 * async receiver sends when it cannot allocate): LMCache's senders decode only PD
 * message types on this socket, so an `ErrorMsg` there would crash them. kvport adds
 * `kvport_reason` and `kvport_detail`, which LMCache ignores and kvport's sender reads.
 *
 * @module
 */

import type { SideMessage } from "../channel/types.ts";
import {
  receivedFieldOrder,
  toSafeInt,
  type WireInt,
  WireMessageError,
  withFieldOrder,
} from "../channel/wire/mod.ts";

/**
 * An LMCache PD generation: `"sync"` (`pd_backend.py`) or `"async"` (`pd_backend_async.py`
 * and the PD L2 adapter).
 *
 * @example
 * ```ts
 * import type { PdWireGeneration } from "./alloc_wire.ts";
 * const g: PdWireGeneration = "async";
 * ```
 */
export type PdWireGeneration = "sync" | "async";

/**
 * The declaration order of `AllocResponse` per generation.
 *
 * @example
 * ```ts
 * import { ALLOC_RESPONSE_ORDER } from "./alloc_wire.ts";
 * console.log(ALLOC_RESPONSE_ORDER.async); // ["remote_indexes", "already_sent_indexes"]
 * ```
 */
export const ALLOC_RESPONSE_ORDER: Readonly<Record<PdWireGeneration, readonly string[]>> = {
  sync: Object.freeze(["already_sent_indexes", "remote_indexes"]),
  async: Object.freeze(["remote_indexes", "already_sent_indexes"]),
};

/** The fields the async generation adds to `AllocRequest`. */
const ASYNC_REQUEST_FIELDS = ["req_id", "is_last_batch", "total_chunks"] as const;

/**
 * Why a receiver refused an allocation.
 *
 * - `chunk_too_large`: a chunk of the request is larger than a receiver page.
 * - `pool_too_small`: the request needs more pages than the receiver's buffer has.
 * - `no_free_pages`: not enough pages came free within `pd_allocation_timeout_sec`.
 * - `bad_request`: the request is malformed or not an allocation request.
 * - `unspecified`: an LMCache receiver refused without saying why (plain `-1`).
 *
 * @example
 * ```ts
 * import type { PdRefusalReason } from "./alloc_wire.ts";
 * const r: PdRefusalReason = "chunk_too_large";
 * ```
 */
export type PdRefusalReason =
  | "chunk_too_large"
  | "pool_too_small"
  | "no_free_pages"
  | "bad_request"
  | "unspecified";

const REASONS: readonly PdRefusalReason[] = [
  "chunk_too_large",
  "pool_too_small",
  "no_free_pages",
  "bad_request",
  "unspecified",
];

/**
 * Thrown inside a receiver to refuse a request with a reason; turned into a refusal
 * reply by {@linkcode refusalReply}.
 *
 * @example
 * ```ts
 * import { AllocRefusal } from "./alloc_wire.ts";
 * const e = new AllocRefusal("pool_too_small", "9 pages wanted, the buffer has 8");
 * console.log(e.reason, e.message);
 * ```
 */
export class AllocRefusal extends Error {
  /** Why. */
  readonly reason: PdRefusalReason;

  /**
   * Creates the refusal.
   *
   * @param reason why
   * @param detail the refusal in words
   */
  constructor(reason: PdRefusalReason, detail: string) {
    super(detail);
    this.name = "AllocRefusal";
    this.reason = reason;
  }
}

/**
 * The generation a request on the allocation socket speaks: `CancelNotif`, and an
 * `AllocRequest` carrying any of the async fields, are `"async"`; anything else `"sync"`.
 *
 * @param request the decoded request
 * @returns its generation
 *
 * @example
 * ```ts
 * import { generationOfRequest } from "./alloc_wire.ts";
 * console.log(generationOfRequest({ type: "CancelNotif", req_id: "r", keys: [] })); // async
 * ```
 */
export function generationOfRequest(request: SideMessage | undefined): PdWireGeneration {
  if (!request) return "sync";
  if (request.type === "CancelNotif") return "async";
  if (request.type !== "AllocRequest") return "sync";
  return ASYNC_REQUEST_FIELDS.some((f) => request[f] !== undefined) ? "async" : "sync";
}

/**
 * The generation of a decoded `AllocResponse`, from the order its fields arrived in, or
 * `undefined` when that cannot be told (a message that was not decoded).
 *
 * @param response the decoded reply
 * @returns its generation
 *
 * @example
 * ```ts
 * import { allocResponse, generationOfResponse } from "./alloc_wire.ts";
 * import { type AllocResponse, decodeMessage, encodeMessage } from "@kvport/nixl/wire";
 *
 * const bytes = encodeMessage(allocResponse("async", [1], []) as unknown as AllocResponse);
 * console.log(generationOfResponse(decodeMessage(bytes) as never)); // async
 * ```
 */
export function generationOfResponse(response: SideMessage): PdWireGeneration | undefined {
  const order = receivedFieldOrder(response);
  if (!order) return undefined;
  const r = order.indexOf("remote_indexes");
  const a = order.indexOf("already_sent_indexes");
  if (r < 0) return undefined;
  return a >= 0 && a < r ? "sync" : "async";
}

/**
 * An `AllocResponse` in a generation's field order.
 *
 * @param generation the peer's generation
 * @param remote receiver page per key to write
 * @param already positions of keys the receiver already holds
 * @returns the reply
 *
 * @example
 * ```ts
 * import { allocResponse } from "./alloc_wire.ts";
 * const reply = allocResponse("sync", [4, 5], [0]);
 * console.log(reply.remote_indexes); // [4, 5]
 * ```
 */
export function allocResponse(
  generation: PdWireGeneration,
  remote: readonly number[],
  already: readonly number[],
): SideMessage {
  return withFieldOrder(
    { type: "AllocResponse", already_sent_indexes: [...already], remote_indexes: [...remote] },
    ALLOC_RESPONSE_ORDER[generation],
  );
}

/**
 * The reply that refuses `request` (when it could be decoded): an `AllocResponse` in the
 * request's generation with `already_sent_indexes` empty and `-1` for every key (at least
 * one, as LMCache does), plus kvport's reason and detail.
 *
 * @param request the decoded request, or `undefined` when it did not decode
 * @param reason why
 * @param detail the refusal in words
 * @returns the reply
 *
 * @example
 * ```ts
 * import { refusalReply } from "./alloc_wire.ts";
 * const r = refusalReply(
 *   { type: "AllocRequest", keys: ["a", "b"], fmt: 1, shape: [2], dtype: "bfloat16", last_chunk_toks: 1 },
 *   "pool_too_small",
 *   "2 pages wanted, the buffer has 1",
 * );
 * console.log(r.remote_indexes); // [-1, -1]
 * ```
 */
export function refusalReply(
  request: SideMessage | undefined,
  reason: PdRefusalReason,
  detail: string,
): SideMessage {
  const keys = request?.type === "AllocRequest" && Array.isArray(request.keys)
    ? request.keys.length
    : 0;
  const reply = allocResponse(
    request ? generationOfRequest(request) : "async",
    new Array<number>(Math.max(keys, 1)).fill(-1),
    [],
  );
  reply.kvport_reason = reason;
  reply.kvport_detail = detail;
  return reply;
}

/**
 * The reason a thrown error carries ({@linkcode AllocRefusal}), else `bad_request`.
 *
 * @param error what a request handler threw
 * @returns the refusal reason to send
 *
 * @example
 * ```ts
 * import { AllocRefusal, refusalReasonOf } from "./alloc_wire.ts";
 * console.log(refusalReasonOf(new AllocRefusal("chunk_too_large", "8192 > 4096"))); // chunk_too_large
 * console.log(refusalReasonOf(new Error("oops"))); // bad_request
 * ```
 */
export function refusalReasonOf(error: unknown): PdRefusalReason {
  return error instanceof AllocRefusal ? error.reason : "bad_request";
}

/** What an `AllocResponse` said, as {@linkcode readAllocResponse} reads it. */
export type AllocOutcome =
  | {
    /** Pages were given. */
    ok: true;
    /** The receiver's generation, when its field order tells. */
    generation: PdWireGeneration | undefined;
    /** Positions of keys the receiver already holds. */
    already: number[];
    /** Receiver page per remaining key. */
    remote: number[];
  }
  | {
    /** The allocation was refused (some `remote_indexes` are `-1`). */
    ok: false;
    /** The receiver's generation, when its field order tells. */
    generation: PdWireGeneration | undefined;
    /** Why (`unspecified` when the receiver did not say: an LMCache receiver). */
    reason: PdRefusalReason;
    /** The receiver's words, or a description of the plain `-1` reply. */
    detail: string;
    /** How many keys got `-1`. */
    failed: number;
  };

/**
 * Reads an `AllocResponse`: pages, or a refusal with its reason. Integers beyond 2^53
 * and indexes below -1 are malformed: a `WireMessageError` names the field.
 *
 * @param response the decoded reply
 * @returns what it says
 *
 * @example
 * ```ts
 * import { readAllocResponse, refusalReply } from "./alloc_wire.ts";
 * const out = readAllocResponse(refusalReply(undefined, "no_free_pages", "0 of 8 free"));
 * if (!out.ok) console.log(out.reason, out.detail); // no_free_pages 0 of 8 free
 * ```
 */
export function readAllocResponse(response: SideMessage): AllocOutcome {
  const ints = (field: string): number[] => {
    const v = response[field];
    if (v === undefined) return [];
    return (v as WireInt[]).map((x, i) => {
      const n = toSafeInt(x, `${field}[${i}]`, "AllocResponse");
      if (n < -1 || (n < 0 && field === "already_sent_indexes")) {
        throw new WireMessageError(
          field === "remote_indexes" ? "a page index >= 0, or -1 (refused)" : "a position >= 0",
          `int ${n}`,
          { messageType: "AllocResponse", field: `${field}[${i}]` },
        );
      }
      return n;
    });
  };
  const already = ints("already_sent_indexes");
  const remote = ints("remote_indexes");
  const generation = generationOfResponse(response);
  const failed = remote.filter((r) => r < 0).length;
  if (failed === 0) return { ok: true, generation, already, remote };
  const said = response.kvport_reason;
  const reason = typeof said === "string" && (REASONS as readonly string[]).includes(said)
    ? said as PdRefusalReason
    : "unspecified";
  const detail = typeof response.kvport_detail === "string"
    ? response.kvport_detail
    : `the receiver answered remote index -1 for ${failed} of ${remote.length} chunk(s) ` +
      "without a reason (an LMCache receiver does so when it found no free page within " +
      "its allocation timeout, or could not process the request)";
  return { ok: false, generation, reason, detail, failed };
}

/**
 * The `AllocRequest` a sender writes in a generation. The async form carries `req_id`,
 * `is_last_batch` and `total_chunks` when the request's total is known, else their
 * defaults (what the PD L2 adapter's sender writes: no admission control).
 *
 * @param generation the form to write
 * @param base the five fields every generation has
 * @param request the request id, whether this is its last batch, its total chunks
 * @returns the request
 *
 * @example
 * ```ts
 * import { allocRequest } from "./alloc_wire.ts";
 * const m = allocRequest("async", {
 *   keys: ["k"], fmt: 1, shape: [2, 1, 256, 8], dtype: "bfloat16", last_chunk_toks: 256,
 * }, { reqId: "r1", isLastBatch: true, totalChunks: 1 });
 * console.log(m.total_chunks); // 1
 * ```
 */
export function allocRequest(
  generation: PdWireGeneration,
  base: {
    keys: string[];
    fmt: number;
    shape: number[];
    dtype: string;
    last_chunk_toks: number;
  },
  request: { reqId: string; isLastBatch: boolean; totalChunks?: number },
): SideMessage {
  const msg: SideMessage = { type: "AllocRequest", ...base };
  if (generation === "async") {
    const known = request.totalChunks !== undefined && request.totalChunks > 0;
    msg.req_id = known ? request.reqId : "";
    msg.is_last_batch = known ? request.isLastBatch : false;
    msg.total_chunks = known ? request.totalChunks : 0;
  }
  return msg;
}
