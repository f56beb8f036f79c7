/**
 * Optional timing hooks of a PD request: the sender and the receiver call a hook at each
 * stage of a batch, so that a benchmark (`bench/latency_bench.ts`) can take
 * `performance.now()` there. No hook, no cost beyond one `undefined` check; a hook is
 * called synchronously and must be cheap (record a number, never log).
 *
 * @example
 * ```ts
 * import type { PdTimelineHook } from "@kvport/nixl";
 *
 * const marks: [string, number][] = [];
 * const timeline: PdTimelineHook = (stage) => marks.push([stage, performance.now()]);
 * console.log(typeof timeline);
 * ```
 * @module
 */

/**
 * Stages of one batch on the sender, in order:
 * - `send`: `send()` was called;
 * - `queued`: the batch's turn came (batches to one receiver go one after the other);
 * - `credits`: instead of `queued` .. `alloc_reply`: the batch took page credits it
 *   held (no AllocRequest, no wait behind the link's queue);
 * - `refill_wait`: before `credits` (or `queued`): no credits were left but a refill was
 *   on its way, so the batch waited for it (an AllocRequest would have queued behind it);
 * - `alloc_sent`: the `AllocRequest` was handed to the socket;
 * - `alloc_reply`: its `AllocResponse` arrived;
 * - `write`: the WRITE of the batch's pages starts;
 * - `posted`: the transfer was posted to the engine (the copy is running);
 * - `written`: the engine reported the data landed (and the notification sent);
 * - `notified`: the `ProxyNotif` was handed to the socket (last batch only).
 */
export type PdSenderStage =
  | "send"
  | "queued"
  | "credits"
  | "refill_wait"
  | "alloc_sent"
  | "alloc_reply"
  | "write"
  | "posted"
  | "written"
  | "notified";

/**
 * Stages on the receiver:
 * - `alloc_received`: an `AllocRequest` reached the handler;
 * - `pages_reserved`: its pages were taken from the pool;
 * - `alloc_replied`: the `AllocResponse` was handed back to the socket;
 * - `notification`: a sender's landed (or credit bind) notification reached the
 *   receiver (`keys`);
 * - `landed`: its keys were marked landed and listeners called (`keys`).
 */
export type PdReceiverStage =
  | "alloc_received"
  | "pages_reserved"
  | "alloc_replied"
  | "notification"
  | "landed";

/**
 * A timing hook: called with the stage, the request id (`""` where the stage does not
 * know it: a landed notification carries keys only) and the keys concerned (on the
 * receiver's `notification` and `landed` stages; the batch's keys elsewhere).
 *
 * @example
 * ```ts
 * import { PdSender, type PdTimelineHook, type PdSenderStage } from "@kvport/nixl";
 *
 * const at = new Map<PdSenderStage, number>();
 * const timeline: PdTimelineHook<PdSenderStage> = (stage) => at.set(stage, performance.now());
 * await using tx = await PdSender.create({
 *   bufferSize: 1 << 20, pageSize: 1 << 16, channelType: "mock_memory", timeline,
 * });
 * ```
 */
export type PdTimelineHook<S extends string = string> = (
  stage: S,
  reqId: string,
  keys: readonly string[],
) => void;
