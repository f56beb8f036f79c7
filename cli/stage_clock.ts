/**
 * The stages of each batch a PD sender sends, timed: `kvport pd-sender --timeline` and
 * `kvport demo` print them, so that a slow request says where its time went (the
 * allocation round trip, the copy, the wake-up after it, the proxy notification) without
 * a benchmark.
 *
 * @module
 */

import type { PdSenderStage, PdTimelineHook } from "../src/pd/timeline.ts";

/** The stages of one batch: milliseconds after its `send()`, in the order they came. */
export interface BatchStages {
  /** The batch's first key (names the batch). */
  firstKey: string;
  /** Chunks in the batch. */
  chunks: number;
  /** Each stage reached, ms after `send()` (a stage reached twice counts once). */
  stages: Partial<Record<PdSenderStage, number>>;
}

/**
 * Collects the sender's timeline marks per request and batch.
 *
 * @example
 * ```ts
 * import { StageClock } from "./stage_clock.ts";
 *
 * const clock = new StageClock();
 * clock.hook("send", "r1", ["k0", "k1"]);
 * clock.hook("written", "r1", ["k0", "k1"]);
 * const [batch] = clock.take("r1");
 * console.log(batch.chunks, batch.stages.written! >= 0); // 2 true
 * ```
 */
export class StageClock {
  readonly #requests = new Map<string, Map<string, { t0: number; batch: BatchStages }>>();

  /** The hook to give `PdSender` (`timeline` option). */
  readonly hook: PdTimelineHook<PdSenderStage> = (stage, reqId, keys) => {
    const now = performance.now();
    let batches = this.#requests.get(reqId);
    if (!batches) this.#requests.set(reqId, batches = new Map());
    const first = keys[0] ?? "";
    let b = batches.get(first);
    if (!b) {
      b = { t0: now, batch: { firstKey: first, chunks: keys.length, stages: {} } };
      batches.set(first, b);
    }
    b.batch.stages[stage] ??= Math.round((now - b.t0) * 1000) / 1000;
  };

  /** The batches of a request, in the order they were sent; forgets the request. */
  take(reqId: string): BatchStages[] {
    const batches = this.#requests.get(reqId);
    this.#requests.delete(reqId);
    return batches ? [...batches.values()].map((b) => b.batch) : [];
  }
}

/** The stages in the order a batch passes them, with words for a person. */
const STAGE_WORDS: readonly [PdSenderStage, string][] = [
  ["credits", "page credits taken"],
  ["alloc_sent", "AllocRequest sent"],
  ["alloc_reply", "reply"],
  ["write", "write"],
  ["posted", "posted"],
  ["written", "landed"],
  ["notified", "ProxyNotif"],
];

/**
 * One line for a batch: each stage's time after `send()`, ms.
 *
 * @param b the batch
 * @returns e.g. `8 chunks: AllocRequest sent 0.04, reply 1.51, write 1.53, ... ms`
 *
 * @example
 * ```ts
 * import { describeBatch } from "./stage_clock.ts";
 * console.log(describeBatch({ firstKey: "k", chunks: 1, stages: { alloc_reply: 0.2 } }));
 * ```
 */
export function describeBatch(b: BatchStages): string {
  const parts = STAGE_WORDS.filter(([s]) => b.stages[s] !== undefined)
    .map(([s, w]) => `${w} ${b.stages[s]!.toFixed(2)}`);
  return `${b.chunks} chunk(s): ${parts.join(", ")} ms after send()`;
}
