/**
 * Optional timing hooks of P2P: a requester calls its hook at each stage of a
 * `retrieve` (lookup + fetch) and a holder at each stage of serving one
 * `BatchedLookupAndGetMsg`, so that a benchmark (`bench/p2p_bench.ts`) can take
 * `performance.now()` there. No hook, no cost beyond one `undefined` check; a hook is
 * called synchronously and must be cheap (record a number, never log).
 *
 * @example
 * ```ts
 * import type { P2PTimelineHook } from "./timeline.ts";
 *
 * const marks: [string, number][] = [];
 * const timeline: P2PTimelineHook = (stage) => marks.push([stage, performance.now()]);
 * console.log(typeof timeline);
 * ```
 * @module
 */

/**
 * Stages on the requester, in order:
 * - `lookup`: `lookup()` was called (a `retrieve` starts with it);
 * - `lookup_reply`: the registry's answer arrived and was decoded;
 * - `fetch`: the fetch starts (from `fetch`, `retrieve` or `fetchFrom`);
 * - `pages`: its local pages were taken;
 * - `granted`: the holder was granted WRITE on them (the request goes out next);
 * - `reply`: the holder's `BatchedLookupAndGetRetMsg` (or error) arrived and was decoded;
 * - `done`: the grant was revoked and the result is about to be returned.
 *
 * Stages on the holder:
 * - `request`: a `BatchedLookupAndGetMsg` was decoded;
 * - `write`: the WRITE of the chunks held starts;
 * - `written`: the WRITE completed (the data is in the requester's pages);
 * - `replied`: the reply was encoded and handed back to the socket.
 */
export type P2PStage =
  | "lookup"
  | "lookup_reply"
  | "fetch"
  | "pages"
  | "granted"
  | "reply"
  | "done"
  | "request"
  | "write"
  | "written"
  | "replied";

/**
 * A timing hook: called with the stage and the lookup id it belongs to (`""` where the
 * stage does not know it yet).
 *
 * @example
 * ```ts
 * import { P2PBackend, type P2PTimelineHook } from "@kvport/nixl";
 *
 * const at = new Map<string, number>();
 * const timeline: P2PTimelineHook = (stage) => at.set(stage, performance.now());
 * await using p2p = await P2PBackend.create({
 *   instanceId: "a", host: "127.0.0.1", initPort: 0, lookupPort: 0,
 *   pageSize: 4096, bufferSize: 16 * 4096, channelType: "mock_memory", timeline,
 * });
 * ```
 */
export type P2PTimelineHook = (stage: P2PStage, lookupId: string) => void;
